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
from cpl.engine.checkpoints import load_latest, save_checkpoint
from cpl.engine.seeding import make_generator
from cpl.gan.dcgan import Discriminator, Generator, build_models
from cpl.gan.errors import NonFiniteLoss, Stopped
from cpl.runs import faults

__all__ = ["NonFiniteLoss", "Stopped", "prepare_images", "train_gan"]

CHECKPOINT_FORMAT = 1
PREFIX = "gan"  # checkpoint file prefix in the work folder


def prepare_images(images: torch.Tensor, size: int, device: torch.device, chunk: int = 256) -> torch.Tensor:
    """Resize ``[N, 3, H, W] uint8`` images to ``[N, 3, size, size] uint8`` on ``device``.

    Bilinear with antialiasing, done once; the result stays uint8 so all of Market-1501 at 128×128
    fits in ~0.6 GB of device memory.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"GAN training images must be [N, 3, H, W] uint8, got {tuple(images.shape)} {images.dtype}")
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8, device=device)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].to(device).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _real_batch(data: torch.Tensor, idx: torch.Tensor, flip: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 images → ``[B, 3, S, S] float32`` in [-1, 1], mirrored where ``flip`` (the LSRO imread)."""
    x = data[idx.to(data.device)].float().div_(127.5).sub_(1.0)
    x = torch.where(flip.to(data.device).view(-1, 1, 1, 1), x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _train_step(
    g: Generator,
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: torch.Tensor,
    z: torch.Tensor,
    g_steps: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """One D update then ``g_steps`` G updates on the same z (as the LSRO code).

    Returns ``[4] float32`` on the device: loss_d, loss_g (last G update), mean D(real), mean D(fake).
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
    return torch.stack(
        [loss_d.detach(), loss_g.detach(), torch.sigmoid(logit_real).mean().detach(),
         torch.sigmoid(logit_fake).mean().detach()]
    )


def _checked(pending: list[torch.Tensor], epoch: int, first_step: int, epochs: int, steps: int) -> list[float]:
    """Move the buffered per-step stats to the host (one sync) and fail on a non-finite loss."""
    rows = torch.stack(pending).float().cpu()
    bad = (~torch.isfinite(rows[:, :2])).any(dim=1).nonzero()
    if len(bad):
        r = int(bad[0])
        raise NonFiniteLoss(
            f"GAN loss is not finite at epoch {epoch + 1}/{epochs}, step {first_step + r + 1}/{steps} "
            f"(loss_d={rows[r, 0].item()}, loss_g={rows[r, 1].item()}): training diverged; "
            "try a lower gan.lr or another seed"
        )
    pending.clear()
    return rows[-1].tolist()


def train_gan(
    images: torch.Tensor,
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
    ``should_stop()`` turns True, after which :class:`Stopped` is raised. A later call with the same
    arguments resumes from the newest intact checkpoint; a finished one returns at once, and a larger
    ``cfg.epochs`` continues it exactly as if it had been asked for from the start. Draw samples with
    :func:`cpl.gan.sample.sample_to_folder` (BN on batch statistics, as the LSRO sampler).
    ``on_progress`` gets ``{"type": "gan", "epoch", "epochs", "step", "steps", "loss_d", "loss_g",
    "d_real", "d_fake"}`` every ``log_every`` steps and after the last step of each epoch (epoch
    0-based; step = steps done in that epoch). Raises :class:`NonFiniteLoss` naming the epoch and step.
    """
    n = images.shape[0]
    batch = cfg.batch_size
    if n < batch:
        raise ValueError(f"GAN training needs at least gan.batch_size={batch} images, got {n}")
    steps = n // batch  # the last partial batch is dropped, as in the DCGAN code
    if cfg.max_steps_per_epoch > 0:
        steps = min(steps, cfg.max_steps_per_epoch)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    g, d = build_models(cfg, make_generator(seed, "gan-init"))
    cuda = device.type == "cuda"
    g.to(device)
    d.to(device)
    if cuda:
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=betas)

    # Everything that shapes an epoch; the epoch count is left out so a finished run can be extended.
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "epochs"}
    identity = {"config": settings, "seed": seed, "num_images": n}
    start_epoch, start_step, rng_state = 0, 0, None
    loaded = load_latest(work_dir, PREFIX)
    if loaded is not None:
        state, path = loaded
        if state.get("format") != CHECKPOINT_FORMAT or state.get("identity") != identity:
            raise ValueError(
                f"{path} is a GAN checkpoint of other settings or data ({state.get('identity')}); "
                f"use another work folder or delete it"
            )
        g.load_state_dict(state["G"])
        d.load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        start_epoch, start_step, rng_state = state["epoch"], state["step"], state["rng"]
        if (start_epoch, start_step) > (cfg.epochs, 0):
            raise ValueError(f"{path} is past epoch {start_epoch}, more than gan.epochs={cfg.epochs}")
    if start_epoch >= cfg.epochs:
        return g.eval()

    data = prepare_images(images, cfg.image_size, device)
    use_bf16 = cuda and torch.cuda.is_bf16_supported()

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    def save(epoch: int, step: int, rng: torch.Generator | None) -> None:
        state = {
            "format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch, "step": step,
            "G": g.state_dict(), "D": d.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "rng": None if rng is None else rng.get_state(),
        }
        save_checkpoint(work_dir, PREFIX, state, epoch, step)

    def report(epoch: int, step: int, stats: list[float]) -> None:
        if on_progress is not None:
            on_progress({"type": "gan", "epoch": epoch, "epochs": cfg.epochs, "step": step, "steps": steps,
                         "loss_d": stats[0], "loss_g": stats[1], "d_real": stats[2], "d_fake": stats[3]})

    g.train()
    d.train()
    for epoch in range(start_epoch, cfg.epochs):
        rng = make_generator(seed, "gan-epoch", epoch)
        perm = torch.randperm(n, generator=rng)
        first = 0
        if epoch == start_epoch and start_step > 0:
            first = start_step
            rng.set_state(rng_state)  # continue the stream right after the last checkpointed step
        pending: list[torch.Tensor] = []
        pending_from = first
        for step in range(first, steps):
            idx = perm[step * batch : (step + 1) * batch]
            flip = torch.rand(batch, generator=rng) < 0.5
            z = (torch.rand(batch, cfg.z_dim, generator=rng) * 2 - 1).to(device)
            real = _real_batch(data, idx, flip, cuda)
            pending.append(_train_step(g, d, opt_g, opt_d, real, z, cfg.g_steps, autocast))
            done = step + 1
            if done == steps:
                stats = _checked(pending, epoch, pending_from, cfg.epochs, steps)
                save(epoch + 1, 0, None)
                report(epoch, done, stats)
                faults.point("gan-train", epoch=epoch)
            elif done % log_every == 0:
                stats = _checked(pending, epoch, pending_from, cfg.epochs, steps)
                pending_from = done
                report(epoch, done, stats)
            finished = done == steps and epoch == cfg.epochs - 1
            if should_stop is not None and not finished and should_stop():
                if done < steps:
                    if pending:
                        _checked(pending, epoch, pending_from, cfg.epochs, steps)
                    save(epoch, done, rng)
                raise Stopped(f"GAN training stopped at epoch {epoch + 1}/{cfg.epochs}, step {done}/{steps}")
    return g.eval()
