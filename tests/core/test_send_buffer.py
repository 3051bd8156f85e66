"""The send buffer: any mix of writes, copies and releases gives back the bytes written;
tiny writes share chunks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.core.streams import SMALL_CHUNK, SendBuffer

_WRITE = st.tuples(st.just("write"), st.integers(0, 3000))
_COPY = st.tuples(st.just("copy"), st.integers(0, 5000))
_RELEASE = st.tuples(st.just("release"), st.integers(0, 5000))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_WRITE, _COPY, _RELEASE), max_size=60))
def test_the_bytes_copied_are_the_bytes_written(ops: list[tuple[str, int]]) -> None:
    buffer = SendBuffer()
    written = bytearray()
    sent = released = 0
    for op, n in ops:
        if op == "write":
            data = bytes((len(written) + i) % 251 for i in range(n))
            buffer.append(data if n % 2 else bytearray(data))
            written += data
        elif op == "copy":  # the next bytes not sent, as the sender takes them
            n = min(n, len(written) - sent)
            out = bytearray(n)
            buffer.copy_into(sent, n, memoryview(out))
            assert out == written[sent : sent + n]
            sent += n
        else:  # an acknowledgment of what was sent
            released = max(released, min(released + n, sent))
            buffer.release(released)
        assert buffer.end == len(written)
        assert buffer.base <= released
    rest = len(written) - buffer.base
    out = bytearray(rest)
    buffer.copy_into(buffer.base, rest, memoryview(out))  # what is held is still intact
    assert out == written[buffer.base :]


def test_one_byte_writes_share_chunks() -> None:
    """10,000 writes of one byte (an echo of a peer's one-byte frames) hold about ten
    chunks, not 10,000 (a chunk costs over 200 bytes of objects)."""
    buffer = SendBuffer()
    for i in range(10_000):
        buffer.append(bytes([i % 256]))
    assert len(buffer._chunks) <= 10_000 // SMALL_CHUNK + 1
    out = bytearray(10_000)
    buffer.copy_into(0, 10_000, memoryview(out))
    assert out == bytes(i % 256 for i in range(10_000))
