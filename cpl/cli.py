"""The ``cpl`` command.

    cpl check DATA_DIR [--kind K]         validate a dataset (any format), print split statistics
    cpl synth OUT_DIR [--ids N --seed S]  write the built-in synthetic dataset
    cpl run --config F [--set k=v ...]    run the whole pipeline into a new run directory
    cpl resume RUN_DIR                    continue a run from its last checkpoint
    cpl cancel RUN_DIR                    stop a run (gracefully, then its process group)
    cpl ls                                list runs with state and metrics
    cpl query RUN_DIR IMAGE               rank a run's gallery for one image
    cpl sweep --config F --methods ...    a grid of runs and its Table-1 style results
    cpl visrank RUN_DIR [--worst N]       a ranked-list sheet (PNG) of a run's queries
    cpl actmap RUN_DIR --query Q          activation maps of a query and its top matches (PNG)
    cpl export RUN_DIR --format onnx      the run's retrieval feature extractor as ONNX + model.json
    cpl embed MODEL_DIR IMAGES --out F    features of an image folder with an exported model (ONNX Runtime)

User errors (bad config, bad data) print one line and exit 2; a failed run exits 1; a cancelled run 130.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cpl import PROG, __version__
from cpl.config import ConfigError, fast_dev_run, load_config
from cpl.data.formats import AUTO, FORMATS
from cpl.engine.threads import set_wait_policy
from cpl.runs.rundir import RunDir, default_runs_root, list_runs
from cpl.runs.state import State


def _err(msg: str, code: int = 2) -> int:
    print(f"cpl: error: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------- check/synth


def cmd_check(args: argparse.Namespace) -> int:
    """``cpl check DIR``: validate a dataset of any format; exit 0 when usable, 2 otherwise."""
    from cpl.data.check import check_dataset

    t0 = time.time()
    report = check_dataset(Path(args.data_dir), kind=args.kind, decode=not args.no_decode)
    print(report.format())
    print(f"checked in {time.time() - t0:.1f} s")
    return 0 if report.ok else 2


def cmd_synth(args: argparse.Namespace) -> int:
    """``cpl synth OUT``: render the built-in synthetic dataset into ``OUT``."""
    from cpl.synth import generate

    t0 = time.time()
    try:
        stats = generate(Path(args.out_dir), ids=args.ids, seed=args.seed, cameras=args.cameras)
    except ValueError as exc:
        return _err(str(exc))
    print(f"synthetic dataset written to {args.out_dir} in {time.time() - t0:.1f} s: {stats}")
    return 0


# ---------------------------------------------------------------------------------------------- runs


def _run_outcome(run: RunDir, fn) -> int:
    from cpl.engine.control import Stopped
    from cpl.pipeline import summary_line

    try:
        results = fn()
    except (Stopped, InterruptedError, KeyboardInterrupt):
        print(f"cancelled: {run.path} (resume with `cpl resume {run.path}`)", file=sys.stderr)
        return 130
    except Exception as exc:  # recorded in status.json by the pipeline; print the one-line reason
        from cpl.runs.status import read_raw

        st = read_raw(run) or {}
        print(f"cpl: run failed: {st.get('error') or exc}", file=sys.stderr)
        if st.get("hint"):
            print(f"hint: {st['hint']}", file=sys.stderr)
        if st.get("hint") == "see log.txt for the traceback" or not st.get("error"):
            import traceback

            traceback.print_exc()
        return 1
    if results:
        print(f"{run.id}: {summary_line(results)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``cpl run``: prepare a run directory from a config and run it (foreground, or detached with ``--detach``)."""
    from cpl.runs.launch import prepare_run as prepare

    try:
        cfg = load_config(args.config, args.set)
        if args.fast_dev_run:
            cfg = fast_dev_run(cfg)
    except ConfigError as exc:
        return _err(str(exc))
    runs_root = Path(args.runs_root)
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.detach:
        from cpl.runs.launch import launch_resume

        try:
            run = prepare(cfg, runs_root, run_dir, argv=sys.argv)
        except (FileExistsError, ValueError) as exc:
            return _err(str(exc))
        pid = launch_resume(run)
        print(f"{run.path} (pid {pid})")
        return 0
    from cpl.engine import dist
    from cpl.pipeline import execute

    info = dist.from_env()
    if info.enabled:  # torchrun: rank 0 creates the run directory, every rank learns its path
        dist.init(info, dist.resolve_device(cfg.device, info))
    run = None
    if info.is_main:
        try:
            run = prepare(cfg, runs_root, run_dir, argv=sys.argv)
        except (FileExistsError, ValueError) as exc:
            if not info.enabled:
                return _err(str(exc))
    path = dist.broadcast_object(str(run.path) if run else None)
    if path is None:
        return _err("could not create the run directory")
    run = RunDir(Path(path))
    if info.is_main:
        print(f"run directory: {run.path}", file=sys.stderr)
    return _run_outcome(run, lambda: execute(run, progress_bar=sys.stderr.isatty()))


def cmd_resume(args: argparse.Namespace) -> int:
    """``cpl resume RUN_DIR``: continue a prepared, failed or cancelled run from its last checkpoint."""
    from cpl.runs.status import read_status

    run = RunDir(Path(args.run_dir))
    if not run.config.is_file():
        return _err(f"{run.path}: not a run directory (no config.yaml)")
    st = read_status(run)
    if st.get("state") == State.RUNNING and not st.get("dead") and st.get("pid") and args.detach is False:
        return _err(f"{run.id}: is already running (pid {st.get('pid')})")
    if args.detach:
        from cpl.runs.launch import launch_resume

        print(f"{run.path} (pid {launch_resume(run)})")
        return 0
    from cpl.engine import dist
    from cpl.pipeline import execute

    info = dist.from_env()
    if info.enabled:
        dist.init(info, dist.resolve_device(load_config(run.config).device, info))
    return _run_outcome(run, lambda: execute(run, progress_bar=sys.stderr.isatty()))


def cmd_cancel(args: argparse.Namespace) -> int:
    """``cpl cancel RUN_DIR``: stop a run (or a sweep) cleanly at its next iteration boundary."""
    from cpl.runs.launch import cancel

    run = RunDir(Path(args.run_dir))
    if not (run.run_json.is_file() or (run.path / "sweep.json").is_file()):
        return _err(f"{run.path}: not a run or sweep directory")
    print(f"{run.id}: {cancel(run, grace_s=args.grace)}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """``cpl ls``: one line per run of the runs root (state, progress, rank-1/mAP)."""
    from cpl.runs.status import read_status

    runs = list_runs(Path(args.runs_root))
    if not runs:
        print(f"no runs in {args.runs_root}")
        return 0
    print(f"{'run':<52} {'state':<10} {'stage':<9} {'progress':>8}  result")
    for run in runs:
        st = read_status(run)
        res = run.read_json("results.json") or {}
        result = f"r1 {res['rank1']:.1f} mAP {res['mAP']:.1f}" if "rank1" in res else (st.get("error") or "")
        print(f"{run.id:<52} {st.get('state', '?'):<10} {st.get('stage') or '':<9} "
              f"{100 * float(st.get('progress') or 0):7.1f}%  {result}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """``cpl query RUN_DIR IMAGE``: rank a finished run's gallery for one image (:mod:`cpl.evaluation.query`)."""
    from cpl.evaluation.query import query_main

    return query_main(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``cpl sweep``: a grid of runs and its Table-1 style results (:mod:`cpl.sweep.runner`)."""
    from cpl.sweep.runner import sweep_main

    return sweep_main(args)


def cmd_visrank(args: argparse.Namespace) -> int:
    """``cpl visrank RUN_DIR``: a ranked-list sheet of a finished run (:mod:`cpl.views.sheet`)."""
    from cpl.views.sheet import visrank_main

    return visrank_main(args)


def cmd_actmap(args: argparse.Namespace) -> int:
    """``cpl actmap RUN_DIR --query Q``: activation maps of a query and its top-k (:mod:`cpl.views.activation`)."""
    from cpl.views.activation import actmap_main

    return actmap_main(args)


def cmd_export(args: argparse.Namespace) -> int:
    """``cpl export RUN_DIR --format onnx``: the retrieval feature extractor as ONNX (:mod:`cpl.deploy.onnx`)."""
    from cpl.deploy.onnx import export_main

    return export_main(args)


def cmd_embed(args: argparse.Namespace) -> int:
    """``cpl embed MODEL_DIR IMAGES``: features of an image folder through ONNX Runtime (:mod:`cpl.deploy.embed`)."""
    from cpl.deploy.embed import embed_main

    return embed_main(args)


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``cpl`` argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog=PROG, description="Center-based Pseudo-Labeling for semi-supervised re-ID")
    p.add_argument("--version", action="version", version=f"cpl {__version__}")
    p.add_argument("--runs-root", default=str(default_runs_root()),
                   help="folder of run directories (default: $CPL_RUNS_ROOT or ./runs)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check", help="validate a dataset (any format) and print split statistics")
    s.add_argument("data_dir")
    s.add_argument("--kind", choices=[AUTO, *FORMATS], default=AUTO,
                   help="the dataset's format (default: recognised from the folder's layout)")
    s.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster, less thorough)")
    s.set_defaults(fn=cmd_check)

    s = sub.add_parser("synth", help="write the built-in synthetic re-ID dataset (Market layout)")
    s.add_argument("out_dir")
    s.add_argument("--ids", type=int, default=120, help="identities per split (default 120)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cameras", type=int, default=4)
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("run", help="run the pipeline (GAN, training, evaluation, artifacts)")
    s.add_argument("--config", required=True,
                   help="YAML config, e.g. configs/synthetic.yaml, or a packaged config by name (synthetic)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    s.add_argument("--run-dir", help="run directory (default: a new folder under the runs root)")
    s.add_argument("--fast-dev-run", action="store_true",
                   help="shrink the config to a ~1 minute CPU run through every stage")
    s.add_argument("--detach", action="store_true", help="start in the background and print the run directory")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("resume", help="continue a run from its last checkpoint")
    s.add_argument("run_dir")
    s.add_argument("--detach", action="store_true", help="resume in the background")
    s.set_defaults(fn=cmd_resume)

    s = sub.add_parser("cancel", help="stop a run or sweep: SIGTERM, then SIGKILL of its process group after --grace s")
    s.add_argument("run_dir")
    s.add_argument("--grace", type=float, default=30.0)
    s.set_defaults(fn=cmd_cancel)

    s = sub.add_parser("ls", help="list runs")
    s.set_defaults(fn=cmd_ls)

    s = sub.add_parser("query", help="rank a run's gallery for an image file (used by the app's upload)")
    s.add_argument("run_dir")
    s.add_argument("image")
    s.add_argument("--topk", type=int, default=20)
    s.add_argument("--out", help="write the result as JSON here (default: print it)")
    s.set_defaults(fn=cmd_query)

    from cpl.sweep.runner import add_sweep_arguments

    s = sub.add_parser("sweep", help="run a grid of methods x GAN-image counts x seeds and tabulate it")
    add_sweep_arguments(s)
    s.set_defaults(fn=cmd_sweep)

    from cpl.deploy.embed import add_embed_arguments
    from cpl.views.activation import add_actmap_arguments
    from cpl.views.sheet import add_visrank_arguments

    s = sub.add_parser("visrank", help="write a ranked-list sheet (PNG): the worst queries and their top-k")
    add_visrank_arguments(s)
    s.set_defaults(fn=cmd_visrank)
    s = sub.add_parser("actmap", help="write activation maps of a query and its top-k (PNG)")
    add_actmap_arguments(s)
    s.set_defaults(fn=cmd_actmap)
    s = sub.add_parser("export", help="export the run's retrieval feature extractor (ONNX + model.json)")
    s.add_argument("run_dir")
    s.add_argument("--format", default="onnx", choices=["onnx"], help="model format (default onnx)")
    s.add_argument("--out", help="folder to write model.onnx and model.json into (default: RUN/onnx)")
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("embed", help="features of an image folder with an exported model (ONNX Runtime)")
    add_embed_arguments(s)
    s.set_defaults(fn=cmd_embed)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cpl`` command; returns the exit code (2 for a config the user must fix)."""
    set_wait_policy()  # before anything imports torch: OpenMP reads it once, when torch loads it
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
