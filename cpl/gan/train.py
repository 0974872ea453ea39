"""DCGAN training loop (method-notes §6): one D update then ``g_steps`` G updates per step, resumable.

Every random draw comes from a CPU stream seeded by (seed, purpose, epoch), and the stream state is
checkpointed, so a run resumed from any checkpoint replays exactly what an uninterrupted run does
(bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cpl.config import GanConfig
from cpl.data.image_source import ImageSource, as_source, chunks
from cpl.engine.checkpoints import save_checkpoint
from cpl.engine.control import LoopControl, Precision, capture, restore, resume_latest
from cpl.engine.seeding import make_generator
from cpl.gan.dcgan import Discriminator, Generator, build_models
from cpl.runs import faults

__all__ = ["GanStepStats", "prepare_images", "train_gan", "train_step"]

CHECKPOINT_FORMAT = 1
PREFIX = "gan"  # checkpoint file prefix in the work folder


@dataclasses.dataclass
class GanStepStats:
    """One DCGAN step: 0-dim float32 tensors on the device (reading one is a host sync)."""

    loss_d: torch.Tensor  # D's binary cross-entropy on the real batch plus on the fake one
    loss_g: torch.Tensor  # G's non-saturating loss, of its last update in the step
    d_real: torch.Tensor  # mean D(real) probability, in [0, 1]
    d_fake: torch.Tensor  # mean D(G(z)) probability before the G updates, in [0, 1]

    def values(self) -> dict[str, float]:
        """The four numbers on the host (one sync), by name."""
        names = [f.name for f in dataclasses.fields(self)]
        return dict(zip(names, torch.stack([getattr(self, k) for k in names]).float().cpu().tolist()))


def prepare_images(images: torch.Tensor | ImageSource, size: int, device: torch.device,
                   chunk: int = 256) -> torch.Tensor:
    """Resize ``[N, 3, H, W] uint8`` images (a tensor or an image source, read ``chunk`` rows at a time) to
    ``[N, 3, size, size] uint8`` on ``device``.

    Bilinear with antialiasing, done once; the result stays uint8 so all of Market-1501 at 128×128
    fits in ~0.6 GB of device memory, and a training set streamed from the disk cache is never held whole at its
    full size (MSMT17's 32,621 images: 0.4 GB at 64×64 instead of 3.2 GB at 256×128).
    """
    if isinstance(images, torch.Tensor) and (images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3):
        raise ValueError(f"GAN training images must be [N, 3, H, W] uint8, got {tuple(images.shape)} {images.dtype}")
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=device)
    for i, part in chunks(as_source(images), chunk):
        x = part.to(device).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + len(part)] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _real_batch(data: torch.Tensor, idx: torch.Tensor, flip: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 images → ``[B, 3, S, S] float32`` in [-1, 1], mirrored where ``flip`` (the LSRO imread)."""
    x = data[idx.to(data.device)].float().div_(127.5).sub_(1.0)
    x = torch.where(flip.to(data.device).view(-1, 1, 1, 1), x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(
    g: Generator,
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    g_steps: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> GanStepStats:
    """One D update then ``g_steps`` G updates on the same z (as the LSRO code).

    ``real``: ``[B, 3, S, S] float32`` in [-1, 1]; ``z``: ``[B, z_dim] float32`` uniform in [-1, 1), on the
    device; ``autocast``: a fresh autocast context per call (:meth:`cpl.engine.control.Precision.autocast`).
    """
    with torch.no_grad(), autocast():
        fake = g(z)  # G in train mode: its BN running statistics update here too, as in TF
    d.requires_grad_(True)
    with autocast():
        logit_real = d(real).float()
        logit_fake = d(fake).float()
    loss_d = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real)) + (
        F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    )
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    d.requires_grad_(False)  # G updates need gradients through D, not of D
    for _ in range(g_steps):
        with autocast():
            logit = d(g(z)).float()
        loss_g = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    d.requires_grad_(True)
    return GanStepStats(loss_d=loss_d.detach(), loss_g=loss_g.detach(),
                        d_real=torch.sigmoid(logit_real).mean().detach(),
                        d_fake=torch.sigmoid(logit_fake).mean().detach())


def train_gan(
    images: torch.Tensor | ImageSource,
    cfg: GanConfig,
    work_dir: Path,
    *,
    seed: int,
    device: torch.device,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log_every: int = 10,
) -> Generator:
    """Train (or resume training) a DCGAN on ``images`` ``[N, 3, H, W] uint8``; return G in eval mode.

    Checkpoints go to ``work_dir`` at the end of every epoch (the last two are kept) and when
    ``should_stop()`` turns True, after which :class:`~cpl.engine.control.Stopped` is raised. A later call
    with the same arguments resumes from the newest intact checkpoint; a finished one returns at once, and a
    larger ``cfg.epochs`` continues it exactly as if it had been asked for from the start. Draw samples with
    :func:`cpl.gan.sample.sample_to_folder` (BN on batch statistics, as the LSRO sampler).
    ``on_progress`` gets ``{"type": "gan", "epoch", "epochs", "step", "steps", "loss_d", "loss_g",
    "d_real", "d_fake"}`` (the last step's :class:`GanStepStats`) every ``log_every`` steps and after the
    last step of each epoch (epoch 0-based; step = steps done in that epoch). Raises
    :class:`~cpl.engine.control.NonFiniteLoss` (stage ``"gan"``) naming the epoch and step.
    """
    n = len(images)
    steps = steps_per_epoch(n, cfg)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    g, d, opt_g, opt_d = _build(cfg, seed, device)
    parts = {"G": g, "D": d, "opt_g": opt_g, "opt_d": opt_d}  # checkpoint keys
    # Everything that shapes an epoch; the epoch count is left out so a finished run can be extended.
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "epochs"}
    identity = {"config": settings, "seed": seed, "num_images": n}
    start_epoch, start_step, rng_state = _resume(work_dir, parts, identity, cfg.epochs)
    if start_epoch >= cfg.epochs:
        return g.eval()

    data = prepare_images(images, cfg.image_size, device)
    precision = Precision.choose("auto", device, loss_scaling=False)  # bf16 where supported, else fp32
    control = LoopControl("gan", cfg.epochs, should_stop, log_every, label="GAN training", unit="step")

    def save(epoch: int, step: int, rng: torch.Generator | None) -> None:
        state = {"format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch, "step": step,
                 **capture(parts), "rng": None if rng is None else rng.get_state()}
        save_checkpoint(work_dir, PREFIX, state, epoch, step)

    def report(epoch: int, step: int, stats: GanStepStats) -> None:
        if on_progress is not None:
            on_progress({"type": "gan", "epoch": epoch, "epochs": cfg.epochs, "step": step, "steps": steps,
                         **stats.values()})

    g.train()
    d.train()
    batch = cfg.batch_size
    for epoch in range(start_epoch, cfg.epochs):
        resume_at = (start_step, rng_state) if epoch == start_epoch and start_step > 0 else None
        perm, rng, first = _epoch_stream(seed, epoch, n, resume_at)
        check = control.finite_check(device, across_ranks=False,  # rank 0 alone trains the GAN
                                     advice="training diverged; try a lower gan.lr or another gan.seed")
        for step in range(first, steps):
            idx = perm[step * batch : (step + 1) * batch]
            flip = torch.rand(batch, generator=rng) < 0.5
            z = (torch.rand(batch, cfg.z_dim, generator=rng) * 2 - 1).to(device)
            real = _real_batch(data, idx, flip, device.type == "cuda")
            stats = train_step(g, d, opt_g, opt_d, real, z, cfg.g_steps, precision.autocast)
            check.observe(step, loss_d=stats.loss_d, loss_g=stats.loss_g)
            done = step + 1
            if check.due(done, steps):
                check.check(epoch, steps)
            if done == steps:
                save(epoch + 1, 0, None)
            if control.log_due(done, steps):
                report(epoch, done, stats)
            if done == steps:
                faults.point("gan-train", epoch=epoch)
            finished = done == steps and epoch == cfg.epochs - 1
            if not finished and control.stop_requested():
                if done < steps:
                    check.check(epoch, steps)  # nothing diverged is saved
                    save(epoch, done, rng)
                raise control.stopped(epoch, done, steps)
    return g.eval()


def steps_per_epoch(n: int, cfg: GanConfig) -> int:
    """Full batches of ``cfg.batch_size`` in ``n`` images, capped by ``cfg.max_steps_per_epoch`` (0: no cap)."""
    if n < cfg.batch_size:
        raise ValueError(f"GAN training needs at least gan.batch_size={cfg.batch_size} images, got {n}")
    steps = n // cfg.batch_size  # the last partial batch is dropped, as in the DCGAN code
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch > 0 else steps


def _build(
    cfg: GanConfig, seed: int, device: torch.device
) -> tuple[Generator, Discriminator, torch.optim.Adam, torch.optim.Adam]:
    """G and D initialised from the ``(seed, "gan-init")`` stream on ``device``, and their Adam optimizers."""
    g, d = build_models(cfg, make_generator(seed, "gan-init"))
    for net in (g, d):
        net.to(device)
        if device.type == "cuda":
            net.to(memory_format=torch.channels_last)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=betas)
    return g, d, opt_g, opt_d


def _resume(
    work_dir: Path, parts: dict[str, Any], identity: dict[str, Any], epochs: int
) -> tuple[int, int, torch.Tensor | None]:
    """Load the newest intact checkpoint of this run into ``parts``; ``(epoch, step, rng state)`` to go on from.

    ``(0, 0, None)`` when there is none. A checkpoint past ``epochs`` is refused: it cannot be shortened.
    """
    loaded = resume_latest(work_dir, PREFIX, identity=identity, fmt=CHECKPOINT_FORMAT, what="GAN checkpoint")
    if loaded is None:
        return 0, 0, None
    state, path = loaded
    restore(parts, state)
    if (state["epoch"], state["step"]) > (epochs, 0):
        raise ValueError(f"{path} is past epoch {state['epoch']}, more than gan.epochs={epochs}")
    return state["epoch"], state["step"], state["rng"]


def _epoch_stream(
    seed: int, epoch: int, n: int, resume_at: tuple[int, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Generator, int]:
    """The epoch's image order ``[n] int64``, its random stream and the first step to run.

    ``resume_at = (step, rng state)`` continues the stream right after the last checkpointed step, so the
    flips and z drawn from there on are those an uninterrupted run draws.
    """
    rng = make_generator(seed, "gan-epoch", epoch)
    perm = torch.randperm(n, generator=rng)
    if resume_at is None:
        return perm, rng, 0
    first, state = resume_at
    rng.set_state(state)
    return perm, rng, first
