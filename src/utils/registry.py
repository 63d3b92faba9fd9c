"""One registry idiom for every kind of plug-in: losses, priors, optimizers, schedulers, SSL models,
datamodules and OOD detectors.

A :class:`Registry` maps a short name (what a config or a checkpoint stores: ``mc_vicreg``, ``mog``,
``ssl_bayes_h``, ``kldivsimk``) to a class or builder function. Configs written for Hydra name the
same object by its import path (``_target_: src.model.prior.MoGPrior``); the registry knows those
spellings too, so a config is turned into an object by a lookup in a fixed table and nothing is
imported by name (a checkpoint or config can never make the code import an arbitrary module).

Adding a plug-in is one decorator on its class::

    LOSSES = Registry("loss", config_key="model.loss", name_keys=("type",))

    @LOSSES.register("barlow_twins")
    class BarlowTwinsLoss(nn.Module): ...

    LOSSES.build({"_target_": "src.model.loss.barlow_twins.BarlowTwinsLoss", "batch_size": 256})

Tests iterate ``registry.keys()``, so a new plug-in is tested the moment it registers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: keys of a config node that describe how to build it rather than being constructor arguments
BUILD_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_"})


class RegistryError(ValueError):
    """An unknown name or ``_target_``, or a name registered twice; the message lists the known names."""


def import_path(obj: Any) -> str:
    """``module.QualifiedName`` of a class or function: how Hydra's ``_target_`` spells it."""
    return f"{obj.__module__}.{obj.__qualname__}"


class Registry(Generic[T]):
    """Named plug-ins of one kind.

    Args:
        kind: what is registered, for messages (``"loss"``, ``"detector"``).
        config_key: where the user chooses one (``"model.loss"``, ``"--postprocessor-name"``), for messages.
        name_keys: keys of a config node that may hold the registry name when it has no ``_target_``
            (checked in order).
        meta_keys: further keys of a config node that are not constructor arguments (stripped by
            :meth:`build`).
    """

    def __init__(
        self,
        kind: str,
        config_key: str,
        *,
        name_keys: tuple[str, ...] = ("name",),
        meta_keys: Iterable[str] = (),
    ) -> None:
        self.kind = kind
        self.config_key = config_key
        self.name_keys = tuple(name_keys)
        self.meta_keys = frozenset(meta_keys) | BUILD_KEYS | frozenset(self.name_keys)
        self._entries: dict[str, T] = {}
        self._targets: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------------
    def add(self, name: str, obj: T, *, targets: Iterable[str] = ()) -> T:
        """Register ``obj`` as ``name``; its import path and ``targets`` become accepted ``_target_``s.

        Registering the same object again under the same name is a no-op (module reloads);
        another object under a taken name is an error.
        """
        if name in self._entries and self._entries[name] is not obj:
            raise RegistryError(f"two {self.kind}s are registered as {name!r}: {self._entries[name]!r} and {obj!r}")
        self._entries[name] = obj
        spellings = [import_path(obj)] if hasattr(obj, "__qualname__") else []
        for target in [*spellings, *targets]:
            # the first name registered for an object keeps its import path (aliases share a class)
            self._targets.setdefault(target, name)
        return obj

    def register(self, name: str, *, targets: Iterable[str] = ()) -> Callable[[T], T]:
        """Class or function decorator: ``@REGISTRY.register("name")``."""

        def decorator(obj: T) -> T:
            return self.add(name, obj, targets=targets)

        return decorator

    # -- lookup -------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def targets(self) -> list[str]:
        """Every accepted ``_target_`` spelling, sorted."""
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            RegistryError: unknown name; the message lists the known ones.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RegistryError(
                f"{self.config_key}: {name!r} is not a known {self.kind}; known: {self._known()}"
            ) from None

    def name_of_target(self, target: str) -> str:
        """The registry name of a ``_target_`` spelling.

        Raises:
            RegistryError: unknown target; the message lists the known ones.
        """
        try:
            return self._targets[target]
        except (KeyError, TypeError):
            raise RegistryError(
                f"{self.config_key}._target_={target!r} is not a known {self.kind}; known targets: "
                f"{', '.join(self.targets())}"
            ) from None

    def resolve(self, spec: Mapping[str, Any] | str) -> str:
        """The registry name a config node (or a plain name) selects: its ``_target_`` if it has one,
        else the first of ``name_keys`` it holds.

        Raises:
            RegistryError: the node names nothing known.
        """
        if isinstance(spec, str):
            self.get(spec)
            return spec
        target = spec.get("_target_")
        if target is not None:
            return self.name_of_target(str(target))
        for key in self.name_keys:
            if spec.get(key) is not None:
                name = spec[key]
                self.get(name)
                return str(name)
        accepted = " or ".join(f"`{k}`" for k in ("_target_", *self.name_keys))
        raise RegistryError(
            f"{self.config_key} needs {accepted} naming a {self.kind} (one of {self._known()}); got {dict(spec)!r}"
        )

    def build(self, spec: Mapping[str, Any] | str, /, **overrides: Any) -> Any:
        """Call the plug-in a config node selects with the node's other keys (and ``overrides``).

        Raises:
            RegistryError: the node names nothing known.
            TypeError: the arguments do not fit; the message names the config key.
        """
        name = self.resolve(spec)
        kwargs = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k not in self.meta_keys}
        kwargs.update(overrides)
        try:
            return self.get(name)(**kwargs)  # type: ignore[operator]
        except TypeError as err:
            raise TypeError(f"{self.config_key} ({self.kind} {name!r}): {err}") from err

    def _known(self) -> str:
        return ", ".join(sorted(self._entries))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.keys()})"
