"""Training control shared by both loops: the re-ID trainer (cpl/engine/trainer.py) and the DCGAN (cpl/gan/train.py).

What the two loops must do the same way lives here, once:

* the exceptions a caller acts on: :class:`Stopped` (a stop was requested; resume later) and
  :class:`NonFiniteLoss` (training diverged), both carrying the stage, epoch and step as fields;
* :class:`LoopControl`: a loop's stop request, the cadence of its reports (``log_every`` and the last step of an
  epoch) and the exceptions naming its position;
* :class:`FiniteCheck`: the NaN/inf guard that watches every step's losses without a host sync per step;
* :func:`autocast_dtype` / :class:`Precision`: one mixed-precision rule;
* :class:`Sums`: named running statistics on the device, summed over the DDP ranks in one place;
* checkpoint state: :func:`capture` / :func:`restore` of modules, optimizers, schedulers and scalers under
  their checkpoint keys, :func:`rng_state` / :func:`restore_rng`, and :func:`resume_latest` (the newest intact
  checkpoint, refused when it was written for other settings), on top of cpl/engine/checkpoints.py.

A loop is: ``for epoch: for step: control.raise_if_stopped(...); stats = step_fn(batch); check.observe(...)``,
with the step function (``Trainer.train_step``, :func:`cpl.gan.train.train_step`) doing one optimisation step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from cpl.engine import dist
from cpl.engine.checkpoints import load_latest

# ---------------------------------------------------------------------------------------------- exceptions

HINTS = {  # what status.json suggests after a non-finite loss, per stage
    "train": "lower train.lr or set train.amp=off, then resume",
    "gan": "lower gan.lr or use another gan.seed, then resume",
}


def position(epoch: int, epochs: int | None, step: int, steps: int | None, unit: str = "step") -> str:
    """``'epoch 2/10, iteration 5/40'`` from 1-based ``epoch`` and ``step`` (a total of None is left out)."""
    e = f"epoch {epoch}" + (f"/{epochs}" if epochs is not None else "")
    return e + f", {unit} {step}" + (f"/{steps}" if steps is not None else "")


class Stopped(Exception):
    """A stop was requested (cancel, SIGTERM): the work so far is checkpointed and a later call resumes it.

    Raised by both training loops, GAN sampling and the waits for a shared resource. Fields (None when the
    stop did not come from inside a training loop): ``stage`` (``"train"`` or ``"gan"``), ``epoch`` (0-based)
    and ``step`` (steps of that epoch already done: where the resume continues).
    """

    def __init__(self, message: str, *, stage: str | None = None, epoch: int | None = None,
                 step: int | None = None):
        super().__init__(message)
        self.stage, self.epoch, self.step = stage, epoch, step


class NonFiniteLoss(FloatingPointError):
    """A training loss became NaN or infinite; the run stops, and nothing trained on it is checkpointed.

    Fields: ``stage`` (``"train"`` or ``"gan"``), ``epoch`` (0-based), ``step`` (0-based index of the first
    failing step in that epoch), ``epochs`` / ``steps`` (the totals, or None), ``values`` (the losses of that
    step on this rank, or empty), ``hint`` (the advice status.json shows). The message names the position
    1-based: ``non-finite loss at epoch 1/2, iteration 3/5: ...``.
    """

    def __init__(self, stage: str, epoch: int, step: int, *, epochs: int | None = None,
                 steps: int | None = None, unit: str = "step", values: Mapping[str, float] | None = None,
                 advice: str = ""):
        self.stage, self.epoch, self.step, self.epochs, self.steps = stage, epoch, step, epochs, steps
        self.values = dict(values or {})
        self.hint = HINTS.get(stage, "")
        what = "loss" if stage == "train" else f"{stage.upper()} loss"
        text = f"non-finite {what} at {position(epoch + 1, epochs, step + 1, steps, unit)}"
        if self.values:
            text += " (" + ", ".join(f"{k}={v}" for k, v in self.values.items()) + ")"
        super().__init__(text + (f": {advice}" if advice else ""))


# ---------------------------------------------------------------------------------------------- the loop


def due(done: int, total: int, every: int) -> bool:
    """Whether a loop reports (or checks) after ``done`` of ``total`` steps: every ``every`` steps and after
    the last one of the epoch."""
    return done % every == 0 or done == total


@dataclass
class LoopControl:
    """The control of one training loop: its stop request, report cadence and the exceptions naming its place.

    ``stage``: ``"train"`` or ``"gan"`` (the pipeline's stage names); ``label``: how messages name the loop;
    ``unit``: what they call one optimisation step; ``should_stop``: polled once per step (None: never).
    """

    stage: str
    epochs: int
    should_stop: Callable[[], bool] | None = None
    log_every: int = 10
    label: str = "training"
    unit: str = "step"

    def stop_requested(self) -> bool:
        """Whether ``should_stop()`` asks the loop to stop now."""
        return self.should_stop is not None and bool(self.should_stop())

    def stopped(self, epoch: int, done: int, steps: int) -> Stopped:
        """The exception for a stop after ``done`` of ``steps`` steps of ``epoch`` (0-based)."""
        where = position(epoch + 1, self.epochs, done, steps, self.unit)
        return Stopped(f"{self.label} stopped at {where}", stage=self.stage, epoch=epoch, step=done)

    def raise_if_stopped(self, epoch: int, done: int, steps: int) -> None:
        """Raise :class:`Stopped` when a stop was requested (``done`` steps of ``epoch`` are complete)."""
        if self.stop_requested():
            raise self.stopped(epoch, done, steps)

    def log_due(self, done: int, steps: int) -> bool:
        """Whether to report after ``done`` of ``steps`` steps: every ``log_every`` and at the epoch's end."""
        return due(done, steps, self.log_every)

    def finite_check(self, device: torch.device, *, across_ranks: bool = True, advice: str = "") -> FiniteCheck:
        """A fresh NaN/inf guard for one epoch of this loop (checks every step on a CPU, where a sync costs
        nothing, else at the report cadence)."""
        every = 1 if device.type == "cpu" else self.log_every
        return FiniteCheck(self.stage, device, every=every, epochs=self.epochs, unit=self.unit,
                           across_ranks=across_ranks, advice=advice)


class FiniteCheck:
    """Watches the losses of every step of an epoch on the device and fails at the first non-finite one.

    :meth:`observe` records the first failing step without a host sync; :meth:`check` (one sync; every rank
    agrees through a max all-reduce when ``across_ranks``) raises :class:`NonFiniteLoss` naming it. The loop
    calls :meth:`check` when :meth:`due`, and always before it checkpoints.
    """

    def __init__(self, stage: str, device: torch.device, *, every: int = 1, epochs: int | None = None,
                 unit: str = "step", across_ranks: bool = True, advice: str = ""):
        self.stage, self.device, self.every, self.epochs, self.unit = stage, device, every, epochs, unit
        self.across_ranks, self.advice = across_ranks, advice
        self.first = torch.full((), -1, dtype=torch.long, device=device)  # first failing step, -1: none
        self.names: tuple[str, ...] = ()
        self.values: torch.Tensor | None = None  # [len(names)] float32 losses of that step

    def observe(self, step: int, **losses: torch.Tensor) -> None:
        """Record step ``step`` (0-based in the epoch) as failing if any of ``losses`` (0-dim tensors) is not
        finite and no earlier step failed."""
        row = torch.stack([v.detach().float() for v in losses.values()])
        if self.values is None:
            self.names, self.values = tuple(losses), torch.zeros_like(row)
        new = (self.first < 0) & ~torch.isfinite(row).all()
        self.first = torch.where(new, torch.tensor(step, device=self.device), self.first)
        self.values = torch.where(new, row, self.values)

    def due(self, done: int, steps: int) -> bool:
        """Whether to :meth:`check` after ``done`` of ``steps`` steps: every ``every`` and at the epoch's end."""
        return due(done, steps, self.every)

    def check(self, epoch: int, steps: int | None = None) -> None:
        """Raise :class:`NonFiniteLoss` if a step observed so far in ``epoch`` (0-based) failed."""
        first = self.first.clone()
        if self.across_ranks:
            dist.all_reduce_max(first)  # every rank stops together
        bad = int(first)
        if bad < 0:
            return
        values = {}
        if bad == int(self.first) and self.values is not None:  # this rank saw it: name the losses
            values = dict(zip(self.names, self.values.tolist()))
        raise NonFiniteLoss(self.stage, epoch, bad, epochs=self.epochs, steps=steps, unit=self.unit,
                            values=values, advice=self.advice)


# ---------------------------------------------------------------------------------------------- precision


def autocast_dtype(mode: str, device: torch.device, *, loss_scaling: bool = True) -> torch.dtype | None:
    """The autocast dtype of a training loop (None: full precision). One rule for both loops.

    ``mode`` (``train.amp``): ``off`` → None; ``auto`` → bf16 on a CUDA device that supports it, else fp16
    when the loop scales its loss (``loss_scaling``: it has a GradScaler) and None when it does not; None on
    a CPU; ``bf16`` → bf16 (on a CPU too: asked for), None on a CUDA device without bf16; ``fp16`` → fp16.
    The DCGAN loop has no scaler and uses ``auto``: bf16 where supported, else full precision.
    """
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16 if mode == "auto" and loss_scaling else None
    return torch.bfloat16


@dataclass(frozen=True)
class Precision:
    """A loop's mixed precision: the autocast context and, for fp16, the loss scaler."""

    device_type: str  # "cuda" | "cpu" | ...
    dtype: torch.dtype | None  # None: full precision

    @classmethod
    def choose(cls, mode: str, device: torch.device, *, loss_scaling: bool = True) -> Precision:
        """:func:`autocast_dtype`'s choice for ``mode`` on ``device``."""
        return cls(device.type, autocast_dtype(mode, device, loss_scaling=loss_scaling))

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh context running the forward pass in :attr:`dtype` (a no-op in full precision)."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 (its range needs one), None otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None


# ---------------------------------------------------------------------------------------------- statistics


class Sums:
    """Named running sums (float64, on the device) of per-step statistics.

    :meth:`add` is sync-free; :meth:`take` sums the window over the DDP ranks (the one place statistics are
    reduced), moves it to the host, and starts a new window.
    """

    def __init__(self, names: Sequence[str], device: torch.device):
        self.names = tuple(names)
        self._sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def add(self, stats: Any) -> None:
        """Add one step's values: a dataclass or mapping with a 0-dim tensor (or number) per name."""
        get = (lambda k: getattr(stats, k)) if is_dataclass(stats) else stats.__getitem__
        row = torch.stack([torch.as_tensor(get(k), device=self._sums.device).double() for k in self.names])
        self._sums += row

    def take(self) -> dict[str, float]:
        """The window's sums over all ranks, by name; the window restarts at zero."""
        dist.all_reduce_sum(self._sums)
        out = dict(zip(self.names, self._sums.tolist()))
        self._sums.zero_()
        return out


def field_names(cls: type) -> tuple[str, ...]:
    """The field names of a dataclass (the names of a step's statistics)."""
    return tuple(f.name for f in fields(cls))


# ---------------------------------------------------------------------------------------------- checkpoint state


def capture(parts: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: part.state_dict()}`` for modules, optimizers, LR schedulers and grad scalers; a part that is
    None (no scaler in full precision) is stored as ``{}``."""
    return {k: (p.state_dict() if p is not None else {}) for k, p in parts.items()}


def restore(parts: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Load each part from ``state[key]``, the inverse of :func:`capture`; a part that is None, or an entry
    that is missing or empty (a checkpoint written without a scaler), is left as it is."""
    for k, p in parts.items():
        if p is not None and state.get(k):
            p.load_state_dict(state[k])


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global random streams (dropout, CUDA kernels): ``rng_cpu`` [5056] uint8 and ``rng_cuda`` (empty
    off CUDA), under the keys the re-ID checkpoint has always used."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0)
    return {"rng_cpu": torch.get_rng_state(), "rng_cuda": cuda}


def restore_rng(state: Mapping[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and state["rng_cuda"].numel():
        torch.cuda.set_rng_state(state["rng_cuda"], device)


def resume_latest(folder: Path, prefix: str, *, identity: Mapping[str, Any], fmt: int,
                  what: str = "checkpoint",
                  map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
    """The newest intact checkpoint in ``folder`` as (state, path) (damaged ones are skipped,
    cpl/engine/checkpoints.py), or None when there is none.

    Refused with :class:`ValueError` when it was written with another ``format`` or ``identity`` (the settings
    and data that shape the training): continuing it would mix two runs.
    """
    loaded = load_latest(folder, prefix, map_location=map_location)
    if loaded is None:
        return None
    state, path = loaded
    if state.get("format") != fmt or state.get("identity") != identity:
        raise ValueError(f"{path} is a {what} of other settings or data ({state.get('identity')}); "
                         f"use another work folder or delete it")
    return state, path
