"""The commands that make a lab's paths and break them.

Plain functions from paths to the input of iproute2 (``ip -batch``, ``tc -batch``) or to
command lines, run by :class:`~tcpls.lab.lab.Lab`: the veth pairs, addresses and qdiscs of
the paths, the forwarder's configuration of each delayed path, and what a cut does to a
path (a drop-all filter, destroying its TCP sockets). Nothing here runs a command.
"""

from __future__ import annotations

from collections.abc import Sequence

from tcpls.lab.bpf import drop_all_bytecode, random_loss_bytecode
from tcpls.lab.forwarder import ForwarderPath
from tcpls.lab.model import Path, PathSpec

__all__ = [
    "Commands",
    "blackhole_commands",
    "build_commands",
    "forwarder_path",
    "kill_socket_commands",
    "link_command",
    "veth_qdisc_lines",
]

#: Commands to run at once: each command line with what goes to its stdin (or ``None``).
Commands = list[tuple[Sequence[str], str | None]]

#: Largest Ethernet frame of a veth (1500 bytes of MTU and the 14-byte header).
_ETH_FRAME = 1514
#: Priorities (and handles) of the tc filters on a veth's ingress: the blackhole first.
_BLACKHOLE_PRIO = 1
_LOSS_PRIO = 10


def build_commands(
    client_ns: str, server_ns: str, paths: Sequence[Path]
) -> tuple[str, Commands, Commands]:
    """What builds ``paths`` between two existing namespaces, after the forwarder started.

    Returns the ``ip -batch`` input that creates the veth pairs (empty without veth
    paths), then the commands to run at once in each namespace: addresses and links up,
    then (once those are done) the qdiscs and filters of the veth paths.
    """
    link_lines = []
    ip_lines: dict[str, list[str]] = {client_ns: [], server_ns: []}
    tc_lines: dict[str, list[str]] = {client_ns: [], server_ns: []}
    for ns in ip_lines:
        ip_lines[ns].append("link set dev lo up")
    for path in paths:
        if path.kind == "veth":
            link_lines.append(
                f"link add name {path.client_dev} netns {client_ns} type veth "
                f"peer name {path.server_dev} netns {server_ns}"
            )
        for ns, dev, ip in (
            (client_ns, path.client_dev, path.client_ip),
            (server_ns, path.server_dev, path.server_ip),
        ):
            ip_lines[ns].append(f"addr add {ip}/24 dev {dev}")
            ip_lines[ns].append(f"link set dev {dev} up")
            if path.kind == "veth":
                tc_lines[ns].extend(veth_qdisc_lines(dev, path.spec))
    links = "\n".join(link_lines) + "\n" if link_lines else ""
    return links, _batches("ip", ip_lines), _batches("tc", tc_lines)


def _batches(tool: str, lines: dict[str, list[str]]) -> Commands:
    return [
        ([tool, "-n", ns, "-batch", "-"], "\n".join(ns_lines) + "\n")
        for ns, ns_lines in lines.items()
        if ns_lines
    ]


def veth_qdisc_lines(dev: str, spec: PathSpec) -> list[str]:
    """``tc -batch`` lines giving veth ``dev`` the rate (tbf) and loss (BPF filter) of ``spec``."""
    lines = [f"qdisc add dev {dev} clsact"]
    if spec.rate_mbit is not None:
        rate_bytes = spec.rate_mbit * 1e6 / 8
        # Bucket of ~5 ms of traffic (timer granularity), at least a few full frames.
        burst = max(int(rate_bytes * 0.005), 4 * _ETH_FRAME)
        limit = max(spec.queue_bytes, burst)
        lines.append(
            f"qdisc add dev {dev} root tbf rate {int(spec.rate_mbit * 1e6)}bit "
            f"burst {burst} limit {limit}"
        )
    if spec.loss > 0:
        lines.append(
            f"filter add dev {dev} ingress prio {_LOSS_PRIO} handle {_LOSS_PRIO} bpf da "
            f'bytecode "{random_loss_bytecode(spec.loss)}"'
        )
    return lines


def forwarder_path(client_ns: str, server_ns: str, path: Path) -> ForwarderPath:
    """The forwarder's configuration of the delayed ``path``."""
    spec = path.spec
    return ForwarderPath(
        index=path.index,
        client_ns=client_ns,
        server_ns=server_ns,
        client_dev=path.client_dev,
        server_dev=path.server_dev,
        rate_bps=None if spec.rate_mbit is None else spec.rate_mbit * 1e6,
        delay_s=spec.delay_ms / 1000,
        loss=spec.loss,
        queue_bytes=spec.queue_bytes,
    )


def blackhole_commands(client_ns: str, server_ns: str, path: Path, on: bool) -> Commands:
    """Add (``on``) or remove the drop-all filter on both ingresses of the veth ``path``."""
    commands: Commands = []
    for ns, dev in ((client_ns, path.client_dev), (server_ns, path.server_dev)):
        if on:
            argv = ["tc", "-n", ns, "filter", "add", "dev", dev, "ingress"]
            argv += ["prio", str(_BLACKHOLE_PRIO), "handle", str(_BLACKHOLE_PRIO)]
            argv += ["bpf", "da", "bytecode", drop_all_bytecode()]
        else:
            argv = ["tc", "-n", ns, "filter", "del", "dev", dev, "ingress"]
            argv += ["prio", str(_BLACKHOLE_PRIO)]
        commands.append((argv, None))
    return commands


def link_command(client_ns: str, path: Path, up: bool) -> list[str]:
    """Set the client end of ``path`` up, or down (new client connects fail at once)."""
    return ["ip", "-n", client_ns, "link", "set", "dev", path.client_dev, "up" if up else "down"]


def kill_socket_commands(client_ns: str, server_ns: str, path: Path) -> Commands:
    """``ss -K`` of every connected TCP socket of ``path``, in both namespaces."""

    def ss_kill(ns: str, local: str, remote: str) -> list[str]:
        argv = ["ss", "-N", ns, "-K", "-t", "-n", "state", "connected"]
        return [*argv, "(", "src", local, "or", "dst", remote, ")"]

    return [
        (ss_kill(client_ns, path.client_ip, path.server_ip), None),
        (ss_kill(server_ns, path.server_ip, path.client_ip), None),
    ]
