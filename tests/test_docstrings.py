"""Every public function, class, method and property of the library and the app says what it is: a docstring,
with shapes and units where they apply (issue 11). An override of a documented method inherits its docstring."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import app
import cpl


def _modules() -> list[str]:
    names = []
    for pkg in (cpl, app):
        names.append(pkg.__name__)
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    return sorted(n for n in names if not n.endswith("__main__"))


def _undocumented(module) -> list[str]:
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue  # private, or imported from elsewhere (checked where it is defined)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if not inspect.getdoc(obj):
            out.append(name)
        if inspect.isclass(obj):
            fields = getattr(obj, "__dataclass_fields__", {})
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr in fields:  # a dataclass field (e.g. a default callback)
                    continue
                fn = member.fget if isinstance(member, property) else member
                if isinstance(fn, (staticmethod, classmethod)):
                    fn = fn.__func__
                if inspect.isfunction(fn) and not inspect.getdoc(getattr(obj, attr, fn) if not isinstance(
                        member, property) else member):
                    out.append(f"{name}.{attr}")
    return out


@pytest.mark.parametrize("module_name", _modules())
def test_every_public_definition_has_a_docstring(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert not _undocumented(module), f"{module_name}: no docstring on {', '.join(_undocumented(module))}"
