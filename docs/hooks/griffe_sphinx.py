"""A Griffe extension: the Sphinx conventions of tcpls's docstrings, as mkdocstrings needs them.

The code documents itself the Sphinx way, and this site is MkDocs; rather than rewrite
hundreds of docstrings, this extension translates them once the package is loaded:

* ``#:`` comments above (or after) an attribute become its docstring, so the fields of
  ``ClientConfig``, ``ServerConfig`` and ``SessionTuning`` are documented;
* roles such as :class:`Session` or :meth:`~tcpls.Session.join` become links when
  their target is rendered on the site, and code otherwise (an *optional* autoref: a
  target that is not documented is not an error, a broken page is);
* a paragraph ending in ``::`` (a literal block follows) ends in ``:``.

Loaded by mkdocs.yml (``extensions:`` of the python handler); nothing imports it.
"""

from __future__ import annotations

import html
import re
from functools import cache
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(?P<target>[^`]+)`")
_LITERAL = re.compile(r"(?m)(?<=\S)::$")
_BARE_LITERAL = re.compile(r"(?m)^[ \t]*::[ \t]*\n")


@cache
def _lines(path: str) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def _comment_doc(attr: griffe.Attribute) -> str | None:
    """The ``#:`` comment lines just above the attribute, or its trailing ``#:`` comment."""
    if not isinstance(attr.filepath, Path) or attr.lineno is None:
        return None
    lines = _lines(str(attr.filepath))
    found: list[str] = []
    index = attr.lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    if not found:
        _, sep, trailing = lines[attr.lineno - 1].partition("  #: ")
        if sep:
            found = [trailing.strip()]
    return "\n".join(found) or None


class SphinxDocstrings(griffe.Extension):
    """Turn ``#:`` comments into docstrings and Sphinx roles into links, package-wide."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every docstring of the package once it is loaded."""
        self._walk(pkg, pkg, set())

    def _walk(self, obj: griffe.Object, pkg: griffe.Module, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if isinstance(obj, griffe.Attribute) and obj.docstring is None:
            text = _comment_doc(obj)
            if text:
                obj.docstring = griffe.Docstring(text, lineno=obj.lineno, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = self._translate(obj.docstring.value, obj, pkg)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, pkg, seen)  # type: ignore[arg-type]

    def _translate(self, text: str, obj: griffe.Object, pkg: griffe.Module) -> str:
        text = _BARE_LITERAL.sub("", text)
        text = _LITERAL.sub(":", text)
        return _ROLE.sub(lambda m: self._reference(m["target"], obj, pkg), text)

    def _reference(self, target: str, obj: griffe.Object, pkg: griffe.Module) -> str:
        short = target.startswith("~")
        path = target.lstrip("~").removesuffix("()")
        shown = path.rsplit(".", 1)[-1] if short else path
        resolved = self._resolve(path, obj, pkg)
        code = f"<code>{html.escape(shown)}</code>"
        if resolved is None:
            return code
        return f'<autoref identifier="{html.escape(resolved)}" optional>{code}</autoref>'

    def _resolve(self, path: str, obj: griffe.Object, pkg: griffe.Module) -> str | None:
        """The canonical path of a role's target inside the package, or ``None``."""
        first, _, rest = path.partition(".")
        if first == pkg.name:
            full = path
        else:
            try:
                full = obj.resolve(first)
            except griffe.NameResolutionError:
                return None
            full = f"{full}.{rest}" if rest else full
        if not full.startswith(pkg.name + "."):
            return full if full == pkg.name else None
        try:
            found = pkg.modules_collection[full]
            return str(found.final_target.path if found.is_alias else found.path)
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return full
