"""The built-in synthetic re-ID dataset: people (:mod:`.people`) seen by cameras (:mod:`.camera`), rendered
into the Market-1501 folder layout (:mod:`.dataset`). Deterministic per seed; no torch."""

from cpl.synth.dataset import GALLERY, MARKER, QUERY, TRAIN, ensure, generate

__all__ = ["GALLERY", "MARKER", "QUERY", "TRAIN", "ensure", "generate"]
