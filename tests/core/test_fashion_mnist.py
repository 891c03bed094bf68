"""The fashion_mnist source: idx parsing, stable ids, seeded subsets, clear errors, the real files."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from unlearn.config import ConfigError, DataConfig, parse_params
from unlearn.data import SOURCES, load_source
from unlearn.data.sources import FASHION_MNIST_DIR, SourceError, read_idx, select_subset

REAL = Path(FASHION_MNIST_DIR)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(root: Path, n_train=30, n_test=10, hw=5, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, (n, hw, hw), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = rng.integers(0, 10, n, dtype=np.uint8)
        for key, stem in (("images", "idx3"), ("labels", "idx1")):
            data = _idx_bytes(arrays[f"{prefix}-{key}"])
            name = f"{prefix}-{key}-{stem}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_with_stable_ids(tmp_path, gz):
    arrays = _write(tmp_path, gz=gz)
    data = load_source(DataConfig(source="fashion_mnist", source_path=str(tmp_path)))
    assert data.name == "fashion_mnist" and len(data.classes) == 10
    assert data.images.shape == (40, 1, 5, 5) and data.images.dtype == np.uint8
    assert data.ids[0] == "fmnist-train-00000" and data.ids[29] == "fmnist-train-00029"
    assert data.ids[30] == "fmnist-test-00000"
    assert list(data.splits) == ["train"] * 30 + ["test"] * 10
    np.testing.assert_array_equal(data.images[:30, 0], arrays["train-images"])
    np.testing.assert_array_equal(data.images[30:, 0], arrays["t10k-images"])
    np.testing.assert_array_equal(data.labels[30:], arrays["t10k-labels"].astype(np.int64))
    assert data.labels.dtype == np.int64


def test_subset_is_seeded_stable_and_nested(tmp_path):
    _write(tmp_path, n_train=200, n_test=50)
    full = load_source(DataConfig(source="fashion_mnist", source_path=str(tmp_path)))

    def ids(train, test, seed=0):
        cfg = DataConfig(source="fashion_mnist", source_path=str(tmp_path), train_subset=train,
                         test_subset=test, split_seed=seed)
        return load_source(cfg)

    small, again, large = ids(20, 5), ids(20, 5), ids(60, None)
    assert list(small.ids) == list(again.ids)
    assert (small.splits == "train").sum() == 20 and (small.splits == "test").sum() == 5
    assert (large.splits == "test").sum() == 50  # None keeps the whole split
    assert set(small.ids[small.splits == "train"]) <= set(large.ids)
    assert list(ids(20, 5, seed=1).ids) != list(small.ids)
    # Kept samples carry their original ids, pixels and labels, in source order.
    position = {sid: i for i, sid in enumerate(full.ids)}
    rows = [position[s] for s in small.ids]
    assert rows == sorted(rows)
    np.testing.assert_array_equal(small.images, full.images[rows])
    np.testing.assert_array_equal(small.labels, full.labels[rows])
    with pytest.raises(SourceError, match="train_subset: asked for 201"):
        select_subset(full, 201, None, 0)


def test_subset_values_are_validated_in_params():
    with pytest.raises(ConfigError, match="data.train_subset"):
        parse_params({"data": {"train_subset": 0}})
    assert parse_params({"data": {"source": "fashion_mnist", "test_subset": 100}}).data.test_subset == 100
    assert "fashion_mnist" in SOURCES


def test_missing_directory_and_file_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="directory not found.*install-datasets"):
        load_source(DataConfig(source="fashion_mnist", source_path=str(tmp_path / "nope")))
    _write(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SourceError, match="t10k-labels-idx1-ubyte"):
        load_source(DataConfig(source="fashion_mnist", source_path=str(tmp_path)))


def test_corrupt_files_are_clear_errors(tmp_path):
    good = _idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8))
    cases = {
        "truncated.idx": (good[:-2], "needs 36 bytes of data, found 34"),
        "magic.idx": (b"\x01" + good[1:], "bad magic"),
        "type.idx": (good[:2] + b"\x0d" + good[3:], "not unsigned bytes"),
        "header.idx": (good[:6], "truncated header"),
        "stream.gz": (b"not gzip at all", "not a readable gzip stream"),
        "cut.gz": (gzip.compress(good)[:-8], "not a readable gzip stream"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SourceError, match=message):
            read_idx(tmp_path / name)
    np.testing.assert_array_equal(read_idx(_save(tmp_path / "ok.idx", good)), np.zeros((4, 3, 3)))
    _write(tmp_path / "bad_labels")
    labels = np.array([3, 12], dtype=np.uint8)
    (tmp_path / "bad_labels" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    with pytest.raises(SourceError, match="10 images but 2 labels"):
        load_source(DataConfig(source="fashion_mnist", source_path=str(tmp_path / "bad_labels")))


def _save(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"real Fashion-MNIST not installed at {REAL} (Debian package dataset-fashion-mnist; "
                           "run scripts/install-datasets.sh as root)")
def test_real_fashion_mnist_files():
    data = load_source(DataConfig(source="fashion_mnist"))
    train, test = data.splits == "train", data.splits == "test"
    assert train.sum() == 60_000 and test.sum() == 10_000
    assert data.images.shape[1:] == (1, 28, 28)
    # The published dataset is exactly balanced: 6,000 / 1,000 images per class.
    assert np.bincount(data.labels[train], minlength=10).tolist() == [6000] * 10
    assert np.bincount(data.labels[test], minlength=10).tolist() == [1000] * 10
    assert data.ids[59_999] == "fmnist-train-59999" and data.ids[-1] == "fmnist-test-09999"
    mean = data.images.mean() / 255.0
    assert 0.25 < mean < 0.32  # Fashion-MNIST's mean pixel is about 0.286
