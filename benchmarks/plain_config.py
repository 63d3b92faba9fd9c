"""The pipeline's configs as plain dicts, read from ``src/experiments/conf`` without Hydra or OmegaConf.

The benchmarks run on machines that have only torch, torchvision, Lightning, timm and scikit-learn
(PyYAML comes with Lightning). :func:`compose` builds what Hydra composes for the pretraining pipeline
(``config.yaml``'s defaults plus ``+model/task/ssl@train=<model>``) from the same YAML files: the group
files named in the ``defaults`` lists are loaded into their packages, dotted ``key=value`` overrides are
applied (as Hydra's command-line overrides), then the whole-string interpolations the configs use
(``${a.b}`` and ``${oc.select:a.b,default}``) are resolved. Numbers such as ``5e-3`` are floats, as in
OmegaConf's YAML loader. ``tests/benchmarks`` checks that the result equals Hydra's composition.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: the pipeline's config folder (``src/experiments/conf``)
CONF_DIR = Path(__file__).resolve().parents[1] / "src" / "experiments" / "conf"

_INTERPOLATION = re.compile(r"^\$\{([^{}]+)\}$")
_EMBEDDED = re.compile(r"\$\{([^{}]+)\}")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with OmegaConf's float rule (``5e-3`` and ``1e-05`` are floats, not strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: Path) -> dict[str, Any]:
    """One config file as a dict (an empty file is ``{}``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file does not hold a mapping.
    """
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path) as f:
        data = yaml.load(f, Loader=_Loader)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a mapping")
    return data


def _set(tree: dict[str, Any], dotted: str, value: Any, create: bool = False) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        if key not in node:
            if not create:
                raise KeyError(f"override {dotted}: {'.'.join(keys[: i + 1])} is not in the config")
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise KeyError(f"override {dotted}: {'.'.join(keys[: i + 1])} is not a mapping")
    if not create and keys[-1] not in node:
        raise KeyError(f"override {dotted}: key {keys[-1]!r} is not in the config (the branch may predate it)")
    node[keys[-1]] = value


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def _apply_defaults(node: dict[str, Any], package: str, tree: dict[str, Any]) -> None:
    """Load the group files of ``node['defaults']`` into ``tree`` (``group: option``, ``optional group: option``
    and ``/group@pkg: option`` relative to ``package``), each with its own defaults; drop the defaults list.

    Keys present both in a file and in its defaults are not merged (no config of the pipeline has any)."""
    for entry in node.pop("defaults", []):
        if entry == "_self_" or not isinstance(entry, dict):
            continue
        ((key, option),) = entry.items()
        if option is None:
            continue
        key = key.removeprefix("optional ").strip()
        group, _, target = key.lstrip("/").partition("@")
        target = target or group.replace("/", ".")
        dotted = f"{package}.{target}" if package else target
        data = load_yaml(CONF_DIR / group / f"{option}.yaml")
        _set(tree, dotted, data, create=True)
        if "defaults" in data:
            _apply_defaults(data, dotted, tree)


def _resolve(value: Any, tree: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, tree, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, tree, seen) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    match = _INTERPOLATION.match(value.strip())
    if match is None:  # interpolations inside text: each one as a string
        return _EMBEDDED.sub(lambda m: str(_resolve("${" + m.group(1) + "}", tree, seen)), value)
    expr = match.group(1)
    if expr.startswith("oc.select:"):
        path, _, default = expr.removeprefix("oc.select:").partition(",")
        try:
            target = _get(tree, path.strip())
        except KeyError:
            return None if default.strip() in ("", "null") else yaml.load(default, Loader=_Loader)
    else:
        path = expr.strip()
        target = _get(tree, path)
    if path in seen:
        raise ValueError(f"interpolation cycle through {path}")
    return _resolve(target, tree, (*seen, path))


def compose(model: str, loss: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The pretraining config of ``run_pipeline.py`` for ``+model/task/ssl@train=<model> model/loss=<loss>``.

    ``overrides`` maps dotted keys to values (``{"dataset.batch_size": 32}``); a key that is not in the
    composed config is an error, as for Hydra without ``+``. Returns plain, fully resolved dicts.
    """
    root = load_yaml(CONF_DIR / "config.yaml")
    root.pop("hydra", None)
    tree = copy.deepcopy(root)
    defaults = [e for e in tree.pop("defaults", []) if not (isinstance(e, dict) and "model/loss" in e)]
    tree["defaults"] = [*defaults, {"model/loss": loss}, {"model/task/ssl@train": model}]
    _apply_defaults(tree, "", tree)
    for key, value in (overrides or {}).items():
        _set(tree, key, value)
    return _resolve(tree, tree)


def module_kwargs(model: str, loss: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Lightning module's constructor arguments as the pipeline builds them: ``train.kwargs``
    without ``_target_``, plus ``seed``."""
    cfg = compose(model, loss, overrides)
    kwargs = dict(cfg["train"]["kwargs"])
    kwargs.pop("_target_")
    kwargs["seed"] = int(cfg["seed"])
    return kwargs
