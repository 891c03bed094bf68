import pickle

import numpy as np
import pytest
from PIL import Image

from unlearn.config import DataConfig
from unlearn.data import SampleStore, StoreError, load_source
from unlearn.data.sources import SourceError


@pytest.fixture(scope="module")
def digits():
    return load_source(DataConfig())


def test_digits_source_has_stable_ids_and_a_seeded_stratified_split(digits):
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == np.uint8
    assert digits.ids[0] == "digits-0000" and len(set(digits.ids)) == 1797
    assert 0.2 < np.mean(digits.splits == "test") < 0.3
    again = load_source(DataConfig())
    assert (again.splits == digits.splits).all()
    other = load_source(DataConfig(split_seed=1))
    assert (other.splits != digits.splits).any()


def test_digits_read_without_scikit_learn_are_scikit_learns_digits(monkeypatch, tmp_path):
    """The file read directly gives exactly load_digits' images and labels (scaled to 0..255), and so does the
    fallback through scikit-learn when the file is not where scikit-learn 1.x keeps it."""
    import gzip
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from unlearn.data import sources

    bunch = load_digits()
    expected_images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    shipped = sources._digits_file()
    if shipped is None:  # elsewhere in this install: the direct reader reads the same table written out here
        shipped = tmp_path / "digits.csv.gz"
        with gzip.open(shipped, "wt") as handle:
            np.savetxt(handle, np.column_stack([bunch.data, bunch.target]), delimiter=",", fmt="%g")
    for found in (lambda: shipped, lambda: None):  # the direct read, then the fallback
        monkeypatch.setattr(sources, "_digits_file", found)
        sources._digits_arrays.cache_clear()
        ids, images, labels = sources._digits_arrays()
        assert np.array_equal(images, expected_images) and images.dtype == np.uint8
        assert np.array_equal(labels, bunch.target) and labels.dtype == np.int64
        assert ids[0] == "digits-0000" and len(ids) == 1797
    sources._digits_arrays.cache_clear()
    monkeypatch.undo()
    # and where scikit-learn keeps the file, reading it does not import scikit-learn (about a second a process:
    # every DVC stage is one); elsewhere the fallback does
    code = ("import sys; from unlearn.data.sources import _digits_arrays; _digits_arrays(); "
            "print('sklearn' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(sources._digits_file() is None)


def test_store_roundtrip_and_deletion_rewrites_only_affected_shards(tmp_path, digits):
    store = SampleStore.materialize(tmp_path / "store", digits, 128, set())
    assert len(store) == 1797
    arrays = store.load(["digits-0005", "digits-0001"])
    assert (arrays.images[0] == digits.images[5]).all() and arrays.labels[1] == digits.labels[1]
    before = {p.name: p.read_bytes() for p in (tmp_path / "store" / "shards").iterdir()}
    store = SampleStore.materialize(tmp_path / "store", digits, 128, {"digits-0005", "digits-0300"})
    after = {p.name: p.read_bytes() for p in (tmp_path / "store" / "shards").iterdir()}
    changed = sorted(name for name in before if before[name] != after.get(name))
    assert changed == ["s00000.npy", "s00002.npy"]  # 5 // 128 = 0, 300 // 128 = 2
    assert "digits-0005" not in store and len(store) == 1795
    with pytest.raises(StoreError, match="not in the store"):
        store.load(["digits-0005"])


def test_incremental_update_equals_rebuild_from_scratch(tmp_path, digits):
    deleted = {"digits-0010", "digits-1000"}
    SampleStore.materialize(tmp_path / "a", digits, 64, set())
    SampleStore.materialize(tmp_path / "a", digits, 64, deleted)
    SampleStore.materialize(tmp_path / "b", digits, 64, deleted)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_corrupt_shard_is_reported(tmp_path, digits):
    SampleStore.materialize(tmp_path / "store", digits, 128, set())
    (tmp_path / "store" / "shards" / "s00000.npy").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupt"):
        SampleStore(tmp_path / "store").load(["digits-0000"])


def _write_cifar(root, n_train_per_batch=4, n_test=5):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    for name, n in [*((f"data_batch_{i}", n_train_per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle)
    return root


def test_cifar10_loader_reads_torchvision_format(tmp_path):
    source = load_source(DataConfig(source="cifar10", source_path=str(_write_cifar(tmp_path))))
    assert source.images.shape == (25, 3, 32, 32)
    assert (source.splits == "train").sum() == 20 and source.ids[-1] == "cifar10-test-00004"
    assert source.classes[3] == "c3"


def test_cifar10_missing_or_corrupt_files(tmp_path):
    root = _write_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80not a pickle")
    with pytest.raises(SourceError, match="test_batch"):
        load_source(DataConfig(source="cifar10", source_path=str(root)))
    with pytest.raises(SourceError):
        load_source(DataConfig(source="cifar10", source_path=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("with_split", [False, True])
def test_imagefolder_loader(tmp_path, with_split):
    rng = np.random.default_rng(0)
    parts = ["train", "test"] if with_split else [""]
    for part in parts:
        for cls in ("cat", "dog"):
            folder = tmp_path / part / cls
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"person_{i}.png")
    source = load_source(DataConfig(source="imagefolder", source_path=str(tmp_path), image_size=16,
                                    test_fraction=0.25))
    assert source.images.shape[1:] == (3, 16, 16)
    assert source.classes == ("cat", "dog")
    assert all(i.startswith("img-") and "person" not in i for i in source.ids)  # no file names
    assert set(source.splits) == {"train", "test"}
