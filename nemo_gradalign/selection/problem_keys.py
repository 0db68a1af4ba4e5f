"""Problem identity for the score memory: a 64-bit key per dataset row, from the row's content.

A row number is not an identity: a reordered, trimmed or extended dataset puts other problems at
the same numbers, and a memory keyed by them would steer training with another problem's history.
So each row gets ``blake2b-64(content)``; the k-th repeat of the same content (k ≥ 1, in row
order) gets ``blake2b-64(content, k)``, so keys are unique and identical rows stay interchangeable.
Two different contents share a key with probability about n²/2⁶⁵ (3e-8 for a million problems).

``Remap`` carries a saved state's rows over to a dataset's current rows by key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def _digest(content: bytes, repeat: int) -> int:
    tail = b"" if repeat == 0 else b"\x00repeat" + repeat.to_bytes(8, "little")
    return int.from_bytes(hashlib.blake2b(content + tail, digest_size=8).digest(), "little")


def keys_of(contents: Iterable[bytes]) -> np.ndarray:
    """uint64 keys, one per row, unique (repeats of a content numbered in row order)."""
    seen: dict[bytes, int] = {}
    keys = []
    for content in contents:
        repeat = seen.get(content, 0)
        seen[content] = repeat + 1
        keys.append(_digest(content, repeat))
    out = np.array(keys, dtype=np.uint64)
    if np.unique(out).size != out.size:  # a 64-bit collision between different contents
        raise ValueError("two different problems hash to the same 64-bit key; rename one of them")
    return out


def row_keys(n: int) -> np.ndarray:
    """Keys of a dataset whose identity is its row number (no content given)."""
    return np.arange(n, dtype=np.uint64)


def as_tensor_payload(keys: np.ndarray):
    """uint64 keys as an int64 tensor (same bits), which torch.save and weights_only loads keep."""
    import torch

    return torch.from_numpy(keys.view(np.int64).copy())


def from_tensor_payload(value, field: str) -> np.ndarray:
    import torch

    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 1 or array.dtype != np.int64:
        raise ValueError(f"{field} is {array.dtype} of shape {array.shape}, expected int64 of one dimension")
    keys = array.view(np.uint64)
    if np.unique(keys).size != keys.size:
        raise ValueError(f"{field} repeats a key (two rows cannot be the same problem)")
    return keys


@dataclass(frozen=True)
class Remap:
    """Where each current row's history was saved: ``source[row]`` is the saved row holding the same
    key, or -1 for a problem the saved state never knew."""

    source: np.ndarray
    dropped: int  # saved problems with no row now

    @classmethod
    def between(cls, saved: np.ndarray, now: np.ndarray) -> Remap:
        order = np.argsort(saved, kind="stable")
        at = np.searchsorted(saved[order], now)
        at = np.minimum(at, saved.size - 1)
        found = saved[order][at] == now
        source = np.where(found, order[at], -1).astype(np.int64)
        return cls(source, int(saved.size - np.count_nonzero(found)))

    @property
    def kept(self) -> int:
        return int(np.count_nonzero(self.source >= 0))

    @property
    def new(self) -> int:
        return int(self.source.size - self.kept)

    @property
    def identical(self) -> bool:
        return self.dropped == 0 and bool(np.array_equal(self.source, np.arange(self.source.size)))

    def summary(self) -> str:
        return f"{self.kept} kept, {self.new} new (unseen), {self.dropped} dropped"
