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

import functools
import gzip
import hashlib
import math
import os
import pickle
import zlib
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
        # Checked here, once for every source: a dataset that breaks these trains and certifies nonsense
        # (a label past the class list crashes training after the store was written; one class or an empty
        # split leaves the gate and the attacks nothing to compare).
        if len(self.classes) < 2:
            raise SourceError(f"source {self.name!r}: {len(self.classes)} class(es); classification needs at least 2")
        bad = label_outside(self.labels, len(self.classes))
        if bad is not None:
            raise SourceError(f"source {self.name!r}: label {bad} outside 0..{len(self.classes) - 1} "
                              f"(its {len(self.classes)} classes)")
        for split in (TRAIN, TEST):
            if not (self.splits == split).any():
                raise SourceError(f"source {self.name!r}: the {split} split is empty")


SOURCES: Registry = Registry("data source", modules=("unlearn.data.sources",))


def label_outside(labels: np.ndarray, num_classes: int) -> int | None:
    """A label outside ``0..num_classes-1`` (the lowest if one is negative, else the highest), or None."""
    if not len(labels):
        return None
    low, high = int(labels.min()), int(labels.max())
    return low if low < 0 else high if high >= num_classes else None


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


def _digits_file() -> Path | None:
    """Where scikit-learn keeps the digits (``sklearn/datasets/data/digits.csv.gz``), found without importing it.

    Why: ``import sklearn`` alone takes about a second (it loads SciPy), and every ``dvc repro`` stage that reads
    the default source is a process of its own (ingest, prepare, purge, certify): that second was paid by each of
    them, for a 180 kB file. ``find_spec`` of a top-level package locates it without running its ``__init__``.
    None when the file is not where scikit-learn 1.x keeps it (then :func:`_digits_arrays` asks scikit-learn).
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The digits as (ids, images, labels), read once per process and returned read-only.

    Why cached: the compressed CSV is parsed on every read, and a pipeline run reads the source in several
    stages (ingest, prepare, the source checks); the file ships inside scikit-learn and cannot change under a
    running process. The file is read as ``sklearn.datasets.load_digits`` reads it (64 pixel columns of 0..16,
    then the label; ``tests/core/test_data.py`` checks the arrays are the same), without importing scikit-learn.
    """
    path = _digits_file()
    if path is not None:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            table = np.loadtxt(handle, delimiter=",")
        pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.images, bunch.target
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = target.astype(np.int64)
    ids = np.array([f"digits-{i:04d}" for i in range(len(labels))])
    for array in (ids, images, labels):
        array.flags.writeable = False
    return ids, images, labels


@SOURCES.register("digits")
def load_digits_source(cfg: DataConfig) -> SourceData:
    """scikit-learn's bundled digits, scaled from 0..16 to 0..255, shape (1797, 1, 8, 8)."""
    ids, images, labels = (array.copy() for array in _digits_arrays())  # the caller may change its copy
    splits = _stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    return SourceData(ids, images, labels, splits, tuple(str(c) for c in range(10)), "digits")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file of torchvision's CIFAR-10 python format: a pickled dict whose ``b"data"`` is a uint8
    array (N, 3072) (channel-major 32x32 RGB) and ``b"labels"`` N integers. Anything else is refused rather
    than reshaped: an (N, 32, 32, 3) array, floats or a grey (3N, 1024) array all reshape without error into
    scrambled or wrapped images."""
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except FileNotFoundError:
        raise SourceError(f"CIFAR-10 file missing: {path}") from None
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise SourceError(f"CIFAR-10 file {path} is not in torchvision's format: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise SourceError(f"CIFAR-10 file {path}: data must be a uint8 array of shape (N, 3072), got "
                          f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}".replace("  ", " "))
    try:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"shape {labels.shape}, dtype {labels.dtype}")
    except (TypeError, ValueError) as exc:
        raise SourceError(f"CIFAR-10 file {path}: labels must be a list of integers ({exc})") from None
    if len(data) != len(labels):
        raise SourceError(f"CIFAR-10 file {path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_classes(path: Path) -> tuple[str, ...]:
    """The class names of ``batches.meta`` (bytes in torchvision's files; str accepted)."""
    try:
        with path.open("rb") as handle:
            meta = pickle.load(handle, encoding="bytes")
        names = meta[b"label_names"]
        return tuple(name.decode() if isinstance(name, bytes) else str(name) for name in names)
    except FileNotFoundError:
        raise SourceError(f"CIFAR-10 metadata missing: {path}") from None
    except Exception as exc:  # a corrupt pickle or another layout can raise almost anything
        raise SourceError(f"CIFAR-10 metadata {path} is not in torchvision's format (a pickled dict with "
                          f"b'label_names'): {type(exc).__name__}: {exc}") from None


@SOURCES.register("cifar10")
def load_cifar10_source(cfg: DataConfig) -> SourceData:
    """CIFAR-10 from ``<source_path>/cifar-10-batches-py`` (or ``source_path`` itself)."""
    if not cfg.source_path:
        raise SourceError("data.source_path must point at the CIFAR-10 directory")
    root = Path(cfg.source_path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    classes = _read_cifar_classes(root / "batches.meta")
    parts, ids, splits = [], [], []
    for split, files in ((TRAIN, [f"data_batch_{i}" for i in range(1, 6)]), (TEST, ["test_batch"])):
        offset = 0
        for name in files:
            data, labels = _read_cifar_batch(root / name)
            bad = label_outside(labels, len(classes))
            if bad is not None:  # checked per file, to name it
                raise SourceError(f"CIFAR-10 file {root / name}: label {bad} outside 0..{len(classes) - 1} "
                                  f"(batches.meta names {len(classes)} classes)")
            parts.append((data, labels))
            ids += [f"cifar10-{split}-{offset + i:05d}" for i in range(len(labels))]
            splits += [split] * len(labels)
            offset += len(labels)
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return SourceData(np.array(ids), images, labels, np.array(splits), classes, "cifar10")


# Folder names that mean a split, not a class. A tree with train/ and test/ gives its split on disk (other
# folders beside them, such as val/, are not read); a tree with only some of these is refused, because reading
# them as class folders would label every image by its split.
SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")
# 16-bit grey modes, scaled to 8 bits by 65535 -> 255 (PIL's own conversion clips them at 255 instead).
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _image_folder(folder: Path) -> object:
    """torchvision's ImageFolder over ``folder`` without hidden entries.

    Why: a hidden folder (``.ipynb_checkpoints``, ``.thumbnails``) would become a class of its own and shift
    every real label by one, and hidden files inside a class folder are editor or OS leftovers, not samples.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class VisibleImageFolder(ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes = _visible_folders(Path(directory))
            if not classes:
                raise FileNotFoundError(f"no class folder in {directory}")
            return classes, {name: index for index, name in enumerate(classes)}

    def visible_image(path: str) -> bool:
        parts = Path(path).relative_to(folder).parts
        return has_file_allowed_extension(path, IMG_EXTENSIONS) and not any(p.startswith(".") for p in parts)

    return VisibleImageFolder(str(folder), is_valid_file=visible_image)


def _visible_folders(path: Path) -> list[str]:
    """The names of ``path``'s sub-folders that are not hidden, sorted (none when ``path`` is not a folder)."""
    if not path.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))


def _read_image(path: Path, named: str, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size), or a SourceError naming it as ``named`` (its sample id and class: file
    names may name people, so they never reach a message or a log, as they never become ids)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _SIXTEEN_BIT_MODES:
                grey = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
                image = Image.fromarray(np.rint(grey).astype(np.uint8), mode="L")
            elif image.mode in ("I", "F"):
                raise SourceError(f"image {named} has mode {image.mode!r} (32-bit integer or float pixels, no fixed "
                                  "range): convert the dataset to 8-bit (or 16-bit grey) images")
            rgb = image.convert("RGB").resize((size, size))
    except SourceError:
        raise
    except Exception as exc:  # PIL raises OSError, ValueError, DecompressionBombError... for unreadable files
        # the type only: PIL's messages quote the file's path
        raise SourceError(f"image {named} cannot be read ({type(exc).__name__})") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


@SOURCES.register("imagefolder")
def load_imagefolder_source(cfg: DataConfig) -> SourceData:
    """A torchvision ImageFolder tree, images converted to RGB and resized to image_size.

    Class folders directly under ``source_path`` (split seeded by ``data.split_seed``), or ``train/`` and
    ``test/`` each holding the class folders (the split given on disk). Hidden files and folders are skipped;
    16-bit grey images are scaled to 8 bits.
    """
    if not cfg.source_path:
        raise SourceError("data.source_path must point at the image folder")
    root = Path(cfg.source_path)
    if not root.is_dir():
        raise SourceError(f"image folder not found: {root}")
    # a split folder holds class folders; a class folder that happens to be called "train" (CIFAR-100) holds images
    present = [name for name in SPLIT_FOLDERS if _visible_folders(root / name)]
    given_split = TRAIN in present and TEST in present
    if present and not given_split:
        raise SourceError(f"image folder {root} has {', '.join(f'{name}/' for name in present)} but not both "
                          "train/ and test/: give the split on disk as train/ and test/ (each holding one folder "
                          "per class), or put the class folders directly under the root (a split folder is "
                          "never read as a class)")
    parts = [(root / TRAIN, TRAIN), (root / TEST, TEST)] if given_split else [(root, None)]
    size = cfg.image_size
    ids, images, labels, splits, classes = [], [], [], [], None
    for folder, split in parts:
        try:
            dataset = _image_folder(folder)
        except (FileNotFoundError, RuntimeError) as exc:
            raise SourceError(f"{folder} is not an ImageFolder tree: {exc}") from None
        if classes is None:
            classes = tuple(dataset.classes)
        elif tuple(dataset.classes) != classes:
            raise SourceError(f"{root}: train and test folders have different classes")
        for path, label in dataset.samples:
            rel = Path(path).relative_to(root).as_posix()
            sample_id = "img-" + hashlib.sha256(rel.encode()).hexdigest()[:16]
            images.append(_read_image(Path(path), f"{sample_id} (class {dataset.classes[label]!r}; the id is a "
                                      "hash of the path relative to the source root)", size))
            ids.append(sample_id)
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
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"idx file missing: {path}") from None
    except OSError as exc:  # permissions, a directory, an I/O error: not a corrupt file
        raise SourceError(f"idx file {path} cannot be read: {exc.strerror or exc}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut stream raises EOFError
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
    expected = math.prod(shape)  # Python integers: an int64 product of a hostile header can wrap to 0
    if len(raw) - header != expected:
        raise SourceError(f"idx file {path} is corrupt: header shape {shape} needs {expected} bytes of data, "
                          f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_idx(root: Path, stem: str) -> np.ndarray:
    """The idx file named ``stem.gz`` or ``stem``, read. Both may be present (torchvision's ``raw/`` folder keeps the
    archive beside its extraction); then they must hold the same data, or which one was read would be a guess."""
    found = [read_idx(root / name) for name in (f"{stem}.gz", stem) if (root / name).is_file()]
    if len(found) == 2 and not np.array_equal(*found):
        raise SourceError(f"{root / stem}.gz and {root / stem} hold different data: keep the right one")
    if found:
        return found[0]
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
        x = _load_idx(root, f"{prefix}-images-idx3-ubyte")
        y = _load_idx(root, f"{prefix}-labels-idx1-ubyte")
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
