"""demo_seeds.py: the demo's own DVC stage commands, with a seed added and the outputs moved (no training)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from src.experiments.scripts import demo_seeds
from tests.experiments.test_dvc import stages


def test_commands_are_the_demo_stages_with_a_seed_and_other_outputs(tmp_path: Path) -> None:
    resolved = {name: cmd for name, (cmd, _) in stages().items() if name.startswith("demo_")}
    out = tmp_path / "seeds"
    steps = demo_seeds.commands([7, 8], out, resolved)
    runs = sorted(n.partition("@")[2] for n in resolved if n.startswith("demo_pretrain@"))
    assert len(runs) == 6 and len(steps) == 2 * 6 + 2
    for k, (seed, run) in enumerate([(s, r) for s in (7, 8) for r in runs]):
        expected = shlex.split(resolved[f"demo_pretrain@{run}"])[2:]
        target = out / "runs" / f"{run}_seed_{seed}"
        expected = [
            f"output_path={target}"
            if w.startswith("output_path=")
            else f"hydra.run.dir={target}/.hydra_run"
            if w.startswith("hydra.run.dir=")
            else w
            for w in expected
        ]
        assert steps[k] == [sys.executable, *expected, f"seed={seed}"]
    study, report = steps[-2], steps[-1]
    assert study[1].endswith("run_ood_study.py") and "--postprocessor-name" in study
    assert study[study.index("--runs-dir") + 1] == str(out / "runs")
    assert study[study.index("--output-dir") + 1] == str(out / "ood")
    assert report[report.index("--results-dir") + 1] == str(out / "ood")
    assert report[report.index("--output-dir") + 1] == str(out / "reports" / "ood")
    # everything else of the study command is the demo's (batch size, seed of the draws, all detectors)
    demo_study = shlex.split(resolved["demo_ood"])[2:]
    assert [w for w in study[1:] if not w.startswith(str(out))] == [
        w for w in demo_study if w not in ("data/demo/runs", "data/demo/ood")
    ]


def test_bad_seed_lists_and_commands_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct seeds"):
        demo_seeds.commands([1, 1], tmp_path, {})
    with pytest.raises(ValueError, match="distinct seeds"):
        demo_seeds.commands([], tmp_path, {})
    with pytest.raises(ValueError, match="no demo_pretrain"):
        demo_seeds.commands([1], tmp_path, {"demo_ood": "PYTHONPATH=. python x.py"})
    bad = {"demo_pretrain@a": "python run.py output_path=x", "demo_ood": "", "demo_ood_report": ""}
    with pytest.raises(ValueError, match="unexpected demo stage command"):
        demo_seeds.commands([1], tmp_path, bad)
    seeded = {"demo_pretrain@a": "PYTHONPATH=. python run.py seed=3 output_path=x"}
    with pytest.raises(ValueError, match="already sets a seed"):
        demo_seeds.commands([1], tmp_path, seeded)


def test_dry_run_prints_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo_seeds.main(["--seeds", "5", "--output-dir", str(tmp_path / "s"), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and lines[0].startswith("[1/8] src/experiments/scripts/run_pipeline.py")
    assert lines[-1].startswith("[8/8] src/experiments/scripts/summarize_ood.py")
    assert not (tmp_path / "s").exists()
