"""SSTables (flowdb/_core/table.pyx) against a sorted-list model, the
documented layout, the block cache, ts-bound block skipping, and corruption:
a damaged table gives CorruptionError or exactly the right data, never
wrong data."""
import bisect
import os
import random
import struct
import threading

import crc32c
import pytest
import snappy
from hypothesis import HealthCheck, given, settings, strategies as st

from flowdb._core import read
from flowdb._core.block_cache import BlockCache
from flowdb._core.record import Record
from flowdb._core.iterator import VectorIterator
from flowdb._core.table import (BLOCK_TRAILER_SIZE, FOOTER_SIZE, FORMAT_VERSION,
                                TABLE_MAGIC, HotRanges, TableBuilder, TableReader, build_table)
from flowdb._errors import CorruptionError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NEVER = INT64_MAX
PUT, DELETE, RANGE_DEL = 1, 0, 2


# -- reference -----------------------------------------------------------------

def ikey(ukey, ts=0, seq=1, kind=PUT):
    return ukey + struct.pack(">QQ", ts + 2**63, (seq << 8) | kind)


def parse(k):
    ts_u, trailer = struct.unpack(">QQ", k[-16:])
    return k[:-16], ts_u - 2**63, trailer >> 8, trailer & 0xFF


def order(k):
    ts_u, trailer = struct.unpack(">QQ", k[-16:])
    return (k[:-16], ts_u, -trailer)


def put(ukey, ts, seq, value=b"v", expire_at=NEVER):
    return ikey(ukey, ts, seq, PUT), struct.pack("<q", expire_at) + value


def delete(ukey, ts, seq):
    return ikey(ukey, ts, seq, DELETE), b""


def seek(model, t):
    i = bisect.bisect_left([order(k) for k, _ in model], order(t))
    return model[i] if i < len(model) else None


def seek_for_prev(model, t):
    i = bisect.bisect_right([order(k) for k, _ in model], order(t))
    return model[i - 1] if i else None


def current(it):
    return (it.key(), it.value()) if it.valid else None


def scan(it):
    it.seek_to_first()
    return list(it.entries())


def write_table(path, entries, range_dels=(), block_size=4096, bloom_bits_per_key=10):
    b = TableBuilder(str(path), block_size, bloom_bits_per_key)
    return build_table(VectorIterator(entries), b, list(range_dels))


def model_props(entries, range_dels):
    ts = [parse(k)[1] for k, _ in entries]
    exp = [struct.unpack_from("<q", v)[0] if parse(k)[3] == PUT else NEVER for k, v in entries]
    seqs = [parse(k)[2] for k, _ in entries] + [s for _, _, s in set(range_dels)]
    return {
        "num_entries": len(entries),
        "num_deletes": sum(parse(k)[3] == DELETE for k, _ in entries),
        "num_range_dels": len(set(range_dels)),
        "min_ts": min(ts, default=INT64_MAX), "max_ts": max(ts, default=INT64_MIN),
        "min_expire_at": min(exp, default=INT64_MAX), "max_expire_at": max(exp, default=INT64_MIN),
        "min_seq": min(seqs, default=0), "max_seq": max(seqs, default=0),
        "smallest_key": entries[0][0] if entries else None,
        "largest_key": entries[-1][0] if entries else None,
        "raw_key_bytes": sum(len(k) for k, _ in entries),
        "raw_value_bytes": sum(len(v) for _, v in entries),
    }


def series(n_keys, n_ts, value_size=40, seed=0):
    """Time series: n_keys keys x n_ts timestamps, seqs in write order."""
    rng = random.Random(seed)
    out, seq = [], 1
    for ts in range(n_ts):
        for k in range(n_keys):
            out.append(put(b"sensor:%03d" % k, ts * 10, seq, rng.randbytes(8) + b"x" * value_size))
            seq += 1
    out.sort(key=lambda kv: order(kv[0]))
    return out


entry_lists = st.lists(
    st.tuples(st.sampled_from([b"", b"a", b"ab", b"b", b"sensor:1", b"sensor:2", b"\x00", b"\xff"]),
              st.integers(-5, 5), st.sampled_from([PUT, PUT, DELETE]),
              st.integers(-10, 10), st.binary(max_size=60)),
    max_size=150)


def build_model(raw):
    out, seen = [], set()
    for seq, (u, ts, kind, exp, v) in enumerate(raw, 1):
        if (u, ts) in seen and seq % 3:
            continue
        seen.add((u, ts))
        out.append(put(u, ts, seq, v, exp) if kind == PUT else delete(u, ts, seq))
    out.sort(key=lambda kv: order(kv[0]))
    return out


targets = st.lists(st.tuples(st.sampled_from([b"", b"a", b"ab", b"b", b"c", b"sensor:1", b"sensor:15"]),
                             st.integers(-6, 6), st.integers(0, 200)), max_size=15)

HYP = settings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- model round trips ----------------------------------------------------------------

@HYP
@given(entry_lists, targets, st.sampled_from([32, 100, 700, 8192]), st.sampled_from([0, 10]))
def test_model_round_trip(tmp_path, raw, tgts, block_size, bits):
    model = build_model(raw)
    rdels = [(b"a", b"b", 3), (b"", b"\xff", 900)]
    path = tmp_path / "t.sst"
    props = write_table(path, model, rdels, block_size, bits)
    with TableReader(str(path), 1, BlockCache(1 << 20)) as r:
        assert r.props == props
        assert scan(r.new_iterator()) == model
        it = r.new_iterator()
        for u, ts, seq in tgts + [(parse(k)[0], parse(k)[1], parse(k)[2]) for k, _ in model[:10]]:
            t = ikey(u, ts, seq)
            it.seek(t)
            assert current(it) == seek(model, t)
            it.seek_for_prev(t)
            assert current(it) == seek_for_prev(model, t)
        for k, _ in model:
            assert r.may_contain_key(parse(k)[0])


# User keys sharing long prefixes, with remainders on both sides of the
# 7 bytes an exact normalized prefix holds, and trailing NULs ("ab" < "ab\0"):
# the index search (norms, then ts, then whole keys) must find what a plain
# search finds.
_suffix = st.binary(max_size=10).map(lambda b: bytes(x % 3 for x in b))
_prefixed_keys = st.sampled_from([b"sensor:", b"sensor:0", b""]).flatmap(
    lambda p: st.lists(st.tuples(_suffix.map(lambda x: p + x), st.integers(-3, 3)),
                       min_size=1, max_size=120, unique=True))


@HYP
@given(_prefixed_keys, st.lists(st.tuples(st.sampled_from([b"sensor:", b"sensor:0", b"sensor",
                                                           b"sensor:\x00\x01", b"sensos", b"s", b""]),
                                          _suffix, st.integers(-4, 4), st.integers(0, 300)),
                                max_size=25),
       st.sampled_from([32, 64, 300]))
def test_index_search_with_shared_prefixes(tmp_path, keys, tgts, block_size):
    model = sorted((put(u, ts, seq) for seq, (u, ts) in enumerate(keys, 1)),
                   key=lambda kv: order(kv[0]))
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=block_size)
    with TableReader(str(path), 1, BlockCache(1 << 20)) as r:
        it = r.new_iterator()
        for p, x, ts, seq in tgts + [(parse(k)[0], b"", parse(k)[1], parse(k)[2])
                                     for k, _ in model[::5]]:
            t = ikey(p + x, ts, seq)
            it.seek(t)
            assert current(it) == seek(model, t)
            it.seek_for_prev(t)
            assert current(it) == seek_for_prev(model, t)
            want = [v for k, v in model if parse(k)[:2] == (p + x, ts)]
            got = read.get([r], None, 2**62, 0, p + x, ts)
            assert (got and got.value) == (want[0][8:] if want else None)
            latest = [k for k, _ in model if parse(k)[0] == p + x]
            got = read.get_latest([r], None, 2**62, 0, p + x)
            assert (got and got.ts) == (max(parse(k)[1] for k in latest) if latest else None)


def test_props_and_source_fields(tmp_path):
    model = sorted([put(b"a", 5, 1, b"x", 100), put(b"a", -3, 2, b"yy", 50), delete(b"b", 9, 7),
                    put(b"c", 1, 4, b"", NEVER)], key=lambda kv: order(kv[0]))
    rdels = [(b"k", b"m", 9), (b"a", b"z", 3)]
    path = tmp_path / "t.sst"
    props = write_table(path, model, rdels)
    want = model_props(model, rdels)
    assert {k: props[k] for k in want} == want
    assert props["num_data_blocks"] == 1
    assert props["file_size"] == os.path.getsize(path)
    r = TableReader(str(path), 3, None)
    assert r.props == props
    assert (r.min_ts, r.max_ts) == (-3, 9)
    assert r.file_number == 3 and r.file_size == props["file_size"] and r.path == str(path)
    assert (props["min_expire_at"], props["max_expire_at"]) == (50, NEVER)
    assert (props["min_seq"], props["max_seq"]) == (1, 9)


def test_delete_expire_counts_as_never(tmp_path):
    path = tmp_path / "t.sst"
    props = write_table(path, [delete(b"a", 1, 1), delete(b"b", 2, 2)])
    assert props["min_expire_at"] == props["max_expire_at"] == NEVER
    r = TableReader(str(path), 1, None)
    assert r.block_meta()[0][4:] == (NEVER, NEVER)


def check_block_meta(r, props):
    """The blocks tile the data area, and their bounds cover every entry, in order."""
    meta = r.block_meta()
    assert len(meta) == props["num_data_blocks"]
    pos = 0
    for off, size, lo, hi, elo, ehi in meta:
        assert off == pos and lo <= hi and elo <= ehi
        pos = off + size + BLOCK_TRAILER_SIZE
    assert pos == props["data_size"]
    assert min(m[2] for m in meta) == props["min_ts"] and max(m[3] for m in meta) == props["max_ts"]
    # Each entry lies in the bounds of the block it was read from.
    it = r.new_iterator(fill_cache=False)
    loaded = r.blocks_loaded
    it.seek_to_first()
    b = 0
    while it.valid:
        b += r.blocks_loaded - loaded
        loaded = r.blocks_loaded
        ts = parse(it.key())[1]
        assert meta[b - 1][2] <= ts <= meta[b - 1][3]
        it.next()
    assert b == len(meta)


def test_block_meta_bounds(tmp_path):
    model = series(5, 200)
    path = tmp_path / "t.sst"
    props = write_table(path, model, block_size=512)
    assert props["num_data_blocks"] > 10
    check_block_meta(TableReader(str(path), 1, None), props)


def test_range_dels_round_trip(tmp_path):
    rdels = [(b"b", b"c", 5), (b"a", b"z", 9), (b"a", b"q", 10), (b"", b"\x00", 1),
             (b"b", b"c", 5), (b"x" * 300, b"y" * 300, 2**56 - 1)]
    path = tmp_path / "t.sst"
    props = write_table(path, [put(b"k", 1, 3)], rdels)
    r = TableReader(str(path), 1, None)
    want = sorted(set(rdels), key=lambda t: (t[0], -t[2]))
    assert r.range_dels == want
    assert props["num_range_dels"] == len(want)
    assert props["max_seq"] == 2**56 - 1


def test_range_del_entries_in_source_become_range_dels(tmp_path):
    entries = [put(b"a", 1, 1), (ikey(b"c", INT64_MIN, 5, RANGE_DEL), b"f"), put(b"d", 1, 2)]
    path = tmp_path / "t.sst"
    props = write_table(path, entries)
    r = TableReader(str(path), 1, None)
    assert r.range_dels == [(b"c", b"f", 5)]
    assert props["num_entries"] == 2
    assert [parse(k)[0] for k, _ in scan(r.new_iterator())] == [b"a", b"d"]


def test_table_with_only_range_dels(tmp_path):
    path = tmp_path / "t.sst"
    props = write_table(path, [], [(b"a", b"b", 4)])
    r = TableReader(str(path), 1, BlockCache(1000))
    assert props["num_entries"] == 0 and props["num_data_blocks"] == 0
    assert (props["min_seq"], props["max_seq"]) == (4, 4)
    assert props["smallest_key"] is None and props["largest_key"] is None
    assert r.min_ts > r.max_ts
    assert r.range_dels == [(b"a", b"b", 4)]
    it = r.new_iterator()
    it.seek_to_first()
    assert not it.valid
    it.seek(ikey(b"a"))
    assert not it.valid
    it.seek_for_prev(ikey(b"z"))
    assert not it.valid
    assert not r.may_contain_key(b"a")


def test_empty_table(tmp_path):
    path = tmp_path / "t.sst"
    props = write_table(path, [])
    assert props["num_entries"] == 0 and props["min_seq"] == props["max_seq"] == 0
    r = TableReader(str(path), 1, None)
    assert scan(r.new_iterator()) == []
    assert r.range_dels == []


def test_single_entry_table(tmp_path):
    model = [put(b"only", 0, 1, b"v" * 10)]
    path = tmp_path / "t.sst"
    write_table(path, model)
    r = TableReader(str(path), 1, None)
    assert scan(r.new_iterator()) == model
    it = r.new_iterator()
    it.seek_for_prev(ikey(b"a"))
    assert not it.valid
    it.seek(ikey(b"z"))
    assert not it.valid


def test_huge_value_gets_its_own_block(tmp_path):
    model = [put(b"a", 0, 1, b"x"), put(b"b", 0, 2, os.urandom(3 << 20)), put(b"c", 0, 3, b"y")]
    path = tmp_path / "t.sst"
    props = write_table(path, model, block_size=1024)
    r = TableReader(str(path), 1, None)
    assert scan(r.new_iterator()) == model
    assert props["num_data_blocks"] == 2          # cut after the big entry


def test_bloom_disabled(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, [put(b"a", 0, 1)], bloom_bits_per_key=0)
    r = TableReader(str(path), 1, None)
    assert r.may_contain_key(b"a") and r.may_contain_key(b"b")


def test_bloom_counts_each_user_key_once(tmp_path):
    # 1000 versions of one key: the filter is sized for 1 key, not 1000.
    path = tmp_path / "t.sst"
    write_table(path, [put(b"k", ts, ts + 1) for ts in range(1000)])
    r = TableReader(str(path), 1, None)
    assert r.may_contain_key(b"k")
    assert sum(r.may_contain_key(b"k%d" % i) for i in range(1000)) < 50


# -- layout (docs/FORMAT.md, "SSTable") --------------------------------------------

def read_footer(data):
    footer = data[-FOOTER_SIZE:]
    handles = [struct.unpack_from("<QQ", footer, 16 * i) for i in range(4)]
    version, crc = struct.unpack_from("<II", footer, 64)
    return handles, version, crc, footer[72:]


def test_footer_layout(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, series(3, 50), [(b"a", b"b", 1)], block_size=256)
    data = path.read_bytes()
    (index_h, bloom_h, props_h, rd_h), version, crc, magic = read_footer(data)
    assert FOOTER_SIZE == 4 * 16 + 4 + 4 + 8 == 80
    assert magic == TABLE_MAGIC == b"FLOWSST\x00"
    assert version == FORMAT_VERSION == 1
    assert crc == crc32c.crc32c(data[-FOOTER_SIZE:-12])
    # range-del, bloom, props, index follow each other, then the footer.
    pos = rd_h[0]
    for off, size in (rd_h, bloom_h, props_h, index_h):
        assert off == pos
        pos = off + size + BLOCK_TRAILER_SIZE
    assert pos == len(data) - FOOTER_SIZE


def test_every_block_trailer_checksum(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, series(3, 100), [(b"a", b"b", 1)], block_size=300)
    data = path.read_bytes()
    r = TableReader(str(path), 1, None)
    handles = [(m[0], m[1]) for m in r.block_meta()] + read_footer(data)[0]
    for off, size in handles:
        stored, typ = data[off:off + size], data[off + size]
        (crc,) = struct.unpack_from("<I", data, off + size + 1)
        assert typ in (0, 1)
        assert crc == crc32c.crc32c(stored + bytes([typ]))


def test_properties_block_is_json(tmp_path):
    import json
    path = tmp_path / "t.sst"
    props = write_table(path, [put(b"a", 1, 1)])
    data = path.read_bytes()
    _, _, (off, size), _ = read_footer(data)[0]
    stored, typ = data[off:off + size], data[off + size]
    raw = snappy.decompress(stored) if typ == 1 else stored
    obj = json.loads(raw)
    assert obj["num_entries"] == 1
    assert bytes.fromhex(obj["smallest_key"]) == props["smallest_key"]


def test_compression_used_only_when_it_saves_an_eighth(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, [put(b"k%04d" % i, 0, i + 1, b"a" * 100) for i in range(200)], block_size=1024)
    data = path.read_bytes()
    meta = TableReader(str(path), 1, None).block_meta()
    assert all(data[off + size] == 1 for off, size, *_ in meta)
    path2 = tmp_path / "u.sst"
    rng = random.Random(1)
    write_table(path2, [put(b"k%04d" % i, 0, i + 1, rng.randbytes(100)) for i in range(200)],
                block_size=1024)
    data = path2.read_bytes()
    meta = TableReader(str(path2), 1, None).block_meta()
    assert all(data[off + size] == 0 for off, size, *_ in meta)


def test_blocks_cut_at_block_size(tmp_path):
    path = tmp_path / "t.sst"
    rng = random.Random(2)
    props = write_table(path, [put(b"k%05d" % i, 0, i + 1, rng.randbytes(100)) for i in range(1000)],
                        block_size=4096)
    meta = TableReader(str(path), 1, None).block_meta()
    data = path.read_bytes()
    # Blocks reach block_size and exceed it by < one entry (their keys make
    # some compress by an eighth even with random values: measure them raw).
    raw_sizes = [size if data[off + size] == 0 else len(snappy.decompress(data[off:off + size]))
                 for off, size, *_ in meta]
    assert all(4096 <= n < 4096 + 200 for n in raw_sizes[:-1])
    assert props["num_data_blocks"] == len(meta)


# -- builder contract -----------------------------------------------------------------

def test_builder_rejects_bad_entries_and_stays_usable(tmp_path):
    path = tmp_path / "t.sst"
    b = TableBuilder(str(path))
    b.add(*put(b"b", 0, 5))
    with pytest.raises(ValueError, match="increasing"):
        b.add(*put(b"a", 0, 6))                           # out of order
    with pytest.raises(ValueError, match="increasing"):
        b.add(*put(b"b", 0, 5))                           # duplicate
    with pytest.raises(ValueError, match="PUT and DELETE"):
        b.add(ikey(b"c", 0, 1, RANGE_DEL), b"d")
    with pytest.raises(ValueError, match="expire_at"):
        b.add(ikey(b"c", 0, 1, PUT), b"1234567")
    with pytest.raises(ValueError, match="DELETE value"):
        b.add(ikey(b"c", 0, 1, DELETE), b"x")
    with pytest.raises(ValueError, match="16 bytes"):
        b.add(b"short", b"")
    b.add(*put(b"b", 0, 4))                               # older version of b: fine
    b.add(*put(b"c", 0, 1))
    assert b.num_entries == 3
    props = b.finish()
    assert props["num_entries"] == 3
    assert [parse(k)[0] for k, _ in scan(TableReader(str(path), 1, None).new_iterator())] == [b"b", b"b", b"c"]


def test_builder_argument_checks(tmp_path):
    with pytest.raises(ValueError):
        TableBuilder(str(tmp_path / "a"), 0)
    with pytest.raises(ValueError):
        TableBuilder(str(tmp_path / "b"), 4096, -1)
    b = TableBuilder(str(tmp_path / "c"))
    with pytest.raises(ValueError):
        b.add_range_del(b"a", b"b", -1)
    with pytest.raises(ValueError):
        b.add_range_del(b"a", b"b", 2**56)
    b.abandon()


def test_finish_twice_and_add_after_finish(tmp_path):
    b = TableBuilder(str(tmp_path / "t.sst"))
    b.add(*put(b"a", 0, 1))
    b.finish()
    with pytest.raises(ValueError):
        b.finish()
    with pytest.raises(ValueError):
        b.add(*put(b"b", 0, 2))


def test_abandon_deletes_the_file(tmp_path):
    path = tmp_path / "t.sst"
    b = TableBuilder(str(path), 64)
    for i in range(100):
        b.add(*put(b"k%03d" % i, 0, i + 1))
    assert path.exists()
    b.abandon()
    assert not path.exists()
    b.abandon()                                          # idempotent
    with pytest.raises(ValueError):
        b.finish()


def test_file_size_estimate(tmp_path):
    b = TableBuilder(str(tmp_path / "t.sst"), 1024)
    sizes = []
    rng = random.Random(3)
    for i in range(2000):
        b.add(*put(b"k%05d" % i, 0, i + 1, rng.randbytes(50)))
        sizes.append(b.file_size_estimate)
    assert sizes[-1] > 50 * sizes[0]
    final = b.finish()["file_size"]
    assert abs(sizes[-1] - final) < 0.05 * final



def test_blocks_are_written_in_batches_of_pending_bytes(tmp_path):
    """build_table queues cut blocks without the GIL and writes them PENDING_BYTES
    at a time (one GIL acquisition per batch, not per block); the table reads
    back whole, its blocks tiling the data area with bounds that hold their entries."""
    from flowdb._core.table import PENDING_BYTES
    model = series(40, 600, value_size=60, seed=5)          # ~2.1 MB raw, ~270 blocks
    raw = sum(len(k) + len(v) for k, v in model)
    path = tmp_path / "t.sst"
    b = TableBuilder(str(path), 8192)
    props = build_table(VectorIterator(model), b, [])
    # The first block alone (it gives the compression ratio), then full batches.
    assert 1 + raw // PENDING_BYTES <= b.block_batches <= 3 + raw // PENDING_BYTES
    assert props["num_data_blocks"] > 4 * b.block_batches
    # Compression and checksums run without the GIL; it is taken only to
    # hand each full MiB of the write buffer to os.write.
    assert b.gil_takes == props["file_size"] // (1 << 20)
    r = TableReader(str(path), 1, None)
    assert scan(r.new_iterator()) == model
    check_block_meta(r, props)


def test_build_table_abandons_on_source_error(tmp_path):
    from flowdb._core.iterator import VectorSource
    path = tmp_path / "t.sst"
    src = VectorSource([put(b"k%02d" % i, 0, i + 1) for i in range(50)], fail_after=20)
    with pytest.raises(CorruptionError):
        build_table(src.new_iterator(), TableBuilder(str(path), 64), [])
    assert not path.exists()


def test_build_table_abandons_on_builder_error(tmp_path):
    path = tmp_path / "t.sst"
    bad = [(ikey(b"a", 0, 1, PUT), b"short")]            # PUT value < 8 bytes
    with pytest.raises(ValueError):
        build_table(VectorIterator(bad), TableBuilder(str(path)), [])
    assert not path.exists()


# -- block cache and ts bounds ---------------------------------------------------------

def test_second_pass_is_served_by_the_cache(tmp_path):
    model = series(4, 100)
    path = tmp_path / "t.sst"
    props = write_table(path, model, block_size=512)
    cache = BlockCache(1 << 20)
    r = TableReader(str(path), 9, cache)
    n = props["num_data_blocks"]
    assert scan(r.new_iterator()) == model
    assert (r.blocks_read, r.blocks_loaded) == (n, n)
    assert scan(r.new_iterator()) == model
    assert (r.blocks_read, r.blocks_loaded) == (n, 2 * n)
    assert cache.hits == n and len(cache) == n
    assert cache.get((9, 0)) is not None


def _warm_table(path, model, cache, number, block_size=512):
    b = TableBuilder(str(path), block_size, 10)
    b.warm(cache, number)
    return build_table(VectorIterator(model), b, [])


def test_warmed_blocks_serve_reads_without_touching_the_file(tmp_path):
    model = series(4, 100)
    cache = BlockCache(1 << 20)
    props = _warm_table(tmp_path / "t.sst", model, cache, 5)
    r = TableReader(str(tmp_path / "t.sst"), 5, cache)
    offsets = sorted(m[0] for m in r.block_meta())
    assert sorted(o for f, o in cache.keys()) == offsets and len(offsets) == props["num_data_blocks"]
    assert {f for f, o in cache.keys()} == {5}
    assert scan(r.new_iterator()) == model
    assert r.blocks_read == 0 and cache.hits == props["num_data_blocks"]
    for k, v in model[::7]:
        assert read.get([r], None, 2**62, 0, parse(k)[0], parse(k)[1]).value == v[8:]
    assert r.blocks_read == 0
    # Each cached block is byte for byte what reading it back gives.
    cold = BlockCache(1 << 20)
    scan(TableReader(str(tmp_path / "t.sst"), 5, cold).new_iterator())
    assert {key: cold.get(key) for key in cold.keys()} == {key: cache.get(key) for key in cache.keys()}


def test_warmed_blocks_are_trusted_like_blocks_read_back(tmp_path):
    # The meta stored beside a warmed block is what the reader's check finds:
    # seeks through trusted cached blocks agree with the model.
    model = series(7, 60, value_size=20)
    cache = BlockCache(1 << 20)
    _warm_table(tmp_path / "t.sst", model, cache, 2, block_size=300)
    r = TableReader(str(tmp_path / "t.sst"), 2, cache)
    for k, v in model[::3]:
        it = r.new_iterator()
        it.seek(k)
        assert current(it) == (k, v)
        it.seek_for_prev(k[:-16] + b"\xff" * 16)
        assert current(it) == seek_for_prev(model, k[:-16] + b"\xff" * 16)
    assert r.blocks_read == 0


@pytest.mark.parametrize("block_size, value_size", [
    (512, 20),          # one or two restart points per block
    (8192, 100),        # the default block, a handful of restarts
    (8192, 0),          # small entries: more restarts than the meta keeps
    (100_000, 100),     # restart offsets beyond 16 bits
])
def test_cached_blocks_keep_their_restart_offsets(tmp_path, block_size, value_size):
    # A trusted block's meta carries its restart offsets (readers prefetch
    # their entries) exactly when there are few and they fit in 16 bits:
    # BlockCache._check compares them with the block's own restart array.
    model = series(40, 60, value_size=value_size)
    write_table(tmp_path / "t.sst", model, block_size=block_size)
    cache = BlockCache(64 << 20)
    r = TableReader(str(tmp_path / "t.sst"), 9, cache)
    assert scan(r.new_iterator()) == model
    for k, v in model[::5]:
        it = r.new_iterator()
        it.seek(k)
        assert current(it) == (k, v)
    assert len(cache) > 0 and cache._check()


def test_warming_only_fills_free_room(tmp_path):
    cache = BlockCache(6000)
    cache.put((1, 0), b"x" * 1000)          # in use: warming must not push it out
    _warm_table(tmp_path / "t.sst", series(4, 100), cache, 3)
    assert cache.get((1, 0)) == b"x" * 1000
    assert 0 < len(cache) - 1 and cache.usage <= 6000
    cache._check()
    r = TableReader(str(tmp_path / "t.sst"), 3, cache)
    assert scan(r.new_iterator()) == series(4, 100)


def test_abandon_takes_warmed_blocks_back(tmp_path):
    cache = BlockCache(1 << 20)
    cache.put((1, 0), b"other table")
    b = TableBuilder(str(tmp_path / "t.sst"), 256, 10)
    b.warm(cache, 4)
    for k, v in series(3, 40):
        b.add_entry(k, v)
    assert any(f == 4 for f, _ in cache.keys())
    b.abandon()
    assert cache.keys() == [(1, 0)] and not (tmp_path / "t.sst").exists()


# -- warming after a compaction: HotRanges and TableReader.warm -------------------

def blocks_of(path, model):
    """{block offset: [its keys]} of the table at path, found by reading
    each key alone through a cache of its own."""
    out = {}
    for k, _ in model:
        cache = BlockCache(1 << 20)
        it = TableReader(str(path), 1, cache).new_iterator()
        it.seek(k)
        ((_, offset),) = cache.keys()
        out.setdefault(offset, []).append(k)
    return out


def key_ranges(blocks):
    """{offset: (lo, hi)}: a block covers [last key of the block before
    (None for the first), its own last key], as HotRanges reckons."""
    out, lo = {}, None
    for offset in sorted(blocks):
        out[offset] = (lo, blocks[offset][-1])
        lo = blocks[offset][-1]
    return out


def meets(a, b):
    (alo, ahi), (blo, bhi) = a, b
    return (alo is None or order(alo) <= order(bhi)) and (blo is None or order(blo) <= order(ahi))


def test_hot_ranges_are_the_cached_blocks_ranges_merged(tmp_path):
    model = series(6, 60)
    write_table(tmp_path / "a.sst", model, block_size=400)
    ranges = key_ranges(blocks_of(tmp_path / "a.sst", model))
    cache = BlockCache(1 << 20)
    a = TableReader(str(tmp_path / "a.sst"), 1, cache)
    rng = random.Random(3)
    for k, v in rng.sample(model, 12):
        assert read.get([a], None, 2**62, 0, parse(k)[0], parse(k)[1]).value == v[8:]
    cached = sorted(o for _, o in cache.keys())
    got = HotRanges([a], cache).ranges()
    # Expected: the cached blocks' ranges, adjacent ones merged.
    want = []
    for o in cached:
        lo, hi = ranges[o]
        if want and lo is not None and order(lo) <= order(want[-1][1]):
            want[-1] = (want[-1][0], hi)
        else:
            want.append((lo, hi))
    assert got == want and 0 < len(got) <= len(cached)
    assert len(HotRanges([a], BlockCache(1 << 20))) == 0          # nothing cached, nothing hot
    a.release_meta()
    assert len(HotRanges([a], cache)) == 0                         # no index: counted cold


@pytest.mark.parametrize("seed", range(4))
def test_warm_reads_the_blocks_that_meet_the_hot_ranges(tmp_path, seed):
    # Table a (the compaction's input) and table b (its output) hold the
    # same entries in differently cut blocks; readers used some of a's.
    rng = random.Random(seed)
    model = series(5, 80, value_size=rng.choice([10, 40]))
    write_table(tmp_path / "a.sst", model, block_size=rng.choice([300, 700]))
    props = write_table(tmp_path / "b.sst", model, block_size=rng.choice([256, 500, 1000]))
    a_ranges = key_ranges(blocks_of(tmp_path / "a.sst", model))
    b_ranges = key_ranges(blocks_of(tmp_path / "b.sst", model))
    cache = BlockCache(1 << 22)
    a = TableReader(str(tmp_path / "a.sst"), 1, cache)
    for k, _ in rng.sample(model, rng.choice([1, 5, 30])):
        read.get([a], None, 2**62, 0, parse(k)[0], parse(k)[1])
    hot = HotRanges([a], cache)
    hot_a = [a_ranges[o] for _, o in cache.keys()]
    cache.erase_file(1)
    b = TableReader(str(tmp_path / "b.sst"), 2, cache)
    want = sorted(o for o, r in b_ranges.items() if any(meets(r, h) for h in hot_a))
    counts = cache.hits, cache.misses
    assert b.warm(hot) == len(want) > 0
    assert sorted(o for _, o in cache.keys()) == want and b.blocks_read == 0
    assert (cache.hits, cache.misses) == counts and cache._check()     # warming is not a read
    assert b.warm(hot) == 0                            # cached already
    # The warmed blocks are byte for byte what a reader reads, and serve reads.
    cold = BlockCache(1 << 22)
    scan(TableReader(str(tmp_path / "b.sst"), 2, cold).new_iterator())
    assert all(cache.get(key) == cold.get(key) for key in cache.keys())
    blocks = blocks_of(tmp_path / "b.sst", model)
    for o in want:
        for k in blocks[o]:
            assert read.get([b], None, 2**62, 0, parse(k)[0], parse(k)[1]).value == dict(model)[k][8:]
    assert b.blocks_read == 0
    assert scan(b.new_iterator()) == model and b.blocks_read == props["num_data_blocks"] - len(want)


def _all_hot(path, model):
    """Writes model to a table at path and reads it all: (HotRanges of
    every block, the number of blocks)."""
    write_table(path, model, block_size=512)
    everything = BlockCache(1 << 20)
    t = TableReader(str(path), 7, everything)
    scan(t.new_iterator())
    return HotRanges([t], everything), len(everything)


def test_warm_only_fills_free_room(tmp_path):
    model = series(4, 100)
    hot, blocks = _all_hot(tmp_path / "t.sst", model)
    cache = BlockCache(6000)
    cache.put((1, 0), b"x" * 1000)                     # in use: warming must not push it out
    r = TableReader(str(tmp_path / "t.sst"), 7, cache)
    n = r.warm(hot)
    assert 0 < n < blocks and cache.get((1, 0)) == b"x" * 1000
    assert len(cache) == n + 1 and cache.usage <= 6000 and cache._check()
    assert scan(r.new_iterator()) == model
    assert TableReader(str(tmp_path / "t.sst"), 7, BlockCache(0)).warm(hot) == 0
    assert TableReader(str(tmp_path / "t.sst"), 7).warm(hot) == 0          # no cache


def test_warm_stops_quietly_at_a_damaged_block_and_the_reader_reports_it(tmp_path):
    path = tmp_path / "t.sst"
    hot, _ = _all_hot(path, series(4, 100))
    offsets = sorted(m[0] for m in TableReader(str(path), 7).block_meta())
    data = bytearray(path.read_bytes())
    data[offsets[3] + 2] ^= 0x40                       # block 3's stored bytes
    path.write_bytes(bytes(data))
    cache = BlockCache(1 << 20)
    r = TableReader(str(path), 7, cache)
    assert r.warm(hot) == 3
    assert sorted(o for _, o in cache.keys()) == offsets[:3]
    with pytest.raises(CorruptionError, match="checksum"):
        scan(r.new_iterator())


def test_fill_cache_false_does_not_fill(tmp_path):
    model = series(4, 100)
    path = tmp_path / "t.sst"
    props = write_table(path, model, block_size=512)
    cache = BlockCache(1 << 20)
    r = TableReader(str(path), 1, cache)
    assert scan(r.new_iterator(fill_cache=False)) == model
    assert cache.usage == 0
    assert scan(r.new_iterator(fill_cache=False)) == model
    assert r.blocks_read == 2 * props["num_data_blocks"]


def test_cache_capacity_zero_reads_every_time(tmp_path):
    model = series(2, 50)
    path = tmp_path / "t.sst"
    props = write_table(path, model, block_size=256)
    r = TableReader(str(path), 1, BlockCache(0))
    scan(r.new_iterator())
    scan(r.new_iterator())
    assert r.blocks_read == 2 * props["num_data_blocks"]


def _restamp(data, off, size):
    """Recomputes the trailer crc of the block stored at [off, off + size)."""
    crc = crc32c.crc32c(bytes(data[off:off + size + 1]))
    data[off + size + 1:off + size + 5] = crc.to_bytes(4, "little")


def test_block_with_bad_restarts_but_good_crc_is_never_cached(tmp_path):
    # A block that passes its checksum but not the restart-array check (a
    # writer bug, not disk damage) fails on every read and stays out of the cache.
    model = [put(b"k%03d" % i, 0, i + 1, random.Random(i).randbytes(300)) for i in range(40)]
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    r = TableReader(str(path), 1, None)
    off, size = r.block_meta()[0][:2]
    r.close()
    data = bytearray(path.read_bytes())
    assert data[off + size] == 0                      # stored raw
    n = struct.unpack_from("<I", data, off + size - 4)[0]
    assert n >= 1
    struct.pack_into("<I", data, off + size - 4 - 4 * n, 1)      # restart[0] = 1, not 0
    _restamp(data, off, size)
    path.write_bytes(data)
    cache = BlockCache(1 << 20)
    r = TableReader(str(path), 1, cache)
    for attempt in range(2):
        with pytest.raises(CorruptionError, match="bad restart offset"):
            scan(r.new_iterator())
        assert cache.usage == 0 and len(cache) == 0
    assert r.blocks_read == 2


def test_blocks_put_from_python_are_checked_on_every_use(tmp_path):
    # The cache trusts only blocks the table checked itself; a value put
    # through the Python API is checked like a block read from the file.
    model = series(4, 100)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    cache = BlockCache(1 << 20)
    r = TableReader(str(path), 5, cache)
    good = scan(r.new_iterator())
    assert good == model
    offsets = [m[0] for m in r.block_meta()]
    for bad in (b"", b"\x01\x02", b"\x00" * 8, b"\xff" * 64 + b"\x01\x00\x00\x00",
                b"\x00\x00\x00\x00"):
        cache.put((5, offsets[1]), bad)
        with pytest.raises(CorruptionError):
            scan(r.new_iterator())
    # A well-formed block of another offset, put under this one: read as is.
    cache.put((5, offsets[1]), cache.get((5, offsets[2])))
    got = scan(r.new_iterator())
    assert got != model and len(got) > len(model) // 2


def test_cached_blocks_give_the_same_answers(tmp_path):
    # First pass from the file (checked, then cached), second from the cache
    # (trusted): every seek agrees with the model, both ways.
    model = series(7, 60, value_size=20)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=300)
    cache = BlockCache(1 << 20)
    r = TableReader(str(path), 2, cache)
    for _ in range(2):
        for k, v in model[::3]:
            it = r.new_iterator()
            it.seek(k)
            assert current(it) == (k, v)
            it.seek_for_prev(k)
            assert current(it) == (k, v)
            it.seek_for_prev(k[:-16] + b"\xff" * 16)
            assert current(it) == seek_for_prev(model, k[:-16] + b"\xff" * 16)
    assert cache.hits > 0 and len(cache) == r.num_data_blocks


def test_iterator_holds_one_block(tmp_path):
    model = series(4, 100)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    r = TableReader(str(path), 1, None)
    it = r.new_iterator()
    it.seek_to_first()
    seen = 0
    while it.valid:
        assert it.blocks_held == 1
        it.next()
        seen += 1
    assert seen == len(model)


def test_reseek_in_same_block_does_not_reload(tmp_path):
    model = series(1, 20)
    path = tmp_path / "t.sst"
    write_table(path, model)
    r = TableReader(str(path), 1, None)
    it = r.new_iterator()
    for k, v in model:
        it.seek(k)
        assert current(it) == (k, v)
    assert r.blocks_loaded == 1


def test_ts_bounds_skip_blocks(tmp_path):
    # One series in ts order: each block holds a disjoint ts slice.
    model = [put(b"sensor:1", ts, ts + 1, b"x" * 50) for ts in range(3000)]
    path = tmp_path / "t.sst"
    props = write_table(path, model, block_size=512)
    r = TableReader(str(path), 1, None)
    it = r.new_iterator(ts_lo=1000, ts_hi=1100)
    got = scan(it)
    in_range = [kv for kv in model if 1000 <= parse(kv[0])[1] <= 1100]
    assert set(in_range) <= set(got)
    assert got == [kv for kv in model if kv in set(got)]                 # in order
    assert r.blocks_loaded < props["num_data_blocks"] // 10
    # Seeks skip too: from ts 0, the first entry is in the first overlapping block.
    it = r.new_iterator(ts_lo=1000, ts_hi=1100)
    it.seek(model[0][0])
    assert parse(it.key())[1] <= 1000 <= parse(got[-1][0])[1]
    it.seek_for_prev(model[-1][0])
    assert current(it) == got[-1]
    # A range that no block overlaps.
    it = r.new_iterator(ts_lo=5000, ts_hi=6000)
    assert scan(it) == []


def test_ts_bounds_multi_series_yield_every_entry_in_range(tmp_path):
    model = series(20, 200)                  # 20 keys, ts 0..1990 step 10
    path = tmp_path / "t.sst"
    props = write_table(path, model, block_size=1024)
    r = TableReader(str(path), 1, None)
    got = scan(r.new_iterator(ts_lo=500, ts_hi=520))
    assert [kv for kv in model if 500 <= parse(kv[0])[1] <= 520] == \
        [kv for kv in got if 500 <= parse(kv[0])[1] <= 520]
    assert r.blocks_loaded < props["num_data_blocks"]


@HYP
@given(entry_lists, st.integers(-6, 6), st.integers(-6, 6), targets)
def test_ts_bounds_never_skip_an_overlapping_entry(tmp_path, raw, lo, hi, tgts):
    model = build_model(raw)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=48)
    r = TableReader(str(path), 1, None)
    keys = [order(k) for k, _ in model]
    wanted = lambda kv: lo <= parse(kv[0])[1] <= hi
    got = scan(r.new_iterator(ts_lo=lo, ts_hi=hi))
    assert got == [kv for kv in model if kv in set(got)]
    assert [kv for kv in model if wanted(kv)] == [kv for kv in got if wanted(kv)]
    it = r.new_iterator(ts_lo=lo, ts_hi=hi)
    for u, ts, seq in tgts:
        t = ikey(u, ts, seq)
        it.seek(t)
        i = bisect.bisect_left(keys, order(t))
        j = keys.index(order(it.key())) if it.valid else len(model)
        assert j >= i and not any(wanted(kv) for kv in model[i:j])
        it.seek_for_prev(t)
        i = bisect.bisect_right(keys, order(t))
        j = keys.index(order(it.key())) + 1 if it.valid else 0
        assert j <= i and not any(wanted(kv) for kv in model[j:i])


def test_concurrent_iterators_on_one_reader(tmp_path):
    model = series(10, 100)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    r = TableReader(str(path), 1, BlockCache(8 * 1024))      # small: constant eviction
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(20):
                it = r.new_iterator(fill_cache=rng.random() < 0.7)
                if rng.random() < 0.2:
                    assert scan(it) == model
                for _ in range(30):
                    k, v = model[rng.randrange(len(model))]
                    it.seek(k)
                    assert current(it) == (k, v)
                    it.seek_for_prev(k)
                    assert current(it) == (k, v)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_closed_reader_fails_with_oserror(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, series(1, 10))
    r = TableReader(str(path), 1, None)
    it = r.new_iterator()
    r.close()
    r.close()
    with pytest.raises(OSError):
        it.seek_to_first()


# -- corruption ---------------------------------------------------------------------

def corruption_fixture(tmp_path):
    rng = random.Random(5)
    model = []
    for i in range(60):
        v = (b"abc" * 20) if i % 2 else rng.randbytes(30)   # both raw and snappy blocks
        model.append(put(b"key%03d" % i, i % 7, i + 1, v, 1000 + i) if i % 9 else delete(b"key%03d" % i, 0, i + 1))
    model.sort(key=lambda kv: order(kv[0]))
    rdels = [(b"key010", b"key020", 500), (b"a", b"b", 501)]
    path = tmp_path / "good.sst"
    props = write_table(path, model, rdels, block_size=256)
    return model, rdels, props, path.read_bytes()


def check_never_wrong(path, model, rdels_sorted, props, verify=True):
    """Open and read the table: every answer is right or a CorruptionError."""
    try:
        r = TableReader(str(path), 1, BlockCache(1 << 20))
    except CorruptionError:
        return "open"
    assert r.props == props
    assert r.range_dels == rdels_sorted
    assert all(r.may_contain_key(parse(k)[0]) for k, _ in model)
    outcome = "ok"
    for _ in range(2):                                     # second pass: from the cache
        it = r.new_iterator(verify_checksums=verify)
        got = []
        try:
            it.seek_to_first()
            while it.valid:
                got.append(current(it))
                it.next()
            assert got == model
        except CorruptionError:
            assert got == model[:len(got)]
            outcome = "read"
    for k, v in model[::5]:
        for op, want in (("seek", (k, v)), ("seek_for_prev", (k, v))):
            it = r.new_iterator(verify_checksums=verify)
            try:
                getattr(it, op)(k)
                assert current(it) == want
            except CorruptionError:
                outcome = "read"
        # The point reads' own path (TableReader.find_version / find_floor).
        ukey, ts, seq, kind = parse(k)
        want = Record(ukey, ts, v[8:], struct.unpack_from("<q", v)[0]) if kind == PUT else None
        latest = max((kv for kv in model if parse(kv[0])[0] == ukey), key=lambda kv: parse(kv[0])[1])
        try:
            assert read.get([r], [], 2**56 - 1, 0, ukey, ts, verify_checksums=verify) == want
            if latest[0] == k:
                assert read.get_latest([r], [], 2**56 - 1, 0, ukey,
                                       verify_checksums=verify) == want
        except CorruptionError:
            outcome = "read"
    return outcome


@pytest.mark.parametrize("mask", [0x01, pytest.param(0xFF, marks=pytest.mark.slow)])
def test_flip_any_byte_gives_right_data_or_corruption_error(tmp_path, mask):
    model, rdels, props, good = corruption_fixture(tmp_path)
    rd_sorted = sorted(rdels, key=lambda t: (t[0], -t[2]))
    path = tmp_path / "bad.sst"
    outcomes = {}
    for off in range(len(good)):
        bad = bytearray(good)
        bad[off] ^= mask
        path.write_bytes(bad)
        outcomes[off] = check_never_wrong(path, model, rd_sorted, props)
    # Every flip is detected, somewhere: nothing in the file is unprotected.
    assert "ok" not in outcomes.values(), [o for o, v in outcomes.items() if v == "ok"][:10]
    # Flips in data blocks surface on read; flips in meta blocks/footer at open.
    data_size = props["data_size"]
    assert all(v == "read" for o, v in outcomes.items() if o < data_size)
    assert all(v == "open" for o, v in outcomes.items() if o >= data_size)


def test_flip_without_checksums_never_crashes(tmp_path):
    model, rdels, props, good = corruption_fixture(tmp_path)
    path = tmp_path / "bad.sst"
    for off in range(0, props["data_size"]):
        bad = bytearray(good)
        bad[off] ^= 0x5A
        path.write_bytes(bad)
        r = TableReader(str(path), 1, BlockCache(1 << 20))
        try:
            scan(r.new_iterator(verify_checksums=False))
        except CorruptionError:
            pass
        for k, _ in model[::7]:
            ukey, ts, _, _ = parse(k)
            for call in (lambda: read.get([r], [], 2**56 - 1, 0, ukey, ts, verify_checksums=False),
                         lambda: read.get_latest([r], [], 2**56 - 1, 0, ukey, verify_checksums=False)):
                try:
                    call()
                except CorruptionError:
                    pass
        assert r.block_cache.usage == 0               # unverified blocks are never cached


def test_verify_checksums_detects_damage_that_still_decodes(tmp_path):
    # A flipped value byte in a raw block decodes fine: only the crc sees it.
    rng = random.Random(9)
    model = [put(b"k%02d" % i, 0, i + 1, rng.randbytes(300)) for i in range(10)]
    path = tmp_path / "t.sst"
    write_table(path, model)
    data = bytearray(path.read_bytes())
    off = data.index(model[3][1])
    data[off + 20] ^= 1
    path.write_bytes(data)
    r = TableReader(str(path), 1, BlockCache(1 << 20))
    with pytest.raises(CorruptionError) as e:
        scan(r.new_iterator())
    assert "checksum" in str(e.value) and e.value.path == str(path) and e.value.offset == 0
    got = scan(r.new_iterator(verify_checksums=False))
    assert got != model and len(got) == len(model)
    assert r.block_cache.usage == 0


def test_corrupt_block_error_names_path_and_offset(tmp_path):
    model, rdels, props, good = corruption_fixture(tmp_path)
    path = tmp_path / "bad.sst"
    meta_path = tmp_path / "good.sst"
    meta = TableReader(str(meta_path), 1, None).block_meta()
    off, size = meta[2][:2]
    bad = bytearray(good)
    bad[off + 1] ^= 0xFF
    path.write_bytes(bad)
    r = TableReader(str(path), 1, None)
    with pytest.raises(CorruptionError) as e:
        scan(r.new_iterator())
    assert e.value.path == str(path) and e.value.offset == off
    assert str(path) in str(e.value) and f"offset {off}" in str(e.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, series(3, 50), block_size=256)
    good = path.read_bytes()
    for n in sorted({0, 1, FOOTER_SIZE - 1, FOOTER_SIZE, FOOTER_SIZE + 1, len(good) // 2,
                     len(good) - FOOTER_SIZE, len(good) - 1}):
        path.write_bytes(good[:n])
        with pytest.raises(CorruptionError):
            TableReader(str(path), 1, None)


def test_blocks_read_back_from_the_disk_not_the_page_cache(tmp_path):
    # A block that is not in the page cache is read by the other path
    # (fdb_pread_full, without the GIL): same answers.
    model = series(5, 200)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    r = TableReader(str(path), 1, None)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert scan(r.new_iterator()) == model


def test_file_cut_short_after_open(tmp_path):
    model = series(5, 200)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    r = TableReader(str(path), 1, None)        # footer and index already read
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(CorruptionError, match="cut short"):
        scan(r.new_iterator())


def test_zero_length_file(tmp_path):
    path = tmp_path / "t.sst"
    path.write_bytes(b"")
    with pytest.raises(CorruptionError, match="shorter than"):
        TableReader(str(path), 1, None)


def test_wrong_magic(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, [put(b"a", 0, 1)])
    data = bytearray(path.read_bytes())
    data[-8:] = b"LEVELDB!"
    path.write_bytes(data)
    with pytest.raises(CorruptionError, match="magic") as e:
        TableReader(str(path), 1, None)
    assert e.value.offset == len(data) - 8


def test_future_format_version(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, [put(b"a", 0, 1)])
    data = bytearray(path.read_bytes())
    fstart = len(data) - FOOTER_SIZE
    struct.pack_into("<I", data, fstart + 64, 2)
    struct.pack_into("<I", data, fstart + 68, crc32c.crc32c(bytes(data[fstart:fstart + 68])))
    path.write_bytes(data)
    with pytest.raises(CorruptionError, match="version 2"):
        TableReader(str(path), 1, None)


def test_footer_checksum_mismatch(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, [put(b"a", 0, 1)])
    data = bytearray(path.read_bytes())
    data[len(data) - FOOTER_SIZE] ^= 1                  # index offset
    path.write_bytes(data)
    with pytest.raises(CorruptionError, match="footer checksum"):
        TableReader(str(path), 1, None)


def test_bad_handles_with_valid_crc(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, [put(b"a", 0, 1)])
    data = bytearray(path.read_bytes())
    fstart = len(data) - FOOTER_SIZE
    struct.pack_into("<Q", data, fstart + 8, 10**12)    # index size past the file
    struct.pack_into("<I", data, fstart + 68, crc32c.crc32c(bytes(data[fstart:fstart + 68])))
    path.write_bytes(data)
    with pytest.raises(CorruptionError, match="tile"):
        TableReader(str(path), 1, None)


def test_missing_file_is_corruption(tmp_path):
    with pytest.raises(CorruptionError, match="missing") as e:
        TableReader(str(tmp_path / "nope.sst"), 1, None)
    assert e.value.path == str(tmp_path / "nope.sst")


def test_doc_states_the_code_constants():
    # docs/format_sstable.md until it is merged into docs/FORMAT.md.
    docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs")
    text = "".join(open(os.path.join(docs, f)).read() for f in ("FORMAT.md", "format_sstable.md")
                   if os.path.exists(os.path.join(docs, f)))
    assert "FOOTER_SIZE = 4*16 + 4 + 4 + 8 = 80" in text.replace(" * ", "*")
    assert 'FLOWSST\\x00' in text
    assert "format_version:u32le = 1" in text
    assert "0xbc9f1d34" in text


def _claim_one_byte_more(data, off):
    """Makes the snappy stream at off claim one byte more than it holds (the
    new varint length fits the same bytes)."""
    claimed, nbytes = 0, 0
    for i in range(5):
        claimed |= (data[off + i] & 0x7F) << (7 * i)
        if not data[off + i] & 0x80:
            nbytes = i + 1
            break
    assert (claimed + 1).bit_length() <= 7 * nbytes
    v = claimed + 1
    for i in range(nbytes):
        data[off + i] = (v & 0x7F) | (0x80 if i < nbytes - 1 else 0)
        v >>= 7


def test_compressed_block_that_does_not_decompress_is_corrupt(tmp_path):
    # A snappy stream that passes its checksum but claims one byte more than
    # it holds (a writer bug, not disk damage) is reported, never returned.
    path = tmp_path / "t.sst"
    write_table(path, series(2, 200), block_size=1024)
    r = TableReader(str(path), 1, None)
    off, size = r.block_meta()[1][:2]
    r.close()
    data = bytearray(path.read_bytes())
    assert data[off + size] == 1                      # stored compressed
    _claim_one_byte_more(data, off)
    _restamp(data, off, size)
    path.write_bytes(data)
    r = TableReader(str(path), 1, BlockCache(1 << 20))
    with pytest.raises(CorruptionError, match="does not decompress") as e:
        scan(r.new_iterator())
    assert e.value.offset == off


def _read_ahead_iterator(r):
    it = r.new_iterator(fill_cache=False)
    it.read_ahead = True
    return it


def test_read_ahead_gives_the_same_entries_in_fewer_gil_takes(tmp_path):
    model = series(8, 300)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    r = TableReader(str(path), 1, None)
    it = _read_ahead_iterator(r)
    it.seek_to_first()
    held = []
    got = []
    while it.valid:
        held.append(it.blocks_held)
        got.append((it.key(), it.value()))
        it.next()
    assert got == model
    assert max(held) > 1                              # blocks read ahead were held
    assert r.blocks_read == r.num_data_blocks         # each block read once
    assert it.gil_loads == 0                          # all of them without the GIL
    # Seeks and backward moves give what a plain iterator gives.
    plain = r.new_iterator(fill_cache=False)
    rng = random.Random(3)
    for k, _ in rng.sample(model, 50):
        for a in (it, plain):
            a.seek(k)
        assert current(it) == current(plain) == seek(model, k)
        it.next()
        plain.next()
        assert current(it) == current(plain)
        for a in (it, plain):
            a.seek_for_prev(k)
        assert current(it) == current(plain) == seek_for_prev(model, k)


@pytest.mark.parametrize("damage,verify", [("checksum", True), ("stream", True),
                                           ("stream", False)])
def test_read_ahead_reports_a_corrupt_block_only_when_it_reaches_it(tmp_path, damage, verify):
    # The batch read (_ti_read_batch, without the GIL) stops before a bad
    # block; the iterator reports it, as a plain one does, when it gets there.
    model = series(8, 300)
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=512)
    meta = TableReader(str(path), 1, None).block_meta()
    off, size = meta[5][:2]
    data = bytearray(path.read_bytes())
    if damage == "checksum":
        data[off + 1] ^= 0xFF                         # block 5 fails its checksum
    else:
        assert data[off + size] == 1                  # stored compressed
        _claim_one_byte_more(data, off)               # and does not decompress
        _restamp(data, off, size)
    path.write_bytes(data)

    def entries_before_error(it):
        got = []
        it.seek_to_first()
        with pytest.raises(CorruptionError) as e:
            while it.valid:
                got.append(it.key())
                it.next()
        return got, e.value.offset, str(e.value)

    r = TableReader(str(path), 1, None)
    plain = entries_before_error(r.new_iterator(fill_cache=False, verify_checksums=verify))
    assert plain[1] == off and len(plain[0]) > 0
    it = r.new_iterator(fill_cache=False, verify_checksums=verify)
    it.read_ahead = True
    assert entries_before_error(it) == plain
    assert it.gil_loads == 1                          # the bad block, read again to report it


def test_read_ahead_mixes_stored_and_compressed_blocks_and_bounds_what_it_holds(tmp_path):
    # Random values do not compress (blocks stored raw), repeated ones do;
    # a batch holds at most _READAHEAD_BYTES (256 KiB) beyond its first block.
    rng = random.Random(7)
    model = sorted((put(b"k%05d" % i, 0, i + 1,
                        rng.randbytes(3000) if i // 40 % 2 else b"abc" * 1000)
                    for i in range(800)), key=lambda kv: order(kv[0]))
    path = tmp_path / "t.sst"
    write_table(path, model, block_size=32 * 1024)
    r = TableReader(str(path), 1, None)
    kinds = set()
    for off, size, *_ in r.block_meta():
        with open(path, "rb") as f:
            f.seek(off + size)
            kinds.add(f.read(1)[0])
    assert kinds == {0, 1}
    it = _read_ahead_iterator(r)
    it.seek_to_first()
    got, held = [], []
    while it.valid:
        got.append((it.key(), it.value()))
        held.append(it.blocks_held)
        it.next()
    assert got == model
    assert 1 < max(held) <= 256 // 32 + 1
    assert r.blocks_read == r.blocks_loaded == r.num_data_blocks


def test_read_ahead_on_a_closed_table_raises_like_a_plain_iterator(tmp_path):
    path = tmp_path / "t.sst"
    write_table(path, series(4, 200), block_size=512)
    r = TableReader(str(path), 1, None)
    its = [r.new_iterator(fill_cache=False), _read_ahead_iterator(r)]
    r.close()
    for it in its:
        with pytest.raises(OSError, match="closed"):
            it.seek_to_first()
