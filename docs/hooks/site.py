"""MkDocs hooks: the pages of this site that are generated at build time, so they cannot rot.

* ``cli.md``: the ``<!-- tcpls-cli -->`` marker becomes the ``--help`` of the ``tcpls``
  command and of every subcommand (``lab``'s included), rendered from the real argparse
  parser, and the exit statuses from :mod:`tcpls.cli.errors`.
* ``reference/index.md``: the ``<!-- tcpls-exports -->`` marker becomes the table of the
  names ``import tcpls`` exports, each linked to where it is documented.
* ``reference/<part>.md``: one page per top-level module or subpackage of ``tcpls``,
  rendering it and each of its modules with mkdocstrings (a new module appears by itself;
  a new subpackage fails the build until the nav lists its page).
* ``security.md``, ``benchmarks.md``, ``changelog.md``: SECURITY.md, BENCHMARKS.md and
  CHANGELOG.md from the repository's root, with their links rewritten for the site.

Loaded by mkdocs.yml (``hooks:``); nothing imports it.
"""

from __future__ import annotations

import argparse
import os
import pkgutil
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.nav import Navigation
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

#: Files of the repository's root published as pages: source -> page.
ROOT_PAGES = {
    "SECURITY.md": "security.md",
    "BENCHMARKS.md": "benchmarks.md",
    "CHANGELOG.md": "changelog.md",
}
#: Links in those files, as the repository spells them -> as the site does.
LINKS = {
    "docs/design.md": "design.md",
    "SECURITY.md": "security.md",
    "BENCHMARKS.md": "benchmarks.md",
    "CHANGELOG.md": "changelog.md",
    "README.md": "index.md",
    "LICENSE": "https://opensource.org/license/bsd-3-clause",
}
#: Width of the rendered --help text.
HELP_COLUMNS = 90


# -- generated files ----------------------------------------------------------------


def _parts() -> list[str]:
    """The top-level modules and subpackages of tcpls (``tcpls.lab``, ``tcpls.config``...)."""
    return sorted(
        info.name for info in pkgutil.iter_modules([str(SRC / "tcpls")]) if info.name != "__main__"
    )


def _modules(part: str) -> list[str]:
    """``tcpls.<part>`` and, for a package, every module under it, in path order."""
    base = SRC / "tcpls" / part
    if not base.is_dir():
        return [f"tcpls.{part}"]
    names = []
    for path in sorted(base.rglob("*.py")):
        relative = path.relative_to(SRC).with_suffix("")
        if relative.name == "__main__":
            continue
        if relative.name == "__init__":
            relative = relative.parent  # a (sub)package: its __init__ module
        names.append(".".join(relative.parts))
    return sorted(names, key=lambda name: name.split("."))


def _reference_page(part: str) -> str:
    modules = _modules(part)
    lines = [f"# tcpls.{part}", ""]
    if len(modules) > 1:
        lines += [
            "Modules: " + ", ".join(f"[`{name}`][{name}]" for name in modules[1:]) + ".",
            "",
        ]
    for name in modules:
        lines += [f"::: {name}", ""]
    return "\n".join(lines)


def _root_page(source: str) -> str:
    text = (ROOT / source).read_text(encoding="utf-8")

    def relink(match: re.Match[str]) -> str:
        target, _, anchor = match["target"].partition("#")
        new = LINKS.get(target)
        if new is None:
            return match[0]
        return f"]({new}{'#' + anchor if anchor else ''})"

    return re.sub(r"\]\((?P<target>[^)\s]+)\)", relink, text)


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Add the generated pages: the API reference and the root's Markdown files."""
    for part in _parts():
        files.append(File.generated(config, f"reference/{part}.md", content=_reference_page(part)))
    for source, page in ROOT_PAGES.items():
        files.append(File.generated(config, page, content=_root_page(source)))
    return files


def on_nav(nav: Navigation, config: MkDocsConfig, files: Files, **kwargs: Any) -> Navigation:
    """Refuse to build without a nav entry for every reference page."""
    listed = {page.file.src_uri for page in nav.pages}
    missing = [f"reference/{p}.md" for p in _parts() if f"reference/{p}.md" not in listed]
    if missing:
        raise PluginError(f"mkdocs.yml: add to the nav's API reference: {', '.join(missing)}")
    return nav


# -- the command line ---------------------------------------------------------------


def _subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order --help lists them."""
    found = []
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def _help(parser: argparse.ArgumentParser) -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        return parser.format_help().rstrip()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def _command_section(name: str, summary: str, parser: argparse.ArgumentParser, level: int) -> str:
    heading = "#" * level
    lines = [f"{heading} `{parser.prog}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    lines += ["```text", _help(parser), "```", ""]
    for sub_name, sub_summary, sub in _subcommands(parser):
        lines.append(_command_section(sub_name, sub_summary, sub, level + 1))
    return "\n".join(lines)


def _cli_reference() -> str:
    from tcpls.cli import errors
    from tcpls.cli.options import build_parser

    parser = build_parser()
    lines = ["```text", _help(parser), "```", ""]
    for name, summary, sub in _subcommands(parser):
        lines.append(_command_section(name, summary, sub, 2))
    statuses = sorted(
        (value, name) for name, value in vars(errors).items() if name.startswith("EXIT_")
    )
    lines += [
        "## Exit statuses",
        "",
        "| status | name in `tcpls.cli.errors` |",
        "|---|---|",
        *(f"| {value} | `{name}` |" for value, name in statuses),
        "",
    ]
    return "\n".join(lines)


def _exports_table() -> str:
    import tcpls

    rows = ["| name | what it is |", "|---|---|"]
    for name in tcpls.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(tcpls, name)
        home = f"{obj.__module__}.{obj.__qualname__}"
        summary = (obj.__doc__ or "").strip().splitlines()[0]
        summary = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", summary).replace("|", "\\|")
        rows.append(f"| [`tcpls.{name}`][{home}] | {summary} |")
    return "\n".join(rows)


def on_page_markdown(
    markdown: str, page: Page, config: MkDocsConfig, files: Files, **kwargs: Any
) -> str:
    """Fill the markers of the CLI page and of the reference's front page."""
    if "<!-- tcpls-cli -->" in markdown:
        markdown = markdown.replace("<!-- tcpls-cli -->", _cli_reference())
    if "<!-- tcpls-exports -->" in markdown:
        markdown = markdown.replace("<!-- tcpls-exports -->", _exports_table())
    return markdown
