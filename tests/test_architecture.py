"""Structural rules for ``src/tcpls``, checked on the source text (nothing is imported).

* No import cycles between the modules of the package. Every ``import`` statement
  counts, wherever it is: at module level, under ``if TYPE_CHECKING:``, and inside a
  function (an import moved into a function to dodge a cycle is still a cycle).
  ``from pkg import name`` imports the module ``pkg.name`` when there is one, else
  ``pkg``; importing ``pkg.mod`` is not counted as importing ``pkg/__init__.py``
  (``tcpls/__init__.py`` names every public class for type checkers).
* No module over :data:`MAX_LINES` lines, except those in :data:`PENDING_SPLIT`.
* No reading of a private attribute (``x._name``) of an object the module does not
  own: ``x`` must be ``self``, ``cls``, ``super()``, a class of the module, or a name
  the function shows to hold an instance of one (a parameter annotated with the
  class, a variable assigned ``C(...)``, ``cls(...)`` or ``C.__new__(...)``). The
  reads left are listed in :data:`PENDING_PRIVATE`. Dunder names are not private.

The two allow-lists record today's debt so that it can only shrink:
:func:`test_allow_lists_are_current` fails when an entry is no longer needed, so the
change that pays a debt also removes its entry.

Run ``python tests/test_architecture.py`` for a report of the whole tree.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The package checked, and the directory that holds it.
PACKAGE = "tcpls"
SRC = Path(__file__).resolve().parent.parent / "src"
#: The most lines a module may have.
MAX_LINES = 600

#: Modules allowed over MAX_LINES until they are split; remove each one when it is.
#: (core/session.py, wire/frames.py and cli.py were split before this test came.)
PENDING_SPLIT: set[str] = set()

#: Private attributes a module reads on objects it does not own, by module. Each entry
#: is a debt: give the owner a public name for what is needed, then remove the entry.
PENDING_PRIVATE: dict[str, set[str]] = {}


@dataclass(frozen=True)
class Module:
    """One module of the package: its dotted name, file and parsed source."""

    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    lines: int


def _modules() -> dict[str, Module]:
    return _parse(
        {
            path.relative_to(SRC): path.read_text(encoding="utf-8")
            for path in sorted((SRC / PACKAGE).rglob("*.py"))
        }
    )


def _parse(sources: dict[Path, str]) -> dict[str, Module]:
    """The modules of ``sources`` (text by path relative to the source root)."""
    modules: dict[str, Module] = {}
    for path, text in sources.items():
        parts = list(path.with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        tree = ast.parse(text, filename=str(path))
        modules[name] = Module(name, path, is_package, tree, len(text.splitlines()))
    return modules


# -------------------------------------------------------------------- imports


def _imports(module: Module, known: dict[str, Module]) -> Iterator[tuple[str, int]]:
    """The package modules ``module`` imports, with the line of each import statement."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known_prefix(alias.name, known)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            if base is None:
                continue
            for alias in node.names:
                # ``from pkg import sub`` imports the module pkg.sub when there is one
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in known else _known_prefix(base, known)
                if target is not None:
                    yield target, node.lineno


def _absolute(node: ast.ImportFrom, module: Module) -> str | None:
    if node.level == 0:
        return node.module
    parts = module.name.split(".")
    if not module.is_package:
        parts.pop()
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _known_prefix(name: str, known: dict[str, Module]) -> str | None:
    """The longest prefix of the dotted ``name`` that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """For each module, the modules it imports and the line of (one of) the imports."""
    graph: dict[str, dict[str, int]] = {}
    for name, module in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(module, modules):
            if target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each group of mutually importing modules (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected group."""
    start = group[0]
    members = set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node]):
            if target == start:
                return [*paths[node], start]
            if target in members and target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no cycle in {group}")  # pragma: no cover


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in itertools.pairwise(cycle)]
    return "; ".join(steps)


# -------------------------------------------------------------------- private access


def private_reads(module: Module) -> list[tuple[str, int]]:
    """``(attribute, line)`` for each ``x._name`` in ``module`` that does not read the
    module's own objects: ``x`` is not ``self``, ``cls``, ``super()``, a class of the
    module, nor a name that the function shows to be an instance of one (a parameter
    annotated with it, or a variable assigned ``C(...)``, ``cls(...)`` or
    ``C.__new__(...)``)."""
    finder = _PrivateReads({n.name for n in ast.walk(module.tree) if isinstance(n, ast.ClassDef)})
    finder.visit(module.tree)
    return finder.found


class _PrivateReads(ast.NodeVisitor):
    def __init__(self, classes: set[str]) -> None:
        self.classes = classes
        #: Names known to hold an instance of a class of the module, by function scope.
        self.scopes: list[set[str]] = [set()]
        self.found: list[tuple[str, int]] = []

    def _own_type(self, annotation: ast.expr | None) -> bool:
        """Whether ``annotation`` is a class of the module (or that or ``None``)."""
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return False
        if isinstance(annotation, ast.Name):
            return annotation.id in self.classes
        if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
            sides = (annotation.left, annotation.right)
            none = [s for s in sides if isinstance(s, ast.Constant) and s.value is None]
            return len(none) == 1 and any(self._own_type(s) for s in sides if s not in none)
        return False

    def _own_instance(self, value: ast.expr | None) -> bool:
        """Whether ``value`` constructs an instance of a class of the module."""
        if not isinstance(value, ast.Call):
            return False
        func = value.func
        if isinstance(func, ast.Attribute) and func.attr == "__new__":
            func = func.value
        return isinstance(func, ast.Name) and (func.id == "cls" or func.id in self.classes)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        known = set(self.scopes[-1])
        arguments = node.args
        for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            if self._own_type(arg.annotation):
                known.add(arg.arg)
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign) and self._own_instance(sub.value):
                known.update(t.id for t in sub.targets if isinstance(t, ast.Name))
            elif (
                isinstance(sub, ast.AnnAssign)
                and isinstance(sub.target, ast.Name)
                and (self._own_type(sub.annotation) or self._own_instance(sub.value))
            ):
                known.add(sub.target.id)
        self.scopes.append(known)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")):
            value = node.value
            own = (
                (
                    isinstance(value, ast.Name)
                    and (
                        value.id in ("self", "cls")
                        or value.id in self.classes
                        or value.id in self.scopes[-1]
                    )
                )
                or (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Name)
                    and value.func.id == "super"
                )
                or self._own_instance(value)
                # a public function with an underscore: os._exit (what a forked child calls)
                or (isinstance(value, ast.Name) and value.id == "os" and attr == "_exit")
            )
            if not own:
                self.found.append((attr, node.lineno))
        self.generic_visit(node)


# -------------------------------------------------------------------- tests


def test_no_import_cycles() -> None:
    """No two modules of the package import each other, directly or not."""
    graph = import_graph(_modules())
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph) for c in cycles)


def test_module_sizes() -> None:
    """No module is over MAX_LINES lines, but those waiting for their split."""
    too_long = [
        f"{m.name}: {m.lines} lines"
        for m in _modules().values()
        if m.lines > MAX_LINES and m.name not in PENDING_SPLIT
    ]
    assert not too_long, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(too_long)


def test_no_private_access() -> None:
    """No module reads private attributes of objects it does not own, but the debts listed."""
    found = []
    for module in _modules().values():
        allowed = PENDING_PRIVATE.get(module.name, set())
        found += [
            f"src/{module.path}:{line}: .{attr}"
            for attr, line in private_reads(module)
            if attr not in allowed
        ]
    assert not found, (
        "private attributes read on objects the module does not own (give the owner a "
        "public method or property):\n" + "\n".join(found)
    )


def test_allow_lists_are_current() -> None:
    """Every entry of the allow-lists is still needed."""
    modules = _modules()
    stale = [
        f"PENDING_SPLIT: {name} ({'gone' if name not in modules else 'short enough now'})"
        for name in sorted(PENDING_SPLIT)
        if name not in modules or modules[name].lines <= MAX_LINES
    ]
    for name, attrs in sorted(PENDING_PRIVATE.items()):
        used = {attr for attr, _ in private_reads(modules[name])} if name in modules else set()
        stale += [f"PENDING_PRIVATE: {name}: {attr}" for attr in sorted(attrs - used)]
    assert not stale, "allow-list entries no longer needed (remove them):\n" + "\n".join(stale)


def test_the_checks_find_what_they_look_for() -> None:
    """The checks on made-up modules: a cycle through a function's import and a
    TYPE_CHECKING import, and private reads on owned and foreign objects."""
    modules = _parse(
        {
            Path("pkg/__init__.py"): "",
            Path("pkg/a.py"): "def f():\n    from pkg import b\n",
            Path("pkg/b.py"): (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n"
            ),
            Path("pkg/c.py"): "from pkg.a import f\n",
            Path("pkg/d.py"): (
                "class C:\n"
                "    def __init__(self, other: 'C | None', foreign) -> None:\n"
                "        self._x = other._x if other else C()._x\n"
                "        made = C.__new__(C)\n"
                "        made._y = foreign._z + super()._w + foreign.__dict__\n"
            ),
        }
    )
    graph = import_graph(modules)
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert private_reads(modules["pkg.d"]) == [("_z", 5)]


def _report() -> None:
    modules = _modules()
    graph = import_graph(modules)
    for cycle in import_cycles(graph):
        print("cycle:", _describe(cycle, graph))
    for module in modules.values():
        if module.lines > MAX_LINES:
            print(f"long: {module.name} {module.lines}")
    for module in modules.values():
        attrs = sorted({attr for attr, _ in private_reads(module)})
        if attrs:
            print(f"private: {module.name}: {attrs}")


if __name__ == "__main__":
    _report()


def _cited_design_names() -> dict[str, list[str]]:
    """Every ``design: Name`` the sources cite (comments and docstrings may wrap a name
    over two lines), with where."""
    cited: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        text = re.sub(r"\n\s*(#:?\s*)?", " ", path.read_text())
        for match in re.finditer(
            r"design: ((?:[A-Z][A-Za-z0-9]*|[a-z]+)(?: [A-Za-z0-9]+)*)", text
        ):
            name = match.group(1)
            cited.setdefault(name, []).append(str(path.relative_to(SRC)))
    return cited


def test_design_citations_name_sections() -> None:
    """A ``(design: Name)`` in the code names a section of docs/design.md."""
    design = (SRC.parent / "docs" / "design.md").read_text()
    headings = {line.removeprefix("### ").strip() for line in design.splitlines()}
    unknown = []
    for name, where in _cited_design_names().items():
        # a citation may run on into the sentence: the longest heading it starts with
        if not any(name == h or name.startswith(h + " ") for h in headings):
            unknown.append(f"{name!r} in {', '.join(sorted(set(where)))}")
    assert not unknown, "design citations without a section in docs/design.md:\n" + "\n".join(
        unknown
    )
