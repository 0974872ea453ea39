"""Seeds derived from a run seed and a purpose, so every random stream can be re-created on resume."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (stable across processes and versions)."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def make_generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed`; CPU so streams match across devices."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))
