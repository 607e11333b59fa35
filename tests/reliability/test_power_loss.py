"""Power loss (issue 5, item 3): a child writes under the FaultFS layer
(faultfs.py) and cuts the power at a random moment; everything not made
durable by an fsync -- file data and directory entries -- is dropped.

SyncMode.ALWAYS: every acknowledged batch survives, including those in WAL
segments and tables created just before the cut (their directory entries).
Interval sync with an interval longer than the run: acknowledged batches are
really lost (the layer drops unsynced data), but only a suffix, whole.

keep="none" drops all unsynced bytes (LevelDB fault_injection_test);
keep="random" keeps a random prefix of them (a torn write).

Why an injectable layer and not a loop-mounted ext4 image: a real power cut
of a loop device cannot be caused from inside the sandbox (the page cache
belongs to the one kernel that keeps running), so dropping exactly the
unsynced data needs the layer anyway.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict

import pytest

from flowdb import StorageBackendKind
from flowdb._storage import STORE_NAME
from helpers.common import FULL, backend
from helpers.crash_check import Child, check_store
from reliability.faultfs import POWER_CUT_EXIT, RULE_CUT_LINE, FaultFS

POWER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "power_child.py")


def power_cycles(tmp_path, cycles, threads, sync, seed, recovery_cuts=0.0, profile="busy",
                 keeps=("none", "random"), cut_on=(), rule_cuts=None):
    """Returns (acknowledged batches, acknowledged batches lost).  With
    `cut_on` (path substrings), each cycle's cut comes right after a random
    1st-40th write to a file matching one of them, or after its timer;
    `rule_cuts` (a list) gets one bool per cycle: was it the write's cut."""
    rng = random.Random(seed)
    data_dir = tmp_path / "db"
    history = {}
    acked_total = lost_total = 0
    for gen in range(1, cycles + 1):
        if rng.random() < recovery_cuts and gen > 1:
            # cut the power while the store is being opened (recovery)
            c = Child(data_dir, 0, 0, sync, script=POWER,
                      extra=(-rng.uniform(0.0, 0.3), rng.choice(keeps), gen))
            c.proc.wait(timeout=60)
            _, err = c.kill()
            assert c.proc.returncode in (0, POWER_CUT_EXIT), f"recovery child failed:\n{err}"
        keep = rng.choice(keeps)
        # With cut_on the timer is only the fallback: it comes 2 s later.
        on = (f"on={rng.choice(cut_on)}:{rng.randint(1, 40)}",) if cut_on else ()
        child = Child(data_dir, gen, threads, sync, script=POWER,
                      extra=(rng.uniform(0.1, 1.0) + 2.0 * bool(cut_on), keep,
                             seed * 1000 + gen, profile, *on))
        try:
            child.proc.wait(timeout=60)
        except Exception:
            child.kill()
            pytest.fail("power_child did not cut the power within 60 s")
        cut_time, err = child.kill()
        assert child.proc.returncode == POWER_CUT_EXIT, (
            f"power_child exited with {child.proc.returncode}:\n{err}")
        if rule_cuts is not None:
            rule_cuts.append(RULE_CUT_LINE.decode().strip() in err)
        batches = check_store(data_dir, history, gen, child.acks, threads, cut_time, sync,
                              durable_after=1.5 if sync == "always" else None)
        acked = defaultdict(set)
        for _, g, t, n, _count in child.acks:
            acked[t].add(n)
        for t, ns in acked.items():
            acked_total += len(ns)
            lost_total += sum(1 for n in ns if (gen, t, n) not in batches)
    return acked_total, lost_total


def test_power_cut_always_loses_no_acknowledged_batch(tmp_path):
    cycles = 30 if FULL else 6
    acked, lost = power_cycles(tmp_path, cycles=cycles, threads=3, sync="always",
                               seed=31, recovery_cuts=0.3)
    print(f"\nFIGURES power-loss ALWAYS: cycles={cycles} acknowledged={acked} lost={lost}")
    assert acked > 0 and lost == 0


def test_power_cut_interval_really_drops_unsynced_data(tmp_path):
    """An interval longer than the run: whatever was not flushed or rotated is
    lost, as a suffix of whole batches; the layer does drop data."""
    cycles = 12 if FULL else 4
    acked, lost = power_cycles(tmp_path, cycles=cycles, threads=2, sync="100000",
                               seed=32, profile="calm")
    print(f"\nFIGURES power-loss interval (never synced): cycles={cycles} acknowledged={acked} "
          f"lost (allowed, a suffix)={lost}")
    assert acked > 0
    assert lost > 0, "no acknowledged-but-unsynced batch was lost: the layer drops nothing"


def test_power_cut_with_pages_persisted_out_of_order(tmp_path):
    """keep="holes": unsynced pages reach the disk in any order, so a hole
    of zeros can come before a valid record (of a group of several batches,
    or of the group appended while the previous group's fsync ran).  The
    store must open, and keep every acknowledged batch."""
    cycles = 20 if FULL else 8
    acked, lost = power_cycles(tmp_path, cycles=cycles, threads=3, sync="always",
                               seed=35, recovery_cuts=0.3, keeps=("holes",))
    print(f"\nFIGURES power-loss ALWAYS, out-of-order pages: cycles={cycles} "
          f"acknowledged={acked} lost={lost}")
    assert acked > 0 and lost == 0


def test_power_cut_right_after_a_write_to_the_store(tmp_path):
    """A timed cut seldom lands in the microseconds between a write and its
    fdatasync; this one comes right after a write to the store's own files:
    the single-file store's flowdb.db (in-place writes: snapshots, slots,
    tables copied into reused space) or a multi-file store's MANIFEST and
    tables, with unsynced bytes torn or persisted out of order."""
    single = backend() == StorageBackendKind.SINGLE_FILE
    cycles = 48 if FULL else 16
    rule_cuts = []
    # Not keep="none": an ordering bug shows when some unsynced writes
    # persist and others do not (with the fdatasync between a snapshot and
    # its slot removed, 30 such cycles failed in each of two seeds).
    acked, lost = power_cycles(tmp_path, cycles=cycles, threads=3, sync="always", seed=36,
                               recovery_cuts=0.2, keeps=("random", "holes"),
                               cut_on=(STORE_NAME,) if single else ("MANIFEST", ".sst"),
                               rule_cuts=rule_cuts)
    print(f"\nFIGURES power-loss ALWAYS, cut after a store write: cycles={cycles} "
          f"cut by the write={sum(rule_cuts)} acknowledged={acked} lost={lost}")
    assert acked > 0 and lost == 0
    assert sum(rule_cuts) >= cycles // 2, "most cuts should come right after a write"


@pytest.mark.slow
def test_power_cut_always_many_cycles(tmp_path):
    acked, lost = power_cycles(tmp_path, cycles=50, threads=3, sync="always",
                               seed=int(os.environ.get("FLOWDB_SEED", "33")), recovery_cuts=0.3)
    print(f"\nFIGURES power-loss ALWAYS: cycles=50 acknowledged={acked} lost={lost}")
    assert lost == 0


# ------------------------------------------------------------ the layer itself

@pytest.fixture
def fs(tmp_path):
    f = FaultFS(tmp_path / "d").install()
    yield f
    f.uninstall()


def test_layer_drops_unsynced_bytes(fs):
    p = os.path.join(fs.root, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"durable")
    os.fsync(fd)
    d = os.open(fs.root, os.O_RDONLY)
    os.fsync(d)
    os.close(d)
    os.write(fd, b"-volatile")
    os.close(fd)
    fs.power_cut(exit=False)
    with open(p, "rb") as f:
        assert f.read() == b"durable"


def test_layer_drops_file_whose_directory_entry_was_not_synced(fs):
    p = os.path.join(fs.root, "new")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"synced data, unsynced name")
    os.fsync(fd)
    os.close(fd)
    fs.power_cut(exit=False)
    assert not os.path.exists(p)


def test_layer_undoes_unsynced_rename_and_unlink(fs):
    a, b = os.path.join(fs.root, "a"), os.path.join(fs.root, "b")
    for path, data in ((a, b"A"), (b, b"B")):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    d = os.open(fs.root, os.O_RDONLY)
    os.fsync(d)
    os.close(d)
    os.replace(a, b)
    fs.power_cut(exit=False)
    assert open(a, "rb").read() == b"A" and open(b, "rb").read() == b"B"
    os.unlink(a)
    fs.power_cut(exit=False)
    assert open(a, "rb").read() == b"A"


def _durable_file(fs, name, data):
    p = os.path.join(fs.root, name)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    d = os.open(fs.root, os.O_RDONLY)
    os.fsync(d)
    os.close(d)
    return p, fd


def test_layer_undoes_unsynced_overwrites(fs):
    p, fd = _durable_file(fs, "f", b"A" * 8192)
    os.pwrite(fd, b"B" * 4096, 0)
    os.fdatasync(fd)                         # durable: B at 0
    os.pwrite(fd, b"C" * 8192, 0)            # not synced: all undone
    os.lseek(fd, 4096, os.SEEK_SET)
    os.write(fd, b"D" * 100)
    os.pwrite(fd, b"E" * 10, 8192)           # growth, not synced: cut
    fs.power_cut(exit=False)
    with open(p, "rb") as f:
        assert f.read() == b"B" * 4096 + b"A" * 4096
    os.close(fd)


def test_layer_undoes_unsynced_copy_file_range(fs):
    p, fd = _durable_file(fs, "f", b"A" * 4096 + b"S" * 4096)
    os.copy_file_range(fd, fd, 4096, 4096, 0)
    assert os.pread(fd, 4096, 0) == b"S" * 4096
    fs.power_cut(exit=False)
    with open(p, "rb") as f:
        assert f.read() == b"A" * 4096 + b"S" * 4096
    os.close(fd)


@pytest.mark.parametrize("keep,unit", [("random", 512), ("holes", 4096)])
def test_layer_keeps_each_unit_as_one_of_its_versions(fs, keep, unit):
    """Each unit (sector or page) ends as it was at some moment since the
    sync (written back then), never as a mix of versions that never
    coexisted; over many cuts both old and new content survive."""
    size = 16 * 4096
    rng = random.Random(7)
    seen_old = seen_new = False
    for _ in range(20):
        history = [bytearray(b"A" * size)]
        p, fd = _durable_file(fs, "f", bytes(history[0]))
        for v in range(4):
            off = rng.randrange(size)
            data = bytes([66 + v]) * rng.randrange(1, size - off + 1)
            os.pwrite(fd, data, off)
            history.append(bytearray(history[-1]))
            history[-1][off:off + len(data)] = data
        fs.power_cut(keep=keep, exit=False)
        with open(p, "rb") as f:
            data = f.read()
        assert len(data) == size
        for start in range(0, size, unit):
            chunk = data[start:start + unit]
            versions = [bytes(h[start:start + unit]) for h in history]
            assert chunk in versions, f"unit at {start} is no version it had"
            seen_old |= chunk == versions[0] != versions[-1]
            seen_new |= chunk == versions[-1] != versions[0]
        os.close(fd)
        os.unlink(p)
    assert seen_old and seen_new


def test_layer_truncate_then_regrow_is_not_durable(fs):
    p, fd = _durable_file(fs, "f", b"A" * 8192)
    os.ftruncate(fd, 4096)
    os.pwrite(fd, b"B" * 8192, 4096)
    fs.power_cut(exit=False)
    with open(p, "rb") as f:
        assert f.read() == b"A" * 4096
    os.close(fd)
