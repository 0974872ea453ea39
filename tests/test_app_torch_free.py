"""The Streamlit process never imports torch, training code or Ray: every page, run on a real run directory in a
fresh interpreter, leaves ``sys.modules`` free of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from app_fixtures import os_env

from cpl.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
# cpl.backbones / cpl.models.weights are allowed: the torch-free backbone table and weight resolver the
# Launch page reads; the network itself (cpl.models.reid) is not
FORBIDDEN = ["torch", "torchvision", "cpl.pipeline", "cpl.engine", "cpl.models.reid", "cpl.gan", "cpl.pseudo", "umap",
             "ray", "cpl.sweep.on_ray"]

SCRIPT = r"""
import json, sys
from streamlit.testing.v1 import AppTest
pages = ["pages/runs.py", "pages/launch.py", "pages/gan.py", "pages/embedding.py", "pages/retrieval.py",
         "pages/compare.py"]
at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.query_params["run"] = "r1"
at.run()
errors = {}
for page in pages:
    at.switch_page(page)
    at.query_params["run"] = "r1"
    at.run()
    errors[page] = [e.message for e in at.exception]
loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in json.loads(sys.argv[2])))
print(json.dumps({"errors": errors, "loaded": loaded}))
"""


def test_no_page_imports_torch(app_world, app_run: RunDir) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "streamlit_app.py"), json.dumps(FORBIDDEN)],
                         cwd=REPO, env=os_env(app_world), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["errors"] == {p: [] for p in report["errors"]}
    assert len(report["errors"]) == 6
    assert report["loaded"] == []
