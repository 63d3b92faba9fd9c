"""The paper's per-detector stages sharing the OOD store, end to end on runs trained on the demo (slow).

For every paper detector, the records and score files of a one-detector study are the same (scores
bit for bit) (a) without the store, (b) with an empty store and (c) with a store filled by earlier
stages; a warm stage decodes no image and runs the encoder on no protocol image (the network
detectors run their own passes); two separate ``run_ood_study.py`` calls share one store; a damaged
entry is recomputed with a warning and changes nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from src.data.dataset.imglist import ImageListDataset
from src.experiments.scripts import run_ood_study
from src.ood.cache import OODCache, read_entry
from src.ood.detectors import PAPER_DETECTORS
from src.ood.study import run_study
from src.ood.wrapper import OODNetwork

COMMON: dict[str, Any] = dict(batch_size=32, seed=0, progress=False)
#: detectors that compute through the network (their own encoder passes)
NETWORK = {"odin", "gram", "logpprior"}


def outputs(folder: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    records = json.loads((folder / "runs.json").read_text())
    scores = {}
    for path in sorted((folder / "scores").glob("*.npz")):
        with np.load(path) as z:
            scores[path.stem] = {k: z[k] for k in z.files}
    return records, scores


def assert_same(got: Path, ref: Path) -> None:
    records, scores = outputs(got)
    ref_records, ref_scores = outputs(ref)
    assert records == ref_records, got
    assert scores.keys() == ref_scores.keys()
    for run, arrays in ref_scores.items():
        assert scores[run].keys() == arrays.keys()
        for key, value in arrays.items():
            assert np.array_equal(scores[run][key], value), (got, run, key)  # bit for bit


class Counters:
    """Images decoded through PIL and images through the encoder (``OODNetwork.encode``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded = 0
        self.encoded = 0
        decode, encode = ImageListDataset.__getitem__, OODNetwork.encode

        def counting_decode(dataset: ImageListDataset, i: int) -> Any:
            self.decoded += 1
            return decode(dataset, i)

        def counting_encode(net: OODNetwork, x: Any) -> Any:
            self.encoded += int(x.shape[0])
            return encode(net, x)

        monkeypatch.setattr(ImageListDataset, "__getitem__", counting_decode)
        monkeypatch.setattr(OODNetwork, "encode", counting_encode)

    def reset(self) -> None:
        self.decoded = self.encoded = 0


@pytest.mark.slow
def test_stages_with_the_store_give_the_records_and_scores_without_it(
    demo_root: Path, demo_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = Counters(monkeypatch)
    for name in PAPER_DETECTORS:
        ref = tmp_path / "plain" / name
        run_study(demo_runs, "demo", demo_root, name, ref, **COMMON)  # (a) today's path
        store = tmp_path / "cache" / name
        cold = tmp_path / "cold" / name
        run_study(demo_runs, "demo", demo_root, name, cold, cache_dir=store, **COMMON)  # (b) an empty store
        assert_same(cold, ref)
        count.reset()  # (c) every entry this stage needs is in the store now
        warm = tmp_path / "warm" / name
        run_study(demo_runs, "demo", demo_root, name, warm, cache_dir=store, **COMMON)
        assert_same(warm, ref)
        if name == "logpprior":  # only its random views v1/v2 are decoded (new draws each time)
            assert count.decoded > 0
        else:
            assert count.decoded == 0, name
        if name not in NETWORK:
            assert count.encoded == 0, name


@pytest.mark.slow
def test_two_script_calls_share_one_store(
    demo_root: Path, demo_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    count = Counters(monkeypatch)
    store = tmp_path / "cache"

    def script(name: str, out: Path, *extra: str) -> None:
        args = ["--runs-dir", str(demo_runs), "--in-dataset", "demo", "--data-root-dir", str(demo_root)]
        args += ["--postprocessor-name", name, "--output-dir", str(out), "--batch-size", "32", "--seed", "0"]
        run_ood_study.main([*args, "--no-progress", *extra])

    script("msp", tmp_path / "ref_msp", "--no-cache")
    script("mds", tmp_path / "ref_mds", "--no-cache")
    assert not store.exists()
    count.reset()
    script("mds", tmp_path / "mds", "--cache-dir", str(store))  # reads every list msp reads, and id/train
    assert count.decoded > 0 and count.encoded > 0
    count.reset()
    script("msp", tmp_path / "msp", "--cache-dir", str(store))
    assert (count.decoded, count.encoded) == (0, 0)  # nothing decoded, no protocol image encoded
    assert_same(tmp_path / "msp", tmp_path / "ref_msp")
    assert_same(tmp_path / "mds", tmp_path / "ref_mds")

    # a damaged entry: a warning, the entry recomputed (the encoder runs again for it), same outputs
    entries = sorted((store / "encodings").rglob("*.bin"))
    victim = entries[0]
    victim.write_bytes(victim.read_bytes()[:-100])
    count.reset()
    with caplog.at_level(logging.WARNING, logger="src.ood.cache"):
        script("mds", tmp_path / "mds_again", "--cache-dir", str(store))
    assert f"{victim}: " in caplog.text and "recomputing" in caplog.text
    assert count.decoded == 0 and count.encoded > 0
    read_entry(victim)  # intact again
    assert_same(tmp_path / "mds_again", tmp_path / "ref_mds")
    # the checkpoint's digests are noted once, not rehashed by every call
    assert len(list((store / "digests").glob("*.json"))) >= 2 * 3
    assert OODCache(store).stats.damaged == []
