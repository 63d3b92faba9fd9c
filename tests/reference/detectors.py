"""Plain per-sample references of the nine OOD detectors, written from the reference's formulas.

Each function loops over test samples in Python and uses the reference's own tools where it
used them (scikit-learn ``EmpiricalCovariance`` + scipy ``pinvh`` for mds/umds, a full sort for
edsimk and kldivsimk, torch's Normal–Normal KL, Python ``sum``/``min``/``max`` over flat lists of
floats and the full C×C Gram matrix for gram). They read plain tensors (the detectors' features)
or a network-like object with the hooks the detector uses, never the project's detector code.
The tests compare the batched detectors with them; ``benchmarks/ood_detectors.py`` times the
detectors against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.linalg
import sklearn.covariance
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Independent, Normal, kl_divergence

#: kldivsimk's NaN replacement in the reference (the float16 maximum)
KL_NAN_VALUE = 65504.0
F32_MAX = torch.finfo(torch.float32).max


# -- msp, odin --------------------------------------------------------------------------------------
def softmax_row(f: Sequence[float]) -> list[float]:
    """softmax of one logit vector, max-shifted, in float64."""
    m = max(f)
    e = [math.exp(v - m) for v in f]
    return [v / sum(e) for v in e]


def msp(logits: Tensor) -> tuple[list[int], list[float]]:
    """Per sample: pred = argmax f, conf = max softmax(f)."""
    preds, confs = [], []
    for row in logits.double().tolist():
        p = softmax_row(row)
        preds.append(int(np.argmax(row)))
        confs.append(max(p))
    return preds, confs


def odin(
    logits_fn: Callable[[Tensor], Tensor], x: Tensor, temperature: float, noise: float, std: Sequence[float]
) -> tuple[list[int], list[float], list[Tensor]]:
    """Per sample, with its own backward: ŷ = argmax f(x); L = CE(f(x)/T, ŷ); s = +1 where ∂L/∂x >= 0
    else −1, divided by std_c per channel; x̃ = x − ε s; conf = max softmax(f(x̃)/T), pred = argmax f(x̃).
    Also returns each perturbed input."""
    preds, confs, perturbed = [], [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach().clone().requires_grad_(True)
        f = logits_fn(xi)
        F.cross_entropy(f / temperature, f.detach().argmax(1)).backward()
        assert xi.grad is not None
        s = torch.where(xi.grad >= 0, 1.0, -1.0).to(x.dtype)
        for c in range(x.shape[1]):
            s[:, c] = s[:, c] / std[c]
        xt = xi.detach() - noise * s
        perturbed.append(xt[0])
        ft = (logits_fn(xt) / temperature)[0].detach().double().tolist()
        preds.append(int(np.argmax(ft)))
        confs.append(max(softmax_row(ft)))
    return preds, confs, perturbed


# -- mds, umds ----------------------------------------------------------------------------------------
def mahalanobis_fit(features: Tensor, labels: Tensor, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The OpenOOD fork's fit: per group the float32 ``mean(0)`` of its features (torch, on the CPU),
    the group-centred features in float32 concatenated group by group, scikit-learn
    ``EmpiricalCovariance(assume_centered=False)`` on them (float64 inside: re-centred, 1/N) and its
    ``precision_`` (scipy ``pinvh``) cast to float32. Returns (means [G, D], precision [D, D]) float32."""
    x = features.detach().cpu().float()
    y = labels.detach().cpu()
    means = [x[y == g].mean(0) for g in range(groups)]
    centred = torch.cat([x[y == g] - means[g] for g in range(groups)]).numpy().astype(np.float32)
    cov = sklearn.covariance.EmpiricalCovariance(assume_centered=False).fit(centred)
    return torch.stack(means).numpy(), cov.precision_.astype(np.float32)


def mahalanobis_fit_float64(features: Tensor, labels: Tensor, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The same fit with the group means and the centring in float64 (what the fork did NOT do)."""
    x = features.detach().cpu().double().numpy()
    y = labels.detach().cpu().numpy()
    means = np.stack([x[y == g].mean(0) for g in range(groups)])
    centred = x - means[y]
    centred -= centred.mean(0)
    precision = scipy.linalg.pinvh(centred.T @ centred / len(x))
    return means.astype(np.float32), precision.astype(np.float32)


def mahalanobis_scores(test: Tensor, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Per sample, float32: conf(x) = max_g −(x − μ_g)ᵀ Π (x − μ_g)."""
    out = []
    for x in test.detach().cpu().float().numpy():
        out.append(max(float(-(x - m) @ precision @ (x - m)) for m in means))
    return np.asarray(out)


# -- edsimk -------------------------------------------------------------------------------------------
def kth_nearest_distance(train: Tensor, test: Tensor, k: int) -> Tensor:
    """Per test point: float64 Euclidean distances to every training feature (scipy ``cdist``'s
    arithmetic), sorted ascending, the element at 0-based index ``k``. edsimk's conf is its negative."""
    keys = train.detach().double()
    out = []
    for i in range(test.shape[0]):
        dist = (keys - test[i].detach().double()).pow(2).sum(1).sqrt()
        out.append(torch.sort(dist).values[k])
    return torch.stack(out)


# -- kldivsimk ----------------------------------------------------------------------------------------
def kth_smallest_kl(
    train_mu: Tensor, train_log_var: Tensor, mu: Tensor, log_var: Tensor, k: int, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Per test point: KL(q_i ‖ q_x) against every training Gaussian (torch's Normal–Normal KL, in
    ``dtype``), ±∞ → the float32 extremes and NaN → 65504 (as ``nan_to_num`` of a float32 tensor),
    full ascending sort, the element at 0-based index ``k``. float32 [B]."""
    train_q = Independent(Normal(train_mu.to(dtype), torch.exp(0.5 * train_log_var.to(dtype)), validate_args=False), 1)
    out = []
    for m, lv in zip(mu.to(dtype), log_var.to(dtype)):
        q = Independent(Normal(m, torch.exp(0.5 * lv), validate_args=False), 1)
        kl = kl_divergence(train_q, q)
        if dtype == torch.float64:  # what float32 overflow would have given (±∞ → float32 extremes)
            kl = kl.clamp(-F32_MAX, F32_MAX)
        kl = torch.nan_to_num(kl.float(), nan=KL_NAN_VALUE)
        out.append(torch.sort(kl)[0][k])
    return torch.stack(out)


# -- sigmamean ----------------------------------------------------------------------------------------
def sigma_mean(log_var: Tensor) -> list[float]:
    """Per sample: (1/D) Σ_d exp(ℓ_d / 2)."""
    return [sum(math.exp(v / 2) for v in row) / len(row) for row in log_var.double().tolist()]


# -- logpprior ----------------------------------------------------------------------------------------
def log_prior_density(prior: Any, r: Tensor) -> list[float]:
    """Per sample, float64: Σ_d log p(r_d) under the standard normal, or under the MoG prior's
    per-dimension 1-D mixture log Σ_k π_k N(r_d; m_{k,d}, exp(v_{k,d})) (a MoG prior has ``means``,
    ``log_vars`` and mixing logits ``w``)."""
    out = []
    for row in r.detach().double().tolist():
        if not hasattr(prior, "means"):
            out.append(sum(-0.5 * math.log(2 * math.pi) - 0.5 * v * v for v in row))
            continue
        means = prior.means.detach().double().tolist()
        log_vars = prior.log_vars.detach().double().tolist()
        log_pi = torch.log_softmax(prior.w.detach().double().reshape(-1), 0).tolist()
        total = 0.0
        for d, v in enumerate(row):
            terms = [
                log_pi[c]
                - 0.5 * (math.log(2 * math.pi) + log_vars[c][d] + (v - means[c][d]) ** 2 / math.exp(log_vars[c][d]))
                for c in range(len(log_pi))
            ]
            top = max(terms)
            total += top + math.log(sum(math.exp(t - top) for t in terms))
        out.append(total)
    return out


# -- gram ---------------------------------------------------------------------------------------------
def gram_stats(feature_map: Tensor, p: float) -> list[list[float]]:
    """OpenOOD: ``temp**p``, reshape to [B, C, HW], the full Gram matrix ``F Fᵀ``, its row sums,
    ``sign · |·|^(1/p)``, as Python lists of floats (one list of C values per image)."""
    temp = feature_map.detach() ** p
    temp = temp.reshape(temp.shape[0], temp.shape[1], -1)
    temp = torch.matmul(temp, temp.transpose(dim0=2, dim1=1)).sum(dim=2)
    temp = (temp.sign() * torch.abs(temp) ** (1 / p)).reshape(temp.shape[0], -1)
    return temp.tolist()


def gram_fit(
    feature_lists: Sequence[Sequence[Tensor]], labels: Sequence[Tensor], num_classes: int, powers: Sequence[float]
) -> tuple[list, list]:
    """Per (true class, layer, power) one flat list of floats over the class's images and channels;
    the scalar min and max of each (nested lists [class][layer][power])."""
    feature_class: list = []
    for maps, y in zip(feature_lists, labels):
        if not feature_class:
            feature_class = [[[None for _ in powers] for _ in maps] for _ in range(num_classes)]
        for layer_idx, fmap in enumerate(maps):
            for pole_idx, p in enumerate(powers):
                for feature, label in zip(gram_stats(fmap, p), y.tolist()):
                    if feature_class[label][layer_idx][pole_idx] is None:
                        feature_class[label][layer_idx][pole_idx] = list(feature)
                    else:
                        feature_class[label][layer_idx][pole_idx].extend(feature)
    mins = [[[min(f) for f in layer] for layer in cls] for cls in feature_class]
    maxs = [[[max(f) for f in layer] for layer in cls] for cls in feature_class]
    return mins, maxs


def gram_score(
    logits: Tensor, maps: Sequence[Tensor], mins: list, maxs: list, powers: Sequence[float]
) -> tuple[list[int], list[float]]:
    """Per sample: the Python ``sum`` of r̃, the deviations from the PREDICTED class's min/max with
    ε = 1e-6 inside |·|, summed over (layer, power) and divided by 50."""
    preds = torch.softmax(logits, dim=1).argmax(dim=1).tolist()
    dev = [0.0] * logits.shape[0]
    for layer_idx, fmap in enumerate(maps):
        for pole_idx, p in enumerate(powers):
            stats = gram_stats(fmap, p)
            for idx in range(len(stats)):
                s = sum(stats[idx])
                lo, hi = mins[preds[idx]][layer_idx][pole_idx], maxs[preds[idx]][layer_idx][pole_idx]
                dev[idx] += max(lo - s, 0.0) / abs(lo + 10**-6)
                dev[idx] += max(s - hi, 0.0) / abs(hi + 10**-6)
    return preds, [d / 50 for d in dev]
