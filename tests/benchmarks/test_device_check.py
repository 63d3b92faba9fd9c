"""benchmarks/device_check.sh and fetch_device_wheels.sh: sized to fit, and carrying every package the code needs.

The scripts themselves run on the GPU machine (``bash benchmarks/device_check.sh --dry-run`` runs the same
sequence here at tiny sizes, in minutes, so it is not part of the suite).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "benchmarks" / "device_check.sh"
WHEELS = ROOT / "benchmarks" / "fetch_device_wheels.sh"

#: the Python packages of the GPU machine's image that the code imports, by import name (its
#: package list as read on 2026-11-17)
ON_THE_DEVICE = {
    "torch", "torchvision", "pytorch_lightning", "lightning", "timm", "sklearn", "numpy", "yaml", "PIL",
    "pandas", "matplotlib", "scipy", "tqdm", "torchmetrics", "pytest", "packaging", "psutil", "threadpoolctl",
}  # fmt: skip
#: imported only inside functions or behind importorskip: optional there
OPTIONAL = {"wandb", "kornia", "faiss", "dvc", "hydra_plugins"}
#: what fetch_device_wheels.sh carries, by import name
CARRIED = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime"}


def test_scripts_parse() -> None:
    for script in (CHECK, WHEELS):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_the_step_budgets_fit_in_eight_minutes() -> None:
    text = CHECK.read_text()
    budgets = dict(re.findall(r"\[(\w+)\]=(\d+)", re.search(r"declare -A BUDGET=\((.*?)\)", text).group(1)))
    assert set(budgets) == {"setup", "correctness", "pipeline", "ood", "fmnist"}
    grace = int(re.search(r"^KILL_GRACE=(\d+)$", text, re.M).group(1))
    total = sum(int(v) for v in budgets.values()) + grace * len(budgets)
    assert total < 8 * 60, total
    # every budgeted step is run, in the order of the issue: correctness first
    order = re.findall(r"^step (\w+) ", text, re.M)
    assert order == ["setup", "correctness", "pipeline", "ood", "fmnist"]


def test_at_most_eight_files_come_back_flat() -> None:
    """The device tool returns at most 8 files from $OUT; the script writes those it names, in $OUT itself."""
    text = CHECK.read_text()
    written = set(re.findall(r'\$OUT/([\w.]+)"?', text))
    assert len(written) <= 8, written
    assert "device_check.json" in written and "pytest_cuda.xml" in written
    assert not re.search(r"\$OUT/[\w.]+/", text)  # nothing in a subfolder


def module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only: imports inside functions are optional at run time
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_wheels_cover_every_third_party_import_of_the_code() -> None:
    """A module-level import of src/, tests/ or benchmarks/ is the standard library, the project, a package
    of the GPU machine's image, or carried as a wheel by fetch_device_wheels.sh (which then needs a pin)."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    project = {"src", "tests", "benchmarks"}
    missing = {}
    for folder in ("src", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in module_level_imports(path) - stdlib - project - ON_THE_DEVICE - OPTIONAL - set(CARRIED):
                missing.setdefault(name, str(path.relative_to(ROOT)))
    assert not missing, f"imported but neither on the GPU machine nor carried by {WHEELS.name}: {missing}"
    packages = re.search(r"^PACKAGES=\((.*)\)$", WHEELS.read_text(), re.M).group(1).split()
    assert sorted(packages) == sorted(CARRIED.values())
    pins = (ROOT / "requirements-cpu.txt").read_text().lower()
    for package in packages:
        assert re.search(rf"^{package}==\S+", pins, re.M), f"{package} has no pin in requirements-cpu.txt"
