"""The core's snappy codec (include/fdb_snappy.h) against python-snappy, the
reference: each decodes what the other encodes, and malformed streams are
refused without reading or writing out of bounds."""
import random

import pytest
import snappy
from hypothesis import given, settings, strategies as st

from flowdb._core.coding import put_varint
from flowdb._core.snappy import compress, decompress, decompress_guarded, uncompressed_length

# Data that compresses: short alphabets, repeats at every distance, runs.
compressible = st.builds(
    lambda parts: b"".join(parts),
    st.lists(st.one_of(st.binary(max_size=40),
                       st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=9),
                                 st.integers(1, 300))),
             max_size=40))
any_data = st.one_of(st.binary(max_size=3000), compressible)


@settings(max_examples=400, deadline=None)
@given(any_data)
def test_round_trips_through_the_reference(data):
    ours = compress(data)
    assert snappy.decompress(ours) == data
    assert decompress(snappy.compress(data)) == data
    assert decompress(ours) == data
    assert uncompressed_length(ours) == len(data)


@pytest.mark.parametrize("size", [0, 1, 14, 15, 16, 17, 60, 61, 255, 256, 257,
                                  65535, 65536, 65537, 200_000])
@pytest.mark.parametrize("kind", ["zeros", "random", "text"])
def test_fragment_and_literal_boundaries(size, kind):
    rng = random.Random(size)
    data = {"zeros": bytes(size), "random": rng.randbytes(size),
            "text": (b"sensor:000123 temperature=21.5 " * (size // 31 + 1))[:size]}[kind]
    ours = compress(data)
    assert len(ours) <= 32 + size + size // 6          # snappy's own bound
    assert snappy.decompress(ours) == data
    assert decompress(snappy.compress(data)) == data


def test_compresses_as_well_as_the_reference():
    rng = random.Random(7)
    blocks = [b"".join(b"sensor:%06d" % rng.randrange(1000) + b'{"t":%d,"v":%.3f}' % (i, rng.random())
                       for i in range(120)) for _ in range(20)]
    ours = sum(len(compress(b)) for b in blocks)
    ref = sum(len(snappy.compress(b)) for b in blocks)
    assert ours <= ref * 1.05


def _literal(data):
    n = len(data) - 1
    return (bytes([n << 2]) if n < 60 else bytes([60 << 2, n])) + data


def _copy(length, offset, width):
    if width == 1:
        return bytes([(length - 4) << 2 | (offset >> 8) << 5 | 1, offset & 0xFF])
    return bytes([(length - 1) << 2 | (2 if width == 2 else 3)]) + offset.to_bytes(width, "little")


def _element_shapes():
    """(element, the bytes it decodes to) for short literals and copies."""
    for n in range(1, 21):
        yield _literal(bytes(range(100, 100 + n))), n
    for off in range(1, 41):
        for n in range(4, 12):
            yield _copy(n, off, 1), n
        for n in range(1, 25):
            yield _copy(n, off, 2), n
    for off in (1, 7, 8, 15, 16, 17, 40):
        for n in (1, 4, 8, 9, 16, 17, 24, 64):
            yield _copy(n, off, 4), n


def test_every_element_shape_near_the_end_of_both_buffers():
    """The decoder moves short elements 8 or 16 bytes at a time where both
    buffers have the room: each shape, followed by 0-18 more bytes, decodes
    exactly as the reference decodes it (a move that read bytes not yet
    written, or wrote past the end, would show here)."""
    head = _literal(bytes(range(64)))
    for element, n in _element_shapes():
        for tail in range(19):
            stream = (put_varint(64 + n + tail) + head + element
                      + (_literal(b"z" * tail) if tail else b""))
            out, guard_intact = decompress_guarded(stream)
            assert out == snappy.decompress(stream) and guard_intact, (element, tail)


@pytest.mark.parametrize("stream", [
    b"",                                  # no length
    b"\x80",                              # length cut short
    b"\xff\xff\xff\xff\x7f",              # length above 2**32 - 1
    b"\x05",                              # claims 5 bytes, holds none
    b"\x03\x08ab",                        # literal of 3 with 2 bytes left
    b"\x02\x04ab\x01",                    # copy-1 cut short
    b"\x04\x00a\x05\x00",                 # a copy from offset 0
    b"\x05\x00a\x0e\x02\x00",             # copy reaching before the start
    b"\x02\x04abc",                       # more input than the length claims
    b"\x03\x04ab",                        # fewer bytes than claimed
    b"\x01\xf0\xffa",                     # 1-byte literal length past the end
    b"\x01\xfc\xff\xff\xff\xffa",         # 4-byte literal length: 2**32 bytes
])
def test_malformed_streams_are_refused(stream):
    with pytest.raises(ValueError):
        decompress(stream)


@settings(max_examples=300, deadline=None)
@given(any_data, st.data())
def test_damaged_streams_never_overrun(data, draw):
    """Any damage gives a refusal or some bytes of the claimed length, and
    never reads or writes outside the buffers (run under the debug build's
    checks, and valgrind/ASan when chasing a bug)."""
    stream = bytearray(compress(data))
    for _ in range(draw.draw(st.integers(1, 4))):
        i = draw.draw(st.integers(0, len(stream) - 1))
        stream[i] = draw.draw(st.integers(0, 255))
    try:
        out = decompress(bytes(stream))
    except ValueError:
        return
    assert len(out) == uncompressed_length(bytes(stream))
