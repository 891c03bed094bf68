"""The sample store: the versioned copy of the data that models train on.

Layout (every file is written deterministically, so equal content gives equal DVC hashes)::

    <root>/meta.json            dataset name, classes, image shape, shard size
    <root>/index.csv            sample_id,label,split,shard,row  (one line per live sample;
                                split is train, test, or pool: the reference pool, see below)
    <root>/shards/s00000.npy    uint8 images of one shard, shape (n, C, H, W)

A sample's shard is fixed by its position in the source (position // shard_size), so deleting
samples rewrites only the shards that held them; every other shard keeps its bytes and its DVC
hash. The reference pool (``pool_fraction`` > 0) is a per-id hashed share of the source's
training split, labelled ``pool``: production training reads ``split_ids("train")`` and never
sees it; reference models train on it (unlearn/references.py). A new version is written next
to the old one and swapped in with renames, so a crash
never leaves a half-written store.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearn.data.sources import SourceData

FORMAT_VERSION = 1


def source_ids_digest(ids: np.ndarray) -> str:
    """SHA-256 of a source's sample ids (sorted, one per line): names the source a store was cut from, not a
    deletion."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


class StoreError(RuntimeError):
    """The store is missing, corrupt, or asked for samples it does not hold."""


@dataclass(frozen=True)
class Arrays:
    """Samples loaded from the store.

    Attributes:
        ids: Sample ids, shape (N,).
        images: uint8 pixels, shape (N, C, H, W).
        labels: int64 labels, shape (N,).
    """

    ids: np.ndarray
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def split_labels(source: SourceData, pool_fraction: float = 0.0, pool_seed: int = 0) -> np.ndarray:
    """Each source sample's split in a store built with these settings: "train", "test" or "pool".

    The one definition :meth:`SampleStore.materialize` writes, so a caller can tell whether
    changed settings would move samples from one split to another.
    """
    splits = np.asarray(source.splits).astype(object).copy()
    if pool_fraction > 0:
        from unlearn.references import reference_pool_mask  # the one definition of the pool split

        train = np.flatnonzero(splits == "train")
        splits[train[reference_pool_mask(source.ids[train], pool_fraction, pool_seed)]] = "pool"
    return splits


class SampleStore:
    """Read access to a materialised store, plus :meth:`materialize` to write one.

    Args:
        root: The store directory.

    Raises:
        StoreError: If the directory is not a readable store.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.meta = json.loads((self.root / "meta.json").read_text())
            with (self.root / "index.csv").open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except FileNotFoundError as exc:
            raise StoreError(f"no sample store at {self.root} ({exc.filename} missing)") from None
        except (json.JSONDecodeError, csv.Error) as exc:
            raise StoreError(f"sample store at {self.root} is corrupt: {exc}") from None
        if self.meta.get("format") != FORMAT_VERSION:
            raise StoreError(f"sample store at {self.root} has unknown format {self.meta.get('format')}")
        try:
            self.ids = np.array([r["sample_id"] for r in rows], dtype=str)
            self.labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
            self.splits = np.array([r["split"] for r in rows], dtype=str)
            self._shards = np.array([int(r["shard"]) for r in rows], dtype=np.int64)
            self._rows = np.array([int(r["row"]) for r in rows], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise StoreError(f"sample store index at {self.root} is corrupt: {exc}") from None
        self._position = {sample_id: i for i, sample_id in enumerate(self.ids.tolist())}

    @property
    def classes(self) -> list[str]:
        """Class names, indexed by label."""
        return list(self.meta["classes"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.meta["shape"])

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._position

    def split_ids(self, split: str) -> np.ndarray:
        """Ids of the live samples in ``split`` ("train" or "test"), in store order."""
        return self.ids[self.splits == split]

    def load(self, ids: np.ndarray | list[str] | None = None) -> Arrays:
        """Load samples by id (all samples when ``ids`` is None), in the order given.

        Raises:
            StoreError: If an id is not in the store or a shard is corrupt.
        """
        if ids is None:
            positions = np.arange(len(self.ids))
        else:
            missing = [i for i in ids if i not in self._position]
            if missing:
                raise StoreError(f"{len(missing)} requested sample id(s) are not in the store")
            positions = np.array([self._position[i] for i in ids], dtype=np.int64)
        images = np.empty((len(positions), *self.image_shape), dtype=np.uint8)
        for shard in np.unique(self._shards[positions]):
            data = self._read_shard(int(shard))
            selected = np.flatnonzero(self._shards[positions] == shard)
            images[selected] = data[self._rows[positions[selected]]]
        return Arrays(self.ids[positions], images, self.labels[positions])

    def load_split(self, split: str) -> Arrays:
        """Load every live sample of one split."""
        return self.load(self.split_ids(split))

    def _read_shard(self, shard: int) -> np.ndarray:
        path = self.root / "shards" / f"s{shard:05d}.npy"
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise StoreError(f"shard file missing: {path}") from None
        except ValueError as exc:
            raise StoreError(f"shard file corrupt: {path}: {exc}") from None
        expected_rows = int((self._shards == shard).sum())
        if data.dtype != np.uint8 or data.shape[1:] != self.image_shape or len(data) < expected_rows:
            raise StoreError(f"shard file corrupt: {path} has shape {data.shape}, dtype {data.dtype}")
        return data

    @staticmethod
    def interrupted_backup(root: str | Path) -> SampleStore | None:
        """The previous store a crash left between the two renames of :meth:`materialize`'s swap, if any.

        Then ``root`` is gone and the old store sits in its backup; the next ``materialize`` replaces it.
        """
        root = Path(root)
        for backup in sorted(root.parent.glob(f".{root.name}.old-*"), reverse=True):
            try:
                return SampleStore(backup)
            except StoreError:  # a half-removed backup is no record
                continue
        return None

    @staticmethod
    def materialize(
        root: str | Path, source: SourceData, shard_size: int, exclude: set[str] | frozenset[str], *,
        pool_fraction: float = 0.0, pool_seed: int = 0, source_digest: bool = True,
    ) -> SampleStore:
        """Write the store for ``source`` minus the ``exclude`` ids, atomically.

        The result depends only on (source, shard_size, exclude), so rebuilding from scratch
        and updating an existing store give byte-identical files. Shards whose content did
        not change are carried over from the existing store without rewriting.

        Args:
            root: Store directory (replaced when the write has fully succeeded).
            source: The source dataset.
            shard_size: Samples per shard, by source position.
            exclude: Sample ids that must not be in the store (deleted samples).
            pool_fraction: Share of the training split relabelled ``pool`` (the reference pool),
                chosen per id by :func:`unlearn.references.reference_pool_mask`, so the split is
                stable under deletions; 0 keeps every training sample in ``train``.
            pool_seed: Seed of that choice.
            source_digest: Record the source's id digest when ``exclude`` is not empty (False: the caller keeps
                a store from before the digest byte for byte, and so its data version).

        Returns:
            The new store.
        """
        root = Path(root)
        keep = ~np.isin(source.ids, np.array(sorted(exclude), dtype=str))
        positions = np.flatnonzero(keep)
        splits = split_labels(source, pool_fraction, pool_seed)
        shard_of = positions // shard_size
        meta = {
            "format": FORMAT_VERSION,
            "source": source.name,
            "classes": list(source.classes),
            "shape": list(source.images.shape[1:]),
            "shard_size": shard_size,
            "num_samples": int(len(positions)),
            "num_train": int((splits[positions] == "train").sum()),
            "num_test": int((splits[positions] == "test").sum()),
        }
        if exclude:  # how many deletions built it: a later build from a lost or older ledger is refused by that
            meta["deleted_total"] = len(set(exclude))
        if exclude and source_digest:
            # Which source it was cut from (all of its ids, no deletion named): with the same source, the ids it
            # lacks are exactly what it was built without, and a later build from another ledger is checked by id.
            meta["source_ids_sha256"] = source_ids_digest(source.ids)
        if pool_fraction > 0:  # only then: stores without a pool keep their bytes (and DVC hashes)
            meta.update(num_pool=int((splits[positions] == "pool").sum()), pool_fraction=pool_fraction,
                        pool_seed=pool_seed)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        rows_out = io.StringIO()
        writer = csv.writer(rows_out, lineterminator="\n")
        writer.writerow(["sample_id", "label", "split", "shard", "row"])
        for shard in np.unique(shard_of):
            members = positions[shard_of == shard]
            data = _npy_bytes(source.images[members])
            target = tmp / "shards" / f"s{int(shard):05d}.npy"
            old = root / "shards" / target.name
            if old.exists() and old.stat().st_size == len(data) and old.read_bytes() == data:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(old, target)  # unchanged shard: same bytes, same hash
            else:
                _write_bytes(target, data)
            for row, position in enumerate(members):
                writer.writerow(
                    [source.ids[position], int(source.labels[position]), splits[position],
                     int(shard), row]
                )
        _write_bytes(tmp / "index.csv", rows_out.getvalue().encode())
        _write_bytes(tmp / "meta.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        # Swap: old -> backup, new -> root, then drop the backup. A crash between the two
        # renames leaves the backup, which the next call ignores and replaces.
        backup = root.parent / f".{root.name}.old-{os.getpid()}"
        if root.exists():
            os.replace(root, backup)
        os.replace(tmp, root)
        if backup.exists():
            shutil.rmtree(backup)
        return SampleStore(root)
