"""Exceptions of the GAN stage that callers act on."""

from __future__ import annotations


class Stopped(Exception):
    """``should_stop()`` returned True; the work done so far is saved and a later call resumes it."""


class NonFiniteLoss(FloatingPointError):
    """A GAN loss became NaN or infinite; the message names the epoch and step (1-based)."""
