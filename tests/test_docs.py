"""Every public name of ``src/tcpls`` is documented, as the API reference needs.

The reference (``make docs``, run by ``make test``) is generated from docstrings and hides
what has none, so an undocumented public name is missing from the site. Public means:

* every module of the package (its module docstring);
* in a module with ``__all__``, the names it lists and defines; in a module without, the
  classes and functions it defines whose names do not start with ``_``;
* the methods, properties, class methods and static methods a public class defines whose
  names do not start with ``_`` (an override may inherit its base's docstring, as
  :func:`inspect.getdoc` does);
* the constants and type aliases a module lists in ``__all__``: documented with a ``#:``
  comment on the lines above (or at the end of the line), the Sphinx convention the
  site's Griffe extension (``docs/hooks/griffe_sphinx.py``) reads.

Classes and functions are checked on the imported objects, constants on the source text.
Dataclasses and named tuples need a docstring of their own (the generated ``Name(a, b)``
does not count).

Run ``python tests/test_docs.py`` for the list of what is missing.

Also checked here: the package metadata ships the license and lists the Python versions
the README states. The site itself is built by ``make docs`` (part of ``make test``).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import tcpls

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def _module_names() -> list[str]:
    names = ["tcpls"]
    for info in pkgutil.walk_packages(tcpls.__path__, "tcpls."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def _own_docstring(cls: type) -> bool:
    doc = cls.__dict__.get("__doc__")
    if not doc or not doc.strip():
        return False
    generated = dataclasses.is_dataclass(cls) or (
        issubclass(cls, tuple) and hasattr(cls, "_fields")
    )
    return not (generated and doc.startswith(cls.__name__ + "("))


def _public_names(module: ModuleType) -> list[str]:
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return list(exported)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    ]


def _member_problems(cls: type, where: str) -> Iterator[str]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if isinstance(value, property):
            doc = value.__doc__ or ""
            # property(attrgetter(...)) without doc= shows attrgetter's own docstring
            if not doc.strip() or doc.startswith(("attrgetter(", "Return a callable")):
                yield f"{where}.{name} (property)"
        elif inspect.isfunction(value) and not inspect.getdoc(getattr(cls, name)):
            yield f"{where}.{name}"


def _object_problems(module: ModuleType) -> Iterator[str]:
    if not (module.__doc__ or "").strip():
        yield f"{module.__name__} (module)"
    for name in _public_names(module):
        value: Any = getattr(module, name)
        if getattr(value, "__module__", None) != module.__name__:
            continue  # imported from elsewhere: checked where it is defined
        where = f"{module.__name__}.{name}"
        if inspect.isclass(value):
            if not _own_docstring(value):
                yield f"{where} (class)"
            yield from _member_problems(value, where)
        elif inspect.isfunction(value) and not (value.__doc__ or "").strip():
            yield where


def _assigned(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    type_alias = getattr(ast, "TypeAlias", None)  # `type X = ...`, Python 3.12 and later
    if type_alias is not None and isinstance(node, type_alias):
        return [node.name.id]
    return []


def _documented(lines: list[str], node: ast.stmt, following: ast.stmt | None) -> bool:
    above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
    trailing = "  #: " in lines[node.lineno - 1]
    docstring_below = (
        isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
    )
    return above.startswith("#:") or trailing or docstring_below


def _constant_problems(module: ModuleType) -> Iterator[str]:
    exported = set(getattr(module, "__all__", ()))
    path = getattr(module, "__file__", None)
    if not exported or path is None:
        return
    source = Path(path).read_text(encoding="utf-8")
    lines = source.splitlines()
    body = ast.parse(source).body
    for node, following in zip(body, [*body[1:], None], strict=True):
        for name in _assigned(node):
            if name in exported and not _documented(lines, node, following):
                yield f"{module.__name__}.{name} (no #: comment)"


def missing_docstrings() -> list[str]:
    """Every public name of the package without documentation."""
    problems: list[str] = []
    for name in _module_names():
        module = importlib.import_module(name)
        problems += _object_problems(module)
        problems += _constant_problems(module)
    return problems


def test_every_public_name_has_a_docstring() -> None:
    missing = missing_docstrings()
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_the_check_sees_what_it_must() -> None:
    """The walk covers the whole package, and each kind of miss is caught."""
    names = _module_names()
    assert {"tcpls", "tcpls.config", "tcpls.tls.hs.tickets", "tcpls.lab.cli"} <= set(names)

    @dataclasses.dataclass
    class Bare:
        value: int = 0

        def method(self) -> None:
            pass

        @property
        def prop(self) -> int:
            return 0

    assert not _own_docstring(Bare)
    assert sorted(_member_problems(Bare, "Bare")) == ["Bare.method", "Bare.prop (property)"]

    source = "X = 1\n#: documented\nY = 2\nZ: int = 3  #: trailing\nW = 4\n'''below'''\n"
    lines = source.splitlines()
    body = ast.parse(source).body
    followers = [*body[1:], None]
    flags = {
        _assigned(node)[0]: _documented(lines, node, nxt)
        for node, nxt in zip(body, followers, strict=True)
        if _assigned(node)
    }
    assert flags == {"X": False, "Y": True, "Z": True, "W": True}


def test_metadata_states_the_license_and_the_python_versions() -> None:
    """The sdist and wheel carry LICENSE; the README names the versions the metadata lists."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == ["LICENSE"]
    assert "BSD 3-Clause License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    versions = [
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions and project["requires-python"] == f">={versions[0]}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"Python (3\.\d+(?:, 3\.\d+)*) and (3\.\d+)", readme)
    assert stated, "the README says which Python versions are supported"
    assert [*stated[1].split(", "), stated[2]] == versions


if __name__ == "__main__":
    print("\n".join(missing_docstrings()) or "every public name has a docstring")
