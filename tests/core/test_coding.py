"""flowdb._core.coding (include/flowdb.h seen from Python) against a tiny
pure-Python reference of docs/FORMAT.md "Internal key" and varints."""
import functools
import struct

import pytest
from hypothesis import given, strategies as st

from flowdb._core import coding
from flowdb._errors import CorruptionError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_SEQ = 2**56 - 1


# -- reference -----------------------------------------------------------------

def ref_put_varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ref_get_varint(buf, pos=0):
    """(value, pos) or None when truncated or beyond 64 bits."""
    value = shift = 0
    while pos < len(buf) and shift <= 63:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return (value, pos) if value < 2**64 else None
        shift += 7
    return None


def ref_make_ikey(ukey, ts, seq, kind):
    return ukey + struct.pack(">QQ", (ts + 2**63), (seq << 8) | kind)


def ref_order(ukey, ts, seq, kind):
    """Internal-key order: ukey bytewise, ts ascending, (seq, kind) trailer descending."""
    return (ukey, ts, -((seq << 8) | kind))


ukeys = st.binary(min_size=1, max_size=6) | st.lists(
    st.sampled_from([b"\x00", b"\xff", b"a", b"ab"]), min_size=1, max_size=4).map(b"".join)
tss = st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]) | st.integers(INT64_MIN, INT64_MAX)
seqs = st.sampled_from([0, 1, 255, 256, MAX_SEQ]) | st.integers(0, MAX_SEQ)
kinds = st.sampled_from([0, 1, 2, 255])


# -- constants -------------------------------------------------------------------

def test_constants_match_format_doc():
    assert coding.TRAILER_SIZE == 8 + 8
    assert coding.MAX_SEQ == 2**56 - 1
    assert coding.MAX_KEY == 65535
    assert coding.MAX_VALUE == 64 * 1024 * 1024
    assert coding.NEVER == 2**63 - 1
    assert (coding.KIND_DELETE, coding.KIND_PUT, coding.KIND_RANGE_DEL) == (0, 1, 2)


# -- varints ---------------------------------------------------------------------

@pytest.mark.parametrize("n, encoded", [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (2**63, b"\x80" * 9 + b"\x01"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
], ids=["zero", "127_one_byte", "128_two_bytes", "300", "2**63", "2**64-1"])
def test_varint_edge_values(n, encoded):
    assert coding.put_varint(n) == encoded == ref_put_varint(n)
    assert coding.get_varint(encoded) == (n, len(encoded))


def test_varint_truncated_is_corruption():
    for bad in [b"", b"\x80", b"\xff\xff", b"\x80" * 9]:
        with pytest.raises(CorruptionError):
            coding.get_varint(bad)


def test_varint_longer_than_ten_bytes_is_corruption():
    with pytest.raises(CorruptionError):
        coding.get_varint(b"\x80" * 10 + b"\x01")


def test_varint_tenth_byte_beyond_64_bits_is_corruption():
    # 10 bytes carry 70 bits; only the lowest bit of the 10th byte fits.
    with pytest.raises(CorruptionError):
        coding.get_varint(b"\xff" * 9 + b"\x02")
    with pytest.raises(CorruptionError):
        coding.get_varint(b"\x80" * 9 + b"\x7f")


def test_varint_corruption_names_offset():
    with pytest.raises(CorruptionError, match="offset 2") as exc:
        coding.get_varint(b"\x01\x02\x80", 2)
    assert exc.value.offset == 2


def test_varint_at_position_and_bytes_like():
    buf = b"\x05" + coding.put_varint(300) + b"\x07"
    assert coding.get_varint(buf, 1) == (300, 3)
    assert coding.get_varint(bytearray(buf), 3) == (7, 4)
    assert coding.get_varint(memoryview(buf), 0) == (5, 1)


def test_varint_position_out_of_range():
    with pytest.raises(ValueError):
        coding.get_varint(b"\x00", 2)
    with pytest.raises(ValueError):
        coding.get_varint(b"\x00", -1)
    with pytest.raises(CorruptionError):
        coding.get_varint(b"\x00", 1)        # at the end: truncated


def test_put_varint_refuses_out_of_range_and_bool():
    with pytest.raises(ValueError):
        coding.put_varint(-1)
    with pytest.raises(ValueError):
        coding.put_varint(2**64)
    with pytest.raises(TypeError):
        coding.put_varint(True)
    with pytest.raises(TypeError):
        coding.put_varint(1.0)


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip_matches_reference(n):
    enc = coding.put_varint(n)
    assert enc == ref_put_varint(n)
    assert coding.get_varint(enc) == (n, len(enc))


@given(st.binary(max_size=12), st.integers(0, 12))
def test_get_varint_on_arbitrary_bytes_matches_reference(buf, pos):
    pos = min(pos, len(buf))
    want = ref_get_varint(buf, pos)
    if want is None:
        with pytest.raises(CorruptionError):
            coding.get_varint(buf, pos)
    else:
        assert coding.get_varint(buf, pos) == want


# -- internal keys -----------------------------------------------------------------

@given(ukeys, tss, seqs, kinds)
def test_ikey_round_trip_matches_reference(ukey, ts, seq, kind):
    k = coding.make_ikey(ukey, ts, seq, kind)
    assert k == ref_make_ikey(ukey, ts, seq, kind)
    assert coding.parse_ikey(k) == (ukey, ts, seq, kind)


def test_ikey_layout_is_big_endian_with_sign_flip():
    assert coding.make_ikey(b"k", 0, 1, 1) == b"k" + b"\x80" + b"\x00" * 7 + b"\x00" * 6 + b"\x01\x01"
    assert coding.make_ikey(b"k", -1, 0, 0)[1:9] == b"\x7f" + b"\xff" * 7
    assert coding.make_ikey(b"k", INT64_MIN, 0, 0)[1:9] == b"\x00" * 8
    assert coding.make_ikey(b"k", INT64_MAX, MAX_SEQ, 255)[1:] == b"\xff" * 16


def test_ikey_empty_ukey_allowed_for_seek_targets():
    k = coding.make_ikey(b"", INT64_MIN, MAX_SEQ, 255)
    assert coding.parse_ikey(k) == (b"", INT64_MIN, MAX_SEQ, 255)
    assert coding.compare_ikeys(k, coding.make_ikey(b"\x00", INT64_MIN, 0, 0)) == -1


def test_ikey_bad_arguments():
    with pytest.raises(ValueError):
        coding.make_ikey(b"x" * 65536, 0, 0, 0)
    with pytest.raises(ValueError):
        coding.make_ikey(b"k", 2**63, 0, 0)
    with pytest.raises(ValueError):
        coding.make_ikey(b"k", INT64_MIN - 1, 0, 0)
    with pytest.raises(ValueError):
        coding.make_ikey(b"k", 0, MAX_SEQ + 1, 0)
    with pytest.raises(ValueError):
        coding.make_ikey(b"k", 0, -1, 0)
    with pytest.raises(ValueError):
        coding.make_ikey(b"k", 0, 0, 256)
    with pytest.raises(TypeError):
        coding.make_ikey(b"k", True, 0, 0)


def test_parse_ikey_shorter_than_trailer():
    with pytest.raises(ValueError):
        coding.parse_ikey(b"\x00" * 15)
    assert coding.parse_ikey(b"\x80" + b"\x00" * 15) == (b"", 0, 0, 0)


def test_compare_ikeys_shorter_than_trailer():
    good = coding.make_ikey(b"k", 0, 0, 0)
    with pytest.raises(ValueError):
        coding.compare_ikeys(good, b"short")
    with pytest.raises(ValueError):
        coding.compare_ikeys(b"", good)


def _cmp(a, b):
    return coding.compare_ikeys(coding.make_ikey(*a), coding.make_ikey(*b))


def test_order_prefix_key_before_its_extension_whatever_the_ts():
    # b"a" at the largest ts still sorts before b"a\x00" at the smallest.
    assert _cmp((b"a", INT64_MAX, 0, 1), (b"a\x00", INT64_MIN, MAX_SEQ, 1)) == -1


def test_order_zero_and_ff_bytes_are_unsigned():
    assert _cmp((b"\x00", 0, 1, 1), (b"\xff", 0, 1, 1)) == -1
    assert _cmp((b"a\xff", 0, 1, 1), (b"b", 0, 1, 1)) == -1
    assert _cmp((b"a\x00\x00", 0, 1, 1), (b"a\x00", 0, 1, 1)) == 1


def test_order_negative_ts_before_positive():
    assert _cmp((b"k", -1, 1, 1), (b"k", 0, 1, 1)) == -1
    assert _cmp((b"k", INT64_MIN, 1, 1), (b"k", INT64_MIN + 1, 1, 1)) == -1
    assert _cmp((b"k", INT64_MAX - 1, 1, 1), (b"k", INT64_MAX, 1, 1)) == -1


def test_order_newest_seq_first():
    assert _cmp((b"k", 5, 10, 1), (b"k", 5, 9, 1)) == -1
    assert _cmp((b"k", 5, MAX_SEQ, 0), (b"k", 5, 0, 1)) == -1


def test_order_equal_keys_compare_zero():
    assert _cmp((b"k", 5, 10, 1), (b"k", 5, 10, 1)) == 0


@given(st.lists(st.tuples(ukeys, tss, seqs, kinds), max_size=40))
def test_sort_by_compare_equals_python_sort(entries):
    ikeys = [coding.make_ikey(*e) for e in entries]
    got = sorted(ikeys, key=functools.cmp_to_key(coding.compare_ikeys))
    want = [coding.make_ikey(*e) for e in sorted(entries, key=lambda e: ref_order(*e))]
    assert got == want


@given(st.tuples(ukeys, tss, seqs, kinds), st.tuples(ukeys, tss, seqs, kinds))
def test_compare_is_antisymmetric_and_matches_reference(a, b):
    ra, rb = ref_order(*a), ref_order(*b)
    want = (ra > rb) - (ra < rb)
    assert _cmp(a, b) == want
    assert _cmp(b, a) == -want
