"""Classic BPF programs for ``tc filter ... bpf da bytecode "..."`` (drop-all and random loss).

The programs run in direct-action mode on a ``clsact`` ingress hook: their return value is
the tc verdict. ``TC_ACT_SHOT`` drops the packet, ``TC_ACT_UNSPEC`` lets the next filter
(or the stack) have it.
"""

from __future__ import annotations

__all__ = ["drop_all_bytecode", "random_loss_bytecode"]

# Instruction codes (linux/filter.h).
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_JMP_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
# Ancillary load of a pseudo-random u32: SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM (56).
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF
_TC_ACT_UNSPEC = 0xFFFFFFFF  # -1
_TC_ACT_SHOT = 2


def _encode(program: list[tuple[int, int, int, int]]) -> str:
    parts = [str(len(program))] + [f"{code} {jt} {jf} {k}" for code, jt, jf, k in program]
    return ",".join(parts)


def drop_all_bytecode() -> str:
    """Return bytecode that drops every packet."""
    return _encode([(_BPF_RET_K, 0, 0, _TC_ACT_SHOT)])


def random_loss_bytecode(probability: float) -> str:
    """Return bytecode that drops each packet independently with ``probability`` (0..1)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"loss probability must be within [0, 1], got {probability}")
    if probability >= 1.0:
        return drop_all_bytecode()
    threshold = min(round(probability * 2**32), 2**32 - 1)
    return _encode(
        [
            (_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM),  # A = random u32
            (_BPF_JMP_JGE_K, 0, 1, threshold),  # A >= threshold ? keep : drop
            (_BPF_RET_K, 0, 0, _TC_ACT_UNSPEC),
            (_BPF_RET_K, 0, 0, _TC_ACT_SHOT),
        ]
    )
