"""dvc.yaml: every paper stage (names, grids, outputs), commands that compose their Hydra configs, the
dry-run graph, and the demo chain (the dvc subprocesses and the exhaustive composition are slow)."""

from __future__ import annotations

import itertools
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from src.ood.detectors import PAPER_DETECTORS, study_order

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "src" / "experiments" / "conf"
MODELS8 = [
    "ssl_barlow_twins",
    "ssl_vicreg",
    "ssl_bayes_h_barlow_beta_0.001",
    "ssl_bayes_h_barlow_beta_0.0001",
    "ssl_bayes_z_barlow_beta_0.01",
    "ssl_bayes_h_vicreg_beta_0.0001",
    "ssl_bayes_h_vicreg_beta_1e-05",
    "ssl_bayes_z_vicreg_beta_0.001",
]


def expected_paper_stages() -> dict[str, str]:
    """Stage name -> its (first) output path, from the paper's grids."""
    s = {f"imagenet_ssl@{x}": f"data/results/imagenet/ssl/ssl_{x}" for x in ("barlow_twins", "vicreg")}
    s |= {
        f"imagenet_ssl_bayes_h_barlow@{b}": f"data/results/imagenet/ssl/ssl_bayes_h_barlow_beta_{b}"
        for b in ("0.001", "0.0001")
    }
    s["imagenet_ssl_bayes_z_barlow"] = "data/results/imagenet/ssl/ssl_bayes_z_barlow_beta_0.01"
    s |= {
        f"imagenet_ssl_bayes_h_vicreg@{b}": f"data/results/imagenet/ssl/ssl_bayes_h_vicreg_beta_{b}"
        for b in ("0.0001", "1e-05")
    }
    s["imagenet_ssl_bayes_z_vicreg"] = "data/results/imagenet/ssl/ssl_bayes_z_vicreg_beta_0.001"
    for pct in ("1", "10"):
        s |= {
            f"evaluate_semi_supervised_{pct}pct@{m}": f"data/results/imagenet/semi_supervised/imagenet{pct}pct/{m}"
            for m in MODELS8
        }
    for m, d in itertools.product(sorted(MODELS8), ("SUN397", "imagenet", "flowers-102")):
        s[f"pre_embed_datasets@{m}-{d}"] = f"data/embeddings/{d}/{m}"
        s[f"evaluate_linear_probing@{m}-{d}"] = f"data/linear_probing/{m}/{d}"
    s["summarize_linear_probing"] = "data/reports/linear_probing_report.csv"
    barlow = ("0.01", "0.001", "0.0001"), ("1", "12", "36")
    vicreg = ("0.001", "0.0001", "1e-05"), ("1", "12")
    for stage, prefix, (betas, mcs) in [
        ("ablation_cifar10_barlow_twins_ssl_bayes_h", "ssl_bayes_h_barlow", barlow),
        ("ablation_cifar10_mc_barlow_twins_ssl_bayes_z", "ssl_bayes_z_barlow", barlow),
        ("ablation_cifar10_mc_vicreg_ssl_bayes_h", "ssl_bayes_h_vicreg", vicreg),
        ("ablation_cifar10_mc_vicreg_ssl_bayes_z", "ssl_bayes_z_vicreg", vicreg),
    ]:
        for prior, beta, mc, seed in itertools.product(("standard", "mog"), betas, mcs, ("1997", "1998", "1999")):
            s[f"{stage}@{prior}-{beta}-{mc}-{seed}"] = (
                f"data/results/ablation/cifar10/{prefix}_{prior}_beta_{beta}_mc_{mc}_seed_{seed}"
            )
    s |= {f"ood_detection_study@cifar10-{d}": f"data/results/ood/cifar10/{d}" for d in PAPER_DETECTORS}
    return s


@cache
def stages() -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (resolved command, output paths), from DVC's own parser."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {st.addressing: (st.cmd, [str(o.def_path) for o in st.outs]) for st in repo.index.stages}


def test_every_paper_stage_with_its_output() -> None:
    expected = expected_paper_stages()
    assert len(expected) == 262
    got = stages()
    missing = sorted(set(expected) - set(got))
    assert not missing, missing[:10]
    for name, out in expected.items():
        assert out in got[name][1], (name, got[name][1])
    paper = {n for n in got if not n.startswith(("demo_", "fmnist_", "ood_detection_study_extended@"))}
    assert paper == set(expected)  # nothing extra either


def test_extended_ood_stages_are_the_added_detectors_beside_the_papers() -> None:
    """One ``ood_detection_study_extended@cifar10-<detector>`` per registered detector beyond the paper's nine,
    with the paper's stage command and output layout; the paper's stages keep exactly the nine."""
    got = stages()
    added = [d for d in study_order() if d not in PAPER_DETECTORS]
    extended = {n for n in got if n.startswith("ood_detection_study_extended@")}
    assert extended == {f"ood_detection_study_extended@cifar10-{d}" for d in added}
    paper_cmd = got["ood_detection_study@cifar10-msp"][0]
    for d in added:
        cmd, outs = got[f"ood_detection_study_extended@cifar10-{d}"]
        assert outs == [f"data/results/ood/cifar10/{d}"]
        assert cmd == paper_cmd.replace("--postprocessor-name msp", f"--postprocessor-name {d}").replace(
            "data/results/ood/cifar10/msp", f"data/results/ood/cifar10/{d}"
        )
    assert {n for n in got if n.startswith("ood_detection_study@")} == {
        f"ood_detection_study@cifar10-{d}" for d in PAPER_DETECTORS
    }


@pytest.mark.slow
def test_dvc_stage_list_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    names = set(proc.stdout.split())
    assert "ablation_cifar10_mc_vicreg_ssl_bayes_h@mog-1e-05-12-1999" in names and "demo_report" in names


def _hydra_overrides(cmd: str) -> tuple[str, list[str]]:
    words = shlex.split(cmd)
    script = next(w for w in words if w.endswith(".py"))
    overrides = [w for w in words[words.index(script) + 1 :] if w != "-m"]
    return Path(script).stem, overrides


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["run_pipeline", "run_semi_supervised"])
def test_hydra_stage_commands_compose(kind: str) -> None:
    """Each stage command's overrides compose the real config (no training)."""
    config_name = "config" if kind == "run_pipeline" else "semi_supervised"
    checked = 0
    with initialize_config_dir(version_base=None, config_dir=str(CONF)):
        for name, (cmd, outs) in stages().items():
            script, overrides = _hydra_overrides(cmd)
            if script != kind:
                continue
            cfg = compose(config_name=config_name, overrides=overrides)
            assert cfg.output_path == outs[0], name  # the stage's out is the pipeline's output_path
            if kind == "run_pipeline":
                assert cfg.train.name in name or name.startswith("imagenet_ssl@") or name.startswith("demo_")
            if name.startswith("fmnist_"):
                split = name.split("@")[1].startswith("fashion_mnist_split")
                assert cfg.dataset.num_classes == (6 if split else 10), name
                assert list(cfg.dataset.classes or range(10)) == list(range(6 if split else 10)), name
            checked += 1
    # paper stages + demo + Fashion-MNIST (params.yaml's grid: 2 protocols x (2 losses + 2 models x 2 losses))
    assert checked == (8 + 180 + 6 + 12 if kind == "run_pipeline" else 16)


@pytest.mark.slow
def test_ablation_vicreg_stages_depend_on_their_own_loss_config() -> None:
    """D-Q28 fixed: the VICReg ablations depend on mc_vicreg.yaml, and the OOD stage on the runs."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        by_name = {st.addressing: st for st in repo.index.stages}
        deps = {str(d.def_path) for d in by_name["ablation_cifar10_mc_vicreg_ssl_bayes_z@mog-1e-05-12-1999"].deps}
        assert "src/experiments/conf/model/loss/mc_vicreg.yaml" in deps
        ood = {str(d.def_path) for d in by_name["ood_detection_study@cifar10-gram"].deps}
        assert "data/results/ablation/cifar10" in ood and "src/ood" in ood


def dag(target: str) -> tuple[set[str], str]:
    """(stage names, dot text) of ``dvc dag --dot <target>``: the stages ``target`` pulls in."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "dag", "--dot", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = {line.strip().strip(";").strip('"') for line in proc.stdout.splitlines() if line.strip().endswith('";')}
    return {n for n in nodes if "->" not in n}, proc.stdout


@pytest.mark.slow
def test_dry_run_lists_the_chain() -> None:
    # `dvc repro --dry` stops at the first stage whose dependency is produced by an earlier,
    # not yet run stage (a fresh clone has no data/demo/dataset), so the demo chain is read
    # from the DAG instead: demo_report must pull in exactly the demo stages.
    nodes, dot = dag("demo_report")
    demo = {n for n in stages() if n.startswith("demo_")}
    assert nodes == demo, sorted(nodes ^ demo)
    assert '"demo_data" -> "demo_pretrain@ssl_bayes_z_vicreg";' in dot
    assert '"demo_ood_report" -> "demo_report";' in dot
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--dry", "imagenet_ssl@barlow_twins"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Running stage 'imagenet_ssl@barlow_twins'" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_fashion_mnist_chain() -> None:
    """fmnist_report pulls in exactly the Fashion-MNIST stages; each OOD study waits for its runs."""
    nodes, dot = dag("fmnist_report")
    fmnist = {n for n in stages() if n.startswith("fmnist_")}
    assert nodes == fmnist, sorted(nodes ^ fmnist)
    assert len(fmnist) == 1 + 12 + 2 + 2 + 1
    run = "fmnist_pretrain_bayes@fashion_mnist_split-ssl_bayes_h-vicreg-0.001-12-1997"
    assert f'"{run}" -> "fmnist_ood@fashion_mnist_split";' in dot
    assert f'"{run}" -> "fmnist_ood@fashion_mnist";' not in dot
    assert '"fmnist_data" -> "fmnist_pretrain_ssl@fashion_mnist-vicreg-1997";' in dot
    cmd, outs = stages()["fmnist_ood@fashion_mnist_split"]
    assert "--postprocessor-name all" in cmd and outs == ["data/results/ood/fashion_mnist_split"]


@pytest.mark.slow
def test_missing_dataset_stops_at_once_with_a_clear_message(tmp_path: Path) -> None:
    cmd, _ = stages()["imagenet_ssl@barlow_twins"]
    _, overrides = _hydra_overrides(cmd)
    overrides = [o for o in overrides if not o.startswith(("dataset.data_dir=", "output_path="))]
    overrides += [
        f"dataset.data_dir={tmp_path / 'imagenet'}",
        f"output_path={tmp_path / 'out'}",
        "dataset.num_workers=0",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src/experiments/scripts/run_pipeline.py"), *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "imagenet" in proc.stderr and "train/<wnid>" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- DVC metrics and plots
DEMO_RUNS = {
    "ssl_barlow_twins",
    "ssl_vicreg",
    "ssl_bayes_h_barlow",
    "ssl_bayes_h_vicreg",
    "ssl_bayes_z_barlow",
    "ssl_bayes_z_vicreg",
}


@cache
def flagged_outputs() -> dict[str, tuple[str, list[tuple[str, bool, bool, bool]]]]:
    """Stage name -> (command, [(path, is metric, is plot, cached)]) for the demo and Fashion-MNIST stages."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return {
            st.addressing: (st.cmd, [(str(o.def_path), bool(o.metric), bool(o.plot), o.use_cache) for o in st.outs])
            for st in repo.index.stages
            if st.addressing.startswith(("demo_", "fmnist_"))
        }


def top_level_plot_files() -> dict[str, list[str]]:
    """Plot id -> the data files of dvc.yaml's top-level `plots:`."""
    import yaml

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    out = {}
    for entry in spec["plots"]:
        ((plot_id, props),) = entry.items()
        y = (props or {}).get("y")
        out[plot_id] = list(y) if isinstance(y, dict) else [plot_id]
    return out


def written_by_command(path: str, cmd: str) -> bool:
    """``path`` is a folder the command names, or lies inside one."""
    return any(path == w or path.startswith(w.rstrip("/") + "/") for w in shlex.split(cmd) if w.startswith("data/"))


def test_metrics_and_plots_of_the_demo_and_fashion_mnist_reports() -> None:
    flagged = {
        (name, path, metric, bool(plot))
        for name, (_, outs) in flagged_outputs().items()
        for path, metric, plot, _ in outs
        if metric or plot
    }
    assert flagged == {
        ("demo_report", "data/demo/reports/summary.json", True, False),
        ("demo_report", "data/demo/reports/metrics", True, False),
        ("demo_report", "data/demo/reports/figures", False, True),
        ("fmnist_report", "data/reports/fashion_mnist/summary.json", True, False),
        ("fmnist_report", "data/reports/fashion_mnist/metrics", True, False),
        ("fmnist_report", "data/reports/fashion_mnist/figures", False, True),
        ("fmnist_report", "data/reports/fashion_mnist/curves", False, True),
    }
    for name, path, _, _ in flagged:
        cmd, outs = flagged_outputs()[name]
        assert written_by_command(path, cmd), (name, path, cmd)
        # cached: data/ is git-ignored, so DVC reads other revisions' metrics and plots from its cache
        assert dict((p, c) for p, _, _, c in outs)[path], (name, path)


def test_top_level_plots_read_files_the_demo_report_writes() -> None:
    files = top_level_plot_files()
    assert set(files) == {"demo_online_acc", "demo_val_loss"}
    cmd, outs = flagged_outputs()["demo_report"]
    for plot_id, paths in files.items():
        assert {Path(p).stem for p in paths} == DEMO_RUNS, plot_id
        for p in paths:
            assert p.startswith("data/demo/reports/curves/") and written_by_command(p, cmd), p
    assert ("data/demo/reports/curves", False, False, True) in outs
    # the runs the curves name are the demo's pretraining stages
    assert {n.split("@")[1] for n in flagged_outputs() if n.startswith("demo_pretrain@")} == DEMO_RUNS


def test_every_demo_output_is_under_data_demo() -> None:
    demo = {name: outs for name, (_, outs) in flagged_outputs().items() if name.startswith("demo_")}
    assert len(demo) == 1 + 6 + 4
    paths = [path for outs in demo.values() for path, *_ in outs]
    assert all(p.startswith("data/demo/") for p in paths), paths
    top = {p.split("/")[2] for p in paths}
    assert top == {"dataset", "runs", "ood", "embeddings", "linear_probing", "reports"}


@pytest.mark.slow
def test_dvc_metrics_and_plots_show_on_the_demo_layout(tmp_path: Path) -> None:
    """`dvc metrics show` and `dvc plots show` in a git+DVC copy of the project with small fabricated outputs."""
    import json

    import pandas as pd

    from src.reports.dvc_metrics import LIGHTNING_CSV, write_dvc_files

    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, timeout=120)
    runs = tmp_path / "data/demo/runs"
    for i, run in enumerate(sorted(DEMO_RUNS)):
        (runs / run / LIGHTNING_CSV).parent.mkdir(parents=True)
        results = {"metrics": {"val_online_acc": 0.5 + i / 100}, "offline_metrics": {"test_offline_acc": 0.9}}
        (runs / run / "results.json").write_text(json.dumps(results | {"metadata": {"model_name": run}}))
        log = "epoch,step,val_online_acc,val_loss,train_epoch\n0,12,0.25,60.0,\n0,12,,,0.0\n1,25,0.5,50.0,\n"
        (runs / run / LIGHTNING_CSV).write_text(log)
    reports = tmp_path / "data/demo/reports"
    (reports / "ood").mkdir(parents=True)
    rows = [{"detector": "msp", "group": r, "near_AUROC_mean": 60.0, "far_AUROC_mean": 90.0} for r in DEMO_RUNS]
    pd.DataFrame(rows).to_csv(reports / "ood" / "ood_report.csv", index=False)
    write_dvc_files(runs, reports / "ood" / "ood_report.csv", reports / "metrics", reports / "curves")
    (reports / "summary.json").write_text(json.dumps({"sanity_bars": {"passed": True, "best_far_auroc": 90.0}}))
    (reports / "figures").mkdir()
    (reports / "figures" / "auroc_heatmap.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    def dvc_json(*args: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", *args, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    shown = dvc_json("metrics", "show")[""]["data"]
    assert shown["data/demo/reports/summary.json"]["data"]["sanity_bars"]["passed"] is True
    first = sorted(DEMO_RUNS)[0]
    assert shown[f"data/demo/reports/metrics/runs/{first}.json"]["data"] == {
        "val_online_acc": 0.5,
        "test_offline_acc": 0.9,
    }
    assert shown[f"data/demo/reports/metrics/ood_far/{first}.json"]["data"] == {"msp": 90.0}
    assert len([p for p in shown if p.startswith("data/demo/reports/metrics/")]) == 3 * len(DEMO_RUNS)

    plots = dvc_json("plots", "show")["data"]
    values = plots["demo_online_acc"][0]["content"]["data"]["values"]
    assert {v["filename"] for v in values} == {f"{r}.csv" for r in DEMO_RUNS}
    assert sorted({v["val_online_acc"] for v in values}) == ["0.25", "0.5"]  # only the validation rows
    assert "data/demo/reports/figures/auroc_heatmap.png" in plots
