import time

import numpy as np
import pytest

from unlearn import forensics
from unlearn.data.store import Arrays
from unlearn.forensics import sample_patterns, scan_for_patterns


def _random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _patterns(count: int, length: int = 64, seed: int = 1) -> dict[str, bytes]:
    return {f"p{i}": _random_bytes(length, seed * 1000 + i) for i in range(count)}


def test_finds_a_pattern_at_an_arbitrary_offset_in_nested_dirs(tmp_path):
    patterns = _patterns(50)
    nested = tmp_path / "root" / "a" / "b" / "c"
    nested.mkdir(parents=True)
    noise = _random_bytes(10_000, 7)
    (nested / "hit.bin").write_bytes(noise[:4321] + patterns["p17"] + noise[4321:])
    (tmp_path / "root" / "clean.bin").write_bytes(noise)
    (tmp_path / "root" / "empty.bin").write_bytes(b"")
    result = scan_for_patterns([tmp_path / "root"], patterns)
    assert result.matches == (("root/a/b/c/hit.bin", "p17"),)
    assert result.files == 3 and result.patterns == 50 and result.bytes == 2 * 10_000 + 64
    assert not result.clean and result.errors == ()


@pytest.mark.parametrize("length", [3, 8, 64, 1000])
def test_finds_patterns_across_chunk_boundaries(tmp_path, monkeypatch, length):
    monkeypatch.setattr(forensics, "CHUNK_SIZE", 4096)
    patterns = _patterns(20, length=length)
    noise = bytearray(_random_bytes(5 * 4096, 3))
    # Straddling the boundaries at 4096 and 8192 at every split point, and at the very end.
    for k, start in enumerate([4096 - length // 2, 8192 - 1, 12288 - length + 1, len(noise) - length]):
        noise[start:start + length] = patterns[f"p{k}"]
    (tmp_path / "data.bin").write_bytes(bytes(noise))
    result = scan_for_patterns([tmp_path], patterns)
    assert {key for _, key in result.matches} == {"p0", "p1", "p2", "p3"}


def test_no_false_positives_on_near_misses(tmp_path):
    patterns = _patterns(100)
    near = bytearray(patterns["p5"])
    near[-1] ^= 0xFF  # the anchor window matches, the full pattern does not
    prefix = patterns["p6"][:63]  # a truncated pattern at the end of the file
    (tmp_path / "f.bin").write_bytes(_random_bytes(100_000, 9) + bytes(near) + b"x" + prefix)
    assert scan_for_patterns([tmp_path], patterns).matches == ()


def test_repeated_and_zero_heavy_data(tmp_path):
    # Real images have runs of equal bytes; patterns overlapping themselves must still match.
    flat = bytes(64)
    ramp = bytes(range(64))
    (tmp_path / "zeros.bin").write_bytes(bytes(100_000) + ramp + bytes(10))
    result = scan_for_patterns([tmp_path], {"flat": flat, "ramp": ramp, "absent": bytes([1]) * 64})
    name = f"{tmp_path.name}/zeros.bin"
    assert result.matches == ((name, "flat"), (name, "ramp"))


def test_skip_and_symlinks_are_not_followed(tmp_path):
    patterns = _patterns(3)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "hit.bin").write_bytes(patterns["p0"])
    root = tmp_path / "root"
    (root / "venv").mkdir(parents=True)
    (root / "venv" / "hit.bin").write_bytes(patterns["p1"])
    (root / "link").symlink_to(tmp_path / "outside")
    (root / "link.bin").symlink_to(tmp_path / "outside" / "hit.bin")
    (root / "kept.bin").write_bytes(patterns["p2"])
    result = scan_for_patterns([root], patterns, skip=lambda p: p.name == "venv")
    assert result.matches == (("root/kept.bin", "p2"),) and result.files == 1


def test_sample_patterns_drop_live_duplicates_and_hide_ids():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    live = images[3:].copy()
    deleted = Arrays(np.array([f"digits-{i:04d}" for i in range(4)]),
                     np.concatenate([images[:3], images[3:4]]), np.zeros(4, dtype=np.int64))
    patterns, dropped = sample_patterns(deleted, live)
    assert dropped == 1  # the fourth deleted image equals a live one
    assert sorted(patterns.values()) == sorted(images[i].tobytes() for i in range(3))
    assert all("digits" not in key and key not in deleted.ids for key in patterns)
    # The same bytes twice yield one pattern.
    twice = Arrays(np.array(["a", "b"]), np.stack([images[0], images[0]]), np.zeros(2, dtype=np.int64))
    assert len(sample_patterns(twice, live)[0]) == 1
    with pytest.raises(ValueError, match="uint8"):
        sample_patterns(Arrays(deleted.ids, deleted.images.astype(np.float32), deleted.labels), live)


def test_patterns_from_a_store_shard_are_found(tmp_path):
    # The bytes of one row of an .npy shard are exactly the sample's pattern.
    images = np.random.default_rng(1).integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "s00000.npy", images)
    deleted = Arrays(np.array(["x"]), images[17:18], np.zeros(1, dtype=np.int64))
    patterns, _ = sample_patterns(deleted, np.delete(images, 17, axis=0))
    assert [key for _, key in scan_for_patterns([tmp_path], patterns).matches] == ["p000000"]


def test_many_patterns_scan_fast(tmp_path):
    (tmp_path / "big.bin").write_bytes(_random_bytes(20_000_000, 11))
    patterns = _patterns(1000)
    start = time.perf_counter()
    result = scan_for_patterns([tmp_path], patterns)
    assert result.matches == () and result.bytes == 20_000_000
    assert time.perf_counter() - start < 10  # ~0.3 s here; bytes.find per pattern takes ~2.5 s


def test_weight_patterns_find_saved_weights_but_not_a_successor(tmp_path):
    import torch

    from unlearn.forensics import scan_for_patterns, weight_patterns

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    patterns = weight_patterns(state)
    assert 1 <= len(patterns) <= 4 and all(len(v) == 256 for v in patterns.values())
    assert all(k.startswith("w") for k in patterns)  # no parameter names leak into reports
    (tmp_path / "old").mkdir()
    torch.save(model.state_dict(), tmp_path / "old" / "state_dict.pt")
    found = scan_for_patterns([tmp_path / "old"], patterns)
    assert {key for _, key in found.matches} == set(patterns)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)  # a successor: every value moved
    (tmp_path / "new").mkdir()
    torch.save(model.state_dict(), tmp_path / "new" / "state_dict.pt")
    assert scan_for_patterns([tmp_path / "new"], patterns).clean


def test_weight_patterns_skip_constant_tensors():
    from unlearn.forensics import weight_patterns

    assert weight_patterns({"zeros": np.zeros(4096, dtype=np.float32)}) == {}
    assert weight_patterns({"tiny": np.arange(8, dtype=np.float32)}) == {}


def _successor_keeping_most_bytes(state, changed=3, seed=0):
    """An SSD-like child: a few weights of each large tensor dampened, every other byte the parent's."""
    rng = np.random.default_rng(seed)
    child = {k: v.copy() for k, v in state.items()}
    for value in child.values():
        if value.size >= 64:
            flat = value.reshape(-1)
            flat[rng.choice(flat.size, size=changed, replace=False)] *= 0.5
    return child


def test_weight_patterns_avoid_the_bytes_a_live_successor_kept(tmp_path):
    """Review of 2026-12-06: SSD leaves most of its parent's bytes in the child, so the parent's
    fingerprints (the middle of each large tensor) were found in the live champion's own files and
    every purge failed. Fingerprints taken with ``avoid`` match the parent's files, not the child's."""
    import torch

    from unlearn.forensics import scan_for_patterns, shared_patterns, weight_patterns

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    parent = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    child = _successor_keeping_most_bytes(parent)
    for where, state in (("parent", parent), ("child", child)):
        (tmp_path / where).mkdir()
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / where / "state_dict.pt")

    naive = weight_patterns(parent)  # what was taken before: the child's files match it
    assert shared_patterns(naive, [child]) and not scan_for_patterns([tmp_path / "child"], naive).clean

    patterns = weight_patterns(parent, avoid=[child])
    assert len(patterns) >= 2 and shared_patterns(patterns, [child]) == set()
    assert scan_for_patterns([tmp_path / "child"], patterns).clean
    found = scan_for_patterns([tmp_path / "parent"], patterns)
    assert {key for _, key in found.matches} == set(patterns)
    assert weight_patterns(parent, avoid=[{k: v.copy() for k, v in parent.items()}]) == {}  # nothing of its own
    assert weight_patterns(parent) == weight_patterns(parent, avoid=[])  # unchanged without anything to avoid


def test_weight_patterns_find_runs_apart_from_two_sparse_siblings():
    """Two live children of one parent, each dampening a few scattered weights: their edits seldom share
    a byte, so a window is kept when it holds an edit against each (review of 2026-12-06: intersecting the
    differing bytes left the parent with no fingerprint at all)."""
    from unlearn.forensics import shared_patterns, weight_patterns

    rng = np.random.default_rng(3)
    parent = {f"layer{i}": rng.standard_normal(40_000).astype(np.float32) for i in range(4)}
    siblings = [_successor_keeping_most_bytes(parent, changed=100, seed=seed) for seed in (1, 2)]
    patterns = weight_patterns(parent, avoid=siblings)
    assert len(patterns) == 4 and shared_patterns(patterns, siblings) == set()
    sparse = [_successor_keeping_most_bytes(parent, changed=2, seed=seed) for seed in (1, 2)]
    assert shared_patterns(weight_patterns(parent, avoid=sparse), sparse) == set()  # fewer, never shared
