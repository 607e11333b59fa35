"""StorageBackendKind.SINGLE_FILE (flowdb._single_file, docs/FORMAT.md
"Single-file store").

The whole engine suite also runs against this backend
(FLOWDB_STORAGE_BACKEND=single_file, as scripts/test.sh does); these tests
hold what is particular to it: the one file at rest, a copy of it opening
elsewhere, free space reused, snapshots that outlive a compaction, a torn
or damaged slot, snapshot or table, and the refusal of the other backend's
directory.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys

import pytest

from flowdb import CorruptionError, Engine, Record, ScanRange, StorageBackendKind, SyncMode
from flowdb._single_file import DATA_START, SLOT_SIZE, decode_slot
from helpers.common import child_env

SINGLE = dict(storage_backend=StorageBackendKind.SINGLE_FILE, auto_background=False,
              wal_sync_mode=SyncMode.ALWAYS, memtable_size_mb=0.25)


def open_single(path, **kw):
    return Engine.open(str(path), **{**SINGLE, **kw})


def dump(e):
    return {(r.key, r.ts): r.value for r in e.query_by_prefix(b"")}


def slots(path):
    with open(path / "flowdb.db", "rb") as f:
        head = f.read(DATA_START)
    return [decode_slot(head[i * SLOT_SIZE:(i + 1) * SLOT_SIZE]) for i in (0, 1)]


def test_at_rest_the_store_is_one_file_and_a_copy_opens_elsewhere(tmp_path):
    db = tmp_path / "db"
    with open_single(db) as e:
        e.write_batch([Record(b"k%04d" % i, i, b"v%d" % i * 20) for i in range(5000)])
        e.flush()
        e.write_batch([Record(b"late", 1, b"in the WAL only")])
        assert any(n.endswith(".wal") for n in os.listdir(db))   # beside it while open
        expected = dump(e)
    assert os.listdir(db) == ["flowdb.db"]
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(db / "flowdb.db", copy / "flowdb.db")
    with open_single(copy) as e:
        assert dump(e) == expected
        assert e.get(b"late", 1).value == b"in the WAL only"


def test_random_operations_match_a_dict_across_flush_compaction_and_reopen(tmp_path):
    db = tmp_path / "db"
    rng = random.Random(7)
    model = {}
    e = open_single(db)
    try:
        for step in range(60):
            batch = []
            for _ in range(rng.randint(1, 400)):
                key, ts = b"s%03d" % rng.randrange(200), rng.randrange(50)
                value = os.urandom(rng.randint(0, 300))
                batch.append(Record(key, ts, value))
                model[(key, ts)] = value
            e.write_batch(batch)
            if rng.random() < 0.3:
                dead = rng.sample(sorted(model), min(len(model), rng.randint(1, 30)))
                e.delete_batch(dead)
                for k in dead:
                    del model[k]
            action = rng.random()
            if action < 0.2:
                e.flush()
            elif action < 0.35:
                e.trigger_compaction()
            elif action < 0.45:
                e.shutdown()
                e = open_single(db)
            assert dump(e) == model, f"step {step}"
        e.flush()
        e.trigger_compaction()
        assert dump(e) == model
    finally:
        e.shutdown()
    with open_single(db) as e:
        assert dump(e) == model


def test_free_space_is_reused_so_the_file_stays_near_its_live_tables(tmp_path):
    db = tmp_path / "db"
    with open_single(db) as e:
        for round_ in range(12):
            e.write_batch([Record(b"k%04d" % i, 0, b"%d-%d" % (round_, i) * 30) for i in range(3000)])
            e.flush()
            assert e.trigger_compaction() or round_ == 0
            live = sum(t.file_size for t in e._view.tables)
            size = os.path.getsize(db / "flowdb.db")
            # A compaction needs its inputs (the old table and the flushed
            # one) and its output at once, and first fit leaves gaps: the
            # file stays within a few times its live bytes, round after round.
            assert size <= DATA_START + 5 * live + 64 * 1024, (round_, size, live)
        written = e._table_bytes_written
        assert os.path.getsize(db / "flowdb.db") < written / 4
        assert e.get(b"k0042", 0).value == b"11-42" * 30


def test_a_snapshot_reads_on_after_compaction_reuses_space(tmp_path):
    db = tmp_path / "db"
    with open_single(db) as e:
        for part in range(3):
            e.write_batch([Record(b"k%04d" % i, part, b"old" * 40) for i in range(2000)])
            e.flush()
        it = e.scan(ScanRange.all())
        first = next(it)
        e.trigger_compaction()
        for part in range(3, 9):                      # new tables want free space
            e.write_batch([Record(b"k%04d" % i, part, b"new" * 40) for i in range(2000)])
            e.flush()
            e.trigger_compaction()
        rest = list(it)
        assert first.ts == 0 and len(rest) == 3 * 2000 - 1
        assert all(r.value == b"old" * 40 and r.ts < 3 for r in rest)
        del it, rest
        assert len(e.query_by_prefix(b"")) == 9 * 2000


def test_the_other_backend_is_refused_both_ways(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    open_single(single).shutdown()
    Engine.open(str(multi), auto_background=False).shutdown()
    with pytest.raises(ValueError, match="storage_backend.*SINGLE_FILE"):
        Engine.open(str(single), auto_background=False)
    with pytest.raises(ValueError, match="storage_backend.*MULTI_FILE"):
        open_single(multi)
    assert os.listdir(single) == ["flowdb.db"]
    assert "flowdb.db" not in os.listdir(multi)


def test_every_edit_writes_the_other_slot_with_the_next_generation(tmp_path):
    db = tmp_path / "db"
    with open_single(db) as e:
        before = slots(db)
        e.write_batch([Record(b"a", 1, b"x")])
        e.flush()
        after = slots(db)
    gens_before = sorted(s[0] for s in before if s)
    gens_after = sorted(s[0] for s in after if s)
    assert gens_after[-1] > gens_before[-1]
    assert all(s is not None for s in after)
    assert abs(after[0][0] - after[1][0]) == 1        # the two newest generations


def _damage(path, offset, length=1):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(length))
        for i in range(len(data)):
            data[i] ^= 0x5A
        f.seek(offset)
        f.write(data)


def test_a_damaged_current_snapshot_is_reported_not_guessed(tmp_path):
    db = tmp_path / "db"
    with open_single(db) as e:
        e.write_batch([Record(b"a", 1, b"x")])
    current = max((s for s in slots(db) if s), key=lambda s: s[0])
    _damage(db / "flowdb.db", current[1] + current[2] // 2)
    with pytest.raises(CorruptionError, match="snapshot"):
        open_single(db)


def test_a_damaged_table_byte_is_a_corruption_error_never_data(tmp_path):
    db = tmp_path / "db"
    with open_single(db, block_size=1024) as e:
        e.write_batch([Record(b"k%04d" % i, 0, b"v" * 100) for i in range(3000)])
        e.flush()
        table = e._view.tables[0]
        base, size = table.base, table.file_size
    _damage(db / "flowdb.db", base + size // 3)
    with open_single(db) as e:
        with pytest.raises(CorruptionError) as exc:
            e.query_by_prefix(b"")
    # The offset is in the file, at the damaged block (not in the table).
    assert exc.value.path.endswith("flowdb.db")
    assert base + size // 3 - 2048 <= exc.value.offset <= base + size // 3


def test_both_slots_bad_is_a_corruption_error(tmp_path):
    db = tmp_path / "db"
    with open_single(db) as e:
        e.write_batch([Record(b"a", 1, b"x")])
    _damage(db / "flowdb.db", 20)
    _damage(db / "flowdb.db", SLOT_SIZE + 20)
    with pytest.raises(CorruptionError, match="slot"):
        open_single(db)


_TEAR_CHILD = r"""
import os, sys
from flowdb import Engine, Record, StorageBackendKind, SyncMode
import flowdb._single_file as sf

db, tear_at = sys.argv[1], int(sys.argv[2])
e = Engine.open(db, storage_backend=StorageBackendKind.SINGLE_FILE, auto_background=False,
                wal_sync_mode=SyncMode.ALWAYS, memtable_size_mb=0.25)
real, writes = sf._pwrite_all, [0]

def tearing(fd, data, offset):
    # Slot writes are the ones at offsets below DATA_START: the tear_at-th
    # one is cut after 20 bytes and the process dies, as in a crash mid-write.
    if offset < sf.DATA_START:
        writes[0] += 1
        if writes[0] == tear_at:
            os.pwrite(fd, bytes(data)[:20], offset)
            os._exit(9)
    real(fd, data, offset)

sf._pwrite_all = tearing
for n in range(1000):
    e.write_batch([Record(b"k%05d" % (n * 50 + i), n, b"v" * 60) for i in range(50)])
    print(n, flush=True)
    if n % 7 == 6:
        e.flush()
    if n % 20 == 19:
        e.trigger_compaction()
"""


@pytest.mark.parametrize("tear_at", [1, 2, 3, 5, 8])
def test_a_torn_slot_write_falls_back_and_loses_no_acknowledged_batch(tmp_path, tear_at):
    db = tmp_path / "db"
    proc = subprocess.run([sys.executable, "-c", _TEAR_CHILD, str(db), str(tear_at)],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    acked = [int(x) for x in proc.stdout.split()]
    assert acked, "no batch was acknowledged before the tear"
    s = slots(db)
    assert None in s                                  # the torn slot
    with open_single(db) as e:
        for n in acked:
            assert e.get(b"k%05d" % (n * 50 + 49), n) is not None, n
        assert len(e.query_by_prefix(b"")) in (50 * len(acked), 50 * (len(acked) + 1))


def test_kill9_during_flush_and_compaction_loses_nothing(tmp_path, monkeypatch):
    """The writer child of tests/reliability, killed with SIGKILL at random
    moments, on a single-file store."""
    from helpers.crash_check import Child, check_store
    import time

    monkeypatch.setenv("FLOWDB_STORAGE_BACKEND", "single_file")
    rng = random.Random(11)
    data_dir = tmp_path / "db"
    history = {}
    acked = 0
    for gen in range(1, 5):
        child = Child(data_dir, gen, 2, "always")
        assert child.ready.wait(timeout=60), "writer child did not start"
        time.sleep(rng.uniform(0.2, 0.8))
        kill_time, err = child.kill()
        assert child.proc.returncode == -signal.SIGKILL, err
        batches = check_store(data_dir, history, gen, child.acks, 2, kill_time, "always")
        acked += len(child.acks)
        assert all((g, t, n) in batches for _, g, t, n, _c in child.acks)
    assert acked > 0
    assert "flowdb.db" in os.listdir(data_dir)


def test_shutdown_moves_tables_forward_so_the_file_at_rest_holds_little_free_space(tmp_path):
    db = tmp_path / "db"
    e = open_single(db, memtable_size_mb=0.5)
    for part in range(6):
        e.write_batch([Record(b"k%05d" % i, part, os.urandom(40) * 2) for i in range(4000)])
    e.flush()
    e.trigger_compaction()          # the output lands after its inputs
    expected = dump(e)
    live = sum(t.file_size for t in e._view.tables)
    assert os.path.getsize(db / "flowdb.db") > 1.5 * live
    e.shutdown()
    size = os.path.getsize(db / "flowdb.db")
    assert size <= DATA_START + 1.1 * live + 64 * 1024, (size, live)   # alignment, the snapshot
    with open_single(db) as e:
        assert dump(e) == expected
