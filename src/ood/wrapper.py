"""The network seen by the OOD detectors: a finetuned SSL model and its linear predictor.

``OODNetwork`` wraps the SSL module (encoder, projector and, for the Bayes models, the Gaussian
head and prior) and the finetuner's ``predictor``. ``features(x, reads)`` gives the
:class:`~src.ood.features.Features` of a batch, the only way the study runs the network for the
detectors (the table of what each field is per model is in ``src/ood/features.py``); the
network-level hooks some detectors need are ``logits(x)`` (ODIN differentiates through it),
``feature_list(x)`` (Gram) and ``prior`` (logpprior); ``head()`` gives the predictor's weights (ViM,
ReAct, ASH). Model variants differ only through the
model's ``stochastic_space`` class attribute (None, "H" or "Z"). Every call draws fresh MC noise
for the Bayes models, with the checkpoint's ``mc_samples``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from src.ood.features import FIELDS, STOCHASTIC_FIELDS, Features
from src.task.bayesian_ssl import StochasticOutput
from src.task.checkpoint import load_ssl_model
from src.utils.checkpoint import CheckpointError, load_checkpoint


class OODNetwork:
    """The reference's ``OpenOODWrapper`` as a features provider, device-agnostic."""

    def __init__(self, model: nn.Module, predictor: nn.Linear, input_std: tuple[float, ...] | None = None) -> None:
        self.model = model
        self.predictor = predictor
        #: per-channel std of the input normalisation (ODIN scales its gradient sign by it);
        #: set by the protocol that feeds the network
        self.input_std = input_std

    # -- properties -------------------------------------------------------------------------------
    @property
    def stochastic_space(self) -> str | None:
        """``"H"`` for Bayes-H, ``"Z"`` for Bayes-Z, None for the deterministic model."""
        return getattr(self.model, "stochastic_space", None)

    @property
    def prior(self) -> nn.Module:
        if self.stochastic_space is None:
            raise TypeError("the deterministic ssl model has no prior (it has no stochastic space)")
        return self.model.prior

    @property
    def device(self) -> torch.device:
        return next(self.predictor.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.predictor.out_features

    def head(self) -> tuple[Tensor, Tensor]:
        """The finetuned head's linear layer, detached: ``W`` [C, E] and ``b`` [C], ``logits = feats @ Wᵀ + b``.

        The head is a single ``Linear(E, C)`` (the finetuner's ``simple_mlp``); its input is the
        ``feats`` field of every model (for Bayes-H the MC mean ``h̄``: the study's logits, the MC mean
        of ``P(h_s)``, equal ``P(h̄)`` up to rounding). Read by ViM, ReAct and ASH (``Detector.reads_head``).
        """
        return self.predictor.weight.detach(), self.predictor.bias.detach()

    def to(self, device: torch.device | str) -> OODNetwork:
        self.model.to(device)
        self.predictor.to(device)
        return self

    def eval(self) -> OODNetwork:
        """Eval mode for both parts: BatchNorm uses running statistics (sampling stays on)."""
        self.model.eval()
        self.predictor.eval()
        return self

    # -- the network's outputs ----------------------------------------------------------------
    def features(self, x: Tensor, reads: Iterable[str] = ()) -> Features:
        """The logits of ``x`` [B, 3, H, W] and the optional fields named in ``reads`` (see ``Features``).

        ``features_from_encoding(encode(x), reads)``: the encoder output first (deterministic for
        every model), then the heads. Fields a model does not have (``mu`` etc. of the deterministic
        model) stay None.
        """
        return self.features_from_encoding(self.encode(x), reads)

    def encode(self, x: Tensor) -> Tensor:
        """The encoder output e [B, E] of ``x``: deterministic for all three models (eval mode), so the
        OOD cache may store it (``src/ood/cache.py``); everything random comes after it."""
        return self.model.encode(x)

    def features_from_encoding(self, e: Tensor, reads: Iterable[str] = ()) -> Features:
        """The :class:`Features` of a batch from its encoder output ``e`` [B, E] (see ``features``).

        Bayes-H: the Gaussian head on e draws S samples h_s; ``logits`` is the MC mean of P(h_s) (P is
        linear, so it equals P(h̄) up to rounding, O-Q13). Bayes-Z: the projection (which draws the z
        samples) runs only when an embedding-side field is read.
        """
        want = frozenset(reads)
        unknown = sorted(want - set(FIELDS))
        if unknown:
            raise ValueError(f"unknown feature fields {unknown}; known: {', '.join(FIELDS)}")
        space = self.stochastic_space
        posterior: StochasticOutput | None = None
        embeddings: Tensor | None = None
        if space == "H":
            posterior = self.model.gaussian(e)
            feats = posterior.repr
            logits = self.predictor(posterior.samples).mean(0)
            if "embeddings" in want:
                embeddings = self.model.projection_head(posterior.samples).mean(0)
        elif space == "Z":
            feats = e
            logits = self.predictor(feats)
            if want & {"embeddings", *STOCHASTIC_FIELDS}:
                posterior = self.model.project(feats)
                embeddings = posterior.repr
        else:
            feats = e
            logits = self.predictor(feats)
            if "embeddings" in want:
                embeddings = self.model.projection_head(feats)

        def keep(name: str, value: Tensor | None) -> Tensor | None:
            return value if name in want else None

        return Features(
            logits=logits,
            feats=keep("feats", feats),
            embeddings=keep("embeddings", embeddings),
            mu=keep("mu", None if posterior is None else posterior.mu),
            log_var=keep("log_var", None if posterior is None else posterior.log_var),
            sample_mean=keep("sample_mean", None if posterior is None else posterior.repr),
            samples=keep("samples", None if posterior is None else posterior.samples),
            space=space,
        )

    def logits(self, x: Tensor) -> Tensor:
        """The logits [B, C] of ``x`` (gradients flow when enabled: ODIN's input gradient)."""
        return self.features(x).logits

    def feature_list(self, x: Tensor) -> list[Tensor]:
        """The five ResNet maps GRAM uses: relu(bn1(conv1 x)), layer1, layer2, layer3,
        and the average-pooled layer4 [B, 512, 1, 1]. The max-pool is skipped (identity for the
        small-image stems).

        Raises:
            ValueError: the encoder is not a torchvision ResNet (e.g. a timm model).
        """
        self.feature_list_layers()
        enc = self.model.encoder
        h = enc.relu(enc.bn1(enc.conv1(x)))
        maps = [h]
        h = enc.layer1(h)
        maps.append(h)
        h = enc.layer2(h)
        maps.append(h)
        h = enc.layer3(h)
        maps.append(h)
        maps.append(enc.avgpool(enc.layer4(h)))
        return maps

    def feature_maps(self, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """GRAM's five maps (as :meth:`feature_list`) and the encoder output e [B, E], from ONE encoder pass.

        Forward hooks on the stem's ReLU, layer1–3 and the average pool record the maps while
        :meth:`encode` runs, so e is bit for bit ``encode(x)`` and the maps those of ``feature_list``
        wherever the stem's max-pool is an identity (the small-image stems: ``MaxPool2d(1, 1)``). For any
        other encoder the maps come from :meth:`feature_list` and e is None (the caller needs its
        logits from elsewhere).

        Raises:
            ValueError: the encoder is not a torchvision ResNet (as :meth:`feature_list`).
        """
        enc = self.model.encoder
        pool = getattr(enc, "maxpool", None)
        identity_pool = isinstance(pool, nn.Identity) or (
            isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (1, (1, 1)) and pool.stride in (1, (1, 1))
        )
        if not identity_pool or getattr(self.model, "_compiled_encoder", None) is not None:
            return self.feature_list(x), None
        self.feature_list_layers()  # the ResNet check, with its error
        maps: dict[int, Tensor] = {}

        def recorder(i: int) -> Callable[[nn.Module, object, Tensor], None]:
            def hook(module: nn.Module, args: object, out: Tensor) -> None:
                maps.setdefault(i, out)  # the stem's ReLU is called once; keep the first call

            return hook

        modules = [enc.relu, enc.layer1, enc.layer2, enc.layer3, enc.avgpool]
        handles = [m.register_forward_hook(recorder(i)) for i, m in enumerate(modules)]
        try:
            e = self.encode(x)
        finally:
            for h in handles:
                h.remove()
        if len(maps) != len(modules):  # e.g. a traced encoder that bypasses the hooks
            return self.feature_list(x), None
        return [maps[i] for i in range(len(modules))], e

    def feature_list_layers(self) -> None:
        """Raises ValueError when the encoder lacks the torchvision ResNet layers GRAM reads."""
        enc = self.model.encoder
        if not all(hasattr(enc, name) for name in ("conv1", "bn1", "relu", "layer4", "avgpool")):
            encoder = getattr(self.model, "hparams", {}).get("encoder", type(enc).__name__)
            raise ValueError(
                f"gram reads the layers of a torchvision ResNet encoder (conv1 … layer4, avgpool); this model's "
                f"encoder is {encoder!r}: leave gram out of the study for it"
            )


def model_name_from_run(run_name: str) -> str:
    """The reference's prefix rule (O-Q25): ssl_bayes_h*, ssl_bayes_z*, anything else ssl."""
    if run_name.startswith("ssl_bayes_h"):
        return "ssl_bayes_h"
    if run_name.startswith("ssl_bayes_z"):
        return "ssl_bayes_z"
    return "ssl"


def load_ood_network(
    model_path: str | Path, finetuner_path: str | Path, model_name: str, device: torch.device | str = "cpu"
) -> OODNetwork:
    """The SSL module rebuilt from ``model.ckpt``, its weights then replaced by the copy inside the
    finetuner's ``last.ckpt`` (BatchNorm statistics updated during finetuning included; O-Q23),
    plus the finetuner's predictor; in eval mode on ``device``."""
    model = load_ssl_model(model_path, model_name)
    ft = load_checkpoint(finetuner_path)
    state = ft["state_dict"]
    inner = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not inner or "predictor.weight" not in state:
        raise CheckpointError(
            f"{finetuner_path} is not a finetuner checkpoint (no `model.*` and `predictor.*` weights); "
            "it is written by the finetune stage (+model/task@finetune=finetune)"
        )
    model.load_state_dict(inner)
    weight = state["predictor.weight"]
    predictor = nn.Linear(weight.shape[1], weight.shape[0])
    predictor.load_state_dict({"weight": weight, "bias": state["predictor.bias"]})
    return OODNetwork(model, predictor).to(device).eval()
