"""Write requirements.txt from pyproject.toml: the exact pins of ``.[<every extra>]`` (today ``.[ray,onnx,dev]``).

pyproject.toml is the one place the dependencies and their versions are written; requirements.txt is what
``make install`` (and so the Dockerfile and CI) installs first, before the package itself with ``--no-deps``,
so pip installs exactly these releases and never resolves a newer torch. Every dependency must be an exact
``name==version`` pin.

    python tools/lock_requirements.py           # rewrite requirements.txt
    python tools/lock_requirements.py --check   # exit 1 if requirements.txt disagrees with pyproject.toml

tests/test_packaging.py runs the check in the default test tier.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
REQUIREMENTS = REPO / "requirements.txt"
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9.+!_-]+$")
HEADER = """\
# GENERATED from pyproject.toml by tools/lock_requirements.py: do not edit. Change a pin in pyproject.toml,
# then run `python tools/lock_requirements.py` (a test fails while the two disagree).
# The exact pins of `pip install .[{extras}]`: `make install` installs these, then the package with --no-deps.
"""


def pinned(requirements: list[str], where: str) -> list[str]:
    """The requirements with blanks squeezed out; a ``ValueError`` naming ``where`` for one that is not ``==``."""
    out = []
    for req in requirements:
        req = "".join(req.split())
        if not PIN.match(req):
            raise ValueError(f"pyproject.toml {where}: {req!r} is not an exact pin (name==version)")
        out.append(req)
    return out


def render(pyproject: Path = PYPROJECT) -> str:
    """requirements.txt's text for ``pyproject``: the runtime pins, then each extra's, in file order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    lines = [HEADER.format(extras=",".join(extras)).rstrip("\n"), "# runtime ([project] dependencies)"]
    lines += pinned(project.get("dependencies", []), "dependencies")
    for name, reqs in extras.items():
        lines += [f"# [{name}] extra", *pinned(reqs, f"optional-dependencies.{name}")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if requirements.txt is not what pyproject.toml gives")
    args = p.parse_args(argv)
    try:
        text = render()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        current = REQUIREMENTS.read_text() if REQUIREMENTS.is_file() else ""
        if current != text:
            print("requirements.txt disagrees with pyproject.toml: run `python tools/lock_requirements.py`",
                  file=sys.stderr)
            return 1
        return 0
    REQUIREMENTS.write_text(text)
    print(f"wrote {REQUIREMENTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
