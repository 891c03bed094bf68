"""Dataset sources: each turns a dataset into samples with stable ids, labels and splits.

Sources are registered by name (``data.source`` in ``params.yaml``):

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images); the embedded default, no
  download. Ids are ``digits-NNNN`` (position in the bundled file); the train/test split is
  stratified and seeded by ``data.split_seed``.
- ``cifar10``: CIFAR-10 in torchvision's on-disk python format (``cifar-10-batches-py/``).
  Ids are ``cifar10-train-NNNNN`` / ``cifar10-test-NNNNN``; the split is CIFAR's own.
- ``imagefolder``: any torchvision ``ImageFolder`` tree (``<root>/<class>/<image>``), or
  ``<root>/train/...`` and ``<root>/test/...`` when the split is given on disk. Ids are
  ``img-`` plus a hash of the relative path, so file names (which may name people) never
  become identifiers.
- ``fashion_mnist``: Fashion-MNIST (70,000 28x28 grey images, 10 classes) read offline from its
  idx files (``train-images-idx3-ubyte[.gz]`` etc.) in ``source_path``, by default
  ``/usr/share/datasets/fashion-mnist`` where Debian's ``dataset-fashion-mnist`` package puts
  them (``scripts/install-datasets.sh``). Ids are ``fmnist-train-NNNNN`` / ``fmnist-test-NNNNN``
  (position in the original files); the split is the dataset's own.

Any source can be cut down with ``data.train_subset`` / ``data.test_subset``: a seeded, stable
choice of that many samples per split (:func:`select_subset`), so a small real dataset runs in
minutes on a CPU while sample ids stay those of the full files.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearn.config import DataConfig
from unlearn.registry import Registry

TRAIN, TEST = "train", "test"


class SourceError(ValueError):
    """A source dataset is missing or not in the expected format."""


@dataclass(frozen=True)
class SourceData:
    """All samples of a source dataset, in a fixed order.

    Attributes:
        ids: Stable unique sample ids, shape (N,).
        images: uint8 pixels, shape (N, C, H, W).
        labels: int64 class indices, shape (N,).
        splits: "train" or "test" per sample, shape (N,).
        classes: Class names, indexed by label.
        name: Source name.
    """

    ids: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.images) == len(self.labels) == len(self.splits) == n):
            raise SourceError(f"source {self.name!r}: ids, images, labels and splits differ in length")
        if len(set(self.ids.tolist())) != n:
            raise SourceError(f"source {self.name!r}: sample ids are not unique")


SOURCES: Registry = Registry("data source", modules=("unlearn.data.sources",))


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded stratified train/test assignment (same answer on every machine)."""
    rng = np.random.default_rng(seed)
    splits = np.full(len(labels), TRAIN, dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_test = int(round(len(members) * test_fraction))
        splits[members[:n_test]] = TEST
    return splits.astype(str)


@SOURCES.register("digits")
def load_digits_source(cfg: DataConfig) -> SourceData:
    """scikit-learn's bundled digits, scaled from 0..16 to 0..255, shape (1797, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    ids = np.array([f"digits-{i:04d}" for i in range(len(labels))])
    splits = _stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    return SourceData(ids, images, labels, splits, tuple(str(c) for c in range(10)), "digits")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except FileNotFoundError:
        raise SourceError(f"CIFAR-10 file missing: {path}") from None
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise SourceError(f"CIFAR-10 file {path} is not in torchvision's format: {exc}") from None
    if len(data) != len(labels):
        raise SourceError(f"CIFAR-10 file {path}: {len(data)} images but {len(labels)} labels")
    return data, labels


@SOURCES.register("cifar10")
def load_cifar10_source(cfg: DataConfig) -> SourceData:
    """CIFAR-10 from ``<source_path>/cifar-10-batches-py`` (or ``source_path`` itself)."""
    if not cfg.source_path:
        raise SourceError("data.source_path must point at the CIFAR-10 directory")
    root = Path(cfg.source_path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    try:
        with (root / "batches.meta").open("rb") as handle:
            meta = pickle.load(handle, encoding="bytes")
        classes = tuple(name.decode() for name in meta[b"label_names"])
    except FileNotFoundError:
        raise SourceError(f"CIFAR-10 metadata missing: {root / 'batches.meta'}") from None
    parts, ids, splits = [], [], []
    for split, files in ((TRAIN, [f"data_batch_{i}" for i in range(1, 6)]), (TEST, ["test_batch"])):
        offset = 0
        for name in files:
            data, labels = _read_cifar_batch(root / name)
            parts.append((data, labels))
            ids += [f"cifar10-{split}-{offset + i:05d}" for i in range(len(labels))]
            splits += [split] * len(labels)
            offset += len(labels)
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return SourceData(np.array(ids), images, labels, np.array(splits), classes, "cifar10")


@SOURCES.register("imagefolder")
def load_imagefolder_source(cfg: DataConfig) -> SourceData:
    """A torchvision ImageFolder tree, images converted to RGB and resized to image_size."""
    from torchvision.datasets import ImageFolder

    if not cfg.source_path:
        raise SourceError("data.source_path must point at the image folder")
    root = Path(cfg.source_path)
    if not root.is_dir():
        raise SourceError(f"image folder not found: {root}")
    given_split = (root / TRAIN).is_dir() and (root / TEST).is_dir()
    parts = [(root / TRAIN, TRAIN), (root / TEST, TEST)] if given_split else [(root, None)]
    size = cfg.image_size
    ids, images, labels, splits, classes = [], [], [], [], None
    for folder, split in parts:
        try:
            dataset = ImageFolder(str(folder))
        except (FileNotFoundError, RuntimeError) as exc:
            raise SourceError(f"{folder} is not an ImageFolder tree: {exc}") from None
        if classes is None:
            classes = tuple(dataset.classes)
        elif tuple(dataset.classes) != classes:
            raise SourceError(f"{root}: train and test folders have different classes")
        for path, label in dataset.samples:
            image = dataset.loader(path).convert("RGB").resize((size, size))
            pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
            rel = Path(path).relative_to(root).as_posix()
            ids.append("img-" + hashlib.sha256(rel.encode()).hexdigest()[:16])
            images.append(pixels)
            labels.append(label)
            splits.append(split)
    labels_arr = np.asarray(labels, dtype=np.int64)
    if not given_split:
        splits = list(_stratified_split(labels_arr, cfg.test_fraction, cfg.split_seed))
    return SourceData(
        np.array(ids), np.stack(images), labels_arr, np.array(splits), classes or (), "imagefolder"
    )


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_UBYTE = 0x08  # idx type code of unsigned bytes, the only one MNIST-style files use


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (LeCun's MNIST format), gzipped or not, as a uint8 array.

    Format: two zero bytes, a type byte (0x08 = ubyte), a byte with the number of dimensions d,
    then d big-endian uint32 sizes, then the data in C order.

    Args:
        path: The file (``.gz`` is decompressed).

    Returns:
        uint8 array with the shape the header gives.

    Raises:
        SourceError: If the file is missing, not gzip when named .gz, has a bad header, or its
            data is shorter or longer than the header says.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"idx file missing: {path}") from None
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError; a cut gzip stream raises EOFError
        raise SourceError(f"idx file {path} is corrupt (not a readable gzip stream): {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise SourceError(f"idx file {path} is corrupt: bad magic number")
    if raw[2] != _IDX_UBYTE:
        raise SourceError(f"idx file {path}: element type 0x{raw[2]:02x} is not unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise SourceError(f"idx file {path} is corrupt: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise SourceError(f"idx file {path} is corrupt: header shape {shape} needs {expected} bytes of data, "
                          f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise SourceError(f"Fashion-MNIST file {stem}[.gz] not found in {root} "
                      "(install Debian's dataset-fashion-mnist: scripts/install-datasets.sh, "
                      "or set data.source_path to a directory holding the idx files)")


@SOURCES.register("fashion_mnist")
def load_fashion_mnist_source(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST from its idx files, shape (70000, 1, 28, 28), the dataset's own train/test split."""
    root = Path(cfg.source_path or FASHION_MNIST_DIR)
    if not root.is_dir():
        raise SourceError(f"Fashion-MNIST directory not found: {root} (install Debian's dataset-fashion-mnist: "
                          "scripts/install-datasets.sh, or set data.source_path)")
    ids, images, labels, splits = [], [], [], []
    for split, prefix in ((TRAIN, "train"), (TEST, "t10k")):
        x = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1:
            raise SourceError(f"Fashion-MNIST {split}: expected images (N, H, W) and labels (N,), "
                              f"got {x.shape} and {y.shape}")
        if len(x) != len(y):
            raise SourceError(f"Fashion-MNIST {split}: {len(x)} images but {len(y)} labels")
        if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
            raise SourceError(f"Fashion-MNIST {split}: label {int(y.max())} outside 0..9")
        ids += [f"fmnist-{split}-{i:05d}" for i in range(len(y))]
        images.append(x[:, None])  # (N, 1, H, W)
        labels.append(y.astype(np.int64))
        splits += [split] * len(y)
    if images[0].shape[1:] != images[1].shape[1:]:
        raise SourceError(f"Fashion-MNIST: train and test images differ in shape "
                          f"({images[0].shape[2:]} vs {images[1].shape[2:]})")
    return SourceData(np.array(ids), np.concatenate(images), np.concatenate(labels), np.array(splits),
                      FASHION_MNIST_CLASSES, "fashion_mnist")


def select_subset(data: SourceData, train: int | None, test: int | None, seed: int) -> SourceData:
    """Keep ``train`` / ``test`` samples of each split, chosen at random with ``seed``; None keeps all.

    The choice is stable: it depends only on the seed, the split and the split's size, and the
    kept samples stay in source order with their original ids. A smaller subset is part of a
    larger one with the same seed (each takes a prefix of the same seeded permutation).

    Raises:
        SourceError: If more samples are asked for than the split holds, or fewer than 1.
    """
    keep = np.ones(len(data.ids), dtype=bool)
    for split_index, (split, count) in enumerate(((TRAIN, train), (TEST, test))):
        if count is None:
            continue
        members = np.flatnonzero(data.splits == split)
        if not 1 <= count <= len(members):
            raise SourceError(f"data.{split}_subset: asked for {count} samples but source {data.name!r} "
                              f"has {len(members)} in its {split} split")
        order = np.random.default_rng([seed, split_index]).permutation(len(members))
        keep[members] = False
        keep[members[np.sort(order[:count])]] = True
    if keep.all():
        return data
    return SourceData(data.ids[keep], data.images[keep], data.labels[keep], data.splits[keep],
                      data.classes, data.name)


def load_source(cfg: DataConfig) -> SourceData:
    """Load the source named by ``cfg.source``.

    Args:
        cfg: The data section of params.yaml.

    Returns:
        Every sample of the source, in its fixed order.

    Raises:
        UnknownNameError: If the source name is not registered.
        SourceError: If the files are missing or malformed, or a subset is larger than its split.
    """
    data = SOURCES.get(cfg.source)(cfg)
    return select_subset(data, cfg.train_subset, cfg.test_subset, cfg.split_seed)
