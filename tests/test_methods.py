"""The method table (cpl/methods.py) against the code that implements it.

(a) Every table entry has a strategy and every strategy an entry, and each flag is what the strategy and
the training loop really do, checked on tiny real tensors: a method that needs unlabeled images produces
targets for them (and the loop draws them), a method with the center loss puts λ·center term into the
loss, the extra class is the one the targets point at, the published weight and warm-up are the ones used.
(b) No method name is written as a string literal outside the table (and the strategies naming
themselves): the files are parsed with ``ast`` and every string constant is compared with the names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from cpl import PROG
from cpl.config import Config, ConfigError, TrainConfig, load_config
from cpl.engine.trainer import TrainData, Trainer
from cpl.methods import (
    BASELINE,
    CENTER_LOSS_METHODS,
    DEFAULT_METHOD,
    METHOD_NAMES,
    METHODS,
    Method,
    has_own_zero_row,
    needs_unlabeled,
    uses_center_loss,
)
from cpl.pseudo import STRATEGIES, Strategy, get_strategy
from cpl.sweep.grid import plan_cells

REPO = Path(__file__).resolve().parents[1]
K, D = 3, 4  # classes and feature size of the hand-made cases


# ---------------------------------------------------------------------------------------------- (a) the table


def test_every_method_has_a_strategy_and_every_strategy_a_method():
    assert set(METHODS) == set(STRATEGIES)
    assert list(METHOD_NAMES) == list(METHODS)
    for name, method in METHODS.items():
        assert isinstance(method, Method) and method.name == name and STRATEGIES[name].name == name


def test_the_strategy_flags_are_the_tables():
    for name, method in METHODS.items():
        s = STRATEGIES[name]
        assert (s.uses_unlabeled, s.center_loss, s.extra_class, s.default_weight, s.default_warmup_fraction,
                s.label_from) == (method.needs_unlabeled, method.center_loss, method.extra_class,
                                  method.unlabeled_weight, method.warmup_fraction, method.label_from), name


def test_every_entry_is_filled_in():
    for method in METHODS.values():
        assert method.label and method.description and method.reference, method.name
        assert method.color.startswith("#") and len(method.color) == 7, method.name
        assert 0 <= method.warmup_fraction < 1 and method.unlabeled_weight > 0, method.name
    assert len({m.color for m in METHODS.values()}) == len(METHODS)  # one line per method, told apart


def test_the_named_constants_and_helpers():
    assert BASELINE in METHODS and not needs_unlabeled(BASELINE) and not uses_center_loss(BASELINE)
    assert DEFAULT_METHOD in METHODS and Config().train.method == DEFAULT_METHOD == TrainConfig().method
    assert set(CENTER_LOSS_METHODS) == {n for n in METHODS if uses_center_loss(n)}
    for name, method in METHODS.items():
        assert needs_unlabeled(name) == method.needs_unlabeled and uses_center_loss(name) == method.center_loss
        assert has_own_zero_row(name) == (name != BASELINE and not method.needs_unlabeled)
    # A name the table does not hold (an older run's, None) is treated as before: not labeled-only, no center term.
    for name in ("no-such-method", "", None):
        assert needs_unlabeled(name) and not uses_center_loss(name) and not has_own_zero_row(name)


def test_config_accepts_exactly_the_table():
    for name in METHODS:
        cfg = load_config(None, ["data.root=x", f"train.method={name}"])
        assert cfg.uses_unlabeled == METHODS[name].needs_unlabeled
    with pytest.raises(ConfigError, match=r"train\.method"):
        load_config(None, ["data.root=x", "train.method=no-such-method"])


def test_the_sweep_runs_the_labeled_only_methods_once_at_zero():
    cells = plan_cells(list(METHODS), [0, 10], [0])
    assert {(c.method, c.gan_images) for c in cells} == (
        {(n, 0) for n, m in METHODS.items() if not m.needs_unlabeled}
        | {(n, 10) for n, m in METHODS.items() if m.needs_unlabeled})


# ---------------------------------------------------------------------------------------------- (a) behaviour


def _strategy(name: str, **kw) -> Strategy:
    return get_strategy(TrainConfig(method=name, **kw))


def _case(extra_class: bool) -> tuple[torch.Tensor, ...]:
    """Four unlabeled images near classes 0, 1, 2, 0; every center touched; the classifier's outputs (K, or
    K + 1 for an extra-class method, whose extra output the logits make the least likely)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(K, D, generator=g)
    feats = centers[[0, 1, 2, 0]] + 0.05 * torch.randn(4, D, generator=g)
    logits = torch.randn(4, K + extra_class, generator=g)
    if extra_class:
        logits[:, -1] = -5.0
    return feats, logits, centers, torch.ones(K, dtype=torch.bool)


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.needs_unlabeled])
def test_a_method_that_needs_unlabeled_images_produces_targets_for_them(name):
    method = METHODS[name]
    feats, logits, centers, valid = _case(method.extra_class)
    t = _strategy(name, warmup_epochs=0).targets(feats, logits, centers, valid, epoch=0)
    assert t.probs.shape == logits.shape and torch.all(t.probs >= 0)
    assert torch.allclose(t.probs.sum(1), torch.ones(4))
    assert torch.all(t.weight == method.unlabeled_weight)  # the published weight, on every image
    assert t.label.shape == (4,) and torch.all((t.label >= 0) & (t.label < logits.shape[1]))
    # The extra class is what an all-in-one target points at, and only then.
    on_extra = torch.allclose(t.probs[:, -1], torch.ones(4)) and torch.all(t.label == K).item()
    assert on_extra == method.extra_class


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.needs_unlabeled])
def test_the_published_warm_up_is_the_tables(name):
    epochs = 10
    s = _strategy(name, epochs=epochs)
    feats, logits, centers, valid = _case(METHODS[name].extra_class)
    trained = [bool(s.targets(feats, logits, centers, valid, epoch=e).weight.gt(0).all()) for e in range(epochs)]
    start = round(METHODS[name].warmup_fraction * epochs)
    assert trained == [e >= start for e in range(epochs)]


class TinyNet(nn.Module):
    """The smallest network the training loop accepts: pooled pixels → a linear feature → a classifier."""

    feat_dim = D

    def __init__(self, num_classes: int):
        super().__init__()
        self.trunk = nn.Linear(3, D)
        self.classifier = nn.Linear(D, num_classes)

    def forward(self, x):
        feats = self.trunk(x.float().mean(dim=(2, 3)))
        return feats, self.classifier(feats)

    def param_groups(self, lr: float, classifier_lr_mult: float) -> list[dict]:
        return [{"params": list(self.trunk.parameters()), "lr": lr, "name": "trunk"},
                {"params": list(self.classifier.parameters()), "lr": lr * classifier_lr_mult, "name": "classifier"}]


def _one_epoch(name: str, center_weight: float) -> tuple[Trainer, dict]:
    """One training epoch of ``name`` (two iterations) on 8 labeled + 8 unlabeled 8×4 images."""
    cfg = Config()
    cfg.data.root = "unused"
    t = cfg.train
    t.method, t.epochs, t.batch_size, t.lr, t.lr_milestones, t.log_every = name, 1, 8, 0.01, [1], 1
    t.warmup_epochs, t.center_weight = (0 if METHODS[name].needs_unlabeled else -1), center_weight
    cfg.augment.pad = 1
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 4), dtype=torch.uint8, generator=g)
    data = TrainData(images=images, labels=torch.arange(8) % K, num_labeled=8, num_classes=K)
    torch.manual_seed(0)
    s = get_strategy(t)
    trainer = Trainer(cfg, data, TinyNet(K + (1 if s.extra_class else 0)), s, torch.device("cpu"))
    return trainer, trainer.train_epoch(0)


@pytest.mark.parametrize("name", list(METHODS))
def test_the_loop_trains_on_unlabeled_images_and_adds_the_center_term_as_the_table_says(name):
    method, lam = METHODS[name], 0.5
    trainer, rec = _one_epoch(name, lam)
    # Unlabeled images are drawn into the epoch's batches, pseudo-labeled and trained on, only for a method
    # that needs them.
    assert trainer.num_train_images(0) == (16 if method.needs_unlabeled else 8)
    assert (rec.get("pl_seen", 0) > 0) == method.needs_unlabeled
    assert (rec["loss_unlabeled"] > 0) == method.needs_unlabeled
    # The λ-weighted center term is in the loss exactly for the center-loss methods.
    assert (rec["loss_center"] > 0) == method.center_loss
    assert rec["loss"] == pytest.approx(rec["loss_ce"] + rec["loss_unlabeled"] + lam * rec["loss_center"])


# ---------------------------------------------------------------------------------------------- (b) no literals

SCANNED = [REPO / "streamlit_app.py", *sorted((REPO / "cpl").rglob("*.py")), *sorted((REPO / "app").rglob("*.py")),
           *sorted((REPO / "pages").rglob("*.py"))]
ALLOWED = [REPO / "cpl" / "methods.py", REPO / "cpl" / "pseudo"]  # the table, and the strategies naming themselves


def method_literals(source: str, names=frozenset(METHODS)) -> list[tuple[int, str]]:
    """(line, text) of every string constant of ``source`` that is exactly a method name (the text between two
    replacement fields of an f-string is part of a longer string, not a quoted name)."""
    tree = ast.parse(source)
    in_fstring = {id(part) for node in ast.walk(tree)
                  if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values)
                  for part in node.values}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
            and id(node) not in in_fstring]


def test_the_scanner_finds_a_quoted_method_name_and_nothing_else():
    found = method_literals('x = ["cpl", \'fapl\']\nif m in ("baseline",): pass\ny = "cpl-check"\n'
                            'z = f"{m}cpl"\n"""center"""\nw = f"lsro"\n')
    assert sorted(found) == [(1, "cpl"), (1, "fapl"), (2, "baseline"), (5, "center"), (6, "lsro")]
    assert PROG == "cpl"  # why the program name is a constant: it is spelled like the method


def test_no_method_name_is_a_string_literal_outside_the_table():
    assert len(SCANNED) > 40 and all(p.is_file() for p in SCANNED)
    hits = [f"{path.relative_to(REPO)}:{line}: {text!r}"
            for path in SCANNED if not any(path == a or a in path.parents for a in ALLOWED)
            for line, text in method_literals(path.read_text(encoding="utf-8"))]
    assert hits == [], "method names spelled outside cpl/methods.py (read the table instead):\n" + "\n".join(hits)
