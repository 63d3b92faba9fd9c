"""The OOD store (src/ood/cache.py) and the work-sharing paths: entries, keys, damage, decoded inputs
against the PIL loader, features from stored encodings against the network, Gram's one pass against
two, and the kNN/KL searches from one scan against one scan per K."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from src.data.dataset.imglist import ImageListDataset
from src.ood import evaluator
from src.ood.cache import (
    CachedInputs,
    CacheEntryError,
    OODCache,
    RunEncodings,
    read_entry,
    spec_key,
    to_float,
    write_entry,
)
from src.ood.detectors import build_detector
from src.ood.detectors.edsimk import EDSimK, kth_nearest_distance, kth_nearest_distances
from src.ood.detectors.kldivsimk import KLDivSimK, kth_smallest_kl, kth_smallest_kls
from src.ood.evaluator import evaluate
from src.ood.features import FIELDS, FeatureStore
from src.ood.protocol import get_protocol
from src.ood.wrapper import OODNetwork
from tests.ood.fakes import InMemoryProtocol, tiny_network

MODEL_NAMES = ("ssl", "ssl_bayes_h", "ssl_bayes_z")


# -- entries --------------------------------------------------------------------------------------


def arrays() -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    return {"x": g.standard_normal((5, 3)).astype(np.float32), "y": np.arange(5, dtype=np.int64)}


def test_entry_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "e.bin"
    write_entry(path, {"a": 1}, arrays())
    spec, back = read_entry(path)
    assert spec == {"a": 1}
    for name, a in arrays().items():
        assert back[name].dtype == a.dtype and np.array_equal(back[name], a)
    assert [p.name for p in tmp_path.iterdir()] == ["e.bin"]  # no temporary file left


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_entry_is_detected_and_recomputed(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = OODCache(tmp_path)
    spec = {"what": "test"}
    calls: list[int] = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return arrays()

    cache.get("inputs", spec, compute)
    path = cache.entry_path("inputs", spec_key(spec))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-7])
    elif damage == "flip":
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    else:
        path.write_bytes(b"not an entry")
    with pytest.raises(CacheEntryError):
        read_entry(path)
    with caplog.at_level(logging.WARNING, logger="src.ood.cache"):
        back, loaded = cache.get("inputs", spec, compute)
    assert not loaded and len(calls) == 2 and cache.stats.damaged == [str(path)]
    assert "recomputing" in caplog.text and str(path) in caplog.text
    assert np.array_equal(back["x"], arrays()["x"])
    assert read_entry(path)[0] == spec  # rewritten intact
    _, loaded = cache.get("inputs", spec, compute)
    assert loaded and len(calls) == 2


def test_concurrent_writers_of_one_key_leave_one_intact_entry(tmp_path: Path) -> None:
    spec = {"same": "key"}
    barrier = threading.Barrier(4)

    def writer() -> None:
        barrier.wait()
        for _ in range(20):
            write_entry(OODCache(tmp_path).entry_path("encodings", spec_key(spec)), spec, arrays())

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    folder = OODCache(tmp_path).entry_path("encodings", spec_key(spec)).parent
    assert [p.name for p in folder.iterdir()] == [f"{spec_key(spec)}.bin"]
    _, back = read_entry(folder / f"{spec_key(spec)}.bin")
    assert np.array_equal(back["x"], arrays()["x"])


def test_file_digest_is_content_and_cached_by_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"weights-1")
    cache = OODCache(tmp_path / "cache")
    first = cache.file_digest(ckpt)
    # a fresh process (new OODCache) reads the note instead of hashing: same (path, size, mtime_ns)
    hashed: list[str] = []
    real = OODCache.file_digest.__globals__["hashlib"].sha256

    def counting(*args: Any) -> Any:
        hashed.append("x")
        return real(*args)

    monkeypatch.setattr("src.ood.cache.hashlib.sha256", counting)
    assert OODCache(tmp_path / "cache").file_digest(ckpt) == first
    assert len(hashed) == 1  # the note's file name only, not the content
    monkeypatch.undo()
    # other bytes of the same size: a new mtime, a new digest
    stat = ckpt.stat()
    ckpt.write_bytes(b"weights-2")
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert OODCache(tmp_path / "cache").file_digest(ckpt) != first


def test_encoding_key_follows_the_checkpoint_bytes(demo_root: Path, tmp_path: Path) -> None:
    protocol = get_protocol("demo", demo_root)
    run_dir = tmp_path / "run"
    (run_dir / "ckpt").mkdir(parents=True)
    run = {"model_path": str(run_dir / "ckpt/model.ckpt"), "finetuner_path": str(run_dir / "ckpt/last.ckpt")}
    run["model_name"] = "ssl"
    Path(run["model_path"]).write_bytes(b"model")
    Path(run["finetuner_path"]).write_bytes(b"finetuned weights A")
    cache = OODCache(tmp_path / "cache")
    inputs = CachedInputs(protocol, cache, batch_size=16)
    before = RunEncodings(cache, inputs, run, torch.device("cpu"), 16).base
    assert RunEncodings(OODCache(tmp_path / "cache"), inputs, run, torch.device("cpu"), 16).base == before
    stat = Path(run["finetuner_path"]).stat()
    Path(run["finetuner_path"]).write_bytes(b"finetuned weights B")
    os.utime(run["finetuner_path"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    after = RunEncodings(OODCache(tmp_path / "cache"), inputs, run, torch.device("cpu"), 16).base
    assert after["finetuner"] != before["finetuner"] and after["model"] == before["model"]
    assert spec_key(after) != spec_key(before)
    assert RunEncodings(cache, inputs, run, torch.device("cpu"), 32).base != after  # the batch size too


# -- decoded inputs -------------------------------------------------------------------------------


def test_to_float_is_torchvision_bit_for_bit() -> None:
    from PIL import Image
    from torchvision import transforms as T

    g = np.random.default_rng(1)
    image = Image.fromarray(g.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    norm = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)}
    expected = T.Compose([T.ToTensor(), T.Normalize(norm["mean"], norm["std"])])(image)
    u8 = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    assert torch.equal(to_float(u8, norm)[0], expected)


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = ImageListDataset.__getitem__
    monkeypatch.setattr(ImageListDataset, "__getitem__", lambda self, i: calls.append(i) or real(self, i))
    return calls


def test_cached_inputs_equal_the_pil_loader(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    protocol = get_protocol("demo", demo_root)
    decodes = count_decodes(monkeypatch)
    cold = CachedInputs(protocol, OODCache(tmp_path), batch_size=16)
    for split in protocol.all_lists():
        for kind in ("default", "barlowtwins"):
            ref = list(protocol.loader(split, kind, 16, 0, augmented_views=False))
            got = list(cold(split, kind, False))
            assert len(got) == len(ref)
            for (x, y), (rx, ry) in zip(got, ref):
                assert torch.equal(y, ry)
                if kind == "default":
                    assert x.dtype == torch.float32 and torch.equal(x, rx)
                else:
                    assert all(torch.equal(v, rv) for v, rv in zip(x, rx))
    n_images = sum(
        len(ImageListDataset(protocol.images_root, protocol.list_dir / f)) for f in protocol.all_lists().values()
    )
    # the references decoded every list twice, the cache once
    assert len(decodes) == 3 * n_images and cold.cache.stats.images_decoded == n_images
    decodes.clear()
    warm = CachedInputs(protocol, OODCache(tmp_path), batch_size=16)
    for split in protocol.all_lists():
        warm.images(split)
    assert decodes == [] and warm.cache.stats.inputs_loaded == len(protocol.all_lists())
    # the random views stay a PIL loader (new draws every read)
    assert isinstance(warm("id/test", "barlowtwins", True), torch.utils.data.DataLoader)


def test_input_key_follows_the_list_and_the_images(demo_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    protocol = get_protocol("demo", root)
    key = CachedInputs(protocol, OODCache(tmp_path / "c")).key("id/test")
    assert CachedInputs(protocol, OODCache(tmp_path / "c")).key("id/test") == key
    assert CachedInputs(protocol, OODCache(tmp_path / "c"), batch_size=7).key("id/test") == key  # not batch-bound
    first = (protocol.list_dir / protocol.all_lists()["id/test"]).read_text().split()[0]
    image = protocol.images_root / first
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a rewritten image
    assert CachedInputs(protocol, OODCache(tmp_path / "c")).key("id/test") != key


# -- features from stored encodings ---------------------------------------------------------------


class MemoryEncodings:
    """An in-memory stand-in for RunEncodings: computes once, then serves clones."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], tuple[list[Tensor], Tensor]] = {}
        self.computed = 0

    def __call__(self, preprocessor: str, split: str, batches: Any, encode: Any) -> tuple[list[Tensor], Tensor]:
        key = (preprocessor, split)
        if key not in self.stored:
            encs, labels = [], []
            for data, y in batches:
                encs.append(encode(data if isinstance(data, Tensor) else data[2]))
                labels.append(y)
                self.computed += 1
            self.stored[key] = (encs, torch.cat(labels))
        encs, labels = self.stored[key]
        return [e.clone() for e in encs], labels


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_features_from_encodings_equal_the_network(model_name: str) -> None:
    net = tiny_network(model_name)
    protocol = InMemoryProtocol()
    reads = {"default": set(FIELDS), "barlowtwins": set(FIELDS)}
    plain = FeatureStore(net, protocol.loader, reads, seed=3)
    enc = MemoryEncodings()
    cold = FeatureStore(net, protocol.loader, reads, seed=3, encodings=enc)
    warm = FeatureStore(net, protocol.loader, reads, seed=3, encodings=enc)
    for kind in ("default", "barlowtwins"):
        for split in ("id/train", "id/test", "ood/far/noise"):
            ref, ref_y = plain.batches(kind, split)
            n = enc.computed
            for store in (cold, warm):
                got, y = store.batches(kind, split)
                assert torch.equal(y, ref_y)
                for f, r in zip(got, ref, strict=True):
                    for name in FIELDS:
                        a, b = getattr(f, name), getattr(r, name)
                        assert (a is None) == (b is None), name
                        if a is not None:
                            assert torch.equal(a, b), (model_name, kind, split, name)
            assert enc.computed == n + len(ref)  # the warm store ran no encoder


# -- Gram: one hooked pass ------------------------------------------------------------------------


def count_encoder_calls(net: OODNetwork) -> list[int]:
    """Images through the encoder's first convolution (every encoder pass, hooked or ``feature_list``)."""
    calls: list[int] = []
    net.model.encoder.conv1.register_forward_hook(lambda m, a, out: calls.append(int(out.shape[0])))
    return calls


def test_feature_maps_equal_feature_list_and_encode() -> None:
    net = tiny_network("ssl")
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps, e = net.feature_maps(x)
        ref = net.feature_list(x)
        assert e is not None and torch.equal(e, net.encode(x))
    assert len(maps) == len(ref) == 5
    assert all(torch.equal(a, b) for a, b in zip(maps, ref))


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_gram_one_pass_equals_two_passes(model_name: str) -> None:
    protocol = InMemoryProtocol()
    results, passes = {}, {}
    for one_pass in (False, True):
        net = tiny_network(model_name)
        calls = count_encoder_calls(net)
        det = build_detector("gram")
        det.one_pass = one_pass
        torch.manual_seed(0)
        results[one_pass] = evaluate(net, det, protocol, features=FeatureStore.for_detectors(net, protocol, [det]))
        passes[one_pass] = sum(calls)
    for key, value in results[False].scores.items():
        assert np.array_equal(results[True].scores[key], value), key
    assert results[True].rows == results[False].rows
    scored = sum(n for s, n in {"id/test": 20, "ood/near/shifted": 10, "ood/far/noise": 18}.items())
    train, val = 64, 12 + 12  # the fit's pass; the validation sets of the (one-candidate) search
    if model_name == "ssl_bayes_h":  # the logits are the study's MC draws: the features' pass stays
        assert passes[True] == passes[False] == 2 * (scored + val) + train
    else:
        # one pass per scored image; the ID test logits of the ACC column are the features' (from the
        # stored encodings in a study with the cache)
        assert passes[False] == 2 * (scored + val) + train and passes[True] == scored + val + train + 20


# -- kNN/KL: one scan for every K -----------------------------------------------------------------


def test_kth_nearest_distances_slice_the_per_k_scan() -> None:
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(300, 6, generator=g, dtype=torch.float64)
    keys[100:110] = keys[0]  # duplicates: ties at the boundary
    queries = torch.cat([torch.randn(40, 6, generator=g, dtype=torch.float64), keys[:5]])
    ks = [0, 1, 10, 50, 200]
    many = kth_nearest_distances(queries, keys, ks, query_chunk=16, key_chunk=64)
    for k, d in zip(ks, many):
        assert torch.equal(d, kth_nearest_distance(queries, keys, k, query_chunk=16, key_chunk=64)), k


def test_kth_smallest_kls_slice_the_per_k_scan() -> None:
    g = torch.Generator().manual_seed(1)
    tm, tl = torch.randn(300, 5, generator=g), torch.randn(300, 5, generator=g)
    tm[50:60], tl[50:60] = tm[0], tl[0]
    m, lv = torch.randn(33, 5, generator=g), torch.randn(33, 5, generator=g)
    ks = [0, 10, 50, 200]
    many = kth_smallest_kls(tm, tl, m, lv, ks, train_chunk_size=64, test_chunk_size=8)
    for k, v in zip(ks, many):
        assert torch.equal(v, kth_smallest_kl(tm, tl, m, lv, k, train_chunk_size=64, test_chunk_size=8)), k


@pytest.mark.parametrize("name", ["edsimk", "kldivsimk"])
def test_sliced_search_equals_the_per_k_search(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    protocol = InMemoryProtocol(batch_size=5)
    net = tiny_network("ssl_bayes_h" if name == "kldivsimk" else "ssl")
    sweep = {"K_list": [0, 3, 10, 30, 1000]}  # 1000 >= the 64 training points: skipped by both
    chunks = {"train_chunk": 16} if name == "edsimk" else {"train_chunk_size": 16}
    cls = EDSimK if name == "edsimk" else KLDivSimK
    aurocs: dict[bool, list[float]] = {}
    results = {}
    real_auroc = evaluator.auroc_only
    for sliced in (True, False):
        if not sliced:
            monkeypatch.setattr(cls, "score_candidates", lambda self, features, candidates: None)
        seen: list[float] = []

        def recording(c: np.ndarray, y: np.ndarray, seen: list[float] = seen) -> float:
            seen.append(real_auroc(c, y))
            return seen[-1]

        monkeypatch.setattr(evaluator, "auroc_only", recording)
        det = cls(sweep=sweep, **chunks)
        store = FeatureStore.for_detectors(net, protocol, [det], seed=0)
        results[sliced] = evaluate(net, det, protocol, features=store)
        aurocs[sliced] = seen
    assert aurocs[True] == aurocs[False] and len(aurocs[True]) == 4  # every candidate's AUROC, identical
    assert results[True].hyperparam == results[False].hyperparam
    for key, value in results[False].scores.items():
        assert np.array_equal(results[True].scores[key], value), key


def test_score_candidates_equals_score_per_candidate() -> None:
    net = tiny_network("ssl")
    protocol = InMemoryProtocol()
    det = EDSimK(sweep={"K_list": [1, 5]})
    store = FeatureStore.for_detectors(net, protocol, [det])
    evaluator.fit_detector(det, net, store.split("default", "id/train"))
    batch = store.split("default", "id/test").batches[0]
    both = det.score_candidates(batch, [[1], [5]])
    assert both is not None
    for k, (pred, conf) in zip((1, 5), both):
        det.set_hyperparam([k])
        ref_pred, ref_conf = det.score(batch)
        assert torch.equal(pred, ref_pred) and torch.equal(conf, ref_conf)


def test_code_version_is_part_of_the_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from src.ood import cache

    src = Path(cache.__file__).resolve().parents[1]
    for rel in {*cache.SOURCES["inputs"], *cache.SOURCES["encodings"]}:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, tmp_path / rel)
    monkeypatch.setattr(cache, "_SRC", tmp_path)
    before = {kind: cache.source_digest(kind) for kind in cache.SOURCES}
    assert before == {kind: cache.source_digest(kind) for kind in cache.SOURCES}
    with open(tmp_path / "ood/wrapper.py", "a") as f:
        f.write("# an edit\n")
    assert cache.source_digest("encodings") != before["encodings"]  # the encoder's code: new encodings
    assert cache.source_digest("inputs") == before["inputs"]  # the decoding did not change


def test_script_default_store_is_the_library_default() -> None:
    """One detector: the library's default store; `all`: none (one process shares in memory) unless asked."""
    from src.experiments.scripts.run_ood_study import DEFAULT_CACHE_DIR as SCRIPT_DEFAULT
    from src.experiments.scripts.run_ood_study import parse_args, store_dir
    from src.ood.cache import DEFAULT_CACHE_DIR

    assert SCRIPT_DEFAULT == DEFAULT_CACHE_DIR
    base = ["--runs-dir", "r", "--in-dataset", "demo", "--data-root-dir", "d", "--output-dir", "o"]
    assert store_dir(parse_args([*base, "--postprocessor-name", "msp"])) == DEFAULT_CACHE_DIR
    assert store_dir(parse_args([*base, "--postprocessor-name", "msp", "--no-cache"])) is None
    assert store_dir(parse_args([*base, "--postprocessor-name", "all"])) is None
    assert store_dir(parse_args([*base, "--postprocessor-name", "all", "--cache-dir", "s"])) == Path("s")
    assert store_dir(parse_args([*base, "--postprocessor-name", "all", "--cache-dir", "s", "--no-cache"])) is None
