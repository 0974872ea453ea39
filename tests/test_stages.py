"""A run is a table of named stages walked by one runner; run state is typed.

* the stage table is in run order, every stage's files are real run-directory entries named in the contract
  (docs/run-directory.md), and only the runner writes status;
* the runner splits the progress bar by the stages' weights, skips a stage a run does not have, and runs the
  rank-0-only stages on rank 0 alone;
* no state or stage is compared as free text in app/ or pages/ (an AST scan of every comparison).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cpl.config import load_config
from cpl.pipeline import STAGES
from cpl.runs.rundir import RunDir
from cpl.runs.state import QueueReason, Stage, State, parse
from cpl.stages import runner
from cpl.stages.context import StageSpec

REPO = Path(__file__).resolve().parents[1]


def test_the_stage_table_is_in_run_order_and_writes_files_of_the_contract(tmp_path: Path) -> None:
    names = [s.name for s in STAGES]
    order = [s for s in Stage if s not in (Stage.QUEUED, Stage.DONE)]
    assert names == order
    contract = (REPO / "docs" / "run-directory.md").read_text()
    run = RunDir(tmp_path / "r")
    for spec in STAGES:
        assert spec.writes and spec.resume
        for attr in spec.writes:
            path = getattr(run, attr)  # a RunDir attribute, i.e. a file of the contract
            assert f"`{path.name}" in contract, f"{spec.name} writes {path.name}, missing from docs/run-directory.md"
    assert [s.name for s in STAGES if s.main_only] == [Stage.EVALUATE, Stage.EXPORT]


def _status_access(tree: ast.AST) -> list[str]:
    """Imports of the status module and uses of status.json's path (``run.status``) or a status writer."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "cpl.runs.status":
            out.append(f"imports {node.module}")
        if isinstance(node, ast.Attribute) and node.attr in ("status", "status_writer"):
            out.append(f".{node.attr} at line {node.lineno}")
        if isinstance(node, ast.Name) and node.id == "StatusWriter":
            out.append(f"StatusWriter at line {node.lineno}")
    return out


def test_only_the_runner_writes_status() -> None:
    stage_files = [p for p in sorted((REPO / "cpl" / "stages").glob("*.py")) if p.name != "runner.py"]
    assert len(stage_files) >= 5
    for path in stage_files:
        assert not _status_access(ast.parse(path.read_text())), f"{path.name} touches status by hand"
    assert _status_access(ast.parse((REPO / "cpl" / "stages" / "runner.py").read_text()))  # the scan sees it


def _fake_stage(name: Stage, weight: float, seen: list, **kw) -> StageSpec:
    def run(ctx) -> None:
        ctx.progress(0.5, f"half of {name}")
        seen.append((name, ctx.cfg.train.method))
        if name == Stage.EVALUATE:
            ctx.evaluated = type("E", (), {"results": {"rank1": 50.0, "mAP": 25.0}})()

    return StageSpec(name, run, weight=lambda cfg: weight, writes=("results",), resume="-", **kw)


class _Status:
    def __init__(self) -> None:
        self.updates: list[dict] = []

    def update(self, **fields) -> None:
        self.updates.append(fields)


def _ctx(tmp_path: Path, method: str, is_main: bool = True):
    from cpl.engine.dist import DistInfo
    from cpl.stages.context import RunContext

    cfg = load_config(REPO / "configs" / "synthetic.yaml", [f"train.method={method}"])
    info = DistInfo(rank=0 if is_main else 1, world_size=1 if is_main else 2)
    (tmp_path / "r").mkdir(exist_ok=True)
    return RunContext(run=RunDir(tmp_path / "r"), cfg=cfg, device=None, dist=info, should_stop=lambda: False,
                      progress_bar=False)


def test_the_runner_walks_the_stages_a_run_has_and_splits_the_progress_bar(tmp_path: Path) -> None:
    seen: list = []
    stages = [_fake_stage(Stage.DATA, 1.0, seen),
              _fake_stage(Stage.UNLABELED, 2.0, seen, when=lambda cfg: cfg.uses_unlabeled),
              _fake_stage(Stage.TRAIN, 5.0, seen), _fake_stage(Stage.EVALUATE, 2.0, seen, main_only=True)]
    status = _Status()
    results = runner._walk(_ctx(tmp_path, "cpl"), stages, status)
    assert [s for s, _ in seen] == [Stage.DATA, Stage.UNLABELED, Stage.TRAIN, Stage.EVALUATE]
    halves = [(u["stage"], u["progress"]) for u in status.updates if u.get("message", "").startswith("half")]
    assert halves == [(Stage.DATA, pytest.approx(0.05)), (Stage.UNLABELED, pytest.approx(0.2)),
                      (Stage.TRAIN, pytest.approx(0.55)), (Stage.EVALUATE, pytest.approx(0.9))]
    assert list(results["stage_times_s"]) == ["data", "unlabeled", "train", "evaluate"]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["rank1"] == 50.0

    seen.clear()
    status = _Status()
    runner._walk(_ctx(tmp_path, "baseline"), stages, status)  # no unlabeled images: no unlabeled stage
    assert [s for s, _ in seen] == [Stage.DATA, Stage.TRAIN, Stage.EVALUATE]
    halves = [u["progress"] for u in status.updates if u.get("message", "").startswith("half")]
    assert halves == [pytest.approx(0.0625), pytest.approx(0.4375), pytest.approx(0.875)]

    seen.clear()
    assert runner._walk(_ctx(tmp_path, "cpl", is_main=False), stages, _Status()) == {}
    assert Stage.EVALUATE not in [s for s, _ in seen]  # rank 0 alone evaluates


def test_the_eta_is_known_from_the_first_stage_on_and_follows_each_stage_s_pace(tmp_path: Path, monkeypatch) -> None:
    """A clock advanced by the stages themselves: the first stage (a DCGAN's epochs, resumed at 25 %) takes 10 s
    per quarter, the second 1 s per quarter. ETA = the current stage's seconds per unit of run progress × the
    progress left; until a stage has two points, the run's pace so far."""
    clock = [1000.0]
    monkeypatch.setattr(runner.time, "time", lambda: clock[0])

    def stage(name: Stage, fracs: list[float], step_s: float) -> StageSpec:
        def run(ctx) -> None:
            for f in fracs:
                ctx.progress(f, f"{name} {f}")
                clock[0] += step_s
        return StageSpec(name, run, weight=lambda cfg: 1.0, writes=("results",), resume="-")

    status = _Status()
    stages = [stage(Stage.UNLABELED, [0.25, 0.5, 0.75, 1.0], 10.0), stage(Stage.TRAIN, [0.25, 0.5, 1.0], 1.0)]
    ctx = _ctx(tmp_path, "cpl")
    ctx.evaluated = type("E", (), {"results": {"rank1": 1.0, "mAP": 1.0}})()
    runner._walk(ctx, stages, status)
    etas = [(u["message"], u.get("eta_s")) for u in status.updates if u.get("message")]
    assert etas == [
        ("unlabeled 0.25", None),  # the resumed stage's start: no work measured yet
        # 80 s per unit of run progress (0.125 in 10 s) × 0.75, 0.625, 0.5 left
        ("unlabeled 0.5", pytest.approx(60.0)), ("unlabeled 0.75", pytest.approx(50.0)),
        ("unlabeled 1.0", pytest.approx(40.0)),
        ("train 0.25", pytest.approx(30.0)),  # the new stage's first point: the run's pace, 80 s per unit × 0.375
        ("train 0.5", pytest.approx(2.0)), ("train 1.0", pytest.approx(0.0)),  # then its own: 8 s per unit
    ]


def test_states_round_trip_through_json_and_damaged_values_parse_to_none() -> None:
    text = json.dumps({"state": State.RUNNING, "stage": Stage.TRAIN, "queue_reason": QueueReason.DEVICE})
    back = json.loads(text)
    assert back == {"state": "running", "stage": "train", "queue_reason": "device"}
    assert parse(State, back["state"]) is State.RUNNING and parse(Stage, back["stage"]) is Stage.TRAIN
    for junk in (None, 3, "Running", "", ["running"]):
        assert parse(State, junk) is None


_VALUES = {m.value for e in (State, Stage, QueueReason) for m in e}


def _free_text_comparisons(path: Path) -> list[str]:
    """Comparisons (==, !=, in, not in) of anything with a string literal that is a state, stage or queue reason."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            consts = [side] if isinstance(side, ast.Constant) else (
                list(side.elts) if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [])
            for c in consts:
                if isinstance(c, ast.Constant) and c.value in _VALUES:
                    found.append(f"{path.name}:{node.lineno}: {c.value!r}")
    return found


def test_no_state_or_stage_is_compared_as_free_text_in_the_app() -> None:
    files = sorted([*(REPO / "app").glob("*.py"), *(REPO / "pages").glob("*.py"), REPO / "streamlit_app.py"])
    found = [hit for f in files for hit in _free_text_comparisons(f)]
    assert not found, "compare with cpl.runs.state members instead:\n" + "\n".join(found)


def test_the_scan_catches_a_free_text_comparison(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text('def f(s):\n    return s.get("state") == "finished" or s["stage"] in ("train", "export")\n')
    assert _free_text_comparisons(bad) == ["probe.py:2: 'finished'", "probe.py:2: 'train'", "probe.py:2: 'export'"]
