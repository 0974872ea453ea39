"""The re-ID training's optimizer and learning-rate schedule, built from the config.

:func:`build_optimizer` picks the optimizer by name from :data:`OPTIMIZERS` over the model's parameter groups
(backbone at ``train.lr``, the new classifier at ``train.lr × classifier_lr_mult``), as reid-strong-baseline's
``make_optimizer`` does. :func:`build_scheduler` is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once
per iteration: BoT's linear warm-up, sampled at every iteration (``epoch + it / iters``), times step decay at
the milestones. Its state (the iteration count) is part of the training checkpoint.

The centers have their own rules (Wen's update, or BoT's plain SGD at ``train.center_lr``:
``Trainer._center_sgd_step``) and are not in the optimizer.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from cpl.config import Config, TrainConfig

OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, t: torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                             nesterov=t.nesterov),
    "adam": lambda groups, t: torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay),  # betas 0.9, 0.999
}


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``model.param_groups(lr, classifier_lr_mult)`` (groups named ``trunk`` and
    ``classifier``; rates in the config's units, per optimizer step), with ``train.weight_decay`` on all."""
    t = cfg.train
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer: {t.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[t.optimizer](model.param_groups(t.lr, t.classifier_lr_mult), t)


def lr_at(cfg: Config, epoch: float) -> float:
    """Backbone learning rate at ``epoch`` (0-based; fractional inside an epoch): step decay at the milestones,
    times the linear warm-up factor (``lr_warmup_factor`` at 0, rising to 1 at ``lr_warmup_epochs``).

    BoT steps the warm-up once per epoch over 10 of 120 epochs; the trainer evaluates it at every iteration
    (epoch + it/iters), which is the same line sampled finer and keeps a short schedule's one warm-up epoch
    from being spent at 1 % of the rate."""
    t = cfg.train
    lr = t.lr * t.lr_gamma ** sum(epoch >= m for m in t.lr_milestones)
    if epoch < t.lr_warmup_epochs:
        a = epoch / t.lr_warmup_epochs
        lr *= t.lr_warmup_factor * (1 - a) + a
    return lr


class EpochClock:
    """Maps a global iteration index to the fractional epoch ``epoch + it / iters`` when epochs differ in length
    (the unlabeled images join after the method's warm-up, so later epochs have more batches).

    ``iters_per_epoch``: a fixed count, or a function ``epoch -> iterations`` (called once per epoch, lazily);
    ``epochs``: positions at or past the end of the last epoch map to ``float(epochs)``.
    """

    def __init__(self, iters_per_epoch: int | Callable[[int], int], epochs: int):
        self._count = iters_per_epoch if callable(iters_per_epoch) else (lambda e, n=int(iters_per_epoch): n)
        self.epochs = epochs
        self._starts = [0]  # _starts[e]: global index of epoch e's first iteration
        self._iters: list[int] = []

    def iters(self, epoch: int) -> int:
        """Iterations in ``epoch``."""
        while len(self._iters) <= epoch:
            self._iters.append(int(self._count(len(self._iters))))
        return self._iters[epoch]

    def start(self, epoch: int) -> int:
        """Global index of the first iteration of ``epoch`` (= iterations of all the epochs before it)."""
        while len(self._starts) <= epoch:
            self._starts.append(self._starts[-1] + self.iters(len(self._starts) - 1))
        return self._starts[epoch]

    def position(self, step: int) -> float:
        """The fractional epoch of global iteration ``step``: ``e + it / iters(e)``, computed as the loop did."""
        while self._starts[-1] <= step and len(self._starts) <= self.epochs:
            self.start(len(self._starts))
        e = bisect.bisect_right(self._starts, step) - 1  # the last epoch starting at or before step (non-empty)
        if e >= self.epochs:
            return float(self.epochs)
        return e + (step - self._starts[e]) / self.iters(e)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer,
                    iters_per_epoch: int | Callable[[int], int] | EpochClock) -> LambdaLR:
    """The per-iteration schedule of :func:`lr_at`: call ``step()`` after every optimizer step.

    A :class:`~torch.optim.lr_scheduler.LambdaLR` whose lambdas return each group's rate itself (its base rates
    are set to 1): ``lr_at(cfg, epoch + it / iters) × mult``, ``mult`` being ``classifier_lr_mult`` for the group
    named ``classifier`` and 1 otherwise, computed in the order the hand-written loop did, so every rate is
    bit-identical to it. ``last_epoch`` counts iterations (0 = the first iteration of epoch 0);
    ``iters_per_epoch``: see :class:`EpochClock`.
    """
    t = cfg.train
    clock = iters_per_epoch if isinstance(iters_per_epoch, EpochClock) else EpochClock(iters_per_epoch, t.epochs)

    def rate(mult: float) -> Callable[[int], float]:
        return lambda step: lr_at(cfg, clock.position(step)) * mult

    lambdas = [rate(t.classifier_lr_mult if g.get("name") == "classifier" else 1.0) for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["initial_lr"] = 1.0  # LambdaLR's base rate: the lambdas return the rate, not a factor of it
    return LambdaLR(optimizer, lambdas)


def seek(scheduler: LambdaLR, step: int) -> None:
    """Put ``scheduler`` (and its optimizer's rates) at global iteration ``step``: for a checkpoint written
    before the schedule was saved, or an epoch run again (a benchmark repeating epoch 0)."""
    with warnings.catch_warnings():  # the step-order warning is about training steps; this is not one
        warnings.simplefilter("ignore")
        scheduler.last_epoch = step - 1
        scheduler.step()
