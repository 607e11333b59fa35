"""Blocks (flowdb/_core/block.pyx) against a sorted-list reference, and
malformed blocks: every defect raises CorruptionError, nothing crashes."""
import bisect
import struct

import pytest
from hypothesis import given, settings, strategies as st

from flowdb._core.block import RESTART_INTERVAL, BlockBuilder, BlockIterator
from flowdb._errors import CorruptionError


# -- reference -----------------------------------------------------------------

def ikey(ukey, ts=0, seq=1, kind=1):
    return ukey + struct.pack(">QQ", ts + 2**63, (seq << 8) | kind)


def order(k):
    """Internal-key order as a Python sort key: ukey, ts, seq descending."""
    ts_u, trailer = struct.unpack(">QQ", k[-16:])
    return (k[:-16], ts_u, -trailer)


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def ref_block(entries, interval=RESTART_INTERVAL):
    """The block format of docs/FORMAT.md, written from the grammar."""
    out, restarts, prev = bytearray(), [], b""
    for i, (k, v) in enumerate(entries):
        shared = 0
        if i % interval:
            while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += varint(shared) + varint(len(k) - shared) + varint(len(v)) + k[shared:] + v
        prev = k
    for r in restarts:
        out += struct.pack("<I", r)
    return bytes(out + struct.pack("<I", len(restarts)))


def build(entries):
    b = BlockBuilder()
    for k, v in entries:
        b.add(k, v)
    return b.finish()


def scan(data):
    it = BlockIterator(data)
    it.seek_to_first()
    return list(it.entries())


def model_seek(entries, target):
    keys = [order(k) for k, _ in entries]
    i = bisect.bisect_left(keys, order(target))
    return entries[i] if i < len(entries) else None


def model_seek_for_prev(entries, target):
    keys = [order(k) for k, _ in entries]
    i = bisect.bisect_right(keys, order(target))
    return entries[i - 1] if i else None


def current(it):
    return (it.key(), it.value()) if it.valid else None


ukeys = st.binary(min_size=0, max_size=12)
raw_entries = st.lists(st.tuples(st.sampled_from([b"", b"a", b"ab", b"abc", b"b", b"sensor:1"]) | ukeys,
                                 st.integers(-3, 3), st.integers(1, 50), st.sampled_from([0, 1]),
                                 st.binary(max_size=40)),
                       max_size=120)


def sorted_entries(raw):
    seen, out = set(), []
    for u, ts, seq, kind, v in raw:
        if (u, ts, seq) not in seen:
            seen.add((u, ts, seq))
            out.append((ikey(u, ts, seq, kind), v))
    out.sort(key=lambda kv: order(kv[0]))
    return out


# -- round trips ------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(raw_entries, st.lists(st.tuples(ukeys, st.integers(-4, 4), st.integers(0, 51)), max_size=20))
def test_round_trip_matches_reference(raw, targets):
    entries = sorted_entries(raw)
    data = build(entries)
    assert data == ref_block(entries)
    assert scan(data) == entries
    it = BlockIterator(data)
    for u, ts, seq in targets + [(k[:-16], 0, 1) for k, _ in entries[:5]]:
        t = ikey(u, ts, seq)
        it.seek(t)
        assert current(it) == model_seek(entries, t)
        it.seek_for_prev(t)
        assert current(it) == model_seek_for_prev(entries, t)


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 31, 32, 33, 48, 100])
def test_restart_boundaries(n):
    entries = [(ikey(b"k%04d" % i), b"v%d" % i) for i in range(n)]
    data = build(entries)
    num_restarts = struct.unpack_from("<I", data, len(data) - 4)[0]
    assert num_restarts == (n + RESTART_INTERVAL - 1) // RESTART_INTERVAL
    assert scan(data) == entries
    it = BlockIterator(data)
    for i, (k, v) in enumerate(entries):
        it.seek(k)
        assert current(it) == (k, v)
        it.seek_for_prev(k)
        assert current(it) == (k, v)
    # Walk backwards across every restart point.
    it.seek_to_last()
    back = []
    while it.valid:
        back.append(current(it))
        it.prev()
    assert back == entries[::-1]


def test_single_entry():
    entries = [(ikey(b"only", 5, 9), b"value")]
    data = build(entries)
    assert scan(data) == entries
    it = BlockIterator(data)
    it.seek(ikey(b"a"))
    assert current(it) == entries[0]
    it.seek(ikey(b"zzz"))
    assert not it.valid
    it.seek_for_prev(ikey(b"a"))
    assert not it.valid
    it.seek_for_prev(ikey(b"zzz"))
    assert current(it) == entries[0]


def test_empty_block():
    data = build([])
    assert data == b"\x00\x00\x00\x00"
    it = BlockIterator(data)
    it.seek_to_first()
    assert not it.valid
    it.seek(ikey(b"a"))
    assert not it.valid
    it.seek_for_prev(ikey(b"z"))
    assert not it.valid
    it.seek_to_last()
    assert not it.valid


def test_huge_values():
    entries = [(ikey(b"a"), b"x" * 5_000_000), (ikey(b"b"), b""), (ikey(b"c"), bytes(range(256)) * 4000)]
    data = build(entries)
    assert scan(data) == entries
    it = BlockIterator(data)
    it.seek(ikey(b"b", -1))
    assert it.key() == ikey(b"b") and it.value() == b""


def test_huge_key():
    entries = [(ikey(b"k" * 65535), b"v"), (ikey(b"k" * 65535 + b"x"), b"w")]
    assert scan(build(entries)) == entries


def test_prefix_compression_shares_bytes():
    entries = [(ikey(b"sensor:%06d" % i, i), b"") for i in range(64)]
    data = build(entries)
    assert len(data) < sum(len(k) for k, _ in entries) * 3 // 4


def test_same_user_key_versions_order_by_ts_then_seq_desc():
    entries = sorted([(ikey(b"k", ts, seq), b"%d.%d" % (ts, seq))
                      for ts in (-2, 0, 7) for seq in (1, 5, 9)], key=lambda kv: order(kv[0]))
    assert [struct.unpack(">Q", k[-8:])[0] >> 8 for k, _ in entries[:3]] == [9, 5, 1]
    data = build(entries)
    it = BlockIterator(data)
    it.seek(ikey(b"k", 0, 6))                # newest version with seq <= 6
    assert current(it) == (ikey(b"k", 0, 5), b"0.5")


def test_builder_reset_and_reuse():
    b = BlockBuilder()
    b.add(ikey(b"x"), b"1")
    b.reset()
    assert len(b) == 0
    b.add(ikey(b"a"), b"2")
    assert b.estimated_size() == len(ref_block([(ikey(b"a"), b"2")]))
    data = b.finish()
    assert scan(data) == [(ikey(b"a"), b"2")]
    assert b.finish() == b"\x00\x00\x00\x00"


def test_builder_rejects_short_key():
    with pytest.raises(ValueError):
        BlockBuilder().add(b"short", b"")


# -- corruption ---------------------------------------------------------------------

def some_block(n=40):
    return build([(ikey(b"key%03d" % i, i), b"value%03d" % i) for i in range(n)])


def assert_corrupt(data):
    with pytest.raises(CorruptionError):
        it = BlockIterator(data)
        it.seek_to_first()
        list(it.entries())


def test_block_shorter_than_restart_count():
    for n in range(4):
        assert_corrupt(b"\x01" * n)


def test_truncated_block():
    data = some_block()
    assert_corrupt(data[:-1])
    assert_corrupt(data[:-4])
    assert_corrupt(data[:len(data) // 2])


def test_bad_restart_count_too_large():
    data = bytearray(some_block())
    struct.pack_into("<I", data, len(data) - 4, 0xFFFFFFFF)
    assert_corrupt(bytes(data))
    struct.pack_into("<I", data, len(data) - 4, len(data) // 4)
    assert_corrupt(bytes(data))


def test_zero_restarts_with_entries():
    data = ref_block([(ikey(b"a"), b"1")])
    assert_corrupt(data[:-8] + struct.pack("<I", 0))


def test_bad_restart_offset():
    data = bytearray(some_block())
    n = struct.unpack_from("<I", data, len(data) - 4)[0]
    first = len(data) - 4 - 4 * n
    bad = bytearray(data)
    struct.pack_into("<I", bad, first, 1)                          # restart[0] != 0
    assert_corrupt(bytes(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, first + 4, 0)                      # not increasing
    assert_corrupt(bytes(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, first + 4, first)                  # past the entries
    assert_corrupt(bytes(bad))
    bad = bytearray(data)
    struct.pack_into("<I", bad, first + 4, 3)                      # inside an entry
    assert_corrupt(bytes(bad))


def test_bad_varint():
    body = b"\xff" * 11 + b"\x00"                                  # 11-byte varint
    assert_corrupt(body + struct.pack("<II", 0, 1))
    body = b"\x00\x90"                                             # cut short by the restarts
    assert_corrupt(body + struct.pack("<II", 0, 1))


def test_entry_overruns_block():
    k = ikey(b"a")
    assert_corrupt(varint(0) + varint(len(k)) + varint(1000) + k + b"v" + struct.pack("<II", 0, 1))
    assert_corrupt(varint(0) + varint(1000) + varint(0) + k + struct.pack("<II", 0, 1))


def test_restart_entry_with_shared_prefix():
    k = ikey(b"a")
    assert_corrupt(varint(3) + varint(len(k)) + varint(0) + k + struct.pack("<II", 0, 1))


def test_shared_longer_than_previous_key():
    k1, k2 = ikey(b"a"), ikey(b"b")
    body = varint(0) + varint(len(k1)) + varint(0) + k1
    body += varint(len(k1) + 5) + varint(1) + varint(0) + b"x"
    assert_corrupt(body + struct.pack("<II", 0, 1))


def test_key_shorter_than_internal_key():
    assert_corrupt(varint(0) + varint(3) + varint(0) + b"abc" + struct.pack("<II", 0, 1))


def test_entry_crosses_restart_point():
    entries = [(ikey(b"k%02d" % i), b"v") for i in range(20)]
    data = bytearray(build(entries))
    first = len(data) - 4 - 8
    r1 = struct.unpack_from("<I", data, first + 4)[0]
    struct.pack_into("<I", data, first + 4, r1 + 1)     # restart 1 now inside an entry
    with pytest.raises(CorruptionError):
        scan(bytes(data))


def test_error_names_offset():
    with pytest.raises(CorruptionError) as e:
        scan(varint(0) + varint(3) + varint(0) + b"abc" + struct.pack("<II", 0, 1))
    assert e.value.offset == 0
    assert "key shorter" in str(e.value)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_byte_flip_raises_or_reads_in_bounds(mask):
    """No flip of any byte crashes or reads outside the block: each read
    either completes or raises CorruptionError."""
    data = some_block(40)
    targets = [ikey(b"key%03d" % i, i) for i in (0, 7, 16, 39)] + [ikey(b"zzz")]
    for off in range(len(data)):
        bad = bytearray(data)
        bad[off] ^= mask
        bad = bytes(bad)
        try:
            it = BlockIterator(bad)
            it.seek_to_first()
            list(it.entries())
            for t in targets:
                it.seek(t)
                it.seek_for_prev(t)
            it.seek_to_last()
            for _ in range(50):
                if not it.valid:
                    break
                it.prev()
        except CorruptionError:
            pass


def test_every_truncation_raises_or_reads_in_bounds():
    data = some_block(40)
    for n in range(len(data)):
        try:
            scan(data[:n])
        except CorruptionError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.lists(st.binary(min_size=16, max_size=24), max_size=4))
def test_random_bytes_never_crash(data, tgts):
    try:
        it = BlockIterator(data)
        it.seek_to_first()
        list(it.entries())
        for t in tgts:
            it.seek(t)
            it.seek_for_prev(t)
    except CorruptionError:
        pass
