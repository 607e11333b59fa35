"""flowdb._wal: the write-ahead log, its recovery rules and its failure modes.

Every test works on real segment files in tmp_path.  The torn-tail tests
cut, zero or garble the last record at every byte offset; the corruption
tests damage one byte with valid records after it; the failure tests make
write or fsync fail (a descriptor swapped for a read-only one, injected
errors, and a real EFBIG from RLIMIT_FSIZE in a child process).
"""
import errno
import os
import random
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from crc32c import crc32c

import flowdb._wal as wal
from helpers.common import wal_records
from flowdb._errors import CorruptionError, FlowError
from flowdb._fileio import wal_name
from flowdb._wal import (WAL_HEADER_SIZE, WalWriter, delete_segments, encode_record,
                         list_segments, read_wal, segment_path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(wal.__file__)))


def payload(i, size=40):
    """A batch payload: count:u32le = 1, then `size` bytes that name `i`."""
    body = (b"entry-%d-" % i) * (size // 8 + 1)
    return struct.pack("<I", 1) + body[:size]


class Counter:
    """new_file_number for tests: numbers from `start` up."""

    def __init__(self, start):
        self.next = start
        self.calls = 0

    def __call__(self):
        self.calls += 1
        n, self.next = self.next, self.next + 1
        return n


def write_records(dir, n, *, segment_size=1 << 20, size=40, first=1, sync=True):
    """n single-record appends to segment `first`, each fsynced (as under
    SyncMode.ALWAYS) unless sync=False; returns [(seq, payload, offset)]."""
    out = []
    w = WalWriter(dir, first, segment_size, Counter(first + 1))
    for i in range(n):
        off = os.path.getsize(segment_path(dir, w.current_number))
        p = payload(i, size)
        w.append([(i + 1, p)])
        if sync:
            w.sync()
        out.append((i + 1, p, off))
    w.close()
    return out


def encode_v1_record(seq_start, p):
    """A record of a version 1 segment: crc, length, seq_start, batch (no synced)."""
    body = struct.pack("<IQ", len(p), seq_start) + p
    return struct.pack("<I", crc32c(body)) + body


def read_all(dir, **kw):
    rec = read_wal(dir, list_segments(dir), **kw)
    return [(s, o, q, p) for s, o, q, p in rec], rec


# -- byte format -------------------------------------------------------------------

def test_header_is_byte_exact():
    assert wal.encode_header() == b"FLOWWAL\x00" + b"\x02\x00\x00\x00" + b"\x00\x00\x00\x00"
    assert WAL_HEADER_SIZE == 16 and wal.RECORD_HEADER_SIZE == 24


def test_record_is_byte_exact():
    p = struct.pack("<I", 1) + b"k" * 11
    expect_body = struct.pack("<IQQ", len(p), 7, 40) + p
    assert encode_record(7, p, 40) == struct.pack("<I", crc32c(expect_body)) + expect_body


def test_new_segment_holds_only_the_header(tmp_path):
    w = WalWriter(tmp_path, 3, 1 << 20, Counter(4))
    w.close()
    assert (tmp_path / "000003.wal").read_bytes() == wal.encode_header()


# -- round trips --------------------------------------------------------------------

def test_round_trip_one_segment(tmp_path):
    written = write_records(tmp_path, 20)
    got, rec = read_all(tmp_path)
    assert [(q, p, o) for _s, o, q, p in got] == written
    assert all(s == 1 for s, *_ in got)
    assert rec.torn_bytes == 0 and rec.torn_segment is None and rec.records == 20


def test_round_trip_across_several_segments(tmp_path):
    counter = Counter(10)
    w = WalWriter(tmp_path, 1, 300, counter)
    expect, seq = [], 1
    for i in range(60):
        batch = [(seq + k, payload(seq + k, 20 + (i * 7) % 50)) for k in range(1 + i % 3)]
        seg = w.current_number
        w.append(batch)
        expect.extend((seg, q, p) for q, p in batch)
        seq += len(batch)
    w.close()
    segs = list_segments(tmp_path)
    assert len(segs) > 5
    assert segs == w.segment_numbers == [1] + list(range(10, counter.next))
    got, rec = read_all(tmp_path)
    assert [(s, q, p) for s, _o, q, p in got] == expect
    for number in segs[:-1]:                  # each closed segment went past the size
        assert os.path.getsize(segment_path(tmp_path, number)) > 300
    assert rec.torn_bytes == 0


def test_append_returns_bytes_and_bytes_written_sums_them(tmp_path):
    w = WalWriter(tmp_path, 1, 200, Counter(2))
    total = 0
    for i in range(10):
        n = w.append([(2 * i + 1, payload(i)), (2 * i + 2, payload(i, 11))])
        assert n == len(encode_record(1, payload(i))) + len(encode_record(1, payload(i, 11)))
        total += n
    assert w.bytes_written == total
    sizes = sum(os.path.getsize(segment_path(tmp_path, s)) for s in w.segment_numbers)
    assert sizes == total + WAL_HEADER_SIZE * len(w.segment_numbers)
    w.close()


def test_append_is_one_write_call(tmp_path, monkeypatch):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    calls = []
    real_write = os.write

    def counting_write(fd, data):
        calls.append(len(data))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", counting_write)
    w.append([(i + 1, payload(i)) for i in range(100)])
    assert len(calls) == 1
    monkeypatch.undo()
    w.close()


def test_append_loops_on_short_writes(tmp_path, monkeypatch):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:5]))
    records = [(i + 1, payload(i)) for i in range(5)]
    w.append(records)
    monkeypatch.undo()
    w.close()
    got, _ = read_all(tmp_path)
    assert [(q, p) for _s, _o, q, p in got] == records


def test_empty_append_writes_nothing(tmp_path):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    assert w.append([]) == 0
    w.close()
    assert os.path.getsize(segment_path(tmp_path, 1)) == WAL_HEADER_SIZE


@pytest.mark.parametrize("seq,data", [
    (0, payload(1)),                                   # seqs start at 1
    (1 << 56, payload(1)),                             # seqs are 56-bit
    (1 << 56, struct.pack("<I", 0)),                   # ... even in an empty batch
    ((1 << 56) - 1, struct.pack("<I", 2) + b"x" * 30),   # the batch's last seq passes 2**56
    (1, b"abc"),                                       # shorter than a batch count
    (1, struct.pack("<I", 3) + b"x" * 20),             # 3 entries cannot fit in 20 bytes
])
def test_append_refuses_a_record_the_reader_would_reject(tmp_path, seq, data):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    with pytest.raises(ValueError):
        w.append([(1, payload(0)), (seq, data)])
    assert not w.failed
    w.close()
    assert os.path.getsize(segment_path(tmp_path, 1)) == WAL_HEADER_SIZE


def test_creating_an_existing_segment_raises(tmp_path):
    write_records(tmp_path, 3)
    before = (tmp_path / "000001.wal").read_bytes()
    with pytest.raises(FileExistsError):
        WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    assert (tmp_path / "000001.wal").read_bytes() == before


def test_reuse_appends_after_the_existing_records(tmp_path):
    written = write_records(tmp_path, 3)
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2), reuse=True)
    w.append([(4, payload(99))])
    w.close()
    got, _ = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1, 2, 3, 4]
    assert got[-1][3] == payload(99)
    assert got[-1][1] == written[-1][2] + len(encode_record(3, written[-1][1]))


def test_segment_numbers_forget_deleted_segments(tmp_path):
    w = WalWriter(tmp_path, 1, 100, Counter(2))
    for i in range(6):
        w.append([(i + 1, payload(i, 100))])
    segs = w.segment_numbers
    delete_segments(tmp_path, segs[:-1])
    assert w.segment_numbers == [segs[-1]] == list_segments(tmp_path)
    w.close()


# -- torn tails -------------------------------------------------------------------------

def _check_torn_recovery(dir, written, damaged_file_len):
    """Recovery keeps all but the last record, truncates, and the segment takes appends."""
    path = segment_path(dir, 1)
    last_off = written[-1][2]
    got, rec = read_all(dir)
    assert [(q, p, o) for _s, o, q, p in got] == written[:-1]
    assert os.path.getsize(path) == last_off
    if damaged_file_len > last_off:
        assert (rec.torn_segment, rec.torn_offset) == (1, last_off)
        assert rec.torn_bytes == damaged_file_len - last_off
    else:
        assert rec.torn_bytes == 0 and rec.torn_segment is None
    w = WalWriter(dir, 1, 1 << 20, Counter(2), reuse=True)
    w.append([(100, payload(100))])
    w.close()
    got, rec = read_all(dir)
    assert [q for _s, _o, q, _p in got] == [q for q, _p, _o in written[:-1]] + [100]
    assert rec.torn_bytes == 0


def test_last_record_truncated_at_every_byte_offset(tmp_path):
    written = write_records(tmp_path, 4)
    path = segment_path(tmp_path, 1)
    original = open(path, "rb").read()
    last_off = written[-1][2]
    assert len(original) - last_off > 40
    for cut in range(last_off, len(original)):
        with open(path, "wb") as f:
            f.write(original[:cut])
        _check_torn_recovery(tmp_path, written, cut)


def test_last_record_overwritten_with_zeros(tmp_path):
    written = write_records(tmp_path, 4)
    path = segment_path(tmp_path, 1)
    original = open(path, "rb").read()
    last_off = written[-1][2]
    for start in range(last_off, len(original)):
        # Zero from `start` to the end, as a filesystem may after a crash.
        with open(path, "wb") as f:
            f.write(original[:start] + bytes(len(original) - start))
        _check_torn_recovery(tmp_path, written, len(original))


def test_last_record_overwritten_with_random_garbage(tmp_path):
    written = write_records(tmp_path, 4)
    path = segment_path(tmp_path, 1)
    original = open(path, "rb").read()
    last_off = written[-1][2]
    rnd = random.Random(1234)
    for start in range(last_off, len(original)):
        garbage = bytes(rnd.randrange(256) for _ in range(len(original) - start))
        with open(path, "wb") as f:
            f.write(original[:start] + garbage)
        _check_torn_recovery(tmp_path, written, len(original))


def test_zero_filled_tail_past_the_records_is_torn(tmp_path):
    written = write_records(tmp_path, 3)
    path = segment_path(tmp_path, 1)
    end = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(bytes(4 << 20))
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1, 2, 3]
    assert rec.torn_offset == end and rec.torn_bytes == 4 << 20
    assert os.path.getsize(path) == end
    assert len(written) == 3


def test_large_random_torn_tail_is_scanned_quickly(tmp_path):
    write_records(tmp_path, 3)
    path = segment_path(tmp_path, 1)
    end = os.path.getsize(path)
    with open(path, "ab") as f:
        # A huge batch cut short: a plausible header, then 8 MiB of random bytes.
        f.write(struct.pack("<IIQ", 0, 64 << 20, 4) + random.Random(5).randbytes(8 << 20))
    t = time.monotonic()
    got, rec = read_all(tmp_path)
    assert time.monotonic() - t < 10
    assert len(got) == 3 and rec.torn_offset == end


def test_repair_false_reports_the_torn_tail_but_changes_nothing(tmp_path):
    write_records(tmp_path, 3)
    path = segment_path(tmp_path, 1)
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")
    before = open(path, "rb").read()
    got, rec = read_all(tmp_path, repair=False)
    assert len(got) == 3 and rec.torn_bytes == 3
    assert open(path, "rb").read() == before


def test_torn_tail_is_truncated_only_after_earlier_records_are_yielded(tmp_path):
    write_records(tmp_path, 3)
    path = segment_path(tmp_path, 1)
    with open(path, "ab") as f:
        f.write(b"\xff" * 10)
    size = os.path.getsize(path)
    rec = read_wal(tmp_path, [1])
    for _ in range(3):
        next(rec)
        assert os.path.getsize(path) == size
    with pytest.raises(StopIteration):
        next(rec)
    assert os.path.getsize(path) == size - 10


# -- corruption ---------------------------------------------------------------------------

@pytest.mark.parametrize("field,delta", [("crc", 0), ("length", 4), ("length", 5),
                                         ("seq_start", 8), ("seq_top_byte", 15),
                                         ("payload", 16), ("payload_end", -1)])
def test_damaged_middle_record_raises_corruption_naming_file_and_offset(tmp_path, field, delta):
    written = write_records(tmp_path, 5)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read())
    off = written[2][2]
    end = written[3][2]
    pos = (end if delta < 0 else off) + delta
    data[pos] ^= 0x40
    open(path, "wb").write(bytes(data))
    rec = read_wal(tmp_path, [1])
    got = []
    with pytest.raises(CorruptionError) as info:
        for r in rec:
            got.append(r)
    assert [r[2] for r in got] == [1, 2]          # the records before it were read
    assert info.value.path == path
    assert info.value.offset == off
    assert path in str(info.value) and f"offset {off}" in str(info.value)
    assert f"the record at offset {written[3][2]} was written after" in str(info.value)
    assert open(path, "rb").read() == bytes(data)  # nothing repaired


def test_length_grown_past_end_of_file_with_records_after_is_corruption(tmp_path):
    written = write_records(tmp_path, 5)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read())
    off = written[1][2]
    struct.pack_into("<I", data, off + 4, len(data))
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1]))
    assert info.value.offset == off and "cut short" in str(info.value)


def test_damaged_first_record_with_records_after_is_corruption(tmp_path):
    write_records(tmp_path, 3)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read())
    data[WAL_HEADER_SIZE] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1]))
    assert info.value.offset == WAL_HEADER_SIZE


def _two_segments(dir):
    w = WalWriter(dir, 1, 200, Counter(2))
    seq = 1
    while w.current_number == 1:
        w.append([(seq, payload(seq))])
        seq += 1
    w.append([(seq, payload(seq))])
    w.close()
    assert list_segments(dir) == [1, 2]
    return seq


def test_torn_tail_of_a_segment_that_is_not_the_newest_is_corruption(tmp_path):
    _two_segments(tmp_path)
    first = segment_path(tmp_path, 1)
    size = os.path.getsize(first)
    os.truncate(first, size - 3)
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1, 2]))
    assert info.value.path == first
    assert "not the newest" in str(info.value)
    assert os.path.getsize(first) == size - 3


def test_garbage_after_the_last_record_of_an_older_segment_is_corruption(tmp_path):
    _two_segments(tmp_path)
    first = segment_path(tmp_path, 1)
    with open(first, "ab") as f:
        f.write(bytes(100))
    with pytest.raises(CorruptionError):
        list(read_wal(tmp_path, [1, 2]))


def test_newest_segment_is_the_directorys_newest_not_the_callers(tmp_path):
    _two_segments(tmp_path)
    os.truncate(segment_path(tmp_path, 2), os.path.getsize(segment_path(tmp_path, 2)) - 1)
    # 000003.wal exists, so 000002.wal is not the newest segment.
    open(segment_path(tmp_path, 3), "wb").write(wal.encode_header())
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1, 2]))
    assert info.value.path == segment_path(tmp_path, 2)


# -- segment headers -------------------------------------------------------------------------

@pytest.mark.parametrize("length", range(0, WAL_HEADER_SIZE))
def test_newest_segment_shorter_than_its_header_is_deleted(tmp_path, length):
    seq = _two_segments(tmp_path)
    open(segment_path(tmp_path, 3), "wb").write(wal.encode_header()[:length])
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == list(range(1, seq + 1))
    assert rec.deleted_segments == [3]
    assert list_segments(tmp_path) == [1, 2]


def test_newest_segment_of_only_zero_bytes_is_deleted(tmp_path):
    _two_segments(tmp_path)
    open(segment_path(tmp_path, 3), "wb").write(bytes(WAL_HEADER_SIZE + 30))
    _got, rec = read_all(tmp_path)
    assert rec.deleted_segments == [3]
    assert list_segments(tmp_path) == [1, 2]


def test_short_segment_that_is_not_the_newest_is_corruption(tmp_path):
    _two_segments(tmp_path)
    open(segment_path(tmp_path, 1), "wb").write(b"FLOW")
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1, 2]))
    assert info.value.path == segment_path(tmp_path, 1) and info.value.offset == 0


@pytest.mark.parametrize("newest", [False, True])
def test_bad_magic_is_corruption(tmp_path, newest):
    _two_segments(tmp_path)
    number = 2 if newest else 1
    path = segment_path(tmp_path, number)
    data = bytearray(open(path, "rb").read())
    data[3] ^= 0x20
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1, 2]))
    assert info.value.path == path and "magic" in str(info.value)
    assert os.path.exists(path)


def test_unknown_version_is_corruption_naming_the_version(tmp_path):
    write_records(tmp_path, 2)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read())
    struct.pack_into("<I", data, 8, 7)
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1]))
    assert "version 7" in str(info.value) and info.value.offset == 8


def test_nonzero_reserved_field_is_corruption(tmp_path):
    write_records(tmp_path, 2)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read())
    data[12] = 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1]))
    assert info.value.offset == 12


def test_reuse_of_a_segment_with_a_bad_header_raises(tmp_path):
    open(segment_path(tmp_path, 1), "wb").write(b"NOTAWAL\x00" + bytes(8))
    with pytest.raises(CorruptionError):
        WalWriter(tmp_path, 1, 1 << 20, Counter(2), reuse=True)


# -- what a record says was durable (version 2) ----------------------------------------------

def _synced_field(data, off):
    return struct.unpack_from("<Q", data, off + 16)[0]


def test_a_record_says_how_much_of_its_segment_was_synced_before_it(tmp_path):
    w = WalWriter(tmp_path, 1, 300, Counter(2))
    w.append([(1, payload(1))])
    end1 = os.path.getsize(segment_path(tmp_path, 1))
    w.sync()
    w.append([(2, payload(2))])                      # after the sync: everything before it
    w.append([(3, payload(3))])                      # no sync since: the same
    seg1 = open(segment_path(tmp_path, 1), "rb").read()
    offs = [o for o, _ in wal_records(segment_path(tmp_path, 1))]
    assert [_synced_field(seg1, o) for o in offs] == [WAL_HEADER_SIZE, end1, end1]
    while w.current_number == 1:
        w.append([(4, payload(4))])
    w.append([(5, payload(5))])                      # a new segment starts from its header
    w.close()
    seg2 = open(segment_path(tmp_path, w.current_number), "rb").read()
    assert _synced_field(seg2, WAL_HEADER_SIZE) == WAL_HEADER_SIZE


@pytest.mark.parametrize("damage", ["zeros", "flip"])
def test_bad_bytes_no_later_record_says_were_synced_are_a_torn_tail(tmp_path, damage):
    """Pages persisted out of order leave a hole before later records, none
    of which was written after the hole's bytes were fsynced."""
    written = write_records(tmp_path, 5, sync=False)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read())
    off, end = written[2][2], written[3][2]
    if damage == "zeros":
        data[off:end] = bytes(end - off)
    else:
        data[off + 30] ^= 0x10
    open(path, "wb").write(bytes(data))
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1, 2]
    assert rec.torn_offset == off and rec.torn_bytes == len(data) - off
    assert os.path.getsize(path) == off


def _synced_in_steps(dir):
    """R1..R3, fsync, R4..R6, fsync, R7; returns the offsets of R1..R7 and the file's end."""
    w = WalWriter(dir, 1, 1 << 20, Counter(2))
    offs = []
    for seq in range(1, 8):
        offs.append(os.path.getsize(segment_path(dir, 1)))
        w.append([(seq, payload(seq))])
        if seq in (3, 6):
            w.sync()
    w.close()
    return offs, os.path.getsize(segment_path(dir, 1))


@pytest.mark.parametrize("bad,proof", [(1, 3), (4, 6), (5, 6)])
def test_bad_bytes_a_later_record_says_were_synced_are_corruption(tmp_path, bad, proof):
    offs, _ = _synced_in_steps(tmp_path)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read())
    data[offs[bad] + 30] ^= 0x10                     # R(bad+1) damaged
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptionError) as info:
        list(read_wal(tmp_path, [1]))
    assert info.value.offset == offs[bad]
    assert f"the record at offset {offs[proof]} was written after" in str(info.value)
    assert open(path, "rb").read() == bytes(data)    # nothing repaired


def test_without_the_record_that_proves_the_sync_the_damage_is_a_torn_tail(tmp_path):
    offs, _ = _synced_in_steps(tmp_path)
    path = segment_path(tmp_path, 1)
    data = bytearray(open(path, "rb").read()[:offs[6]])      # R7 never reached the disk
    data[offs[4] + 30] ^= 0x10                               # R5 damaged, R6 intact
    open(path, "wb").write(bytes(data))
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1, 2, 3, 4] and rec.torn_offset == offs[4]


def test_a_record_claiming_bytes_after_it_were_synced_is_not_valid(tmp_path):
    write_records(tmp_path, 2)
    path = segment_path(tmp_path, 1)
    end = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(encode_record(3, payload(3), end + 1))
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1, 2] and rec.torn_offset == end


def _v1_segment(path, records):
    header = struct.pack("<8sII", b"FLOWWAL\x00", 1, 0)
    data = header + b"".join(encode_v1_record(q, p) for q, p in records)
    open(path, "wb").write(data)
    return data


def test_version_1_segments_are_read_under_the_version_1_rules(tmp_path):
    path = segment_path(tmp_path, 1)
    records = [(i + 1, payload(i)) for i in range(4)]
    data = _v1_segment(path, records)
    got, _ = read_all(tmp_path, repair=False)
    assert [(q, p) for _s, _o, q, p in got] == records
    rec_size = len(encode_v1_record(1, payload(0)))
    damaged = bytearray(data)
    damaged[WAL_HEADER_SIZE + rec_size + 20] ^= 1            # the second record
    open(path, "wb").write(bytes(damaged))
    with pytest.raises(CorruptionError) as info:              # a valid record follows it
        list(read_wal(tmp_path, [1]))
    assert info.value.offset == WAL_HEADER_SIZE + rec_size and "valid record follows" in str(info.value)
    open(path, "wb").write(data[:-3])                         # a torn last record
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1, 2, 3] and rec.torn_offset == len(data) - rec_size


def test_a_writer_does_not_append_to_a_version_1_segment(tmp_path):
    _v1_segment(segment_path(tmp_path, 1), [(1, payload(1))])
    with pytest.raises(ValueError, match="version 1"):
        WalWriter(tmp_path, 1, 1 << 20, Counter(2), reuse=True)


# -- rotation and sync ----------------------------------------------------------------------------

def _record_fsyncs(monkeypatch, events):
    real = {name: getattr(os, name) for name in ("fsync", "fdatasync", "open")}

    def name_of(fd):
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    def fsync(fd):
        events.append(("fsync", name_of(fd)))
        real["fsync"](fd)

    def fdatasync(fd):
        events.append(("fdatasync", name_of(fd)))
        real["fdatasync"](fd)

    def open_(path, flags, *a, **kw):
        if flags & os.O_CREAT:
            events.append(("create", os.path.basename(os.fspath(path))))
        return real["open"](path, flags, *a, **kw)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "open", open_)


def test_rotation_fsyncs_the_old_segment_before_creating_the_next(tmp_path, monkeypatch):
    w = WalWriter(tmp_path, 1, 100, Counter(7))
    events = []
    _record_fsyncs(monkeypatch, events)
    w.append([(1, payload(1, 120))])
    monkeypatch.undo()
    assert w.current_number == 7
    assert events == [("fsync", "000001.wal"), ("create", "000007.wal"),
                      ("fsync", "000007.wal"), ("fsync", tmp_path.name)]
    w.close()


def test_creating_a_writer_fsyncs_segment_and_directory(tmp_path, monkeypatch):
    events = []
    _record_fsyncs(monkeypatch, events)
    w = WalWriter(tmp_path, 1, 100, Counter(2))
    monkeypatch.undo()
    assert events == [("create", "000001.wal"), ("fsync", "000001.wal"),
                      ("fsync", tmp_path.name)]
    w.close()


def test_sync_fdatasyncs_the_current_segment(tmp_path, monkeypatch):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    w.append([(1, payload(1))])
    events = []
    _record_fsyncs(monkeypatch, events)
    w.sync()
    monkeypatch.undo()
    assert events == [("fdatasync", "000001.wal")]
    w.close()


def test_sync_through_a_given_datasync_passes_a_duplicate_and_leaks_nothing(tmp_path, monkeypatch):
    # The engine's ApplyThread.datasync makes the call: on a duplicate of the
    # segment's descriptor, made and closed holding the GIL.  A replaced
    # os.fdatasync (a fault injector) is called instead, and sees it.
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    w.append([(1, payload(1))])
    segment = os.stat(tmp_path / "000001.wal").st_ino
    seen = []

    def datasync(fd):
        seen.append(os.fstat(fd).st_ino)
        os.fdatasync(fd)
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        w.sync(datasync)
    assert seen == [segment] * 50
    assert len(os.listdir("/proc/self/fd")) == fds_before

    events = []
    _record_fsyncs(monkeypatch, events)
    w.sync(datasync)
    monkeypatch.undo()
    assert events == [("fdatasync", "000001.wal")] and len(seen) == 50

    def failing(fd):
        raise OSError(errno.EIO, "injected")
    with pytest.raises(OSError):
        w.sync(failing)
    with pytest.raises(FlowError):           # refused from then on, as after any failed sync
        w.append([(2, payload(2))])
    assert len(os.listdir("/proc/self/fd")) == fds_before
    w.close()


def test_rotation_calls_new_file_number_once_per_segment(tmp_path):
    counter = Counter(2)
    w = WalWriter(tmp_path, 1, 50, counter)
    for i in range(5):
        w.append([(i + 1, payload(i, 60))])
    assert counter.calls == 5 and w.segment_numbers == [1, 2, 3, 4, 5, 6]
    w.close()


def test_sync_from_another_thread_during_appends_and_rotations(tmp_path):
    w = WalWriter(tmp_path, 1, 2000, Counter(2))
    stop = threading.Event()
    errors = []

    def syncer():
        while not stop.is_set():
            try:
                w.sync()
            except Exception as exc:    # pragma: no cover - the failure being tested for
                errors.append(exc)
                return
    threads = [threading.Thread(target=syncer) for _ in range(3)]
    for t in threads:
        t.start()
    seq = 1
    for i in range(400):
        batch = [(seq + k, payload(seq + k)) for k in range(3)]
        w.append(batch)
        seq += 3
    stop.set()
    for t in threads:
        t.join()
    w.close()
    assert errors == []
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == list(range(1, seq))
    assert len(list_segments(tmp_path)) > 10 and rec.torn_bytes == 0


# -- failures ---------------------------------------------------------------------------------

def test_write_error_is_raised_as_is_then_writer_refuses_with_flow_error(tmp_path):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    w.append([(1, payload(1))])
    # Put a read-only descriptor under the writer's fd number: the next write
    # fails with EBADF, as if the descriptor had been closed underneath.
    ro = os.open(segment_path(tmp_path, 1), os.O_RDONLY)
    os.dup2(ro, w._fd)
    os.close(ro)
    with pytest.raises(OSError) as info:
        w.append([(2, payload(2))])
    assert not isinstance(info.value, FlowError) and info.value.errno == errno.EBADF
    assert w.failed
    for call in (lambda: w.append([(3, payload(3))]), w.sync):
        with pytest.raises(FlowError) as again:
            call()
        assert "unusable after an earlier I/O error" in str(again.value)
        assert again.value.__cause__ is info.value
    w.close()
    w.close()
    got, _ = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1]


def test_fsync_error_is_raised_as_is_then_writer_refuses(tmp_path, monkeypatch):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    w.append([(1, payload(1))])

    def broken(fd):
        raise OSError(errno.EIO, "injected fdatasync failure")
    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OSError) as info:
        w.sync()
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    with pytest.raises(FlowError):
        w.append([(2, payload(2))])
    with pytest.raises(FlowError):
        w.sync()
    w.close()                # closes without fsync and without raising


def test_rotation_failure_makes_the_writer_unusable(tmp_path):
    def no_numbers():
        raise OSError(errno.ENOSPC, "injected: cannot create the next segment")
    w = WalWriter(tmp_path, 1, 50, no_numbers)
    with pytest.raises(OSError):
        w.append([(1, payload(1, 60))])
    with pytest.raises(FlowError):
        w.append([(2, payload(2))])
    w.close()
    got, _ = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == [1]     # the batch itself was written and fsynced


def test_use_after_close_raises_flow_error(tmp_path):
    w = WalWriter(tmp_path, 1, 1 << 20, Counter(2))
    w.close()
    with pytest.raises(FlowError):
        w.append([(1, payload(1))])
    with pytest.raises(FlowError):
        w.sync()


_EFBIG_CHILD = textwrap.dedent("""
    import errno, resource, signal, struct, sys
    from flowdb._errors import FlowError
    from flowdb._wal import WalWriter
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    w = WalWriter(sys.argv[1], 1, 1 << 30, lambda: 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.RLIM_INFINITY))
    acked = 0
    try:
        while True:
            w.append([(acked + 1, struct.pack("<I", 1) + bytes([acked % 256]) * 300)])
            w.sync()
            acked += 1
    except OSError as exc:
        print("oserror", exc.errno, acked)
    try:
        w.append([(acked + 1, struct.pack("<I", 1) + b"x" * 300)])
    except FlowError:
        print("flowerror")
    w.close()
""")


def test_real_write_failure_efbig_leaves_a_recoverable_torn_tail(tmp_path):
    # RLIMIT_FSIZE makes the kernel cut a write short at the limit and fail
    # the next one with EFBIG: a real partial write, no mocking.
    out = subprocess.run([sys.executable, "-c", _EFBIG_CHILD, str(tmp_path)], capture_output=True,
                         text=True, timeout=60, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    word, err, acked = lines[0].split()
    assert word == "oserror" and int(err) == errno.EFBIG
    assert lines[1] == "flowerror"
    assert os.path.getsize(segment_path(tmp_path, 1)) == 5000      # a torn record at the end
    got, rec = read_all(tmp_path)
    assert [q for _s, _o, q, _p in got] == list(range(1, int(acked) + 1))
    assert rec.torn_bytes > 0


# -- directory helpers ----------------------------------------------------------------------------

def test_list_segments_sorts_and_ignores_other_files(tmp_path):
    for name in ["000010.wal", "000002.wal", "000003.sst", "MANIFEST", "LOCK", "000004.wal.tmp",
                 "7.wal", "1000000.wal"]:
        (tmp_path / name).write_bytes(b"")
    assert list_segments(tmp_path) == [2, 10, 1000000]


def test_delete_segments_skips_missing_ones(tmp_path):
    for n in (1, 2, 3):
        (tmp_path / wal_name(n)).write_bytes(b"")
    delete_segments(tmp_path, [1, 3, 99])
    assert list_segments(tmp_path) == [2]


def test_read_wal_of_no_segments_yields_nothing(tmp_path):
    got, rec = read_all(tmp_path)
    assert got == [] and rec.records == 0


# -- the forward scan against a brute-force reference -----------------------------------------------

def _brute_next_valid(data, start, layout):
    view = memoryview(data)
    for off in range(start, len(data)):
        if wal._record_problem(data, view, off, layout) is None:
            return off
    return None


@pytest.mark.parametrize("version", [1, 2])
def test_forward_scan_matches_brute_force_on_damaged_streams(version):
    rnd = random.Random(2024)
    layout = wal._LAYOUTS[version]
    encode = encode_v1_record if version == 1 else encode_record
    for trial in range(150):
        stream = wal.encode_header() + b"".join(encode(i + 1, payload(i, rnd.randrange(11, 60)))
                                                for i in range(rnd.randrange(1, 6)))
        data = bytearray(stream)
        for _ in range(rnd.randrange(1, 4)):
            kind = rnd.randrange(3)
            pos = rnd.randrange(len(data))
            if kind == 0:
                data[pos] ^= 1 << rnd.randrange(8)
            elif kind == 1:
                data[pos:pos + rnd.randrange(1, 30)] = bytes(rnd.randrange(1, 30))
            else:
                data[pos:pos] = rnd.randbytes(rnd.randrange(1, 20))
        data = bytes(data)
        for start in range(0, len(data), 7):
            assert wal._next_valid_record(data, memoryview(data), start, layout) == \
                _brute_next_valid(data, start, layout), (trial, start)
