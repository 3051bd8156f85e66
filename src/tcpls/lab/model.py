"""The lab's value types: what a path is made of, the names of its states, where state lives."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

__all__ = [
    "STATE_DIR",
    "CutMode",
    "Path",
    "PathKind",
    "PathSpec",
    "PathState",
    "Side",
]

Side = Literal["client", "server"]
"""Which namespace: ``"client"`` or ``"server"``."""
CutMode = Literal["blackhole", "reset", "down"]
"""How :meth:`Lab.cut` breaks a path."""
PathState = Literal["up", "blackhole", "down"]
"""State of a path, see :attr:`Path.state`."""
PathKind = Literal["veth", "tun"]
"""How a path is built: a veth pair (kernel only) or two TUN devices and the forwarder."""

STATE_DIR = "/run/tcpls-lab"
"""Directory holding ``<name>.json`` (topology and state), forwarder sockets and logs."""

_DEFAULT_QUEUE_PACKETS = 100


@dataclass(frozen=True)
class PathSpec:
    """One-way properties of a path, applied in both directions.

    ``rate_mbit``: link rate in Mbit/s (``None``: unlimited). ``delay_ms``: one-way delay in
    milliseconds (a non-zero delay makes the path go through the userspace forwarder).
    ``loss``: independent random loss probability per packet, 0..1. ``queue_kb``: drop-tail
    queue in KiB in front of the rate limiter (``None``: the larger of 100 full-size packets
    and one bandwidth-delay product).
    """

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    loss: float = 0.0
    queue_kb: int | None = None

    def __post_init__(self) -> None:
        if self.rate_mbit is not None and not self.rate_mbit > 0:
            raise ValueError(f"rate_mbit must be positive or None, got {self.rate_mbit}")
        if not self.delay_ms >= 0:
            raise ValueError(f"delay_ms must be >= 0, got {self.delay_ms}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be a probability within [0, 1], got {self.loss}")
        if self.queue_kb is not None and self.queue_kb <= 0:
            raise ValueError(f"queue_kb must be positive or None, got {self.queue_kb}")

    @property
    def kind(self) -> PathKind:
        """``"tun"`` when the path needs the userspace forwarder (it has a delay)."""
        return "tun" if self.delay_ms > 0 else "veth"

    @property
    def queue_bytes(self) -> int:
        """The drop-tail queue size in bytes (see ``queue_kb``)."""
        if self.queue_kb is not None:
            return self.queue_kb * 1024
        queue = _DEFAULT_QUEUE_PACKETS * 1500
        if self.rate_mbit is not None:
            bdp = self.rate_mbit * 1e6 / 8 * (2 * self.delay_ms / 1000)
            queue = max(queue, int(bdp))
        return queue

    def describe(self) -> str:
        """A short human description, e.g. ``20 Mbit/s, 10 ms, 1 % loss``."""
        parts = [f"{self.rate_mbit:g} Mbit/s" if self.rate_mbit else "unlimited"]
        if self.delay_ms:
            parts.append(f"{self.delay_ms:g} ms")
        if self.loss:
            parts.append(f"{self.loss * 100:g} % loss")
        if self.queue_kb:
            parts.append(f"queue {self.queue_kb} KiB")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PathSpec:
        """Build from :meth:`to_json` output."""
        rate = data.get("rate_mbit")
        queue = data.get("queue_kb")
        return cls(
            rate_mbit=None if rate is None else float(rate),
            delay_ms=float(data.get("delay_ms", 0.0)),
            loss=float(data.get("loss", 0.0)),
            queue_kb=None if queue is None else int(queue),
        )


@dataclass
class Path:
    """One path of a lab (read-only for users; :meth:`Lab.cut`/:meth:`Lab.restore` update it).

    The client reaches the server over this path by connecting to ``server_ip`` (routing is
    by destination address). ``client_dev``/``server_dev`` are the interface names inside the
    two namespaces (``veth<i>`` or ``tun<i>``).
    """

    index: int
    client_ip: str
    server_ip: str
    spec: PathSpec
    kind: PathKind
    client_dev: str
    server_dev: str
    state: PathState = "up"

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        data = asdict(self)
        data["spec"] = self.spec.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Path:
        """Build from :meth:`to_json` output."""
        state = str(data.get("state", "up"))
        kind = str(data["kind"])
        if state not in get_args(PathState) or kind not in get_args(PathKind):
            raise ValueError(f"bad path state {state!r} or kind {kind!r}")
        return cls(
            index=int(data["index"]),
            client_ip=str(data["client_ip"]),
            server_ip=str(data["server_ip"]),
            spec=PathSpec.from_json(data["spec"]),
            kind=cast(PathKind, kind),
            client_dev=str(data["client_dev"]),
            server_dev=str(data["server_dev"]),
            state=cast(PathState, state),
        )
