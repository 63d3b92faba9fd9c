"""The safety audit: a static ``ast`` scan of ``src/`` fails when someone adds ``eval``/``exec``, an
unpickling call, a ``torch.load`` without ``weights_only=True``, unsafe YAML loading or an import by name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


# ============================================================================ safety audit: a static scan of src/
_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}


_ALWAYS_UNSAFE_CALLS = {
    "eval",
    "exec",
    "builtins.eval",
    "builtins.exec",
    "yaml.unsafe_load",
    "yaml.full_load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "torch.jit.load",
} | {f"{m}.{f}" for m in _PICKLE_MODULES for f in ("load", "loads", "Unpickler", "open")}


_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


_INSTANTIATE = {"instantiate", "hydra.utils.instantiate", "get_class", "get_method", "hydra.utils.get_class"}


def _dotted(node: ast.AST) -> str:
    """``torch.serialization.load`` for the call target ``torch.serialization.load`` (``""`` if not a plain name)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_constructs(source: str, filename: str = "<src>") -> list[str]:
    """Every construct in ``source`` that can execute code from data, as ``file:line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module.split(".")[0] in _PICKLE_MODULES or (
                module in {"torch", "torch.serialization", "builtins"} and names & {"load", "eval", "exec"}
            ):
                found.append(f"{where}: from {module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            if name in _ALWAYS_UNSAFE_CALLS:
                found.append(f"{where}: {name}()")
            elif name in {"torch.load", "torch.serialization.load"} and not _is_true(kwargs.get("weights_only")):
                found.append(f"{where}: {name}() without weights_only=True")
            elif name in {"np.load", "numpy.load"} and _is_true(kwargs.get("allow_pickle")):
                found.append(f"{where}: {name}(allow_pickle=True)")
            elif name == "yaml.load":
                loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
                if loader is None or _dotted(loader).split(".")[-1] not in _SAFE_YAML_LOADERS:
                    found.append(f"{where}: yaml.load() without a safe Loader")
            elif name in _INSTANTIATE:
                # only the composed config (``cfg.<node>``) may name classes, never data read from files
                target = node.args[0] if node.args else None
                if target is None or not _dotted(target).startswith("cfg."):
                    found.append(f"{where}: {name}() on something other than the composed config")
    return found


def test_static_scan_catches_every_unsafe_construct() -> None:
    """The scanner itself: each bad line below is reported, the good ones are not."""
    bad = """
import pickle
from torch import load




eval("1")
exec("x = 1")
torch.load(path)
torch.load(path, weights_only=False)
torch.serialization.load(path)
np.load(path, allow_pickle=True)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
pd.read_pickle(path)
hydra.utils.instantiate(ckpt["hyper_parameters"]["cl_loss"])
"""
    good = """
model.eval()
self.eval()
torch.load(path, map_location="cpu", weights_only=True)
np.load(path)
np.load(path, allow_pickle=False)
yaml.load(text, Loader=yaml.SafeLoader)
hydra.utils.instantiate(cfg.dataset, _convert_="all")
"""
    found = unsafe_constructs(bad)
    assert len(found) == len([line for line in bad.splitlines() if line.strip()]), found
    assert unsafe_constructs(good) == []


def test_src_has_no_unsafe_constructs() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30  # the scan really covers the source tree
    found = [hit for path in files for hit in unsafe_constructs(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "unsafe constructs in src/ (use weights_only=True / allow-lists):\n" + "\n".join(found)
