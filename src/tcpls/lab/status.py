"""What :meth:`~tcpls.lab.lab.Lab.status` reports: the namespaces, links, qdiscs and
forwarder counters of a lab, gathered from ``ip``, ``tc`` and the forwarder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tcpls.lab.control import Forwarder
from tcpls.lab.errors import LabError
from tcpls.lab.model import Path
from tcpls.lab.netns import namespace_exists
from tcpls.lab.system import run_parallel

__all__ = ["describe_lab"]


def describe_lab(
    *,
    name: str,
    owned: bool,
    owner_pid: int | None,
    client_ns: str,
    server_ns: str,
    paths: Sequence[Path],
    forwarder: Forwarder | None,
) -> dict[str, Any]:
    """The status of a lab; see :meth:`~tcpls.lab.lab.Lab.status` for its keys."""
    sides: dict[str, str] = {"client": client_ns, "server": server_ns}
    exists = {side: namespace_exists(ns) for side, ns in sides.items()}
    live = [side for side in sides if exists[side]]
    commands: list[tuple[Sequence[str], str | None]] = []
    for side in live:
        commands.append((["ip", "-j", "-n", sides[side], "link", "show"], None))
        commands.append((["tc", "-s", "-j", "-n", sides[side], "qdisc", "show"], None))
    outputs = run_parallel(commands, check=False) if commands else []
    links: dict[str, dict[str, Any]] = {}
    qdiscs: dict[str, list[dict[str, Any]]] = {}
    for i, side in enumerate(live):
        try:
            links[side] = {d["ifname"]: d for d in json.loads(outputs[2 * i] or "[]")}
        except (ValueError, KeyError, TypeError):
            links[side] = {}
        try:
            qdiscs[side] = json.loads(outputs[2 * i + 1] or "[]")
        except ValueError:
            qdiscs[side] = []
    forwarder_status: dict[str, Any] | None = None
    fwd_paths: dict[int, dict[str, Any]] = {}
    if forwarder is not None:
        forwarder_status = {"pid": forwarder.pid, "alive": False, "error": None}
        try:
            for entry in forwarder.stats() or []:
                fwd_paths[int(entry["index"])] = entry
            forwarder_status["alive"] = True
        except LabError as exc:
            forwarder_status["error"] = str(exc)
    entries = []
    for path in paths:
        entry = path.to_json()
        entry["links"] = {}
        entry["qdiscs"] = {}
        for side, dev in (("client", path.client_dev), ("server", path.server_dev)):
            link = links.get(side, {}).get(dev)
            entry["links"][side] = (
                None
                if link is None
                else {
                    "operstate": link.get("operstate"),
                    "flags": link.get("flags", []),
                    "mtu": link.get("mtu"),
                }
            )
            entry["qdiscs"][side] = [q for q in qdiscs.get(side, []) if q.get("dev") == dev]
        fwd = fwd_paths.get(path.index)
        entry["forwarder"] = None if fwd is None else {"c2s": fwd["c2s"], "s2c": fwd["s2c"]}
        entries.append(entry)
    return {
        "name": name,
        "owned": owned,
        "owner_pid": owner_pid,
        "namespaces": {side: {"name": ns, "exists": exists[side]} for side, ns in sides.items()},
        "forwarder": forwarder_status,
        "paths": entries,
    }
