"""The training-control layer both loops share (cpl/engine/control.py, cpl/engine/optim.py): the LR schedule is
the hand-written one to the last bit, its state survives a checkpoint, and both loops raise the same
exceptions, with their position as fields, on a NaN and on a stop request."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from cpl.config import Config, GanConfig
from cpl.engine import control
from cpl.engine.checkpoints import TRAIN_PREFIX, read_checkpoint, save_checkpoint
from cpl.engine.control import FiniteCheck, NonFiniteLoss, Precision, Stopped, Sums, autocast_dtype
from cpl.engine.optim import EpochClock, build_optimizer, build_scheduler
from cpl.engine.trainer import Hooks, TrainData, Trainer
from cpl.gan.train import PREFIX as GAN_PREFIX
from cpl.gan.train import train_gan
from cpl.models.reid import ReIDNet
from cpl.pseudo import get_strategy

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- LR schedule


def _old_lr_at(cfg: Config, epoch: float) -> float:
    """The hand-written schedule the scheduler replaced, verbatim (cpl/engine/trainer.py before issue 11)."""
    t = cfg.train
    lr = t.lr * t.lr_gamma ** sum(epoch >= m for m in t.lr_milestones)
    if epoch < t.lr_warmup_epochs:
        a = epoch / t.lr_warmup_epochs
        lr *= t.lr_warmup_factor * (1 - a) + a
    return lr


def _old_rates(cfg: Config, iters: list[int]) -> list[tuple[float, float]]:
    """(trunk, classifier) rate of every iteration as the old loop set them: lr_at(epoch) at the start of an
    epoch, lr_at(epoch + it / iters) at every iteration of a warm-up epoch, the classifier's × its multiplier."""
    t, out = cfg.train, []
    for epoch, n in enumerate(iters):
        lr = _old_lr_at(cfg, epoch)
        for it in range(n):
            if epoch < t.lr_warmup_epochs:
                lr = _old_lr_at(cfg, epoch + it / n)
            out.append((lr * 1.0, lr * t.classifier_lr_mult))
    return out


def _schedule_cfg(lr, warmup, factor, milestones, gamma=0.1, mult=10.0, epochs=6) -> Config:
    cfg = Config()
    t = cfg.train
    t.lr, t.lr_warmup_epochs, t.lr_warmup_factor, t.lr_milestones, t.lr_gamma = lr, warmup, factor, milestones, gamma
    t.classifier_lr_mult, t.epochs = mult, epochs
    return cfg


class _TwoGroups(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk, self.classifier = nn.Linear(3, 3), nn.Linear(3, 2)

    def param_groups(self, lr, mult):
        return [{"params": list(self.trunk.parameters()), "lr": lr, "name": "trunk"},
                {"params": list(self.classifier.parameters()), "lr": lr * mult, "name": "classifier"}]


@pytest.mark.parametrize("cfg, iters", [
    (_schedule_cfg(3.5e-4, 3, 0.01, [2, 4]), [7] * 6),  # BoT's shape, a milestone inside the warm-up
    (_schedule_cfg(1e-3, 0, 0.01, [1, 3], gamma=0.3, mult=7.0), [5] * 6),  # no warm-up: step decay only
    (_schedule_cfg(0.0123, 2, 0.07, [3]), [3, 3, 5, 5, 5, 5]),  # epochs grow when the unlabeled images join
    (_schedule_cfg(0.01, 2.5, 0.05, [4], mult=3.0), [4] * 6),  # a warm-up ending inside an epoch
    (_schedule_cfg(0.05, 1, 0.2, [2], gamma=0.5), [3, 0, 4, 4, 4, 4]),  # an empty epoch
], ids=["bot", "no-warmup", "growing-epochs", "fractional-warmup", "empty-epoch"])
def test_scheduler_rates_equal_the_hand_written_schedule_bit_for_bit(cfg, iters):
    model = _TwoGroups()
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, lambda e: iters[e])
    got = []
    for _ in range(sum(iters)):
        got.append(tuple(g["lr"] for g in opt.param_groups))
        opt.step()
        sched.step()
    assert got == _old_rates(cfg, iters)  # ==, not approx
    end = _old_lr_at(cfg, 6)  # after the last iteration: the rate of epoch 6's start
    assert [g["lr"] for g in opt.param_groups] == [end, end * cfg.train.classifier_lr_mult]


def test_epoch_clock_maps_iterations_to_fractional_epochs():
    clock = EpochClock(lambda e: [2, 0, 4][e], epochs=3)
    assert [clock.start(e) for e in range(4)] == [0, 2, 2, 6]
    assert [clock.position(s) for s in range(7)] == [0.0, 0.5, 2.0, 2.25, 2.5, 2.75, 3.0]
    assert EpochClock(5, epochs=2).position(7) == 1 + 2 / 5


def test_build_optimizer_picks_by_name_over_the_models_groups():
    cfg = _schedule_cfg(0.02, 0, 0.01, [5], mult=4.0)
    sgd = build_optimizer(cfg, _TwoGroups())
    assert isinstance(sgd, torch.optim.SGD) and [g["lr"] for g in sgd.param_groups] == [0.02, 0.08]
    assert sgd.defaults["momentum"] == cfg.train.momentum and sgd.defaults["weight_decay"] == cfg.train.weight_decay
    cfg.train.optimizer = "adam"
    assert isinstance(build_optimizer(cfg, _TwoGroups()), torch.optim.Adam)
    cfg.train.optimizer = "lion"
    with pytest.raises(ValueError, match="train.optimizer"):
        build_optimizer(cfg, _TwoGroups())


# ---------------------------------------------------------------------------------------------- re-ID loop


def _cfg(epochs=2) -> Config:
    cfg = Config()
    cfg.data.root = "unused"
    t = cfg.train
    t.method, t.epochs, t.batch_size, t.lr, t.lr_milestones, t.log_every = "cpl", epochs, 8, 0.01, [1], 1
    t.lr_warmup_epochs, t.warmup_epochs = 1, 1  # labeled-only epoch 0 (2 batches), then 3 batches
    cfg.augment.pad = 2
    return cfg


def _data() -> TrainData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 32, 16), generator=g, dtype=torch.uint8)
    return TrainData(images=images, labels=torch.arange(4).repeat_interleave(4), num_labeled=16, num_classes=4)


def _trainer(cfg: Config, hooks: Hooks | None = None) -> Trainer:
    torch.manual_seed(0)
    model = ReIDNet("resnet18", 4, 0.5)
    return Trainer(cfg, _data(), model, get_strategy(cfg.train), CPU, hooks=hooks)


def test_scheduler_state_round_trips_through_a_checkpoint_and_resume_is_exact(tmp_path: Path):
    cfg = _cfg()
    full = _trainer(cfg)
    full.fit()
    saved = {}
    first = _trainer(cfg, Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s))))
    assert [first.iters_per_epoch(e) for e in (0, 1)] == [2, 3]
    first.train_epoch(0)
    path = save_checkpoint(tmp_path, TRAIN_PREFIX, saved[0], 1)
    ckpt = read_checkpoint(path, TRAIN_PREFIX)  # weights_only: the scheduler state is plain data
    assert ckpt["scheduler"]["last_epoch"] == 2 == first.scheduler.last_epoch  # iterations done
    resumed = _trainer(cfg)
    resumed.load_state_dict(ckpt)
    assert resumed.scheduler.state_dict() == first.scheduler.state_dict()
    epoch1 = _old_lr_at(cfg, 1)  # after the milestone
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [epoch1, epoch1 * 10.0]
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.scheduler.state_dict() == full.scheduler.state_dict()


def test_a_checkpoint_from_before_the_saved_schedule_still_resumes_exactly():
    cfg = _cfg()
    full = _trainer(cfg)
    full.fit()
    saved = {}
    _trainer(cfg, Hooks(on_epoch_end=lambda e, s: saved.setdefault(e, copy.deepcopy(s)))).train_epoch(0)
    old = saved[0]
    old["scheduler"] = {"milestones": [1], "gamma": 0.1, "last_epoch": 0}  # what the old trainer wrote
    for g in old["optimizer"]["param_groups"]:
        g.pop("initial_lr")
        g["lr"] = 123.0  # the old loop set the rate at every epoch's start; the checkpoint's value was stale
    resumed = _trainer(cfg)
    resumed.load_state_dict(old)
    epoch1 = _old_lr_at(cfg, 1)
    assert resumed.scheduler.last_epoch == 2
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [epoch1, epoch1 * 10.0]
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_train_step_returns_named_statistics():
    tr = _trainer(_cfg())
    gen = torch.Generator().manual_seed(0)
    stats = tr.train_step(tr.make_batch(torch.arange(8), gen), epoch=0)
    assert stats.n == 8 and float(stats.n_labeled) == 8 and 0 <= float(stats.correct) <= 8
    sums = stats.sums()
    assert float(sums["loss"]) == pytest.approx(8 * float(stats.loss)) and sums["n"] == 8.0
    assert tr.scheduler.last_epoch == 1  # the step advanced the schedule


# ---------------------------------------------------------------------------------------------- both loops


def _gan_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return (255 * torch.rand(32, 3, 32, 16, generator=gen)).round().to(torch.uint8)


def _gan_cfg(**kw) -> GanConfig:
    return GanConfig(**{**dict(image_size=64, epochs=2, batch_size=8, z_dim=16, base_channels=8,
                               max_steps_per_epoch=3), **kw})


def test_both_loops_raise_the_same_non_finite_exception_with_their_position(tmp_path: Path):
    cfg = _cfg()
    cfg.train.lr = 1e30
    with pytest.raises(NonFiniteLoss) as train_err:
        _trainer(cfg).fit()
    with pytest.raises(NonFiniteLoss) as gan_err:
        train_gan(_gan_images(), _gan_cfg(lr=float("inf")), tmp_path, seed=0, device=CPU)
    t, g = train_err.value, gan_err.value
    assert (t.stage, t.epoch, t.epochs, t.steps) == ("train", 0, 2, 2) and 0 <= t.step < 2
    assert (g.stage, g.epoch, g.step, g.epochs, g.steps) == ("gan", 0, 0, 2, 3)
    assert set(g.values) == {"loss_d", "loss_g"} and str(g).startswith("non-finite GAN loss at epoch 1/2, step 1/3")
    assert "train.lr" in t.hint and "gan.lr" in g.hint  # status.json's hint follows the stage
    assert isinstance(t, FloatingPointError)


def test_both_loops_honour_a_stop_request_with_the_same_exception(tmp_path: Path):
    records: list[dict] = []
    tr = _trainer(_cfg(), Hooks(should_stop=lambda: len(records) >= 1, on_record=records.append))
    with pytest.raises(Stopped) as train_stop:
        tr.fit()
    calls = iter(range(100))
    with pytest.raises(Stopped) as gan_stop:
        train_gan(_gan_images(), _gan_cfg(), tmp_path, seed=0, device=CPU, should_stop=lambda: next(calls) == 1)
    t, g = train_stop.value, gan_stop.value
    assert (t.stage, t.epoch, t.step) == ("train", 0, 1) and tr.state.epoch == 0 and str(t).endswith("iteration 1/2")
    assert (g.stage, g.epoch, g.step) == ("gan", 0, 2) and str(g) == "GAN training stopped at epoch 1/2, step 2/3"
    assert any(p.name.startswith(f"{GAN_PREFIX}-e0000-s000002") for p in tmp_path.iterdir())  # resume point


# ---------------------------------------------------------------------------------------------- the parts


def test_finite_check_names_the_first_failing_step_and_its_losses():
    check = FiniteCheck("gan", CPU, every=2, epochs=3, unit="step", across_ranks=False, advice="lower gan.lr")
    check.observe(0, loss_d=torch.tensor(1.0), loss_g=torch.tensor(2.0))
    check.observe(1, loss_d=torch.tensor(float("nan")), loss_g=torch.tensor(2.0))
    check.observe(2, loss_d=torch.tensor(float("inf")), loss_g=torch.tensor(3.0))
    assert not check.due(1, 5) and check.due(2, 5) and check.due(5, 5)
    with pytest.raises(NonFiniteLoss, match=r"epoch 2/3, step 2/5 \(loss_d=nan, loss_g=2.0\): lower gan.lr") as err:
        check.check(1, 5)
    assert (err.value.epoch, err.value.step, err.value.hint) == (1, 1, control.HINTS["gan"])
    fine = FiniteCheck("train", CPU)
    fine.observe(0, loss=torch.tensor(0.5))
    fine.check(0)  # nothing to raise


def test_sums_are_named_and_restart_after_each_read():
    s = Sums(("loss", "n"), CPU)
    s.add({"loss": torch.tensor(1.5), "n": 4.0})
    s.add({"loss": torch.tensor(0.5), "n": 4.0})
    assert s.take() == {"loss": 2.0, "n": 8.0}
    assert s.take() == {"loss": 0.0, "n": 0.0}


def test_one_autocast_rule_for_both_loops(monkeypatch):
    cuda = torch.device("cuda", 0)
    assert [autocast_dtype(m, CPU) for m in ("auto", "off", "bf16", "fp16")] == [None, None, torch.bfloat16,
                                                                                 torch.float16]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16 == autocast_dtype("auto", cuda, loss_scaling=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", cuda) == torch.float16  # the re-ID loop has a GradScaler
    assert autocast_dtype("auto", cuda, loss_scaling=False) is None  # the DCGAN has none: full precision
    assert autocast_dtype("bf16", cuda) is None and autocast_dtype("off", cuda) is None
    assert Precision.choose("auto", CPU).grad_scaler() is None
    assert Precision("cpu", torch.float16).grad_scaler() is not None
