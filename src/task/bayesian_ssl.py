"""Stochastic SSL: Bayes-H and Bayes-Z.

Both models put the shared :class:`~src.model.stochastic.GaussianHead` somewhere in the
encoder → projector chain, draw M reparameterised samples [M, B, D], feed them to the MC
contrastive loss and add β times the KL-style term:

    loss = cl_loss + beta_scale * ½ (KL̂(view 1) + KL̂(view 2))

Bayes-H samples the representation (head on the encoder output, projector applied to every
MC slice with its own BatchNorm statistics); Bayes-Z samples the embedding (head on the
projector output). Everything over M is batched; no Python loop over samples.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from src.model.batchnorm import running_stats_as_if_twice
from src.model.prior import build_prior
from src.model.stochastic import GaussianHead, distribution, kl_term, moment_stats, sample
from src.task.ssl import SSL_MODELS, BaseSelfSupervisedLearning, Batch


class StochasticOutput(NamedTuple):
    """What the Gaussian head gives for one batch, in the reference's tuple order (so ``out[1]`` still
    means the samples), with names."""

    #: [B, D] the MC mean of the samples: what probes and downstream consumers see
    repr: Tensor
    #: [M, B, D] reparameterised draws mu + sigma * eps, the MC dimension first
    samples: Tensor
    #: [B, D] posterior mean
    mu: Tensor
    #: [B, D] posterior log-variance
    log_var: Tensor
    #: the posterior as a torch Normal (built without argument validation)
    q: Normal


def _legacy_head_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Accept reference state dicts, whose Gaussian layers are top-level ``fc_mu``/``fc_log_var``."""
    for name in ("fc_mu", "fc_log_var"):
        for key in [k for k in state_dict if k.startswith(f"{prefix}{name}.")]:
            state_dict[key.replace(f"{prefix}{name}.", f"{prefix}gaussian_head.{name}.", 1)] = state_dict.pop(key)


class BaseBayesianSelfSupervisedLearning(BaseSelfSupervisedLearning):
    """What Bayes-H and Bayes-Z share: the Gaussian head, the prior, the KL term and statistics.

    Extra args (beside those of :class:`BaseSelfSupervisedLearning`):
        prior: the ``model.prior`` node as a dict (``standard`` or ``mog`` with ``num_components``).
        beta_scale: β >= 0, the weight of the KL-style term.
        mc_samples: M >= 1.
        prior_name, sigma: metadata (``sigma`` is ignored, as in the reference, T-Q7).

    Subclasses set ``stochastic_space`` (``"H"`` or ``"Z"``) and ``rv_name`` and define
    ``stochastic_in_dim()`` (input width of the Gaussian head) and ``stochastic_dim()`` (its output width D).
    """

    #: name of the random variable in logged metrics (``h`` or ``z``)
    rv_name: str = ""
    #: the total loss and the unweighted KL/prior term on the progress bar
    prog_bar_terms = ("loss", "kl_prior_loss")

    def __init__(
        self,
        *,
        prior: dict[str, Any] | None = None,
        beta_scale: float = 1e-3,
        mc_samples: int = 12,
        **kwargs: Any,
    ) -> None:
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"train.mc_samples must be an integer >= 1, got {mc_samples!r}")
        if not isinstance(beta_scale, (int, float)) or isinstance(beta_scale, bool) or not beta_scale >= 0:
            raise ValueError(f"train.beta_scale must be a number >= 0, got {beta_scale!r}")
        super().__init__(prior=prior, beta_scale=beta_scale, mc_samples=mc_samples, **kwargs)
        self.mc_samples = mc_samples
        self.beta_scale = float(beta_scale)
        dim = self.stochastic_dim()
        self.prior = build_prior(self.hparams["prior"], dim)
        self.gaussian_head = GaussianHead(self.stochastic_in_dim(), dim)
        self._register_load_state_dict_pre_hook(_legacy_head_hook, with_module=True)

    # reference attribute names
    @property
    def fc_mu(self) -> nn.Linear:
        return self.gaussian_head.fc_mu

    @property
    def fc_log_var(self) -> nn.Linear:
        return self.gaussian_head.fc_log_var

    def gaussian(self, u: Tensor) -> StochasticOutput:
        """(repr [B, D], samples [M, B, D], mu [B, D], log_var [B, D], q) from a pre-activation u."""
        mu, log_var = self.gaussian_head(u)
        samples = sample(mu, log_var, self.mc_samples)
        return StochasticOutput(samples.mean(0), samples, mu, log_var, distribution(mu, log_var))

    def kl(self, samples: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
        return kl_term(samples, mu, log_var, self.prior)

    def stochastic_loss(
        self, z1: Tensor, z2: Tensor, views: tuple[StochasticOutput, StochasticOutput]
    ) -> dict[str, Any]:
        """MC contrastive loss on (z1, z2) plus β · ½ (KL̂₁ + KL̂₂); the step's output dict."""
        out: dict[str, Any] = dict(self.cl_loss(z1, z2))
        v1, v2 = views
        kl = 0.5 * (self.kl(v1.samples, v1.mu, v1.log_var) + self.kl(v2.samples, v2.mu, v2.log_var))
        out["kl_prior_loss"] = kl
        out["weighted_kl_prior_loss"] = self.beta_scale * kl
        out["loss"] = out["cl_loss"] + out["weighted_kl_prior_loss"]
        out[f"q_{self.rv_name}1"] = v1.q
        out[f"q_{self.rv_name}2"] = v2.q
        return out

    def log_step_outputs(self, out: dict[str, Any], phase: str, batch_size: int) -> None:
        super().log_step_outputs(out, phase, batch_size)
        q1, q2 = out[f"q_{self.rv_name}1"], out[f"q_{self.rv_name}2"]
        train = phase == "train"
        for stat, value in (("mu", torch.cat([q1.loc, q2.loc])), ("sigma", torch.cat([q1.scale, q2.scale]))):
            mean, std = moment_stats(value.detach())
            for suffix, v in (("mean", mean), ("std", std)):
                self.log(
                    f"{phase}_{stat}_{self.rv_name}_{suffix}",
                    v,
                    on_step=train,
                    on_epoch=not train,
                    sync_dist=True,
                    batch_size=batch_size,
                )


@SSL_MODELS.register("ssl_bayes_h")
class HBayesianSelfSupervisedLearning(BaseBayesianSelfSupervisedLearning):
    """Bayes-H (``ssl_bayes_h``): a Gaussian over the representation h (width L = E).

    forward(x) -> (repr [B, L], h [M, B, L], mu, log_var, q); the projector maps every MC
    slice with its own BatchNorm statistics, giving [M, B, Z].
    """

    stochastic_space = "H"
    rv_name = "h"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        latent_dim = self.hparams["latent_dim"]  # resolved: None took the encoder's width
        if int(latent_dim) != self.encoder_out_dim:
            raise ValueError(
                f"Bayes-H needs latent_dim == the encoder output width ({self.encoder_out_dim} for "
                f"{self.hparams['encoder']}), got latent_dim={latent_dim}: the projector and probes "
                "take the sampled representation (T-Q8)"
            )

    def stochastic_in_dim(self) -> int:
        return self.encoder_out_dim

    def stochastic_dim(self) -> int:
        return int(self.hparams["latent_dim"])

    def forward(self, x: Tensor) -> StochasticOutput:
        return self.gaussian(self.encode(x))

    def probe_features(self, x: Tensor, single_pass: bool = True) -> Tensor:
        """The online probe's input: the MC-mean representation [B, L] of a second forward (T-Q15a).

        The reference runs ``forward(x)`` twice (the first pass only told it the output type): each pass
        updates the encoder's train-mode BatchNorm running statistics and draws fresh MC noise, and the
        probe reads the second pass's ``repr``. ``single_pass=False`` does exactly that. ``single_pass=True``
        runs the encoder once and leaves the same state: the BatchNorm running statistics of a second pass
        in closed form (:func:`~src.model.batchnorm.running_stats_as_if_twice`; the second pass would see
        the same batch statistics) and the same random stream (the Gaussian head is deterministic, so its
        mu/log_var are reused and the noise is drawn twice with the same shapes; the second draw is read).
        Called under ``torch.no_grad()`` (the probe's features carry no graph).
        """
        if not single_pass:
            self(x)
            return self(x).repr
        with running_stats_as_if_twice(self):
            out = self(x)  # the first pass's draw is made here and not read
        return sample(out.mu, out.log_var, self.mc_samples).mean(0)

    def project(self, h: Tensor) -> Tensor:
        """[M, B, L] -> [M, B, Z], per-slice BatchNorm statistics (as M separate calls)."""
        return self.projection_head(h)

    def shared_step(self, batch: Batch) -> dict[str, Any]:
        x1, x2 = self.unpack(batch)
        v1, v2 = self(x1), self(x2)
        # one projector call per view, view 1 first: the reference's order of running-statistics updates
        # (and no [2M, B, L] copy of the samples)
        return self.stochastic_loss(self.project(v1.samples), self.project(v2.samples), (v1, v2))


@SSL_MODELS.register("ssl_bayes_z")
class ZBayesianSelfSupervisedLearning(BaseBayesianSelfSupervisedLearning):
    """Bayes-Z (``ssl_bayes_z``): a Gaussian over the embedding z (width Z).

    forward(x) = encoder(x) [B, E] (deterministic; what downstream classifiers see);
    project(h) -> (repr [B, Z], z [M, B, Z], mu, log_var, q).
    """

    stochastic_space = "Z"
    rv_name = "z"

    def stochastic_in_dim(self) -> int:
        return int(self.hparams["z_dim"])

    def stochastic_dim(self) -> int:
        return int(self.hparams["z_dim"])

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)

    def project(self, h: Tensor) -> StochasticOutput:
        if h.dim() > 2:
            h = h.mean(0)
        return self.gaussian(self.projection_head(h))

    def shared_step(self, batch: Batch) -> dict[str, Any]:
        x1, x2 = self.unpack(batch)
        v1 = self.project(self(x1))
        v2 = self.project(self(x2))
        return self.stochastic_loss(v1.samples, v2.samples, (v1, v2))
