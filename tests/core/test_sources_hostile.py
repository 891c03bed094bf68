"""Malformed datasets are refused with a SourceError that names the problem, never read into a wrong dataset.

From a break-it review of the sources (2026-12-06): an ImageFolder tree with train/ but no test/ was read with
"train" as its only class; a hidden folder became class 0; 16-bit images were clipped to white; CIFAR-10 batches
in another layout were reshaped into scrambled images and labels past the class list crashed training after the
store was written; empty splits, a wrapping idx header and a .gz beside its raw file went through.
"""

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from unlearn.config import DataConfig
from unlearn.data import load_source
from unlearn.data.sources import SourceData, SourceError, read_idx


def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _tree(root, classes=("cat", "dog"), per_class=4, part=""):
    rng = np.random.default_rng(0)
    for cls in classes:
        for i in range(per_class):
            _png(root / part / cls / f"{i}.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return root


def _id(rel):
    """The documented ImageFolder id: a hash of the path relative to the source root."""
    return "img-" + hashlib.sha256(rel.encode()).hexdigest()[:16]


def _imagefolder(root, **kwargs):
    return load_source(DataConfig(source="imagefolder", source_path=str(root), image_size=6, **kwargs))


@pytest.mark.parametrize("parts", [("train",), ("test",), ("train", "val")])
def test_a_half_given_split_is_refused_not_read_as_classes(tmp_path, parts):
    for part in parts:
        _tree(tmp_path, part=part)
    with pytest.raises(SourceError, match="not both train/ and test/"):
        _imagefolder(tmp_path)


def test_a_class_called_train_in_a_flat_tree_is_a_class(tmp_path):
    _tree(tmp_path, classes=("train", "tree", "test"))  # CIFAR-100 has a class "train"; these hold images
    assert _imagefolder(tmp_path).classes == ("test", "train", "tree")


def test_a_given_split_ignores_a_val_folder_beside_it(tmp_path):
    for part in ("train", "test", "val"):
        _tree(tmp_path, part=part)
    source = _imagefolder(tmp_path)
    assert source.classes == ("cat", "dog") and len(source.ids) == 16


def test_hidden_folders_and_files_are_not_samples(tmp_path):
    _tree(tmp_path)
    _png(tmp_path / ".ipynb_checkpoints" / "0.png", np.zeros((6, 6, 3), np.uint8))
    _png(tmp_path / "cat" / ".thumb.png", np.zeros((6, 6, 3), np.uint8))
    _png(tmp_path / "dog" / ".cache" / "0.png", np.zeros((6, 6, 3), np.uint8))
    source = _imagefolder(tmp_path)
    assert source.classes == ("cat", "dog")  # not ('.ipynb_checkpoints', 'cat', 'dog'): labels unshifted
    assert len(source.ids) == 8


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_an_unreadable_image_is_named(tmp_path, content):
    _tree(tmp_path)
    bad = tmp_path / "dog" / "2.png"
    bad.write_bytes(bad.read_bytes()[:60] if content == "truncated" else content)
    with pytest.raises(SourceError, match=rf"image {_id('dog/2.png')} \(class 'dog'.*cannot be read") as raised:
        _imagefolder(tmp_path)
    assert "2.png" not in str(raised.value) and str(tmp_path) not in str(raised.value)  # file names may name people


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    _tree(tmp_path)
    grey = np.full((6, 6), 32896, dtype=np.uint16)  # 0.502 of full scale
    grey[0, 0], grey[0, 1] = 65535, 0
    _png(tmp_path / "cat" / "wide.png", grey)
    assert Image.open(tmp_path / "cat" / "wide.png").mode == "I;16"
    source = _imagefolder(tmp_path)
    wide = _id("cat/wide.png")
    image = source.images[list(source.ids).index(wide)]
    assert image[0, 0, 0] == 255 and image[0, 0, 1] == 0 and image[0, 3, 3] == 128  # clipping gave 255 everywhere


def test_thirty_two_bit_images_are_refused(tmp_path):
    _tree(tmp_path)
    Image.fromarray(np.full((6, 6), 7.5, dtype=np.float32)).save(tmp_path / "cat" / "f.tiff")
    with pytest.raises(SourceError, match=rf"image {_id('cat/f.tiff')} \(class 'cat'.* has mode 'F'"):
        _imagefolder(tmp_path)


def test_one_class_is_refused(tmp_path):
    _tree(tmp_path, classes=("cat",))
    with pytest.raises(SourceError, match="1 class.*at least 2"):
        _imagefolder(tmp_path)


def test_an_empty_split_is_refused(tmp_path):
    _tree(tmp_path, per_class=1)  # one image per class: a 25% test share rounds to none
    with pytest.raises(SourceError, match="the test split is empty"):
        _imagefolder(tmp_path)


def test_source_data_checks_labels_against_its_classes():
    ids, splits = np.array(["a", "b", "c"]), np.array(["train", "train", "test"])
    images = np.zeros((3, 1, 2, 2), np.uint8)
    for labels, bad in (([0, 1, 2], "label 2 outside 0..1"), ([0, -1, 1], "label -1 outside 0..1")):
        with pytest.raises(SourceError, match=bad):
            SourceData(ids, images, np.array(labels), splits, ("x", "y"), "toy")
    SourceData(ids, images, np.array([0, 1, 1]), splits, ("x", "y"), "toy")


# ----------------------------------------------------------------------------------------------------- CIFAR-10


def _cifar(root, data=None, labels=None, names=None, meta=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump(meta if meta is not None else
                    {b"label_names": names if names is not None else [f"c{i}".encode() for i in range(10)]}, handle)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8) if data is None else data,
                 b"labels": [0, 1, 2, 9] if labels is None else labels}
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle)
    return root


def _load_cifar(root):
    return load_source(DataConfig(source="cifar10", source_path=str(root)))


@pytest.mark.parametrize("labels, bad", [([0, 1, 2, 10], "label 10 outside 0..9"),
                                         ([0, -1, 2, 3], "label -1 outside 0..9")])
def test_cifar_labels_past_the_class_list_are_refused_naming_the_file(tmp_path, labels, bad):
    with pytest.raises(SourceError, match=f"data_batch_1: {bad}"):
        _load_cifar(_cifar(tmp_path, labels=labels))


def test_cifar_labels_past_a_shorter_meta_are_refused(tmp_path):
    with pytest.raises(SourceError, match=r"label 9 outside 0..4 \(batches.meta names 5 classes\)"):
        _load_cifar(_cifar(tmp_path, names=[f"c{i}".encode() for i in range(5)]))


@pytest.mark.parametrize("data", [
    np.zeros((4, 32, 32, 3), np.uint8),  # HWC images
    np.zeros((4, 3072), np.float32),  # floats in [0, 1]
    np.zeros((4, 3072), np.int64),  # ints that would wrap at 256
    np.zeros((12, 1024), np.uint8),  # grey planes
    [[0] * 3072] * 4,  # a list
])
def test_cifar_data_in_another_layout_is_refused_not_reshaped(tmp_path, data):
    with pytest.raises(SourceError, match=r"data_batch_1: data must be a uint8 array of shape \(N, 3072\)"):
        _load_cifar(_cifar(tmp_path, data=data))


@pytest.mark.parametrize("meta", [{b"names": []}, ["c0", "c1"], "garbage"])
def test_cifar_meta_in_another_layout_is_named(tmp_path, meta):
    with pytest.raises(SourceError, match="metadata .*batches.meta is not in torchvision's format"):
        _load_cifar(_cifar(tmp_path, meta=meta))


def test_cifar_corrupt_meta_is_named_and_str_names_are_read(tmp_path):
    root = _cifar(tmp_path, names=[f"c{i}" for i in range(10)])
    assert _load_cifar(root).classes[3] == "c3"
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(b"\x80\x67garbage")
    with pytest.raises(SourceError, match="batches.meta is not in torchvision's format"):
        _load_cifar(root)


# ----------------------------------------------------------------------------------------------------- idx files


def _idx(shape, body=b""):
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape) + body


def test_an_idx_header_whose_size_wraps_is_corrupt_not_a_crash(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_idx((2 ** 31, 2 ** 31, 4)))  # int64 product 2**64 wraps to 0 = the empty body
    with pytest.raises(SourceError, match="is corrupt: header shape"):
        read_idx(path)


def test_an_unreadable_idx_path_is_not_called_corrupt(tmp_path):
    (tmp_path / "dir.gz").mkdir()
    with pytest.raises(SourceError, match="cannot be read"):
        read_idx(tmp_path / "dir.gz")


def _fashion(root, n_train=6, n_test=3):
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx((n, 2, 2), bytes(4 * n))))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx((n,), bytes(range(n)))))
    return root


def test_empty_fashion_mnist_splits_are_refused(tmp_path):
    for n_train, n_test, split in ((0, 3, "train"), (6, 0, "test")):
        root = _fashion(tmp_path / f"{n_train}-{n_test}", n_train, n_test)
        with pytest.raises(SourceError, match=f"the {split} split is empty"):
            load_source(DataConfig(source="fashion_mnist", source_path=str(root)))


def test_a_gz_beside_its_raw_file_must_hold_the_same_data(tmp_path):
    root = _fashion(tmp_path)
    raw = gzip.decompress((root / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (root / "t10k-labels-idx1-ubyte").write_bytes(raw)  # torchvision's raw/ keeps both
    assert len(load_source(DataConfig(source="fashion_mnist", source_path=str(root))).ids) == 9
    (root / "t10k-labels-idx1-ubyte").write_bytes(raw[:-1] + bytes([9]))
    with pytest.raises(SourceError, match="t10k-labels-idx1-ubyte.gz and .*t10k-labels-idx1-ubyte hold different"):
        load_source(DataConfig(source="fashion_mnist", source_path=str(root)))
