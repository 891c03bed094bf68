"""Per-sample signals every attack is built from, computed once from eval-mode logits."""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Signals:
    """Per-sample membership signals of one model on one sample set, each shape (N,).

    Attributes:
        loss: Cross-entropy -log p_y.
        confidence: p_y, the softmax probability of the true class.
        logit_confidence: log(p_y / (1 - p_y)), computed stably (LiRA's scaling).
        entropy: Entropy of the softmax.
        modified_entropy: Song & Mittal's modified entropy.
        correct: 1.0 where the prediction is the true label.
    """

    loss: np.ndarray
    confidence: np.ndarray
    logit_confidence: np.ndarray
    entropy: np.ndarray
    modified_entropy: np.ndarray
    correct: np.ndarray

    def __len__(self) -> int:
        return len(self.loss)


def compute_signals(logits: torch.Tensor, labels: torch.Tensor) -> Signals:
    """Signals from logits, in float64 after subtracting the max logit.

    Args:
        logits: Eval-mode logits, shape (N, K).
        labels: True labels, shape (N,).

    Returns:
        The signals, as numpy arrays of shape (N,).
    """
    z = logits.double()
    z = z - z.max(dim=1, keepdim=True).values
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)  # (N, K)
    p = log_p.exp()
    y = labels.long().view(-1, 1)
    log_py = log_p.gather(1, y).squeeze(1)
    p_y = p.gather(1, y).squeeze(1)
    # log sum_{j != y} p_j, without cancellation: mask the true class out of the logsumexp.
    others = log_p.scatter(1, y, float("-inf"))
    log_rest = torch.logsumexp(others, dim=1)
    tiny = 1e-45
    entropy = -(p * log_p).sum(1)
    log_one_minus = torch.log((1.0 - p).clamp_min(tiny))
    wrong = torch.ones_like(p).scatter(1, y, 0.0)
    modified = -(1.0 - p_y) * log_py - (wrong * p * log_one_minus).sum(1)
    return Signals(
        loss=(-log_py).numpy(),
        confidence=p_y.numpy(),
        logit_confidence=(log_py - log_rest).numpy(),
        entropy=entropy.numpy(),
        modified_entropy=modified.numpy(),
        correct=(logits.argmax(1) == labels).double().numpy(),
    )


# Number of fixed test-time views per augmentation setting (RMIA research code's 0, 2 and 18).
AUGMENTATION_VIEWS = {"none": 1, "mirror": 2, "mirror_shift": 18}


def query_views(images: torch.Tensor, augmentations: str) -> list[torch.Tensor]:
    """Fixed test-time views of a batch, identity first.

    "mirror" adds the horizontal flip; "mirror_shift" uses both orientations times every
    pixel shift in {-1, 0, 1}^2 with reflect padding (18 views), as LiRA/RMIA query them.

    Args:
        images: Float images, shape (N, C, H, W).
        augmentations: "none", "mirror" or "mirror_shift".

    Returns:
        A list of A tensors of shape (N, C, H, W).

    Raises:
        ValueError: On an unknown setting.
    """
    if augmentations not in AUGMENTATION_VIEWS:
        raise ValueError(f"unknown augmentations {augmentations!r}; valid: {', '.join(AUGMENTATION_VIEWS)}")
    if augmentations == "none":
        return [images]
    flips = [images, images.flip(-1)]
    if augmentations == "mirror":
        return flips
    views = []
    for base in flips:
        padded = torch.nn.functional.pad(base, (1, 1, 1, 1), mode="reflect")  # (N, C, H+2, W+2)
        height, width = base.shape[-2:]
        for dy in (1, 0, 2):  # identity shift first so views[0] is the plain image
            for dx in (1, 0, 2):
                views.append(padded[..., dy : dy + height, dx : dx + width])
    return views


def view_logits(
    model: torch.nn.Module, images: torch.Tensor, augmentations: str, *, device: str | torch.device,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Eval-mode logits of every test-time view.

    Args:
        model: The model (eval mode is used, then its mode restored).
        images: Float images, shape (N, C, H, W).
        augmentations: View setting (see :func:`query_views`).
        device: Where to compute.
        batch_size: Inference batch size.

    Returns:
        Logits, shape (N, A, K), float32 on the CPU.
    """
    was_training = model.training
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            views = [model(v.to(device)).float().cpu() for v in query_views(batch, augmentations)]
            chunks.append(torch.stack(views, dim=1))  # (B, A, K)
    model.train(was_training)
    if not chunks:
        return torch.empty(0, AUGMENTATION_VIEWS[augmentations], 0)
    return torch.cat(chunks)


def logit_scaled_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """phi = log p_y - log sum_{j != y} p_j for logits with any leading view axes.

    Args:
        logits: Shape (N, A, K) (or (N, K)).
        labels: Shape (N,).

    Returns:
        phi, shape (N, A) (or (N,)), float64.
    """
    z = logits.double()
    squeeze = z.dim() == 2
    if squeeze:
        z = z[:, None, :]
    z = z - z.max(dim=-1, keepdim=True).values
    log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)  # (N, A, K)
    y = labels.long().view(-1, 1, 1).expand(-1, z.shape[1], 1)
    log_py = log_p.gather(-1, y).squeeze(-1)
    log_rest = torch.logsumexp(log_p.scatter(-1, y, float("-inf")), dim=-1)
    phi = (log_py - log_rest).numpy()
    return phi[:, 0] if squeeze else phi


def model_digest(model: torch.nn.Module) -> str:
    """A content hash of a model's weights and buffers (the signal cache's key)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class SignalCache:
    """Per-model logits of every test-time view, keyed by sample id, on disk.

    One ``<model digest>-<augmentations>.npz`` per model holds ``ids`` (N,) and ``logits``
    (N, A, K); asking for ids already there costs no forward pass. Every signal (loss,
    confidence, phi, ...) derives from these logits, so caching them caches all signals.
    Rows of deleted samples are dropped with :meth:`drop_ids`, and a retired model's file
    with :meth:`drop_model`: the cache must not keep deleted data alive.

    Args:
        root: Cache directory (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str, augmentations: str) -> Path:
        return self.root / f"{digest}-{augmentations}.npz"

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["ids"], data["logits"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, OSError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a corrupt cache entry is recomputed, never trusted
            return None

    def _write(self, path: Path, ids: np.ndarray, logits: np.ndarray) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # A temporary name of its own per writer: parallel workers (sweeps, threads) may write the
        # same model's file at once. Each replace is atomic, so a reader never sees a torn file; rows
        # only the losing writer added are recomputed on the next miss.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
        try:
            np.savez(tmp, ids=ids, logits=logits)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def logits(
        self, model: torch.nn.Module, ids: np.ndarray, images: torch.Tensor, *, augmentations: str,
        device: str | torch.device, digest: str | None = None,
    ) -> torch.Tensor:
        """Logits of ``model`` on the samples ``ids``, computing only the missing rows.

        Args:
            model: The model.
            ids: Sample ids, shape (N,).
            images: Their images, shape (N, C, H, W), aligned with ``ids``.
            augmentations: View setting.
            device: Where to compute missing rows.
            digest: The model's :func:`model_digest`, if already known.

        Returns:
            Logits, shape (N, A, K), in the order of ``ids``.
        """
        path = self._path(digest or model_digest(model), augmentations)
        cached = self._read(path)
        ids = np.asarray(ids).astype(str)
        known: dict[str, int] = {} if cached is None else {s: i for i, s in enumerate(cached[0].tolist())}
        missing = np.array([i for i, s in enumerate(ids.tolist()) if s not in known], dtype=np.int64)
        if len(missing):
            fresh = view_logits(model, images[missing], augmentations, device=device).numpy()
            if cached is None:
                all_ids, all_logits = ids[missing], fresh
            else:
                all_ids = np.concatenate([cached[0], ids[missing]])
                all_logits = np.concatenate([cached[1], fresh])
            self._write(path, all_ids, all_logits)
            known = {s: i for i, s in enumerate(all_ids.tolist())}
        else:
            all_logits = cached[1]
        rows = np.array([known[s] for s in ids.tolist()], dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(all_logits[rows]))

    def drop_ids(self, ids: set[str] | list[str]) -> int:
        """Remove the rows of ``ids`` from every cached model; returns the rows removed."""
        doomed, removed = set(ids), 0
        for path in sorted(self.root.glob("*.npz")) if self.root.exists() else []:
            cached = self._read(path)
            if cached is None:
                continue
            keep = ~np.isin(cached[0], list(doomed))
            if not keep.all():
                removed += int((~keep).sum())
                self._write(path, cached[0][keep], cached[1][keep])
        return removed

    def drop_model(self, digest: str) -> None:
        """Delete every cached file of one model (e.g. a retired reference)."""
        for path in self.root.glob(f"{digest}-*.npz") if self.root.exists() else []:
            path.unlink()
