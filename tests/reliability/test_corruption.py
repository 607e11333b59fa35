"""Damaged files: a torn WAL tail loses at most its last batch, whole; any
other damage is CorruptionError, never wrong data (API.md section 3,
docs/FORMAT.md "WAL" and "Manifest").

WAL-only stores are made by copying the directory of an open engine: with
SyncMode.ALWAYS every acknowledged batch is on disk, and nothing was flushed
(shutdown would flush the memtable into an SSTable).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from flowdb import CorruptionError, Engine, FlowError, Record, StorageBackendKind, SyncMode
from helpers.common import (FULL, HELPERS_DIR, WAL_RECORD_HEADER,
                            child_env, dump, flip_byte, manifest_edits, sst_files, wal_files,
                            wal_records)

OPEN = dict(auto_background=False, wal_sync_mode=SyncMode.ALWAYS,
            storage_backend=StorageBackendKind.MULTI_FILE)


def batch(j):
    """Batch j: 2..4 records under keys b"b{j}:{i}", values naming j and i."""
    return [Record(b"b%03d:%d" % (j, i), j * 10 + i, b"value-%d-%d-" % (j, i) * (1 + j % 3))
            for i in range(2 + j % 3)]


def batch_ids(records):
    """{batch j: number of its records present}, checking every record is intact."""
    out = {}
    for key, ts, value, exp in records:
        j, i = (int(x) for x in key[1:].split(b":"))
        assert (key, ts, value, exp) in {(r.key, r.ts, r.value, r.expire_at) for r in batch(j)}, (
            f"record {key!r} is not what was written")
        out[j] = out.get(j, 0) + 1
    return out


def assert_prefix_of_batches(records, n_batches, last_may_be_missing=True):
    """Batches 0..n-2 complete; batch n-1 complete or absent; nothing partial."""
    got = batch_ids(records)
    for j in range(n_batches - 1):
        assert got.get(j) == len(batch(j)), f"batch {j}: {got.get(j, 0)} of {len(batch(j))} records"
    last = n_batches - 1
    if last_may_be_missing:
        assert got.get(last, 0) in (0, len(batch(last))), (
            f"last batch is partial: {got.get(last)} of {len(batch(last))}")
    else:
        assert got.get(last) == len(batch(last))
    assert set(got) <= set(range(n_batches))
    return got


def open_dump(path, **kw):
    with Engine.open(str(path), **{**OPEN, **kw}) as e:
        return dump(e)


@pytest.fixture
def wal_store(tmp_path):
    """A store with N batches in the WAL only; returns (pristine dir, N)."""
    n = 12
    live = tmp_path / "live"
    e = Engine.open(str(live), memtable_size_mb=64, **OPEN)
    try:
        for j in range(n):
            e.write_batch(batch(j))
        pristine = tmp_path / "pristine"
        shutil.copytree(live, pristine)
    finally:
        e.shutdown()
    assert not list(pristine.glob("*.sst")), "nothing should be flushed yet"
    assert wal_files(pristine), "no WAL segment in the store"
    return pristine, n


def fresh_copy(pristine, tmp_path, name="work"):
    work = tmp_path / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    return work


def last_record(wal):
    recs = wal_records(wal)
    assert recs, f"no valid record in {wal}"
    return recs[-1]


# ------------------------------------------------------------ WAL: the copy itself

def test_copy_of_open_store_recovers_every_batch(wal_store, tmp_path):
    pristine, n = wal_store
    got = assert_prefix_of_batches(open_dump(fresh_copy(pristine, tmp_path)), n,
                                   last_may_be_missing=False)
    assert len(got) == n


def test_wal_records_match_format(wal_store):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    data = wal.read_bytes()
    assert data[:8] == b"FLOWWAL\x00"
    assert struct.unpack_from("<II", data, 8) == (2, 0)
    recs = wal_records(wal)
    assert len(recs) == n
    assert recs[-1][0] + recs[-1][1] == len(data), "garbage after the last record"
    seqs = [struct.unpack_from("<Q", data, off + 8)[0] for off, _ in recs]
    synced = [struct.unpack_from("<Q", data, off + 16)[0] for off, _ in recs]
    counts = [struct.unpack_from("<I", data, off + WAL_RECORD_HEADER)[0] for off, _ in recs]
    assert counts == [len(batch(j)) for j in range(n)]
    assert seqs[0] >= 1
    assert all(seqs[i + 1] == seqs[i] + counts[i] for i in range(n - 1))
    # ALWAYS: each batch was fsynced before the next was written
    assert synced == [16] + [off for off, _ in recs[1:]]


# ------------------------------------------------------------ WAL: torn tail

def test_wal_truncated_at_every_offset_of_last_record(wal_store, tmp_path):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    start, size = last_record(wal)
    outcomes = {}
    for cut in range(start, start + size + 1):
        work = fresh_copy(pristine, tmp_path)
        os.truncate(work / wal.name, cut)
        got = assert_prefix_of_batches(open_dump(work), n)
        outcomes[cut] = got.get(n - 1, 0)
    assert outcomes[start + size] == len(batch(n - 1)), "the intact record must be replayed"
    assert all(outcomes[c] == 0 for c in range(start, start + size)), (
        "a cut record cannot be complete")


def test_wal_truncated_inside_header(wal_store, tmp_path):
    """A newest segment shorter than its header is a torn creation: deleted."""
    pristine, n = wal_store
    work = fresh_copy(pristine, tmp_path)
    numbers = [int(p.stem) for p in list(work.glob("*.wal")) + list(work.glob("*.sst"))]
    torn = work / ("%06d.wal" % (max(numbers) + 1))
    torn.write_bytes(b"FLOWWAL\x00"[:5])
    assert_prefix_of_batches(open_dump(work), n, last_may_be_missing=False)


@pytest.mark.parametrize("fill", ["zeros", "garbage", "ones"])
def test_wal_last_record_overwritten(wal_store, tmp_path, fill):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    start, size = last_record(wal)
    rng = random.Random(7)
    for from_off in range(start, start + size, max(1, size // 16)):
        work = fresh_copy(pristine, tmp_path)
        path = work / wal.name
        data = bytearray(path.read_bytes())
        k = start + size - from_off
        data[from_off:start + size] = {"zeros": bytes(k), "ones": b"\xff" * k,
                                       "garbage": rng.randbytes(k)}[fill]
        path.write_bytes(bytes(data))
        got = assert_prefix_of_batches(open_dump(work), n)
        assert got.get(n - 1, 0) == 0


def test_wal_last_record_byte_flip_at_every_offset(wal_store, tmp_path):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    start, size = last_record(wal)
    for off in range(start, start + size):
        work = fresh_copy(pristine, tmp_path)
        flip_byte(work / wal.name, off, 0x01 if off % 2 else 0x80)
        got = assert_prefix_of_batches(open_dump(work), n)
        assert got.get(n - 1, 0) == 0, f"flipped byte at {off}: damaged batch replayed"


def test_wal_garbage_appended_after_last_record(wal_store, tmp_path):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    for tail in (b"\x00" * 5, b"\x00" * 40, os.urandom(100)):
        work = fresh_copy(pristine, tmp_path)
        with open(work / wal.name, "ab") as f:
            f.write(tail)
        assert_prefix_of_batches(open_dump(work), n, last_may_be_missing=False)


def test_writes_after_torn_tail_survive_next_crash(wal_store, tmp_path):
    """Recovery cuts the torn tail, so that new records are not appended after
    garbage (where the next recovery would stop or call it corruption)."""
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    start, size = last_record(wal)
    for cut in (start + 3, start + size // 2, start + size - 1):
        work = fresh_copy(pristine, tmp_path)
        os.truncate(work / wal.name, cut)
        e = Engine.open(str(work), memtable_size_mb=64, **OPEN)
        try:
            e.write_batch(batch(n + 1))
            e.write_batch(batch(n + 2))
            crashed = fresh_copy(work, tmp_path, "crashed")  # copy while open: a crash
        finally:
            e.shutdown()
        got = batch_ids(open_dump(crashed))
        for j in range(n - 1):
            assert got.get(j) == len(batch(j))
        assert got.get(n - 1, 0) == 0
        assert got.get(n + 1) == len(batch(n + 1)) and got.get(n + 2) == len(batch(n + 2)), (
            f"cut at {cut}: batches written after recovery were lost: {got}")


# ------------------------------------------------------------ WAL: corruption

@pytest.mark.parametrize("where", ["payload", "crc", "length", "seq"])
def test_wal_middle_record_corruption_raises(wal_store, tmp_path, where):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    recs = wal_records(wal)
    for idx in (0, len(recs) // 2, len(recs) - 2):
        off, size = recs[idx]
        target = {"crc": off, "length": off + 4, "seq": off + 8,
                  "payload": off + WAL_RECORD_HEADER + (size - WAL_RECORD_HEADER) // 2}[where]
        work = fresh_copy(pristine, tmp_path)
        flip_byte(work / wal.name, target, 0x01 if where != "length" else 0x10)
        with pytest.raises(CorruptionError) as info:
            open_dump(work)
        assert info.value.path is not None and info.value.path.endswith(wal.name), str(info.value)
        assert info.value.offset == off, f"flip in record at {off}: {info.value}"
        assert wal.name in str(info.value) and f"offset {off}" in str(info.value)


def test_wal_middle_corruption_names_segment(wal_store, tmp_path):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    off, size = wal_records(wal)[1]
    work = fresh_copy(pristine, tmp_path)
    flip_byte(work / wal.name, off + size - 1)
    with pytest.raises(CorruptionError) as info:
        open_dump(work)
    assert wal.name in str(info.value) or wal.stem in str(info.value), str(info.value)


def test_wal_middle_zeroed_raises(wal_store, tmp_path):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    off, size = wal_records(wal)[3]
    work = fresh_copy(pristine, tmp_path)
    data = bytearray((work / wal.name).read_bytes())
    data[off:off + size] = bytes(size)
    (work / wal.name).write_bytes(bytes(data))
    with pytest.raises(CorruptionError):
        open_dump(work)


@pytest.mark.parametrize("offset", [0, 4, 7, 8, 12])
def test_wal_bad_header_raises(wal_store, tmp_path, offset):
    pristine, n = wal_store
    [wal] = wal_files(pristine)
    work = fresh_copy(pristine, tmp_path)
    flip_byte(work / wal.name, offset, 0x01)
    with pytest.raises(CorruptionError):
        open_dump(work)


def test_wal_torn_tail_in_older_segment_is_corruption(tmp_path):
    """Only the newest segment can have a torn tail."""
    live = tmp_path / "live"
    e = Engine.open(str(live), memtable_size_mb=64, wal_segment_size_mb=0.001, **OPEN)
    try:
        for j in range(40):
            e.write_batch(batch(j))
        pristine = tmp_path / "pristine"
        shutil.copytree(live, pristine)
    finally:
        e.shutdown()
    wals = wal_files(pristine)
    assert len(wals) >= 3, "expected several WAL segments"
    assert_prefix_of_batches(open_dump(fresh_copy(pristine, tmp_path)), 40,
                             last_may_be_missing=False)
    older = wals[len(wals) // 2]
    start, size = last_record(older)
    work = fresh_copy(pristine, tmp_path)
    os.truncate(work / older.name, start + size // 2)
    with pytest.raises(CorruptionError):
        open_dump(work)
    # The newest segment's tail is a torn tail, as usual.
    newest = wals[-1]
    start, size = last_record(newest)
    work = fresh_copy(pristine, tmp_path)
    os.truncate(work / newest.name, start + size // 2)
    assert_prefix_of_batches(open_dump(work), 40)


# ------------------------------------------------------------ MANIFEST

@pytest.fixture
def flushed_store(tmp_path):
    """A store whose data is in SSTables, with several manifest edits; returns
    (pristine dir, expected dump)."""
    live = tmp_path / "live"
    e = Engine.open(str(live), memtable_size_mb=64, block_size=512, **OPEN)
    try:
        rng = random.Random(99)
        for j in range(4):
            e.write_batch([Record(b"s%02d:%03d" % (j, i), i - 20,
                                  rng.randbytes(i % 50) + bytes([j]) * (i % 7))
                           for i in range(120)])
            e.delete_batch([(b"s%02d:%03d" % (j, i), i - 20) for i in range(0, 120, 17)])
            e.delete_range(b"s%02d:050" % j, b"s%02d:053" % j)
            e.flush()
        expected = dump(e)
    finally:
        e.shutdown()
    pristine = tmp_path / "pristine"
    shutil.copytree(live, pristine)
    assert sst_files(pristine)
    assert open_dump(fresh_copy(pristine, tmp_path)) == expected
    return pristine, expected


def test_manifest_middle_corruption_raises(tmp_path):
    live = tmp_path / "live"
    e = Engine.open(str(live), memtable_size_mb=64, **OPEN)
    try:
        for j in range(4):
            e.write_batch(batch(j))
            e.flush()
        pristine = tmp_path / "pristine"
        shutil.copytree(live, pristine)  # while open: the appended edits are still there
    finally:
        e.shutdown()
    edits = manifest_edits(pristine / "MANIFEST")
    assert len(edits) >= 2, "expected several manifest edits"
    for idx in range(len(edits) - 1):
        off, size = edits[idx]
        for target in (off, off + 5, off + 8 + (size - 8) // 2):
            work = fresh_copy(pristine, tmp_path)
            flip_byte(work / "MANIFEST", target, 0x02)
            with pytest.raises(CorruptionError) as info:
                open_dump(work)
            assert str(info.value.path).endswith("MANIFEST"), str(info.value)
            assert info.value.offset == off, f"flip in edit at {off}: {info.value}"
            assert "MANIFEST" in str(info.value) and f"offset {off}" in str(info.value)


@pytest.mark.parametrize("offset", [0, 3, 8, 12])
def test_manifest_bad_header_raises(flushed_store, tmp_path, offset):
    pristine, _ = flushed_store
    work = fresh_copy(pristine, tmp_path)
    flip_byte(work / "MANIFEST", offset, 0x01)
    with pytest.raises(CorruptionError):
        open_dump(work)


def test_manifest_torn_final_edit_is_dropped(tmp_path):
    """An edit cut short at the end (a crash while appending) is dropped."""
    live = tmp_path / "live"
    e = Engine.open(str(live), memtable_size_mb=64, **OPEN)
    try:
        for j in range(3):
            e.write_batch(batch(j))
            e.flush()
        e.write_batch(batch(3))
        pristine = tmp_path / "pristine"
        shutil.copytree(live, pristine)
    finally:
        e.shutdown()
    data = (pristine / "MANIFEST").read_bytes()
    for extra in (b"\x01\x02\x03", b"\x00" * 8 + b"{", os.urandom(30)):
        work = fresh_copy(pristine, tmp_path)
        (work / "MANIFEST").write_bytes(data + extra)
        assert_prefix_of_batches(open_dump(work), 4, last_may_be_missing=False)


# ------------------------------------------------------------ malformed SSTables at open

def _open_and_read(path):
    with Engine.open(str(path), **OPEN) as e:
        return dump(e)


@pytest.mark.parametrize("damage", ["zero_length", "half", "last_8", "first_8", "last_byte"])
def test_malformed_sstable_raises_corruption(flushed_store, tmp_path, damage):
    pristine, expected = flushed_store
    work = fresh_copy(pristine, tmp_path)
    sst = sst_files(work)[0]
    data = sst.read_bytes()
    if damage == "zero_length":
        sst.write_bytes(b"")
    elif damage == "half":
        sst.write_bytes(data[:len(data) // 2])
    elif damage == "last_8":
        sst.write_bytes(data[:-8] + bytes(b ^ 0x5A for b in data[-8:]))
    elif damage == "first_8":
        sst.write_bytes(bytes(b ^ 0x5A for b in data[:8]) + data[8:])
    elif damage == "last_byte":
        sst.write_bytes(data[:-1])
    with pytest.raises(CorruptionError):
        _open_and_read(work)


def test_missing_listed_sstable_raises(flushed_store, tmp_path):
    pristine, expected = flushed_store
    work = fresh_copy(pristine, tmp_path)
    sst_files(work)[0].unlink()
    with pytest.raises(FlowError):
        _open_and_read(work)


def test_unlisted_files_are_removed_at_open(flushed_store, tmp_path):
    pristine, expected = flushed_store
    work = fresh_copy(pristine, tmp_path)
    stray = work / "999999.sst"
    stray.write_bytes(os.urandom(300))
    (work / "MANIFEST.tmp").write_bytes(b"FLOWMAN\x00junk")
    (work / "000123.sst.tmp").write_bytes(b"junk")
    assert open_dump(work) == expected
    assert not stray.exists()
    assert not (work / "MANIFEST.tmp").exists()
    assert not (work / "000123.sst.tmp").exists()


# ------------------------------------------------------------ SSTable byte flips

FOOTER_SIZE = 4 * 16 + 4 + 4 + 8        # docs/FORMAT.md "SSTable"
TRAILER = 1 + 4


def sst_sections(path):
    """{section: range of offsets} of an SSTable, from its footer:
    data, range_del, bloom, props, index (each block with its trailer), footer."""
    data = Path(path).read_bytes()
    size = len(data)
    handles = struct.unpack_from("<8Q", data, size - FOOTER_SIZE)
    index, bloom, props, rdel = (handles[i:i + 2] for i in range(0, 8, 2))
    out = {"data": range(0, rdel[0])}
    for name, (off, n) in (("range_del", rdel), ("bloom", bloom), ("props", props),
                           ("index", index)):
        out[name] = range(off, off + n + TRAILER)
    out["footer"] = range(size - FOOTER_SIZE, size)
    assert sum(len(r) for r in out.values()) == size, f"sections do not tile {path}: {out}"
    return out


def _flip_offsets(path, budget, rng):
    """Offsets to flip: all of them in the full tier or a small table, else
    a sample of `budget` that covers every section of the table (the first
    and last bytes of each, and random ones inside)."""
    size = Path(path).stat().st_size
    if FULL or size <= budget:
        return list(range(size))
    sections = sst_sections(path)
    per = max(8, budget // len(sections))
    chosen = set()
    for r in sections.values():
        if len(r) <= per:
            chosen.update(r)
        else:
            chosen.update(r[:per // 4])
            chosen.update(r[-(per // 4):])
            chosen.update(rng.sample(r, per - 2 * (per // 4)))
    return sorted(chosen)


def run_flip_reader(pristine, work, expected, name, mask, offsets, tmp_path, compact=False):
    """Runs helpers/corrupt_reader.py over offsets; restarts it after a crash.
    Returns {offset: (outcome, detail)}."""
    exp_path = tmp_path / "expected.json"
    exp_path.write_text(json.dumps([(k.hex(), ts, v.hex(), e) for k, ts, v, e in expected]))
    results = {}
    todo = list(offsets)
    while todo:
        proc = subprocess.run(
            [sys.executable, str(HELPERS_DIR / "corrupt_reader.py"), str(pristine), str(work),
             str(exp_path), name, str(mask), *map(str, todo)],
            env={**child_env(), "FLOWDB_CORRUPT_COMPACT": "1" if compact else "0"},
            capture_output=True, text=True, timeout=3600)
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("start "):
                started = int(line.split()[1])
            elif line.startswith("{"):
                r = json.loads(line)
                results[r["offset"]] = (r["outcome"], r["detail"])
                started = None
        if proc.returncode != 0:
            if started is None:
                pytest.fail(f"corrupt_reader failed outside a check:\n{proc.stderr[-3000:]}")
            results[started] = ("crash", f"exit {proc.returncode}: {proc.stderr[-1500:]}")
        todo = [o for o in todo if o not in results]
    return results


@pytest.mark.parametrize("mask", [0xFF, 0x01])
def test_sstable_byte_flips_never_give_wrong_data(flushed_store, tmp_path, mask):
    pristine, expected = flushed_store
    rng = random.Random(mask)
    failures = []
    FLIP_FIGURES.update(injected=0, detected=0)
    for sst in sst_files(pristine)[:2]:
        size = sst.stat().st_size
        offsets = _flip_offsets(sst, 180, rng)
        results = run_flip_reader(pristine, tmp_path / "work", expected, sst.name, mask,
                                  offsets, tmp_path)
        FLIP_FIGURES["injected"] += len(results)
        FLIP_FIGURES["detected"] += sum(1 for r in results.values() if r[0] == "corruption")
        bad = {o: r for o, r in results.items() if r[0] not in ("ok", "corruption")}
        failures += [f"{sst.name}@{o} ({size} bytes): {r[0]}: {r[1][:300]}" for o, r in sorted(bad.items())]
        detected = sum(1 for r in results.values() if r[0] == "corruption")
        assert detected > 0 or failures, f"no flip in {sst.name} was ever detected"
    print(f"\nFIGURES sstable flips mask={mask:#x}: injected={FLIP_FIGURES['injected']} "
          f"detected={FLIP_FIGURES['detected']} wrong_or_crash={len(failures)}")
    assert not failures, f"{len(failures)} flips gave wrong data or crashed:\n" + "\n".join(failures[:20])


@pytest.mark.slow
def test_sstable_every_byte_flip_large_table(tmp_path):
    """A bigger table (several blocks, compression) flipped at every offset."""
    live = tmp_path / "live"
    rng = random.Random(5)
    with Engine.open(str(live), memtable_size_mb=64, block_size=1024, **OPEN) as e:
        e.write_batch([Record(b"k%05d" % i, rng.randrange(-10**9, 10**9),
                              rng.randbytes(rng.randrange(0, 60)) + b"x" * rng.randrange(0, 200))
                       for i in range(400)])
        e.flush()
        expected = dump(e)
    pristine = tmp_path / "pristine"
    shutil.copytree(live, pristine)
    [sst] = sst_files(pristine)
    results = run_flip_reader(pristine, tmp_path / "work", expected, sst.name, 0xFF,
                              range(sst.stat().st_size), tmp_path)
    bad = {o: r for o, r in results.items() if r[0] not in ("ok", "corruption")}
    print(f"\nFIGURES large sstable every-byte flips: injected={len(results)} "
          f"detected={sum(1 for r in results.values() if r[0] == 'corruption')} wrong_or_crash={len(bad)}")
    assert not bad, "\n".join(f"@{o}: {r[0]}: {r[1][:300]}" for o, r in sorted(bad.items())[:20])


FLIP_FIGURES = {"injected": 0, "detected": 0}


def test_sstable_sections_tile_the_file(flushed_store):
    pristine, _ = flushed_store
    for sst in sst_files(pristine):
        sections = sst_sections(sst)
        assert all(len(r) > 0 for r in sections.values()), sections


@pytest.mark.parametrize("mask", [0xFF, 0x04])
def test_compaction_never_writes_corrupt_output(flushed_store, tmp_path, mask):
    """Damage one input table, compact: the compaction raises CorruptionError
    (and changes nothing) or its output holds exactly the right data."""
    pristine, expected = flushed_store
    rng = random.Random(100 + mask)
    sst = sst_files(pristine)[1]
    offsets = _flip_offsets(sst, 120, rng)
    results = run_flip_reader(pristine, tmp_path / "work", expected, sst.name, mask,
                              offsets, tmp_path, compact=True)
    bad = {o: r for o, r in results.items() if r[0] not in ("ok", "corruption")}
    print(f"\nFIGURES compaction over flipped table mask={mask:#x}: injected={len(results)} "
          f"detected={sum(1 for r in results.values() if r[0] == 'corruption')} wrong_or_crash={len(bad)}")
    assert not bad, "\n".join(f"@{o}: {r[0]}: {r[1][:300]}" for o, r in sorted(bad.items())[:20])
    assert any(r[0] == "corruption" for r in results.values())
