"""The batch payload codec against a tiny pure-Python reference of
docs/FORMAT.md "Batch payload":

    batch := count:u32le entry{count}
    entry := kind:u8 key_len:varint key ts:i64le body
    body  := PUT: expire_at:i64le value_len:varint value | DELETE: - | RANGE_DEL: end_len:varint end
"""
import struct

import pytest
from hypothesis import given, strategies as st

from flowdb._core import batch as B
from flowdb._core.record import NEVER, Record
from flowdb._errors import CorruptionError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_VALUE = 64 * 1024 * 1024


# -- reference -----------------------------------------------------------------

def ref_varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ref_encode(entries):
    """entries: (kind, key, ts, expire_at, value_or_end) as decode_batch returns them."""
    out = [struct.pack("<I", len(entries))]
    for kind, key, ts, exp, body in entries:
        out += [bytes([kind]), ref_varint(len(key)), key, struct.pack("<q", ts)]
        if kind == 1:
            out += [struct.pack("<q", exp), ref_varint(len(body)), body]
        elif kind == 2:
            out += [ref_varint(len(body)), body]
    return b"".join(out)


def ref_decode(buf):
    """The entries, or None if the payload is malformed in any way."""
    def varint(pos):
        value = shift = 0
        while pos < len(buf) and shift <= 63:
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return (value, pos) if value < 2**64 else (None, pos)
            shift += 7
        return None, pos

    def sized(pos, lo, hi):
        n, pos = varint(pos)
        if n is None or not lo <= n <= hi or pos + n > len(buf):
            return None, pos
        return buf[pos:pos + n], pos + n

    if len(buf) < 4:
        return None
    (count,), pos, out = struct.unpack_from("<I", buf), 4, []
    for _ in range(count):
        if pos >= len(buf) or buf[pos] > 2:
            return None
        kind = buf[pos]
        key, pos = sized(pos + 1, 1, 65535)
        if key is None or pos + 8 > len(buf):
            return None
        (ts,), pos = struct.unpack_from("<q", buf, pos), pos + 8
        exp = body = None
        if kind == 1:
            if pos + 8 > len(buf):
                return None
            (exp,), pos = struct.unpack_from("<q", buf, pos), pos + 8
            body, pos = sized(pos, 0, MAX_VALUE)
        elif kind == 2:
            if ts != INT64_MIN:
                return None
            body, pos = sized(pos, 1, 65535)
        if kind != 0 and body is None:
            return None
        out.append((kind, bytes(key), ts, exp, None if body is None else bytes(body)))
    return out if pos == len(buf) else None


def ref_expiry(r, ttl_secs, only_never):
    if ttl_secs is None or (only_never and r.expire_at != NEVER):
        return r.expire_at
    return r.ts + ttl_secs * 1_000_000


keys = st.binary(min_size=1, max_size=20) | st.sampled_from([b"\x00", b"\xff" * 3, b"k" * 200])
tss = st.integers(INT64_MIN, INT64_MAX) | st.sampled_from([INT64_MIN, -1, 0, INT64_MAX])
values = st.binary(max_size=300)
records = st.builds(Record, keys, st.integers(-2**40, 2**40) | st.sampled_from([INT64_MIN, 0]), values,
                    st.sampled_from([NEVER, 0, -5, 2**50]) | st.integers(INT64_MIN, INT64_MAX))


# -- encode_puts ---------------------------------------------------------------------

@given(st.lists(records, max_size=20), st.none() | st.integers(1, 10**6), st.booleans())
def test_puts_bit_exact_and_round_trip(recs, ttl, only_never):
    payload, count, raw = B.encode_puts(recs, ttl, only_never)
    want = [(1, r.key, r.ts, ref_expiry(r, ttl, only_never), r.value) for r in recs]
    assert payload == ref_encode(want)
    assert count == len(recs)
    assert raw == sum(len(r.key) + len(r.value) for r in recs)
    assert B.decode_batch(payload) == want == ref_decode(payload)


def test_empty_batch():
    assert B.encode_puts([]) == (b"\x00\x00\x00\x00", 0, 0)
    assert B.decode_batch(b"\x00\x00\x00\x00") == []


def test_puts_known_bytes():
    payload, count, raw = B.encode_puts([Record(b"ab", 1, b"xyz", 2)])
    assert payload == (b"\x01\x00\x00\x00" + b"\x01" + b"\x02ab" + struct.pack("<q", 1)
                       + struct.pack("<q", 2) + b"\x03xyz")
    assert (count, raw) == (1, 5)


def test_puts_accepts_any_iterable():
    recs = [Record(b"a", 1, b"x"), Record(b"b", 2, b"y")]
    want = B.encode_puts(recs)
    assert B.encode_puts(tuple(recs)) == want
    assert B.encode_puts(iter(recs)) == want
    assert B.encode_puts(r for r in recs) == want


def test_puts_long_value_uses_multibyte_varint():
    payload, _, _ = B.encode_puts([Record(b"k", 0, b"v" * 200)])
    assert payload[4 + 1 + 2 + 8 + 8:][:2] == b"\xc8\x01"
    assert B.decode_batch(payload)[0][4] == b"v" * 200


def test_ttl_none_keeps_each_expire_at():
    recs = [Record(b"a", 10, b"", NEVER), Record(b"b", 10, b"", 99)]
    assert [e[3] for e in B.decode_batch(B.encode_puts(recs, None, True)[0])] == [NEVER, 99]
    assert [e[3] for e in B.decode_batch(B.encode_puts(recs, None, False)[0])] == [NEVER, 99]


def test_ttl_only_never_sets_just_the_never_records():
    recs = [Record(b"a", 10, b"", NEVER), Record(b"b", 10, b"", 99)]
    got = [e[3] for e in B.decode_batch(B.encode_puts(recs, 5, True)[0])]
    assert got == [10 + 5_000_000, 99]


def test_ttl_for_all_overrides_every_record():
    recs = [Record(b"a", 10, b"", NEVER), Record(b"b", -10, b"", 99)]
    got = [e[3] for e in B.decode_batch(B.encode_puts(recs, 5, False)[0])]
    assert got == [10 + 5_000_000, -10 + 5_000_000]


def test_ttl_counts_from_negative_ts():
    got = B.decode_batch(B.encode_puts([Record(b"a", INT64_MIN, b"")], 1, False)[0])
    assert got[0][3] == INT64_MIN + 1_000_000


def test_ttl_reaching_exactly_int64_max_is_allowed():
    r = Record(b"a", INT64_MAX - 1_000_000, b"")
    assert B.decode_batch(B.encode_puts([r], 1, False)[0])[0][3] == INT64_MAX


def test_ttl_overflow_names_the_record():
    recs = [Record(b"ok", 0, b""), Record(b"late", INT64_MAX - 999_999, b"")]
    with pytest.raises(ValueError, match=r"record 1 \(key=b'late'"):
        B.encode_puts(recs, 1, False)


def test_ttl_overflow_ignored_for_records_it_does_not_touch():
    r = Record(b"late", INT64_MAX, b"", 5)       # has its own expiry
    assert B.decode_batch(B.encode_puts([r], 1, True)[0])[0][3] == 5
    with pytest.raises(ValueError):
        B.encode_puts([r], 1, False)


def test_ttl_whose_microseconds_overflow():
    with pytest.raises(ValueError):
        B.encode_puts([Record(b"a", 0, b"")], INT64_MAX // 1_000_000 + 1, False)
    with pytest.raises(ValueError):
        B.encode_puts([Record(b"a", 0, b"")], 2**70, False)


def test_ttl_wrong_type():
    for bad in (True, 1.5, "1"):
        with pytest.raises(TypeError):
            B.encode_puts([Record(b"a", 0, b"")], bad, False)


def test_non_record_item_is_type_error_naming_index():
    with pytest.raises(TypeError, match="record 1"):
        B.encode_puts([Record(b"a", 0, b""), (b"a", 0, b"")])


def test_records_not_iterable_is_type_error():
    with pytest.raises(TypeError):
        B.encode_puts(5)


def test_mutated_record_fields_are_revalidated():
    r = Record(b"a", 0, b"")
    r.key = b""
    with pytest.raises(ValueError, match="record 0"):
        B.encode_puts([r])
    r.key = b"k" * 65536
    with pytest.raises(ValueError):
        B.encode_puts([r])
    r.key = b"k" * 65535
    assert B.decode_batch(B.encode_puts([r])[0])[0][1] == b"k" * 65535
    r.value = bytes(MAX_VALUE + 1)
    with pytest.raises(ValueError):
        B.encode_puts([r])


def test_record_with_none_field_is_type_error():
    r = Record(b"a", 0, b"")
    r.key = None
    with pytest.raises(TypeError):
        B.encode_puts([r])
    r = Record(b"a", 0, b"")
    r.value = None
    with pytest.raises(TypeError):
        B.encode_puts([r])


def test_value_of_exactly_64_mib():
    payload, _, raw = B.encode_puts([Record(b"a", 0, bytes(MAX_VALUE))])
    assert raw == 1 + MAX_VALUE
    assert len(B.decode_batch(payload)[0][4]) == MAX_VALUE


# -- encode_deletes / encode_range_delete ----------------------------------------------

@given(st.lists(st.tuples(keys, tss), max_size=20))
def test_deletes_bit_exact_and_round_trip(pairs):
    payload, count = B.encode_deletes(pairs)
    want = [(0, k, ts, None, None) for k, ts in pairs]
    assert payload == ref_encode(want)
    assert count == len(pairs)
    assert B.decode_batch(payload) == want == ref_decode(payload)


def test_deletes_key_types():
    payload, _ = B.encode_deletes([("é", 1), (bytearray(b"b"), 2), [memoryview(b"c"), 3]])
    assert [e[1] for e in B.decode_batch(payload)] == ["é".encode(), b"b", b"c"]


def test_deletes_bad_pairs():
    with pytest.raises(TypeError):
        B.encode_deletes([b"k"])
    with pytest.raises(TypeError):
        B.encode_deletes([(b"k", 1, 2)])
    with pytest.raises(TypeError):
        B.encode_deletes([(1, 1)])
    with pytest.raises(ValueError):
        B.encode_deletes([(b"", 1)])
    with pytest.raises(ValueError):
        B.encode_deletes([(b"k" * 65536, 1)])
    with pytest.raises(TypeError):
        B.encode_deletes([(b"k", True)])
    with pytest.raises(TypeError):
        B.encode_deletes([(b"k", 1.0)])
    with pytest.raises(ValueError) as exc:
        B.encode_deletes([(b"k", 2**63)])
    assert not isinstance(exc.value, OverflowError)


def test_deletes_empty():
    assert B.encode_deletes([]) == (b"\x00\x00\x00\x00", 0)


@given(keys, keys)
def test_range_delete_bit_exact_and_round_trip(start, end):
    payload, count = B.encode_range_delete(start, end)
    want = [(2, start, INT64_MIN, None, end)]
    assert payload == ref_encode(want) and count == 1
    assert B.decode_batch(payload) == want == ref_decode(payload)


def test_range_delete_str_keys_and_inverted_range_allowed():
    payload, _ = B.encode_range_delete("z", "a")
    assert B.decode_batch(payload) == [(2, b"z", INT64_MIN, None, b"a")]


def test_range_delete_empty_or_oversized_bounds_refused():
    with pytest.raises(ValueError):
        B.encode_range_delete(b"", b"a")
    with pytest.raises(ValueError):
        B.encode_range_delete(b"a", b"")
    with pytest.raises(ValueError):
        B.encode_range_delete(b"a", b"z" * 65536)
    with pytest.raises(TypeError):
        B.encode_range_delete(None, b"a")


def test_kind_constants():
    assert (B.KIND_DELETE, B.KIND_PUT, B.KIND_RANGE_DEL) == (0, 1, 2)


# -- decode_batch: corrupt payloads --------------------------------------------------

def _mixed():
    puts = B.encode_puts([Record(b"a", 1, b"v" * 130, 9), Record(b"b", -2, b"")])[0]
    dels = B.encode_deletes([(b"c", 3)])[0]
    rng = B.encode_range_delete(b"d", b"e")[0]
    # Concatenate bodies under one count: a valid 4-entry payload.
    return struct.pack("<I", 4) + puts[4:] + dels[4:] + rng[4:]


def test_decode_accepts_bytes_like():
    p = _mixed()
    assert B.decode_batch(bytearray(p)) == B.decode_batch(memoryview(p)) == ref_decode(p)


def test_every_truncation_is_corruption():
    p = _mixed()
    for n in range(len(p)):
        with pytest.raises(CorruptionError):
            B.decode_batch(p[:n])


def test_trailing_bytes_are_corruption():
    with pytest.raises(CorruptionError, match="trailing"):
        B.decode_batch(_mixed() + b"\x00")


def test_count_smaller_than_entries_is_corruption():
    p = _mixed()
    with pytest.raises(CorruptionError):
        B.decode_batch(struct.pack("<I", 3) + p[4:])


def test_count_larger_than_payload_can_hold_is_corruption():
    with pytest.raises(CorruptionError):
        B.decode_batch(b"\xff\xff\xff\xff")
    with pytest.raises(CorruptionError):
        B.decode_batch(struct.pack("<I", 5) + _mixed()[4:])


def _entry(kind, key_len_bytes, rest):
    return struct.pack("<I", 1) + bytes([kind]) + key_len_bytes + rest


def test_unknown_kind_is_corruption():
    with pytest.raises(CorruptionError, match="kind"):
        B.decode_batch(_entry(3, b"\x01", b"k" + bytes(8)))


def test_zero_key_length_is_corruption():
    with pytest.raises(CorruptionError):
        B.decode_batch(_entry(0, b"\x00", bytes(8)))


def test_key_length_above_max_is_corruption():
    with pytest.raises(CorruptionError):
        B.decode_batch(_entry(0, ref_varint(65536), b"k" * 65536 + bytes(8)))


def test_overlong_varint_is_corruption():
    with pytest.raises(CorruptionError):
        B.decode_batch(_entry(0, b"\x81" + b"\x80" * 9 + b"\x00", b"k" + bytes(8)))
    with pytest.raises(CorruptionError):   # 1 + 2**64: bits beyond 64 must not vanish
        B.decode_batch(_entry(0, b"\x81" + b"\x80" * 8 + b"\x02", b"k" + bytes(8)))


def test_value_length_above_64_mib_is_corruption():
    body = b"k" + bytes(8) + bytes(8) + ref_varint(MAX_VALUE + 1)
    with pytest.raises(CorruptionError):
        B.decode_batch(_entry(1, b"\x01", body + bytes(MAX_VALUE + 1)))


def test_value_length_past_end_is_corruption():
    with pytest.raises(CorruptionError):
        B.decode_batch(_entry(1, b"\x01", b"k" + bytes(16) + b"\x05abcd"))


def test_range_delete_with_other_ts_is_corruption():
    with pytest.raises(CorruptionError):
        B.decode_batch(_entry(2, b"\x01", b"k" + struct.pack("<q", 0) + b"\x01z"))


def test_range_delete_with_empty_end_is_corruption():
    with pytest.raises(CorruptionError):
        B.decode_batch(_entry(2, b"\x01", b"k" + struct.pack("<q", INT64_MIN) + b"\x00"))


def test_corruption_names_the_offset():
    p = _mixed()
    bad = p[:4] + b"\x07" + p[5:]            # kind byte of entry 0, at offset 4
    with pytest.raises(CorruptionError, match="offset 4") as exc:
        B.decode_batch(bad)
    assert exc.value.offset == 4


@given(st.binary(max_size=60))
def test_arbitrary_bytes_decode_like_reference_or_raise_corruption(buf):
    want = ref_decode(buf)
    if want is None:
        with pytest.raises(CorruptionError):
            B.decode_batch(buf)
    else:
        assert B.decode_batch(buf) == want


@given(st.data())
def test_mutated_valid_payload_decodes_like_reference(data):
    p = bytearray(_mixed())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(p) - 1))
        p[i] = data.draw(st.integers(0, 255))
    want = ref_decode(bytes(p))
    if want is None:
        with pytest.raises(CorruptionError):
            B.decode_batch(bytes(p))
    else:
        assert B.decode_batch(bytes(p)) == want
