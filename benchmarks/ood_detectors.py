"""OOD detectors that score against the training set: the project's batched code vs per-sample loops.

For ``kldivsimk``, ``edsimk``, ``mds`` and ``umds`` on random features of N training × T test
points, three ways to score the T test points are timed:

* ``batched``: the project's function (``kth_smallest_kl``, ``kth_nearest_distance``,
  ``mahalanobis_score``) called once on all T points;
* ``batched_200``: the same function called per batch of 200 test points, as the OOD evaluator
  drives it (``batch_size=200``), so per-call work (e.g. preparing the training side) is repeated;
* ``per_sample``: the tests' per-sample references (``tests/reference/detectors.py``), one test
  point at a time against all training points (Gaussians, features or group means), as the
  reference did — kldivsimk: torch's Normal–Normal KL in float32, NaN → 65504, full sort,
  element K; edsimk: float64 distances to all training features, full sort, element K; mds/umds:
  the quadratic form ``(x − μ_g)ᵀ Π (x − μ_g)`` of one point against the G group means (float32,
  on the CPU, as the reference's ``b158c9a``). With
  ``per_sample_points < T`` the loop runs on the first ``per_sample_points`` test points and its
  time is extrapolated linearly to T (``per_sample.extrapolated`` in the JSON).

The scores of the per-sample path and of the batched path are compared on those points
(``max_rel_diff`` = max |batched − per_sample| / |per_sample|, tolerance 1e-4). For mds/umds the
fit is timed too (``setup``): the project's ``fit_mahalanobis`` against scikit-learn's
``EmpiricalCovariance`` + ``pinvh`` (the reference), and, for umds, the project's k-means
clustering (no reference: faiss is not a dependency); the per-sample mds path scores with the
scikit-learn fit, so the comparison covers the fit as well.

``ratio`` = per-sample seconds (extrapolated) / batched seconds: how many times faster the project is.

Usage (repository root)::

    python -m benchmarks.ood_detectors --device cuda --size full
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from benchmarks._timing import (
    add_common_args,
    apply_threads,
    default_output,
    environment,
    markdown_table,
    ratio,
    resolve_device,
    summarize,
    synchronize,
    time_interleaved,
    write_result,
)
from src.ood.detectors.edsimk import kth_nearest_distance
from src.ood.detectors.kldivsimk import kth_smallest_kl
from src.ood.detectors.mds import fit_mahalanobis, mahalanobis_score
from src.ood.detectors.umds import assign_clusters, kmeans
from tests.reference import detectors as ref

NAME = "ood_detectors"
DETECTORS: tuple[str, ...] = ("kldivsimk", "edsimk", "mds", "umds")
#: the OOD evaluator's batch size (src/ood/evaluator.py)
EVALUATOR_BATCH: int = 200
#: agreement tolerance of batched vs per-sample scores
RTOL: float = 1e-4


@dataclass(frozen=True)
class OODSize:
    """One size preset."""

    n_train: int
    n_test: int
    feature_dim: int  # h features (encoder output, E = 512) for edsimk / mds / umds
    kl_dim: int  # posterior width for kldivsimk (Bayes-H: L = 512; Bayes-Z would be Z = 1024)
    num_classes: int
    k: int  # kldivsimk / edsimk K (0-based index; the study's default 50)
    per_sample_points: int  # test points of the per-sample loop (extrapolated to n_test)
    warmup: int
    repeats: int


SIZES: dict[str, OODSize] = {
    # tiny: n_train > feature_dim keeps the pooled covariance of mds/umds non-singular
    "tiny": OODSize(
        n_train=1000,
        n_test=40,
        feature_dim=512,
        kl_dim=512,
        num_classes=10,
        k=50,
        per_sample_points=40,
        warmup=1,
        repeats=1,
    ),
    "small": OODSize(
        n_train=5000,
        n_test=1000,
        feature_dim=512,
        kl_dim=512,
        num_classes=10,
        k=50,
        per_sample_points=50,
        warmup=1,
        repeats=3,
    ),
    "full": OODSize(
        n_train=50000,
        n_test=10000,
        feature_dim=512,
        kl_dim=512,
        num_classes=10,
        k=50,
        per_sample_points=500,
        warmup=1,
        repeats=3,
    ),
}


# ----------------------------------------------------------------------------------------- data


def random_features(size: OODSize, device: torch.device, seed: int) -> dict[str, Tensor]:
    """Class-structured training features with labels, test features (half shifted, OOD-like),
    and diagonal-Gaussian posteriors (μ, log σ²) for training and test points, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    d, c = size.feature_dim, size.num_classes
    centres = 3.0 * torch.randn(c, d, generator=g)
    labels = torch.randint(0, c, (size.n_train,), generator=g)
    train = centres[labels] + torch.randn(size.n_train, d, generator=g)
    test = centres[torch.randint(0, c, (size.n_test,), generator=g)] + torch.randn(size.n_test, d, generator=g)
    test[size.n_test // 2 :] += 2.0 * torch.randn(size.n_test - size.n_test // 2, d, generator=g)
    kd = size.kl_dim
    # σ within the Gaussian head's clamp range [0.01, 5]: log σ² in [2 ln 0.01, 2 ln 5]
    train_mu = torch.randn(size.n_train, kd, generator=g)
    train_lv = torch.empty(size.n_train, kd).uniform_(-4.0, 1.0, generator=g)
    test_mu = torch.randn(size.n_test, kd, generator=g) * 1.5
    test_lv = torch.empty(size.n_test, kd).uniform_(-4.0, 1.0, generator=g)
    out = dict(
        train=train,
        labels=labels,
        test=test,
        train_mu=train_mu,
        train_log_var=train_lv,
        test_mu=test_mu,
        test_log_var=test_lv,
    )
    return {k: v.to(device) for k, v in out.items()}


# ----------------------------------------------------------------------------- per-sample paths
# The per-sample references are the tests' (tests/reference/detectors.py): one implementation of
# each reference loop, which the tests check the detectors against and the benchmark times.


def per_sample_kl(train_mu: Tensor, train_log_var: Tensor, mu: Tensor, log_var: Tensor, k: int) -> Tensor:
    """kldivsimk the reference's way, in its float32 arithmetic (see ``ref.kth_smallest_kl``)."""
    return ref.kth_smallest_kl(train_mu, train_log_var, mu, log_var, k, dtype=torch.float32)


def per_sample_mahalanobis(test: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """mds/umds per test point on the CPU, float32 (see ``ref.mahalanobis_scores``)."""
    return torch.from_numpy(ref.mahalanobis_scores(test, means.cpu().numpy(), precision.cpu().numpy()))


def reference_fit(features: Tensor, labels: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """The fork's fit (see ``ref.mahalanobis_fit``: float32 group means and centring, scikit-learn
    ``EmpiricalCovariance`` and its ``pinvh`` precision)."""
    means, precision = ref.mahalanobis_fit(features, labels, num_groups)
    return torch.from_numpy(means).to(features.device), torch.from_numpy(precision).to(features.device)


# ------------------------------------------------------------------------------------- measuring


def in_batches(fn: Callable[[Tensor], Tensor], batch: int) -> Callable[[Tensor], Tensor]:
    """``fn`` applied per ``batch`` rows of its argument, results concatenated."""
    return lambda x: torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def max_rel_diff(a: Tensor, b: Tensor) -> float:
    """``max |a − b| / |b|`` in float64 (``|b|`` floored at 1e-12)."""
    a64, b64 = a.double().cpu(), b.double().cpu()
    return float(((a64 - b64).abs() / b64.abs().clamp_min(1e-12)).max())


def compare_paths(
    name: str,
    batched: Callable[[Tensor], Tensor],
    per_sample: Callable[[Tensor], Tensor],
    queries: Tensor,
    size: OODSize,
    device: torch.device,
) -> dict[str, Any]:
    """Time ``batched`` (all points; per 200) and ``per_sample`` (subset, extrapolated); compare scores."""
    n = queries.shape[0]
    m = min(size.per_sample_points, n)
    subset = queries[:m]
    scores_b = batched(queries)
    scores_p = per_sample(subset)
    rel = max_rel_diff(scores_b[:m], scores_p)
    times = time_interleaved(
        {
            "batched": lambda: batched(queries),
            "batched_200": lambda: in_batches(batched, EVALUATOR_BATCH)(queries),
            "per_sample": lambda: per_sample(subset),
        },
        device,
        size.warmup,
        size.repeats,
    )
    scale = n / m
    batched_s = summarize(times["batched"])
    batched_200_s = summarize(times["batched_200"])
    per_sample_s = summarize(times["per_sample"])
    per_sample_full = per_sample_s["median_s"] * scale
    return {
        "detector": name,
        "n_train": size.n_train,
        "n_test": n,
        "batched": {"seconds": batched_s, "points_per_s": n / batched_s["median_s"]},
        "batched_200": {"seconds": batched_200_s, "points_per_s": n / batched_200_s["median_s"]},
        "per_sample": {
            "seconds": per_sample_s,
            "points_timed": m,
            "extrapolated": m < n,
            "extrapolated_s": per_sample_full,
            "points_per_s": n / per_sample_full,
        },
        "ratio": ratio(per_sample_full, batched_s["median_s"]),
        "ratio_200": ratio(per_sample_full, batched_200_s["median_s"]),
        "max_rel_diff": rel,
        "rtol": RTOL,
        "ok": bool(rel <= RTOL),
    }


def timed(fn: Callable[[], Any], device: torch.device, warmup: int = 1) -> tuple[Any, float]:
    """``fn()`` and the synchronised wall time of one call after ``warmup`` untimed calls (first-call
    costs such as LAPACK initialisation or lazy imports are not charged)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def bench_kldivsimk(data: dict[str, Tensor], size: OODSize, device: torch.device) -> dict[str, Any]:
    """kldivsimk: ``kth_smallest_kl`` vs the per-sample KL loop."""
    tm, tlv = data["train_mu"], data["train_log_var"]
    lv = data["test_log_var"]
    # the query tensor carries both μ and log σ² so the paths can slice test points uniformly
    queries = torch.cat([data["test_mu"], lv], dim=1)
    d = size.kl_dim

    def batched(q: Tensor) -> Tensor:
        return kth_smallest_kl(tm, tlv, q[:, :d], q[:, d:], size.k)

    def per_sample(q: Tensor) -> Tensor:
        return per_sample_kl(tm, tlv, q[:, :d], q[:, d:], size.k)

    result = compare_paths("kldivsimk", batched, per_sample, queries, size, device)
    result["dim"] = d
    return result


def bench_edsimk(data: dict[str, Tensor], size: OODSize, device: torch.device) -> dict[str, Any]:
    """edsimk: ``kth_nearest_distance`` (training features stored float64, as its setup does) vs the loop."""
    keys = data["train"].double()
    key_sq = (keys * keys).sum(1)

    def batched(q: Tensor) -> Tensor:
        return kth_nearest_distance(q, keys, size.k, key_sq_norms=key_sq)

    def per_sample(q: Tensor) -> Tensor:
        return ref.kth_nearest_distance(data["train"], q, size.k)

    result = compare_paths("edsimk", batched, per_sample, data["test"], size, device)
    result["dim"] = size.feature_dim
    return result


def bench_mahalanobis(name: str, data: dict[str, Tensor], size: OODSize, device: torch.device) -> dict[str, Any]:
    """mds (true labels) or umds (k-means clusters): fit timing, then scores batched vs per sample."""
    feats, labels = data["train"], data["labels"]
    setup: dict[str, Any] = {}
    if name == "umds":

        def cluster() -> Tensor:
            generator = torch.Generator().manual_seed(1234)
            centroids = kmeans(feats, size.num_classes, generator=generator)
            return assign_clusters(feats, centroids)

        labels, setup["project_clustering_s"] = timed(cluster, device)
        setup["reference_clustering_s"] = None  # faiss k-means: not a dependency of the project
    (means, precision), setup["project_fit_s"] = timed(lambda: fit_mahalanobis(feats, labels, size.num_classes), device)
    (ref_means, ref_precision), setup["reference_fit_s"] = timed(
        lambda: reference_fit(feats, labels, size.num_classes), device
    )
    setup["ratio"] = ratio(setup["reference_fit_s"], setup["project_fit_s"])
    setup["fit_precision_max_rel_diff"] = float(
        (precision.double() - ref_precision.double()).abs().max() / ref_precision.double().abs().max()
    )

    result = compare_paths(
        name,
        lambda q: mahalanobis_score(q, means, precision),
        lambda q: per_sample_mahalanobis(q, ref_means, ref_precision),
        data["test"],
        size,
        device,
    )
    result["dim"] = size.feature_dim
    result["setup"] = setup
    return result


def run_detector(name: str, data: dict[str, Tensor], size: OODSize, device: torch.device) -> dict[str, Any]:
    """The benchmark of one detector."""
    if name == "kldivsimk":
        return bench_kldivsimk(data, size, device)
    if name == "edsimk":
        return bench_edsimk(data, size, device)
    return bench_mahalanobis(name, data, size, device)


# ------------------------------------------------------------------------------------------ CLI


def table(result: dict[str, Any]) -> str:
    """The readable summary of a result dict."""
    rows = []
    for r in result["cases"]:
        rows.append(
            [
                r["detector"],
                f"{r['n_train']}x{r['n_test']}",
                r["batched"]["seconds"]["median_s"],
                r["batched_200"]["seconds"]["median_s"],
                r["per_sample"]["extrapolated_s"],
                r["per_sample"]["points_timed"],
                r["ratio"],
                r["ratio_200"],
                r["max_rel_diff"],
                "ok" if r["ok"] else "MISMATCH",
            ]
        )
    headers = [
        "detector",
        "train x test",
        "batched s",
        "per-200 s",
        "per-sample s",
        "points timed",
        "ratio",
        "ratio per-200",
        "max_rel_diff",
        "agree",
    ]
    out = markdown_table(headers, rows)
    setup_rows = [
        [
            r["detector"],
            r["setup"].get("project_clustering_s"),
            r["setup"]["project_fit_s"],
            r["setup"]["reference_fit_s"],
            r["setup"]["ratio"],
        ]
        for r in result["cases"]
        if "setup" in r
    ]
    if setup_rows:
        out += "\n\nsetup (fit on the training features):\n\n"
        out += markdown_table(["detector", "k-means s", "project fit s", "sklearn fit s", "ratio"], setup_rows)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=None, help="default: all four")
    parser.add_argument("--kl-dim", type=int, default=None, help="kldivsimk posterior width (default 512: Bayes-H)")
    parser.add_argument(
        "--per-sample-points", type=int, default=None, help="test points of the per-sample loop (default: per size)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the result dict."""
    args = parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    size = SIZES[args.size]
    overrides: dict[str, Any] = {}
    if args.kl_dim is not None:
        overrides["kl_dim"] = args.kl_dim
    if args.per_sample_points is not None:
        overrides["per_sample_points"] = args.per_sample_points
    size = OODSize(**{**asdict(size), **overrides})
    data = random_features(size, device, args.seed)
    cases = []
    for name in args.detectors or DETECTORS:
        print(f"[ood_detectors] {name} ...", file=sys.stderr, flush=True)
        with torch.no_grad():
            cases.append(run_detector(name, data, size, device))
    result: dict[str, Any] = {
        "benchmark": NAME,
        "environment": environment(device),
        "size": args.size,
        "sizes": asdict(size),
        "timing": {
            "statistic": "median of repeats, per path interleaved",
            "warmup": size.warmup,
            "repeats": size.repeats,
            "per_sample": (
                "timed on the first per_sample_points test points; extrapolated_s = median * n_test / points_timed"
            ),
            "batched_200": f"the batched function called per {EVALUATOR_BATCH} test points (the evaluator's batch)",
        },
        "ratio": "per-sample seconds (extrapolated to n_test) / batched seconds (> 1: the project is faster)",
        "cases": cases,
        "all_agree": all(c["ok"] for c in cases),
    }
    output = args.output or default_output(NAME, device)
    write_result(output, result)
    print(f"\n## ood_detectors ({args.size}, {device.type}: {result['environment']['device_name']})\n")
    print(table(result))
    print(f"\nwritten to {output}")
    return result


if __name__ == "__main__":
    main()
