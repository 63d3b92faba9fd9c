"""Every script's ``--help``: it works, shows its usage example with the line breaks intact, and the
script module does not import torch (the heavy imports wait until the arguments are parsed, so
``--help`` is quick). The names some scripts list in ``--help`` without importing the library are
checked against the library's registries."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import CONF, ROOT

SCRIPTS_DIR = ROOT / "src" / "experiments" / "scripts"
SCRIPTS = sorted(p.stem for p in SCRIPTS_DIR.glob("*.py") if p.stem != "__init__")
HYDRA_SCRIPTS = {"run_pipeline": "config", "run_semi_supervised": "semi_supervised"}
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_every_script_is_covered() -> None:
    assert len(SCRIPTS) >= 14 and set(HYDRA_SCRIPTS) <= set(SCRIPTS)


def usage_example(text: str, script: str) -> str:
    """The first command line calling ``script`` in ``text`` with its ``\\`` continuation lines."""
    lines = text.splitlines()
    call = re.compile(rf"^\s+python (?:src/experiments/scripts/{script}\.py|-m src\.experiments\.scripts\.{script})\b")
    start = next(i for i, line in enumerate(lines) if call.match(line))
    end = start
    while lines[end].rstrip().endswith("\\"):
        end += 1
    return "\n".join(lines[start : end + 1])


def documented_example(script: str) -> str:
    """The usage example as the script's module docstring spells it (the Hydra scripts: their config's help header)."""
    if script in HYDRA_SCRIPTS:
        from omegaconf import OmegaConf

        header = OmegaConf.load(CONF / f"{HYDRA_SCRIPTS[script]}.yaml").hydra.help.header
        return usage_example(header, script)
    # the docstring as written in the source (a string literal would join a backslash-newline)
    source = (SCRIPTS_DIR / f"{script}.py").read_text()
    docstring = ast.parse(source).body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant), script
    return usage_example("\n".join(source.splitlines()[: docstring.end_lineno]), script)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_the_usage_example_with_its_line_breaks(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS_DIR / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    example = documented_example(script)
    # the example as written: one command per line, continuation lines on lines of their own
    indented = [line.strip() for line in example.splitlines()]
    shown = [line.strip() for line in out.stdout.splitlines()]
    start = shown.index(indented[0])
    assert shown[start : start + len(indented)] == indented, out.stdout


def test_no_script_module_imports_torch() -> None:
    code = (
        "import importlib, sys\n"
        "culprits = []\n"
        f"for name in {SCRIPTS!r}:\n"
        "    importlib.import_module(f'src.experiments.scripts.{name}')\n"
        "    if 'torch' in sys.modules and not culprits:\n"
        "        culprits.append(name)\n"
        "print(','.join(culprits))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing these script modules imports torch: {out.stdout}"


def test_names_listed_without_the_library_match_it() -> None:
    from src.experiments.scripts import evaluate_linear_probing, fashion_mnist_gpu, pre_embed_datasets, run_ood_study
    from src.ood.detectors import DETECTORS
    from src.ood.protocol import PROTOCOLS
    from src.reports import fashion_mnist_study
    from src.task.evaluation import PRETRAINED_BASELINES

    assert evaluate_linear_probing.PRETRAINED_BASELINES == tuple(PRETRAINED_BASELINES)
    assert pre_embed_datasets.PRETRAINED_BASELINES == tuple(PRETRAINED_BASELINES)
    assert fashion_mnist_gpu.PROTOCOLS == tuple(fashion_mnist_study.PROTOCOLS)
    assert sorted(run_ood_study.PROTOCOLS) == sorted(PROTOCOLS)
    # the package's own detectors (a test may register more, with configs elsewhere)
    own = {n: c for n, c in DETECTORS.items() if c.__module__.startswith("src.ood.detectors.")}
    assert run_ood_study.detector_names() == sorted(own)
    assert run_ood_study.SIGN_INVERTED == tuple(sorted(n for n, c in own.items() if c.reference_sign_inverted))
