"""Deterministic self-supervised learning, and the machinery the three SSL models share.

``BaseSelfSupervisedLearning`` holds what all three models share: the encoder, the
projection head, the contrastive loss, the online probe and loss logging. The stochastic
models (``src.task.bayesian_ssl``) add the Gaussian head and the prior.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from src.model.encoder import encoder_out_dim, get_encoder
from src.model.loss import build_loss
from src.model.projector import build_projection_head
from src.task.base import BaseTask, logs_this_step
from src.utils.plain import to_plain
from src.utils.registry import Registry

Batch = tuple[tuple[Tensor, Tensor, Tensor], Tensor]

#: the SSL models by ``train.name`` / a checkpoint's ``model_name``; configs name them by
#: ``train.kwargs._target_``. A new model variant is one class with ``@SSL_MODELS.register("<name>")``.
SSL_MODELS: Registry[type[BaseSelfSupervisedLearning]] = Registry(
    "SSL model", config_key="train.name", name_keys=("model_name",)
)


def _legacy_key_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Accept reference state dicts: ``encoder._orig_mod.*`` (compiled encoder, T-Q29)."""
    for key in [k for k in state_dict if k.startswith(prefix + "encoder._orig_mod.")]:
        state_dict[key.replace("encoder._orig_mod.", "encoder.", 1)] = state_dict.pop(key)


def resolve_channels_last(value: bool | str) -> bool:
    """``train.channels_last``: true, false, or "auto" (on when CUDA is available).

    Raises:
        ValueError: any other value (the message names the key and the accepted values).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return torch.cuda.is_available()
    raise ValueError(
        f"train.channels_last must be true, false or auto (on when CUDA is available), got {value!r}; "
        "set e.g. train.channels_last=auto"
    )


class BaseSelfSupervisedLearning(BaseTask):
    """Shared SSL machinery. Constructor arguments are plain values (what ``train.kwargs`` composes to).

    Args:
        model_name: ``ssl``, ``ssl_bayes_h`` or ``ssl_bayes_z`` (metadata, used for reloads).
        batch_size: per-device batch B (``scale_lr`` uses it).
        num_classes: C, the width of the online probe.
        dataset: dataset name; selects the encoder stem and the projection head.
        cl_loss: the ``model.loss`` node as a dict (``_target_`` or ``type`` plus coefficients).
        optimizer: the ``model.optimizer`` node as a dict.
        learning_rate: the unscaled config lr (η_min of the schedulers derives from it).
        scheduler: ``cosine`` (default), ``cosine_warmup``, ``lambda``, ``cosine_warm_restarts``,
            ``one_cycle`` or null.
        encoder: ``resnet18``, ``resnet34``, ``resnet50`` or ``timm/<model>`` (any timm model, ``model/backbone=timm``).
        encoder_kwargs: keyword arguments of ``timm.create_model`` for a timm encoder (``model.backbone.kwargs``).
        latent_dim, hidden_dim, z_dim: L (the stochastic width of Bayes-H), H (projector hidden width), Z (embedding).
            ``latent_dim=None`` takes the encoder's width E (stored resolved in the hyper-parameters).
        compile_encoder: wrap the encoder's forward with ``torch.compile``; state-dict keys
            stay ``encoder.*``.
        channels_last: keep the encoder's weights and inputs in NHWC memory format (same
            values; tensor-core convolutions under fp16/bf16 autocast run without layout copies):
            true, false, or ``"auto"`` (on when CUDA is available; see :func:`resolve_channels_last`).
            The hyper-parameters keep the value as given, so a checkpoint reloads with the setting of
            the machine that loads it.
        **kwargs: further plain values stored as hyper-parameters (``seed``, ``cl_loss_name``,
            ``optimizer_name``, ``train_iters_per_epoch``, ``use_mc_samples``, ``no_grad``,
            ``sch_eta_min_scale``, ``warmup_epochs`` and the stochastic models' arguments).
    """

    #: which space is stochastic: None (deterministic), "H" (the representation) or "Z" (the embedding)
    stochastic_space: ClassVar[str | None] = None
    #: the training-step terms shown on the progress bar (display only; the bar reads them on refresh)
    prog_bar_terms: ClassVar[tuple[str, ...]] = ("loss",)

    @property
    def stochastic(self) -> bool:
        """Whether the model draws MC samples [M, B, D] (and so needs an MC loss)."""
        return self.stochastic_space is not None

    @classmethod
    def accepts_loss(cls, loss_cls: type[nn.Module]) -> bool:
        """Whether a registered loss class fits this model: MC losses ([M, B, D]) for the stochastic
        models, the plain ones ([B, D]) for the deterministic one (T-Q1)."""
        return bool(getattr(loss_cls, "mc", False)) == (cls.stochastic_space is not None)

    def __init__(
        self,
        *,
        model_name: str,
        batch_size: int,
        num_classes: int,
        dataset: str,
        cl_loss: dict[str, Any],
        optimizer: dict[str, Any],
        learning_rate: float,
        scheduler: str | None = "cosine",
        encoder: str = "resnet18",
        encoder_kwargs: dict[str, Any] | None = None,
        latent_dim: int | None = 512,
        hidden_dim: int = 1024,
        z_dim: int = 1024,
        compile_encoder: bool = False,
        channels_last: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        cl_loss = to_plain(cl_loss)
        optimizer = to_plain(optimizer)
        encoder_kwargs = to_plain(encoder_kwargs) or {}
        self.encoder_out_dim = encoder_out_dim(encoder, encoder_kwargs)
        if latent_dim is None:  # follows the encoder (model/backbone=timm)
            latent_dim = self.encoder_out_dim
        self.save_plain_hparams(
            dict(
                model_name=model_name,
                batch_size=batch_size,
                num_classes=num_classes,
                dataset=dataset,
                cl_loss=cl_loss,
                optimizer=optimizer,
                learning_rate=learning_rate,
                scheduler=scheduler,
                encoder=encoder,
                encoder_kwargs=encoder_kwargs,
                latent_dim=latent_dim,
                hidden_dim=hidden_dim,
                z_dim=z_dim,
                compile_encoder=compile_encoder,
                channels_last=channels_last,
                **kwargs,
            )
        )
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.dataset_name = dataset

        self.cl_loss = build_loss(cl_loss)
        if not self.accepts_loss(type(self.cl_loss)):
            want = "an MC loss (mc_barlow_twins or mc_vicreg)" if self.stochastic else "barlow_twins or vicreg"
            raise ValueError(
                f"model {model_name!r} ({type(self).__name__}) needs {want}, got "
                f"{type(self.cl_loss).__name__}; set model/loss accordingly (T-Q1)"
            )

        self.encoder = get_encoder(encoder, dataset, encoder_kwargs)
        self.channels_last = resolve_channels_last(channels_last)
        if self.channels_last:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.projection_head = build_projection_head(dataset, self.encoder_out_dim, int(hidden_dim), int(z_dim))
        self.online_finetuner = nn.Linear(self.encoder_out_dim, self.num_classes)
        # Bypasses nn.Module registration, so state-dict keys stay `encoder.*` (T-Q29).
        object.__setattr__(self, "_compiled_encoder", torch.compile(self.encoder) if compile_encoder else None)
        self._register_load_state_dict_pre_hook(_legacy_key_hook, with_module=True)

    # -- pieces ---------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Encoder output [B, E]."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled_encoder is not None:
            return self._compiled_encoder(x)
        return self.encoder(x)

    def probe_features(self, x: Tensor, single_pass: bool = True) -> Tensor:
        """What the online probe reads [B, E]: ``forward(x)`` (Bayes-H overrides it with its MC-mean
        representation; ``single_pass`` only matters there)."""
        return self(x)

    def init_downstream_model(self) -> None:
        """A fresh online probe Linear(E -> C) on the module's device (called at fit start)."""
        self.online_finetuner = nn.Linear(self.encoder_out_dim, self.num_classes).to(self.device)

    def optimizer_parameters(self) -> Iterator[nn.Parameter]:
        # The online probe is trained only by its own Adam in the callback (T-Q14).
        return (p for n, p in self.named_parameters() if not n.startswith("online_finetuner."))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.online_finetuner = nn.Linear(self.encoder_out_dim, self.num_classes).to(self.device)

    # -- steps (subclasses define `shared_step(batch) -> dict` with "loss" and the loss terms) --
    @staticmethod
    def unpack(batch: Batch) -> tuple[Tensor, Tensor]:
        """The two SSL views of a ``((x1, x2, x3), y)`` batch, checked for a usable batch size."""
        (x1, x2, _), _ = batch
        if x1.shape[0] < 2:
            raise ValueError(
                f"got a training batch of {x1.shape[0]} sample(s); Barlow Twins/VICReg and BatchNorm need "
                "at least 2 per batch (set dataset.batch_size >= 2 and keep drop_last on)"
            )
        return x1, x2

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.shared_step(batch)
        if logs_this_step(self._trainer):  # the steps whose values the loggers write (log_every_n_steps)
            self.log_step_outputs(out, "train", batch_size=batch[1].shape[0])
        # read by NonFiniteLossGuard without a host sync
        self.last_step_terms = {k: v.detach() for k, v in out.items() if k.endswith("loss") and isinstance(v, Tensor)}
        return out["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.shared_step(batch)
        self.log_step_outputs(out, "val", batch_size=batch[1].shape[0])
        return out["loss"]

    def on_train_epoch_end(self) -> None:
        self.log("train_epoch", float(self.current_epoch), on_step=False, on_epoch=True, sync_dist=True)

    # -- logging --------------------------------------------------------------------------------
    def log_step_outputs(self, out: dict[str, Any], phase: str, batch_size: int) -> None:
        """Every entry whose key ends in ``loss`` as ``<phase>_<key>``: per step in training (called only at
        the steps the loggers write, see :func:`~src.task.base.logs_this_step`), epoch mean in validation.
        The training terms of ``prog_bar_terms`` also go to the progress bar, which therefore shows the
        values of the last logged step (the reference meant to show a loss there and never did: T-Q5).
        Values stay on the device."""
        train = phase == "train"
        for key, value in out.items():
            if key.endswith("loss"):
                self.log(
                    f"{phase}_{key}",
                    value,
                    on_step=train,
                    on_epoch=not train,
                    sync_dist=True,
                    batch_size=batch_size,
                    prog_bar=train and key in self.prog_bar_terms,
                )


@SSL_MODELS.register("ssl")
class SelfSupervisedLearning(BaseSelfSupervisedLearning):
    """Deterministic Barlow Twins / VICReg (``ssl``): forward(x) = encoder(x) [B, E].

    Each view runs through the encoder separately, so BatchNorm uses per-view statistics.
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)

    def project(self, h: Tensor) -> Tensor:
        """Projector output [B, Z]; a leading MC dimension of size 1 is squeezed away."""
        if h.dim() == 3:
            if h.shape[0] != 1:
                raise ValueError(f"SelfSupervisedLearning.project got {tuple(h.shape)}; expected [B, E] or [1, B, E]")
            h = h.squeeze(0)
        return self.projection_head(h)

    def shared_step(self, batch: Batch) -> dict[str, Any]:
        x1, x2 = self.unpack(batch)
        z1 = self.project(self(x1))
        z2 = self.project(self(x2))
        out: dict[str, Any] = dict(self.cl_loss(z1, z2))
        out["loss"] = out["cl_loss"]
        return out
