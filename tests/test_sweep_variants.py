"""Remedy variants as a sweep's grid axis: parsing ``--variants``, which methods each variant runs for, the cells'
configs through the real config validation, and the tables naming each variant as its own column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from app.charts import table1_frame
from cpl.config import ConfigError, remedies, remedies_of, to_dict
from cpl.remedy_table import PLAIN, Variant, acting_remedies, format_variants, parse_variants
from cpl.sweep.grid import Cell, cell_config, create_sweep, plan_cells
from cpl.sweep.tables import aggregate, collect, markdown_table, table_methods, write_tables

REPO = Path(__file__).resolve().parents[1]
OFFLINE = ["model.pretrained=none"]
GRID = "none;sinkhorn;csls;sinkhorn+csls;sel:train.select_min_margin=0.05"


def test_parse_variants_presets_combinations_and_custom_settings():
    got = parse_variants(GRID)
    assert got == [Variant(PLAIN), Variant("sinkhorn", ("train.assignment=sinkhorn",)),
                   Variant("csls", ("train.similarity=csls",)),
                   Variant("sinkhorn+csls", ("train.assignment=sinkhorn", "train.similarity=csls")),
                   Variant("sel", ("train.select_min_margin=0.05",))]
    assert parse_variants(format_variants(got)) == got  # what a resumed sweep passes back


@pytest.mark.parametrize("text, message", [
    ("select", "'select' has no preset"),  # thresholds differ by method: give them
    ("hub", "'hub' has no preset"),
    ("x:train.epochs=3", "not a remedy setting"),  # a variant changes remedies only; --set is for the rest
    ("none;sinkhorn;sinkhorn", "named twice"),
    ("sinkhorn+csls;sinkhorn-csls:train.similarity=csls", "named twice"),  # the same run id
    ("none:train.similarity=csls", "takes no settings"),
    ("a/b", "variant name"),
    (";", "at least one variant"),
])
def test_parse_variants_refuses_by_entry(text, message):
    with pytest.raises(ValueError, match=message):
        parse_variants(text)


def test_a_variant_runs_only_for_the_methods_it_acts_on():
    cells = plan_cells(["baseline", "cpl", "onehot", "lsro"], [0, 100], [0], variants=parse_variants(GRID))
    by = {}
    for c in cells:
        by.setdefault(c.method, []).append(c.variant)
    assert by == {"baseline": [PLAIN], "cpl": [PLAIN, "sinkhorn", "csls", "sinkhorn+csls", "sel"],
                  "onehot": [PLAIN, "sel"], "lsro": [PLAIN]}
    # without the plain variant, a method no variant acts on still runs once (its column stays)
    only = plan_cells(["cpl", "lsro"], [100], [0], variants=parse_variants("sinkhorn"))
    assert only == [Cell("cpl", 100, 0, "sinkhorn"), Cell("lsro", 100, 0)]
    assert Cell("cpl", 100, 2, "sinkhorn+csls").run_id("s") == "s--cpl-g100-s2-sinkhorn-csls"
    assert Cell("cpl", 100, 2).run_id("s") == "s--cpl-g100-s2"  # a plain cell keeps the id it always had


def test_create_sweep_applies_each_variant_through_the_config_validation(tmp_path):
    folder = create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl", "lsro"], [0, 100], [0, 1],
                          OFFLINE, "s", variants=parse_variants(GRID))
    spec = json.loads((folder / "sweep.json").read_text())
    assert [v["name"] for v in spec["variants"]] == ["none", "sinkhorn", "csls", "sinkhorn+csls", "sel"]
    assert len(spec["cells"]) == 2 * (1 + 5 + 1)
    both = cell_config(spec, Cell("cpl", 100, 1, "sinkhorn+csls"))
    assert (both.train.assignment, both.train.similarity, both.seed, both.unlabeled.num_images) == (
        "sinkhorn", "csls", 1, 100)
    assert remedies(both) == ["sinkhorn", "csls"]
    assert remedies(cell_config(spec, Cell("cpl", 100, 0, "sel"))) == ["select(margin≥0.05)"]
    plain = cell_config(spec, Cell("cpl", 100, 0))
    assert (plain.train.assignment, plain.train.similarity, remedies(plain)) == ("argmax", "cosine", [])
    assert remedies(cell_config(spec, Cell("lsro", 100, 0))) == []
    with pytest.raises(ConfigError, match="exists with a different grid"):
        create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl", "lsro"], [0, 100], [0, 1],
                     OFFLINE, "s", variants=parse_variants("none;sinkhorn"))
    again = create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl", "lsro"], [0, 100], [0, 1],
                         OFFLINE, "s", variants=parse_variants(GRID))
    assert again == folder


def test_a_variant_the_config_refuses_names_the_cell(tmp_path):
    # sinkhorn_epsilon without assignment=sinkhorn is refused by the config validation, for this cell only
    with pytest.raises(ConfigError, match=r"cell cpl \+ eps with 100 unlabeled images: train\.sinkhorn_epsilon"):
        create_sweep(tmp_path, "configs/synthetic.yaml", ["cpl"], [100], [0], OFFLINE, "s",
                     variants=parse_variants("none;eps:train.sinkhorn_epsilon=0.1"))
    # fapl_temperature set for the whole sweep is fine for plain fapl and refused with sinkhorn
    with pytest.raises(ConfigError, match=r"cell fapl \+ sinkhorn .*train\.fapl_temperature"):
        create_sweep(tmp_path, "configs/synthetic.yaml", ["fapl"], [100], [0],
                     OFFLINE + ["train.fapl_temperature=0.5"], "t", variants=parse_variants("none;sinkhorn"))
    assert not (tmp_path / "sweeps" / "s").exists() and not (tmp_path / "sweeps" / "t").exists()


def test_a_sweep_from_before_variants_is_the_plain_grid(tmp_path):
    folder = create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl"], [0, 100], [0], OFFLINE, "s")
    spec = json.loads((folder / "sweep.json").read_text())
    del spec["variants"]
    for c in spec["cells"]:
        del c["variant"]
    (folder / "sweep.json").write_text(json.dumps(spec))
    assert create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl"], [0, 100], [0], OFFLINE, "s") \
        == folder
    assert table_methods(spec) == ["baseline", "cpl"]
    assert [r["label"] for r in collect(folder, tmp_path)] == ["baseline", "cpl"]


def test_tables_name_each_variant_as_its_own_column(tmp_path):
    folder = create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl", "lsro"], [0, 100], [0], OFFLINE,
                          "s", variants=parse_variants("none;sinkhorn"))
    spec = json.loads((folder / "sweep.json").read_text())
    assert table_methods(spec) == ["baseline", "cpl", "cpl + sinkhorn", "lsro"]
    rows = collect(folder, tmp_path)
    assert [(r["method"], r["variant"], r["label"]) for r in rows] == [
        ("baseline", PLAIN, "baseline"), ("cpl", PLAIN, "cpl"), ("cpl", "sinkhorn", "cpl + sinkhorn"),
        ("lsro", PLAIN, "lsro")]
    for r, (r1, m) in zip(rows, ((10.0, 5.0), (8.0, 4.0), (13.0, 7.0), (9.0, 4.5))):
        r.update(rank1=r1, mAP=m)  # the results the cells would have written
    agg = aggregate(rows)
    assert {a["method"] for a in agg} == {"baseline", "cpl", "cpl + sinkhorn", "lsro"}
    lines = markdown_table(agg, table_methods(spec)).splitlines()
    assert lines[0] == ("| #unlabeled | cpl rank-1 | cpl mAP | cpl + sinkhorn rank-1 | cpl + sinkhorn mAP | "
                        "lsro rank-1 | lsro mAP |")
    assert lines[3] == "| 100 | 8.00 | 4.00 | 13.00 | 7.00 | 9.00 | 4.50 |"
    assert lines[4] == "| improvement | -2.00 | -1.00 | +3.00 | +2.00 | -1.00 | -0.50 |"
    write_tables(folder, tmp_path)  # cells not run yet: the tables still name each variant's cell
    md = (folder / "results.md").read_text()
    assert "| s--cpl-g100-s0-sinkhorn | cpl + sinkhorn | 100 | 0 | pending |" in md
    assert "sinkhorn" in (folder / "runs.csv").read_text().splitlines()[3]


def test_remedies_of_a_stored_config():
    folder_cfg = cell_config({"id": "s", "config": {"data": {"root": "x"}},
                              "variants": [{"name": "x", "settings": ["train.similarity=csls", "train.csls_k=5",
                                                                      "train.select_min_score=0.3"]}]},
                             Cell("fapl", 100, 0, "x"))
    assert remedies_of(to_dict(folder_cfg)) == ["csls(k=5)", "select(score≥0.3)"]
    assert remedies_of({"train": {"assignment": "sinkhorn", "sinkhorn_epsilon": 0.1}}) == ["sinkhorn(ε=0.1)"]
    assert remedies_of({"train": {"method": "cpl"}}) == [] and remedies_of({}) is None
    assert remedies_of({"train": {"no_such_key": 1}}) is None


def test_acting_remedies_follow_the_method_table():
    assert [r.name for r in acting_remedies("cpl")] == ["sinkhorn", "csls", "select"]
    assert [r.name for r in acting_remedies("onehot")] == ["select"]
    assert acting_remedies("baseline") == [] and acting_remedies("lsro") == [] and acting_remedies("x") == []


def test_cli_refuses_a_bad_variant_before_writing_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cpl", "--runs-root", str(tmp_path), "sweep", "--config",
                          "configs/synthetic.yaml", "--methods", "cpl", "--gan-images", "10",
                          "--variants", "none;hub"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--variants: 'hub' has no preset" in out.stderr
    assert not (tmp_path / "sweeps").exists()


def test_compare_pages_table1_has_a_column_per_variant(tmp_path):
    folder = create_sweep(tmp_path, "configs/synthetic.yaml", ["baseline", "cpl"], [0, 100], [0, 1], OFFLINE, "s",
                          variants=parse_variants("none;sinkhorn+csls"))
    spec = json.loads((folder / "sweep.json").read_text())
    rows = [dict(r, rank1=10.0 + i, mAP=5.0 + i) for i, r in enumerate(collect(folder, tmp_path))]
    table = table1_frame(pd.DataFrame(aggregate(rows)), table_methods(spec)).set_index("unlabeled images")
    assert list(table.columns) == ["cpl rank-1", "cpl mAP", "cpl + sinkhorn + csls rank-1",
                                   "cpl + sinkhorn + csls mAP"]
    # cells in order: baseline s0, cpl s0, cpl+both s0, baseline s1, cpl s1, cpl+both s1 -> means over the seeds
    assert table.loc["100", "cpl rank-1"] == "12.50 ± 2.12" and table.loc["100", "cpl + sinkhorn + csls mAP"] == \
        "8.50 ± 2.12"
    assert table.loc["improvement", "cpl + sinkhorn + csls rank-1"] == "+2.00"


@pytest.mark.slow  # three cells trained (~1 min): the remedy variant trains and gets its own column
def test_tiny_sweep_trains_each_variant(tmp_path):
    cmd = [sys.executable, "-m", "cpl", "--runs-root", str(tmp_path), "sweep", "--config", "configs/synthetic.yaml",
           "--methods", "baseline,cpl", "--gan-images", "0,24", "--seeds", "0", "--sweep-id", "tiny",
           "--variants", "none;sinkhorn", "--fast-dev-run", "--set", "eval.umap=false",
           "--set", f"data.root={tmp_path / 'synthetic'}", "--set", "data.synthetic.ids=12"]
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "sweeps" / "tiny"
    md = (folder / "results.md").read_text()
    assert "3/3 cells finished" in md and "| #unlabeled | cpl rank-1 | cpl mAP | cpl + sinkhorn rank-1 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| 24 |")).split("|")
    assert all(cell.strip() for cell in row[2:6])  # both columns have their numbers
    cfg = (tmp_path / "tiny--cpl-g24-s0-sinkhorn" / "config.yaml").read_text()
    assert "assignment: sinkhorn" in cfg and "assignment: argmax" in (tmp_path / "tiny--cpl-g24-s0" /
                                                                       "config.yaml").read_text()
    assert json.loads((tmp_path / "tiny--cpl-g24-s0-sinkhorn" / "results.json").read_text())["remedies"] == [
        "sinkhorn"]
    methods = [line.split(",")[0] for line in (folder / "results.csv").read_text().splitlines()[1:]]
    assert sorted(methods) == ["baseline", "cpl", "cpl + sinkhorn"]
