"""Training throughput: our CPL loop and our DCGAN step against bare PyTorch loops on the same model/batch.

    python benchmarks/train_throughput.py                 # Market size: ResNet-50 at 256x128, batch 64
    python benchmarks/train_throughput.py --quick         # CI size: ResNet-18 at 128x64, batch 16
    python benchmarks/train_throughput.py --device cuda   # on a GPU (bf16 autocast, channels_last)

Ours = `cpl.engine.trainer.Trainer.train_epoch` on in-memory uint8 images: batched augmentation on the
device, CPL pseudo-labels from the centers, center loss and Wen update, statistics. Bare = the textbook
loop on the same network: a pre-made normalised batch, cross-entropy, backward, SGD step. The ratio
bare/ours is the per-step overhead of everything CPL adds. Both run in this process, interleaved, after
a warm-up; the median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch import nn

from cpl.config import Config, GanConfig
from cpl.engine.control import Precision
from cpl.engine.seeding import make_generator
from cpl.engine.trainer import TrainData, Trainer, amp_dtype
from cpl.gan.dcgan import build_models
from cpl.methods import DEFAULT_METHOD
from cpl.models.reid import ReIDNet
from cpl.pseudo import get_strategy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reid_setup(args, device):
    cfg = Config()
    cfg.train.compile = args.compile
    cfg.data.root = "unused"
    cfg.train.method = DEFAULT_METHOD  # CPL
    cfg.train.batch_size = args.batch
    cfg.train.max_iters_per_epoch = args.iters
    cfg.train.log_every = args.iters  # one metrics record per timed epoch
    cfg.train.amp = args.amp
    cfg.augment.random_erasing = 0.5
    k = args.classes
    n_lab = args.batch * args.iters
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * n_lab, 3, args.height, args.width), dtype=torch.uint8, generator=g)
    data = TrainData(images=images, labels=torch.randint(0, k, (n_lab,), generator=g), num_labeled=n_lab,
                     num_classes=k)
    torch.manual_seed(0)
    ours = Trainer(cfg, data, ReIDNet(args.backbone, k, 0.75), get_strategy(cfg.train), device)
    torch.manual_seed(0)
    bare_model = ReIDNet(args.backbone, k, 0.75).to(device)
    if device.type == "cuda":
        bare_model = bare_model.to(memory_format=torch.channels_last)
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, args.height, args.width, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, k, (args.batch,), device=device)
    dtype = amp_dtype(cfg, device)
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    loss_fn = nn.CrossEntropyLoss()

    def run_ours() -> float:
        _sync(device)
        t = time.perf_counter()
        ours.train_epoch(0)
        _sync(device)
        return args.batch * args.iters / (time.perf_counter() - t)

    def run_bare() -> float:
        bare_model.train()
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.iters):
            with ctx():
                _, logits = bare_model(x)
            loss = loss_fn(logits.float(), y)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()
        _sync(device)
        return args.batch * args.iters / (time.perf_counter() - t)

    return run_ours, run_bare


def gan_setup(args, device):
    from cpl.gan.train import _real_batch, train_step  # the exact step train_gan runs

    cfg = GanConfig(image_size=args.gan_size, batch_size=64)
    g, d = build_models(cfg, make_generator(0, "bench"))
    g, d = g.to(device), d.to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    data = torch.randint(0, 256, (4 * cfg.batch_size, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8,
                         device=device)
    idx = torch.arange(cfg.batch_size)
    flip = torch.rand(cfg.batch_size) < 0.5
    real = data[: cfg.batch_size].float() / 127.5 - 1
    z = torch.rand(cfg.batch_size, cfg.z_dim, device=device) * 2 - 1
    ac = Precision.choose("auto", device, loss_scaling=False).autocast  # train_gan's rule
    bce = nn.BCEWithLogitsLoss()
    steps = args.gan_steps

    def run_ours() -> float:
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):  # batch assembly from uint8 memory (flip) + the step, as train_gan does
            train_step(g, d, opt_g, opt_d, _real_batch(data, idx, flip, device.type == "cuda"), z, cfg.g_steps, ac)
        _sync(device)
        return cfg.batch_size * steps / (time.perf_counter() - t)

    def run_bare() -> float:  # textbook DCGAN step: one D update, g_steps G updates
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            with ac():
                fake = g(z)
                lr, lf = d(real), d(fake.detach())
                loss_d = bce(lr.float(), torch.ones_like(lr.float())) + bce(lf.float(), torch.zeros_like(lf.float()))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            for _ in range(cfg.g_steps):
                with ac():
                    out = d(g(z)).float()
                    loss_g = bce(out, torch.ones_like(out))
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
        _sync(device)
        return cfg.batch_size * steps / (time.perf_counter() - t)

    return run_ours, run_bare


def measure(name: str, pair, repeats: int) -> dict:
    run_ours, run_bare = pair
    run_ours(), run_bare()  # warm-up (cudnn autotune, allocator, first-call overheads)
    ours, bare = [], []
    for _ in range(repeats):
        ours.append(run_ours())
        bare.append(run_bare())
    o, b = statistics.median(ours), statistics.median(bare)
    ratios = statistics.median(b_ / o_ for o_, b_ in zip(ours, bare))
    print(f"{name:<26} ours {o:9.1f} img/s   bare {b:9.1f} img/s   bare/ours {ratios:.3f} "
          f"(overhead {100 * (ratios - 1):+.1f} %)   "
          f"[{min(ours):.1f}-{max(ours):.1f} vs {min(bare):.1f}-{max(bare):.1f}]")
    return {"ours": o, "bare": b, "ratio": ratios}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's settings (also used by gpu_check.py, which runs :func:`reid_setup` itself)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="CI-sized: ResNet-18, 128x64, batch 16, GAN 64x64")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--classes", type=int, default=751)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gan-size", type=int, default=128)
    p.add_argument("--gan-steps", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="torch.compile our network (train.compile=true)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="autocast of both re-ID loops (train.amp; auto = bf16 on CUDA, off on CPU)")
    if p.parse_known_args(argv)[0].quick:  # CI-sized defaults; explicit options still win
        p.set_defaults(backbone="resnet18", height=128, width=64, batch=16, iters=3, repeats=3, gan_size=64,
                       gan_steps=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"re-ID: {args.backbone} at {args.height}x{args.width}, batch {args.batch}, {args.iters} iterations "
          f"x {args.repeats} repeats; GAN: DCGAN {args.gan_size}x{args.gan_size}, batch 64, {args.gan_steps} steps")
    out = {"reid": measure(f"re-ID step ({args.backbone})", reid_setup(args, device), args.repeats),
           "gan": measure(f"GAN step (DCGAN {args.gan_size})", gan_setup(args, device), args.repeats)}
    return out


if __name__ == "__main__":
    main()
