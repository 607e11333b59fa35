"""flowdb._manifest: the edit log of live tables, its fold, its rewrite and its recovery rules.

Real files in tmp_path.  The torn-edit tests cut, zero or garble the last
edit at every byte offset; the corruption tests damage an edit that has a
valid edit after it.
"""
import errno
import os
import random
import struct
import threading

import pytest
from crc32c import crc32c

import flowdb._manifest as manifest
from flowdb._errors import CorruptionError, FlowError
from flowdb._manifest import MANIFEST_HEADER_SIZE, Manifest, encode_edit


def mpath(dir):
    return os.path.join(dir, "MANIFEST")


def edits_in(path):
    """The decoded edit bodies in the file at `path` (which must be clean)."""
    import ujson
    data = open(path, "rb").read()
    off, out = MANIFEST_HEADER_SIZE, []
    while off < len(data):
        crc, length = struct.unpack_from("<II", data, off)
        out.append(ujson.loads(data[off + 8:off + 8 + length]))
        off += 8 + length
    assert off == len(data)
    return out


def state(m):
    return (dict(m.tables), m.next_file, m.flushed_seq, m.last_seq)


# -- byte format ---------------------------------------------------------------------

def test_header_and_edit_are_byte_exact():
    assert manifest.encode_header() == b"FLOWMAN\x00\x01\x00\x00\x00\x00\x00\x00\x00"
    body = b'{"next_file":2}'
    length = struct.pack("<I", len(body))
    assert encode_edit({"next_file": 2}) == struct.pack("<I", crc32c(length + body)) + length + body


def test_new_manifest_is_header_plus_one_snapshot_edit(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    m.close()
    assert open(mpath(tmp_path), "rb").read(16) == manifest.encode_header()
    assert edits_in(mpath(tmp_path)) == [{"next_file": 1, "flushed_seq": 0, "last_seq": 0, "add": []}]
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST"]


# -- open ------------------------------------------------------------------------------

def test_open_missing_without_create_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Manifest.open(tmp_path, create=False)
    assert os.listdir(tmp_path) == []


def test_missing_manifest_beside_tables_is_not_silently_recreated(tmp_path):
    (tmp_path / "000005.sst").write_bytes(b"table")
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path, create=True)
    assert "missing" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["000005.sst"]


def test_manifest_tmp_leftover_is_removed(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(add=[(1, 0, 100)])
    m.close()
    (tmp_path / "MANIFEST.tmp").write_bytes(b"half a rewrite")
    m = Manifest.open(tmp_path, create=False)
    assert m.tables == {1: (0, 100)}
    m.close()
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST"]


def test_manifest_tmp_leftover_without_manifest_is_removed_and_manifest_created(tmp_path):
    (tmp_path / "MANIFEST.tmp").write_bytes(b"a first creation that never got renamed")
    m = Manifest.open(tmp_path, create=True)
    m.close()
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST"]


def test_open_rewrites_the_log_as_one_snapshot(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    for n in range(1, 6):
        m.log_edit(add=[(n, 0, n * 10)], last_seq=n)
    m.log_edit(delete=[2, 4], flushed_seq=3)
    m.close()
    assert len(edits_in(mpath(tmp_path))) == 1 + 6
    m = Manifest.open(tmp_path, create=False)
    m.close()
    [snap] = edits_in(mpath(tmp_path))
    assert snap == {"next_file": m.next_file, "flushed_seq": 3, "last_seq": 5,
                    "add": [[1, 0, 10], [3, 0, 30], [5, 0, 50]]}


# -- the fold ---------------------------------------------------------------------------

def test_edits_fold_into_the_state(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    a, b, c = m.new_file_number(), m.new_file_number(), m.new_file_number()
    m.log_edit(add=[(a, 0, 111), (b, 0, 222)], flushed_seq=10, last_seq=12)
    m.log_edit(add=[(c, 1, 333)], delete=[a, b])
    m.log_edit(last_seq=20)
    assert state(m) == ({c: (1, 333)}, 4, 10, 20)
    m.close()


def test_reopen_gives_the_same_state(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    rnd = random.Random(7)
    live, seq = set(), 0
    for _ in range(200):
        dels = rnd.sample(sorted(live), min(len(live), rnd.randrange(3)))
        adds = [(m.new_file_number(), rnd.randrange(4), rnd.randrange(1 << 40))
                for _ in range(rnd.randrange(3))]
        seq += rnd.randrange(100)
        m.log_edit(add=adds, delete=dels, flushed_seq=seq // 2, last_seq=seq)
        live = (live - set(dels)) | {a[0] for a in adds}
    before = state(m)
    assert set(m.tables) == live
    m.close()
    m = Manifest.open(tmp_path, create=False)
    assert state(m) == before
    m.close()
    m = Manifest.open(tmp_path, create=False)
    assert state(m) == before
    m.close()


def test_new_file_number_is_persisted_by_the_next_edit(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    assert [m.new_file_number() for _ in range(3)] == [1, 2, 3]
    m.log_edit(last_seq=1)
    m.close()
    m = Manifest.open(tmp_path, create=False)
    assert m.new_file_number() == 4
    m.close()


def test_numbers_handed_out_after_the_last_edit_are_not_reused_while_their_files_exist(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(last_seq=1)
    wal = m.new_file_number()
    tmp_table = m.new_file_number()
    m.close()                                     # a crash: no edit names them
    (tmp_path / ("%06d.wal" % wal)).write_bytes(b"")
    (tmp_path / ("%06d.sst.tmp" % tmp_table)).write_bytes(b"")
    m = Manifest.open(tmp_path, create=False)
    assert m.new_file_number() == tmp_table + 1
    m.close()


def test_next_file_starts_above_every_file_in_the_directory(tmp_path):
    (tmp_path / "000050.wal").write_bytes(b"")
    m = Manifest.open(tmp_path, create=True)
    assert m.next_file == 51
    m.close()


def test_next_file_starts_above_every_live_table(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(add=[(900, 0, 1)])                # a number this manifest never handed out
    m.close()
    m = Manifest.open(tmp_path, create=False)
    assert m.next_file == 901
    m.close()


def test_new_file_number_is_unique_across_threads(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    got = []
    lock = threading.Lock()

    def take():
        mine = [m.new_file_number() for _ in range(500)]
        with lock:
            got.extend(mine)

    def edit():
        for i in range(20):
            m.log_edit(last_seq=i)
    threads = [threading.Thread(target=take) for _ in range(4)] + [threading.Thread(target=edit)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 2001))
    m.close()


def test_tables_dict_held_by_a_reader_is_not_mutated(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(add=[(1, 0, 10)])
    held = m.tables
    m.log_edit(add=[(2, 0, 20)], delete=[1])
    assert held == {1: (0, 10)}
    assert m.tables == {2: (0, 20)}
    m.close()


@pytest.mark.parametrize("kwargs", [
    dict(delete=[9]),                                # not live
    dict(add=[(1, 0, 10)]),                          # already live
    dict(add=[(5, 0, 1), (5, 0, 2)]),                # twice in one edit
    dict(add=[(1, 0, 1)], delete=[1]),               # added and deleted at once
    dict(flushed_seq=4),                             # goes back
    dict(last_seq=4),                                # goes back
    dict(last_seq=1 << 56),                          # seqs are 56-bit
    dict(add=[(7, 0)]),                              # not (number, level, size)
    dict(add=[(7, 0, -1)]),
    dict(delete=[True]),
])
def test_log_edit_refuses_an_edit_that_would_not_fold(tmp_path, kwargs):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(add=[(1, 0, 10)], flushed_seq=5, last_seq=5)
    size, before = m.size, state(m)
    with pytest.raises(ValueError):
        m.log_edit(**kwargs)
    assert (m.size, state(m)) == (size, before)
    assert os.path.getsize(mpath(tmp_path)) == size
    m.log_edit(last_seq=6)                            # still usable
    m.close()


# -- rewrite -------------------------------------------------------------------------------------

def test_manifest_is_rewritten_when_it_passes_one_mib(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    number = 1
    while True:
        adds = [(number + i, 0, 10 ** 12 + i) for i in range(500)]
        number += 500
        size_before = os.path.getsize(mpath(tmp_path))
        m.log_edit(add=adds, last_seq=number)
        if size_before + len(encode_edit({"add": [list(a) for a in adds]})) > manifest.REWRITE_BYTES:
            break
        assert m.size == os.path.getsize(mpath(tmp_path)) > size_before
    # The edit that crossed 1 MiB was appended, then the whole log became one snapshot.
    [snap] = edits_in(mpath(tmp_path))
    assert len(snap["add"]) == number - 1 == len(m.tables)
    assert m.size == os.path.getsize(mpath(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST"]
    m.log_edit(delete=list(range(1, 501)))             # appends go to the new file
    assert len(edits_in(mpath(tmp_path))) == 2
    expected = state(m)
    m.close()
    m = Manifest.open(tmp_path, create=False)
    assert state(m) == expected
    m.close()


def test_explicit_rewrite_keeps_the_state(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(add=[(1, 0, 10)], flushed_seq=3, last_seq=4)
    m.log_edit(add=[(2, 1, 20)])
    m.rewrite()
    assert len(edits_in(mpath(tmp_path))) == 1
    m.log_edit(delete=[1])
    m.close()
    m = Manifest.open(tmp_path, create=False)
    assert m.tables == {2: (1, 20)} and (m.flushed_seq, m.last_seq) == (3, 4)
    m.close()


# -- torn final edit ------------------------------------------------------------------------------

def _log_with_last_edit(dir):
    """A MANIFEST of snapshot + edit A + edit B; returns (bytes, B's offset, state after A)."""
    m = Manifest.open(dir, create=True)
    m.log_edit(add=[(1, 0, 10), (2, 0, 20)], flushed_seq=5, last_seq=7)
    after_a = state(m)
    b_off = m.size
    m.log_edit(add=[(3, 1, 30)], delete=[1], flushed_seq=8, last_seq=9)
    m.close()
    data = open(mpath(dir), "rb").read()
    assert len(data) > b_off + 30
    return data, b_off, after_a


def _check_dropped(dir, after_a, damaged_len, b_off):
    m = Manifest.open(dir, create=False)
    assert state(m)[:1] + state(m)[2:] == after_a[:1] + after_a[2:]
    assert (m.torn_offset, m.torn_bytes) == ((b_off, damaged_len - b_off) if damaged_len > b_off
                                             else (None, 0))
    m.close()
    assert len(edits_in(mpath(dir))) == 1          # the rewrite at open dropped the tail


def test_torn_last_edit_at_every_byte_offset_is_dropped(tmp_path):
    data, b_off, after_a = _log_with_last_edit(tmp_path)
    for cut in range(b_off, len(data)):
        open(mpath(tmp_path), "wb").write(data[:cut])
        _check_dropped(tmp_path, after_a, cut, b_off)


def test_last_edit_overwritten_with_zeros_is_dropped(tmp_path):
    data, b_off, after_a = _log_with_last_edit(tmp_path)
    for start in range(b_off, len(data)):
        open(mpath(tmp_path), "wb").write(data[:start] + bytes(len(data) - start))
        _check_dropped(tmp_path, after_a, len(data), b_off)


def test_last_edit_overwritten_with_random_garbage_is_dropped(tmp_path):
    data, b_off, after_a = _log_with_last_edit(tmp_path)
    rnd = random.Random(99)
    for start in range(b_off, len(data)):
        garbage = bytes(rnd.randrange(256) for _ in range(len(data) - start))
        open(mpath(tmp_path), "wb").write(data[:start] + garbage)
        _check_dropped(tmp_path, after_a, len(data), b_off)


# -- corruption ------------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [0, 4, 8, 12, -1])   # crc, length, "{", inside, last byte
def test_damaged_middle_edit_raises_corruption_naming_file_and_offset(tmp_path, delta):
    data, b_off, _ = _log_with_last_edit(tmp_path)
    snap_len = len(edits_in_bytes_first(data))
    a_off = MANIFEST_HEADER_SIZE + snap_len
    damaged = bytearray(data)
    damaged[(b_off if delta < 0 else a_off) + delta] ^= 0x04
    open(mpath(tmp_path), "wb").write(bytes(damaged))
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path, create=False)
    assert info.value.path == mpath(tmp_path) and info.value.offset == a_off
    assert f"valid edit follows at offset {b_off}" in str(info.value)
    assert open(mpath(tmp_path), "rb").read() == bytes(damaged)    # left as it was


def edits_in_bytes_first(data):
    """The first edit frame after the header."""
    length = struct.unpack_from("<I", data, MANIFEST_HEADER_SIZE + 4)[0]
    return data[MANIFEST_HEADER_SIZE:MANIFEST_HEADER_SIZE + 8 + length]


def _write_manifest(dir, *frames):
    open(mpath(dir), "wb").write(manifest.encode_header() + b"".join(frames))


def test_checksummed_edit_that_is_not_json_is_corruption_even_at_the_end(tmp_path):
    body = b"{not json"
    length = struct.pack("<I", len(body))
    _write_manifest(tmp_path, encode_edit({"next_file": 3}),
                    struct.pack("<I", crc32c(length + body)) + length + body)
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path, create=False)
    assert "not valid JSON" in str(info.value) and info.value.offset > MANIFEST_HEADER_SIZE


@pytest.mark.parametrize("body,why", [
    ({"next_file": 2, "comparator": "x"}, "unknown fields"),
    ({"del": [4]}, "not live"),
    ({"add": [[1, 0, 1]], "del": []}, None),          # fine by itself; the next adds it again
    ({"add": [[1, 0]]}, "field add"),
    ({"last_seq": -1}, "last_seq"),
    ({"flushed_seq": 1 << 56}, "flushed_seq"),
    ({"next_file": True}, "next_file"),
    ({"next_file": 1.5}, "next_file"),
])
def test_edit_that_does_not_fold_is_corruption(tmp_path, body, why):
    frames = [encode_edit({"next_file": 1}), encode_edit(body)]
    if why is None:
        frames.append(encode_edit({"add": [[1, 0, 1]]}))
        why = "already live"
    _write_manifest(tmp_path, *frames)
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path, create=False)
    assert why in str(info.value)


def test_bad_magic_is_corruption(tmp_path):
    open(mpath(tmp_path), "wb").write(b"FLOWWAL\x00" + bytes(8) + encode_edit({}))
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path, create=False)
    assert "magic" in str(info.value) and info.value.offset == 0


def test_unknown_version_is_corruption_naming_the_version(tmp_path):
    open(mpath(tmp_path), "wb").write(b"FLOWMAN\x00" + struct.pack("<II", 2, 0))
    with pytest.raises(CorruptionError) as info:
        Manifest.open(tmp_path, create=False)
    assert "version 2" in str(info.value) and info.value.offset == 8


@pytest.mark.parametrize("length", [0, 5, 15])
def test_manifest_shorter_than_its_header_is_corruption(tmp_path, length):
    open(mpath(tmp_path), "wb").write(manifest.encode_header()[:length])
    with pytest.raises(CorruptionError):
        Manifest.open(tmp_path, create=True)


def test_header_only_manifest_is_an_empty_state(tmp_path):
    _write_manifest(tmp_path)
    m = Manifest.open(tmp_path, create=False)
    assert state(m) == ({}, 1, 0, 0)
    m.close()


# -- failures and lifecycle ---------------------------------------------------------------------------

def test_fsync_failure_makes_the_manifest_unusable(tmp_path, monkeypatch):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(add=[(1, 0, 10)])

    def broken(fd):
        raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError) as info:
        m.log_edit(add=[(2, 0, 20)])
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert m.tables == {1: (0, 10)}                   # not applied
    for call in (lambda: m.log_edit(last_seq=1), m.rewrite):
        with pytest.raises(FlowError) as again:
            call()
        assert "unusable" in str(again.value)
    m.close()
    m = Manifest.open(tmp_path, create=False)         # reopening recovers
    assert 1 in m.tables
    m.close()


def test_failed_rewrite_keeps_the_old_manifest(tmp_path, monkeypatch):
    m = Manifest.open(tmp_path, create=True)
    m.log_edit(add=[(1, 0, 10)])
    before = open(mpath(tmp_path), "rb").read()

    def broken(a, b):
        raise OSError(errno.ENOSPC, "injected")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        m.rewrite()
    monkeypatch.undo()
    assert open(mpath(tmp_path), "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST"]
    with pytest.raises(FlowError):
        m.log_edit(last_seq=3)
    m.close()


def test_close_is_idempotent_and_use_after_close_raises(tmp_path):
    m = Manifest.open(tmp_path, create=True)
    m.close()
    m.close()
    with pytest.raises(FlowError):
        m.log_edit(last_seq=1)


def test_forward_scan_matches_brute_force_on_damaged_logs():
    rnd = random.Random(77)
    for trial in range(150):
        log = b"".join(encode_edit({"add": [[i, 0, rnd.randrange(1000)]], "last_seq": i})
                       for i in range(rnd.randrange(1, 6)))
        data = bytearray(log)
        for _ in range(rnd.randrange(1, 4)):
            pos = rnd.randrange(len(data))
            if rnd.randrange(2):
                data[pos] ^= 1 << rnd.randrange(8)
            else:
                data[pos:pos] = rnd.randbytes(rnd.randrange(1, 20))
        data = bytes(data)
        view = memoryview(data)
        for start in range(0, len(data), 5):
            brute = next((o for o in range(start, len(data))
                          if manifest._edit_problem(data, view, o) is None), None)
            assert manifest._next_valid_edit(data, view, start) == brute, (trial, start)
