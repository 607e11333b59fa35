"""MemTable against a sorted-list model: the same batches applied to both
must give the same entries, seeks and range deletes."""
import bisect
import functools
import gc
import os
import struct
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from flowdb._core import batch as B
from flowdb._core.coding import compare_ikeys, make_ikey, parse_ikey
from flowdb._core.iterator import Iterator, Source
from flowdb._core.memtable import ApplyThread, MemTable, MemTableIterator
from flowdb._core.record import NEVER, Record
from flowdb._errors import CorruptionError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_SEQ = 2**56 - 1


# -- reference -----------------------------------------------------------------

def ref_ikey(ukey, ts, seq, kind):
    return ukey + struct.pack(">QQ", ts + 2**63, (seq << 8) | kind)


def ref_order(ikey):
    """Internal-key order as a Python sort key: ukey, ts, trailer descending."""
    ts_u, trailer = struct.unpack(">QQ", ikey[-16:])
    return (ikey[:-16], ts_u, -trailer)


class Model:
    """The memtable as a sorted list of (internal key, value)."""

    def __init__(self):
        self.entries, self.range_dels = [], []
        self.min_ts, self.max_ts = INT64_MAX, INT64_MIN
        self.num, self.first_seq, self.last_seq = 0, 0, 0

    def apply(self, decoded, seq):
        for i, (kind, key, ts, exp, body) in enumerate(decoded):
            if kind == 2:
                self.range_dels.append((key, body, seq + i))
                continue
            value = struct.pack("<q", exp) + body if kind == 1 else b""
            self.entries.append((ref_ikey(key, ts, seq + i, kind), value))
            self.min_ts, self.max_ts = min(self.min_ts, ts), max(self.max_ts, ts)
        self.entries.sort(key=lambda kv: ref_order(kv[0]))
        if decoded:
            self.num += len(decoded)
            self.first_seq = self.first_seq or seq
            self.last_seq = seq + len(decoded) - 1

    def seek(self, target):
        keys = [ref_order(k) for k, _ in self.entries]
        i = bisect.bisect_left(keys, ref_order(target))
        return self.entries[i] if i < len(self.entries) else None

    def seek_for_prev(self, target):
        keys = [ref_order(k) for k, _ in self.entries]
        i = bisect.bisect_right(keys, ref_order(target))
        return self.entries[i - 1] if i else None


def dump(mem):
    it = mem.new_iterator()
    it.seek_to_first()
    return list(it.entries())


def state(mem):
    return (dump(mem), list(mem.range_dels), len(mem), mem.approximate_bytes,
            mem.first_seq, mem.last_seq, mem.min_ts, mem.max_ts)


def check_equal(mem, model):
    assert dump(mem) == model.entries
    assert mem.range_dels == model.range_dels
    assert (len(mem), mem.num_entries) == (model.num, model.num)
    assert (mem.first_seq, mem.last_seq) == (model.first_seq, model.last_seq)
    assert (mem.min_ts, mem.max_ts) == (model.min_ts, model.max_ts)


def current(it):
    return (it.key(), it.value()) if it.valid else None


# -- strategies ------------------------------------------------------------------

small_keys = st.lists(st.sampled_from([b"\x00", b"\xff", b"a", b"b"]), min_size=1, max_size=3).map(b"".join)
small_ts = st.sampled_from([INT64_MIN, -1, 0, 1, 2, INT64_MAX])
put = st.tuples(st.just("put"), small_keys, small_ts, st.binary(max_size=12),
                st.sampled_from([NEVER, 0, 42]))
delete = st.tuples(st.just("del"), small_keys, small_ts)
range_del = st.tuples(st.just("range"), small_keys, small_keys)
batches = st.lists(st.lists(put, min_size=1, max_size=8) | st.lists(delete, min_size=1, max_size=5)
                   | range_del.map(lambda r: [r]), max_size=8)
targets = st.tuples(small_keys | st.just(b"\x00\x00\x00\x00"), small_ts,
                    st.integers(0, 60) | st.just(MAX_SEQ), st.sampled_from([0, 1, 2, 255]))


def encode(ops):
    if ops[0][0] == "put":
        return B.encode_puts([Record(k, ts, v, e) for _, k, ts, v, e in ops])[0]
    if ops[0][0] == "del":
        return B.encode_deletes([(k, ts) for _, k, ts in ops])[0]
    return B.encode_range_delete(ops[0][1], ops[0][2])[0]


def apply_all(batch_list, mem, model, gap=0):
    seq = 1
    for ops in batch_list:
        payload = encode(ops)
        assert mem.apply(payload, seq) == len(ops)
        model.apply(B.decode_batch(payload), seq)
        seq += len(ops) + gap
    return seq


# -- model tests -------------------------------------------------------------------

@settings(max_examples=200)
@given(batches, st.lists(targets, max_size=10), st.integers(0, 3))
def test_memtable_matches_sorted_list_model(batch_list, seek_targets, gap):
    mem, model = MemTable(), Model()
    apply_all(batch_list, mem, model, gap)
    check_equal(mem, model)
    it = mem.new_iterator()
    for t in seek_targets:
        target = make_ikey(*t)
        it.seek(target)
        assert current(it) == model.seek(target)
        it.seek_for_prev(target)
        assert current(it) == model.seek_for_prev(target)


@given(batches)
def test_iteration_is_strictly_increasing(batch_list):
    mem = MemTable()
    apply_all(batch_list, mem, Model())
    keys = [k for k, _ in dump(mem)]
    assert all(compare_ikeys(a, b) < 0 for a, b in zip(keys, keys[1:]))


def test_same_key_and_ts_in_one_batch_newest_first():
    mem = MemTable()
    mem.apply(B.encode_puts([Record(b"k", 1, b"old"), Record(b"k", 1, b"new")])[0], 10)
    got = [(parse_ikey(k)[2], v[8:]) for k, v in dump(mem)]
    assert got == [(11, b"new"), (10, b"old")]


def test_entry_layout_put_and_delete():
    mem = MemTable()
    mem.apply(B.encode_puts([Record(b"k", 5, b"val", 77)])[0], 1)
    mem.apply(B.encode_deletes([(b"k", 6)])[0], 2)
    assert dump(mem) == [(ref_ikey(b"k", 5, 1, 1), struct.pack("<q", 77) + b"val"),
                         (ref_ikey(b"k", 6, 2, 0), b"")]


def test_ascending_inserts_use_and_keep_order():
    # Ascending keys take the insertion-hint path; mix in a smaller key
    # afterwards to leave it.
    mem, model = MemTable(), Model()
    seq = 1
    for j in range(20):
        recs = [Record(b"sensor:%06d" % (j * 50 + i), i, b"x" * 10) for i in range(50)]
        payload = B.encode_puts(recs)[0]
        seq += mem.apply(payload, seq)
        model.apply(B.decode_batch(payload), seq - 50)
    payload = B.encode_puts([Record(b"sensor:000500", -1, b"y"), Record(b"a", 0, b"")])[0]
    mem.apply(payload, seq)
    model.apply(B.decode_batch(payload), seq)
    check_equal(mem, model)


def test_series_appends_take_the_tail_hint_and_keep_order():
    # Many series each appending in ts order (the tail-hint path), then
    # writes that the hint must refuse: an older ts of a series, the same
    # (key, ts) again (a newer seq sorts first), a key between two series,
    # and more series than hint slots (collisions overwrite hints).
    mem, model = MemTable(), Model()
    seq = 1

    def put(recs):
        nonlocal seq
        payload = B.encode_puts(recs)[0]
        mem.apply(payload, seq)
        model.apply(B.decode_batch(payload), seq)
        seq += len(recs)

    for t in range(40):
        put([Record(b"s:%03d" % i, t, b"v%d" % t) for i in range(300)])
    put([Record(b"s:%03d" % i, 3, b"older") for i in range(0, 300, 7)])
    put([Record(b"s:%03d" % i, 39, b"again") for i in range(0, 300, 5)])
    put([Record(b"s:%03d-between" % i, 0, b"") for i in range(0, 300, 11)])
    for t in range(3):
        put([Record(b"wide:%06d" % i, t, b"w") for i in range(20000)])
    check_equal(mem, model)


def test_random_order_many_entries_across_chunks():
    import random
    rnd = random.Random(7)
    mem, model = MemTable(), Model()
    seq = 1
    for _ in range(30):
        recs = [Record(b"k%05d" % rnd.randrange(3000), rnd.randrange(-5, 5), b"v" * rnd.randrange(200))
                for _ in range(300)]
        payload = B.encode_puts(recs)[0]
        mem.apply(payload, seq)
        model.apply(B.decode_batch(payload), seq)
        seq += 300
    check_equal(mem, model)
    assert mem.approximate_bytes > 2**20       # spans more than one arena chunk


# -- edge cases ------------------------------------------------------------------------

def test_empty_memtable():
    mem = MemTable()
    assert len(mem) == 0 and dump(mem) == [] and mem.range_dels == []
    assert (mem.first_seq, mem.last_seq) == (0, 0)
    assert mem.min_ts > mem.max_ts
    it = mem.new_iterator()
    it.seek(make_ikey(b"a", 0, 0, 0))
    assert not it.valid
    it.seek_for_prev(make_ikey(b"a", 0, 0, 0))
    assert not it.valid


def test_seek_before_first_and_past_last():
    mem = MemTable()
    mem.apply(B.encode_puts([Record(b"b", 0, b"1"), Record(b"c", 0, b"2")])[0], 1)
    it = mem.new_iterator()
    it.seek(make_ikey(b"a", 0, 0, 0))
    assert parse_ikey(it.key())[0] == b"b"
    it.seek(make_ikey(b"d", 0, 0, 0))
    assert not it.valid
    it.seek_for_prev(make_ikey(b"a", 0, 0, 0))
    assert not it.valid
    it.seek_for_prev(make_ikey(b"d", 0, 0, 0))
    assert parse_ikey(it.key())[0] == b"c"


def test_seek_for_prev_exact_match_is_inclusive():
    mem = MemTable()
    mem.apply(B.encode_puts([Record(b"b", 0, b"1")])[0], 1)
    it = mem.new_iterator()
    it.seek_for_prev(ref_ikey(b"b", 0, 1, 1))
    assert it.key() == ref_ikey(b"b", 0, 1, 1)
    it.seek(ref_ikey(b"b", 0, 1, 1))
    assert it.key() == ref_ikey(b"b", 0, 1, 1)


def test_next_past_the_end():
    mem = MemTable()
    mem.apply(B.encode_deletes([(b"k", 0)])[0], 1)
    it = mem.new_iterator()
    it.seek_to_first()
    it.next()
    assert not it.valid
    with pytest.raises(ValueError):
        it.next()


def test_range_dels_collected_not_iterated():
    mem = MemTable()
    mem.apply(B.encode_range_delete(b"a", b"m")[0], 1)
    mem.apply(B.encode_puts([Record(b"b", 3, b"")])[0], 2)
    mem.apply(B.encode_range_delete(b"x", b"z")[0], 3)
    assert mem.range_dels == [(b"a", b"m", 1), (b"x", b"z", 3)]
    assert [parse_ikey(k)[0] for k, _ in dump(mem)] == [b"b"]
    assert len(mem) == 3
    assert (mem.min_ts, mem.max_ts) == (3, 3)        # range deletes carry no ts


def test_min_max_ts_over_puts_and_deletes():
    mem = MemTable()
    mem.apply(B.encode_puts([Record(b"a", 5, b""), Record(b"b", -7, b"")])[0], 1)
    mem.apply(B.encode_deletes([(b"c", 100)])[0], 3)
    assert (mem.min_ts, mem.max_ts) == (-7, 100)
    mem.apply(B.encode_deletes([(b"c", INT64_MIN), (b"d", INT64_MAX)])[0], 4)
    assert (mem.min_ts, mem.max_ts) == (INT64_MIN, INT64_MAX)


def test_seqs_and_counts():
    mem = MemTable()
    assert mem.apply(B.encode_puts([Record(b"a", 0, b"")] * 3)[0], 10) == 3
    assert mem.apply(B.encode_deletes([(b"a", 0)])[0], 20) == 1
    assert (mem.first_seq, mem.last_seq, len(mem)) == (10, 20, 4)


def test_empty_batch_changes_nothing():
    mem = MemTable()
    before = state(mem)
    assert mem.apply(B.encode_puts([])[0], 1) == 0
    assert state(mem) == before


def test_large_values_get_their_own_allocation():
    mem = MemTable()
    big = [Record(b"a", 0, b"\x01" * (300 * 1024)), Record(b"b", 0, b"\x02" * (3 * 2**20)),
           Record(b"c", 0, b"small")]
    mem.apply(B.encode_puts(big)[0], 1)
    assert [v[8:] for _, v in dump(mem)] == [r.value for r in big]
    assert mem.approximate_bytes >= sum(len(r.value) for r in big)


def test_approximate_bytes_grows_with_data():
    mem = MemTable()
    sizes = [mem.approximate_bytes]
    for i in range(5):
        mem.apply(B.encode_puts([Record(b"k%d" % i, 0, b"v" * 1000)])[0], i + 1)
        sizes.append(mem.approximate_bytes)
    assert sizes == sorted(sizes) and sizes[-1] - sizes[0] >= 5 * 1000
    mem.apply(B.encode_range_delete(b"a" * 100, b"b" * 100)[0], 10)
    assert mem.approximate_bytes >= sizes[-1] + 200


def test_iterator_keeps_memtable_alive():
    mem = MemTable()
    mem.apply(B.encode_puts([Record(b"k", 1, b"v")])[0], 1)
    it = mem.new_iterator()
    del mem
    gc.collect()
    it.seek_to_first()
    assert parse_ikey(it.key()) == (b"k", 1, 1, 1)


def test_iterator_sees_later_writes():
    mem = MemTable()
    it = mem.new_iterator()
    mem.apply(B.encode_puts([Record(b"k", 1, b"v")])[0], 1)
    it.seek_to_first()
    assert it.valid


def test_types_and_protocol():
    mem = MemTable()
    assert isinstance(mem, Source)
    it = mem.new_iterator(False, False, 0, 10)    # hints accepted, ignored
    assert isinstance(it, MemTableIterator) and isinstance(it, Iterator)
    assert it.mem is mem
    with pytest.raises(TypeError):
        MemTableIterator(None)


def test_apply_requires_bytes():
    mem = MemTable()
    with pytest.raises(TypeError):
        mem.apply(bytearray(B.encode_puts([])[0]), 1)
    with pytest.raises(TypeError):
        mem.apply(None, 1)


# -- malformed input and bad seqs leave it unchanged ---------------------------------------------

def _populated():
    mem = MemTable()
    mem.apply(B.encode_puts([Record(b"a", 1, b"x"), Record(b"c", 2, b"y")])[0], 1)
    mem.apply(B.encode_range_delete(b"p", b"q")[0], 3)
    return mem


def _valid_then_bad_last_entry():
    good = B.encode_puts([Record(b"b", 0, b"1"), Record(b"d", 0, b"2")])[0]
    rng = B.encode_range_delete(b"r", b"s")[0]
    payload = struct.pack("<I", 3) + good[4:] + rng[4:]
    # Break the range delete's ts (must be INT64_MIN): only the last entry is bad.
    i = len(payload) - len(rng[4:]) + 1 + 1 + 1
    return payload[:i] + b"\x01" + payload[i + 1:]


@pytest.mark.parametrize("payload", [
    b"",
    b"\x01\x00\x00",
    B.encode_puts([Record(b"b", 0, b"1")])[0][:-1],
    B.encode_puts([Record(b"b", 0, b"1")])[0] + b"\x00",
    b"\x01\x00\x00\x00\x09\x01b" + bytes(8),
    _valid_then_bad_last_entry(),
], ids=["empty", "short_count", "truncated", "trailing_byte", "unknown_kind", "bad_last_entry"])
def test_malformed_payload_leaves_memtable_unchanged(payload):
    mem = _populated()
    before = state(mem)
    with pytest.raises(CorruptionError):
        mem.apply(payload, 10)
    assert state(mem) == before


@pytest.mark.parametrize("seq", [0, 3, 2, 1], ids=["zero", "equal_last", "below_last", "first"])
def test_non_increasing_seq_refused_and_changes_nothing(seq):
    mem = _populated()
    before = state(mem)
    with pytest.raises(ValueError):
        mem.apply(B.encode_puts([Record(b"z", 0, b"")])[0], seq)
    assert state(mem) == before


def test_seq_beyond_56_bits_refused():
    mem = MemTable()
    two = B.encode_puts([Record(b"a", 0, b""), Record(b"b", 0, b"")])[0]
    with pytest.raises(ValueError):
        mem.apply(two, MAX_SEQ)
    assert mem.apply(two, MAX_SEQ - 1) == 2
    assert mem.last_seq == MAX_SEQ
    assert parse_ikey(dump(mem)[1][0])[2] == MAX_SEQ


# -- concurrency --------------------------------------------------------------------------

def test_readers_iterate_while_writer_applies():
    mem = MemTable()
    n_batches, per_batch = 600, 100
    payloads = []
    for j in range(n_batches):
        # Keys interleave across batches, so inserts land all over the list.
        recs = [Record(b"k%06d" % ((i * 7919 + j * 31) % 50_000), j, b"v" * (j % 50))
                for i in range(per_batch)]
        payloads.append(B.encode_puts(recs)[0])
    done = threading.Event()
    errors, passes = [], [0, 0]

    def reader(slot):
        try:
            while True:
                finished = done.is_set()
                snapshot = mem.last_seq           # every batch up to here is complete
                it = mem.new_iterator()
                it.seek_to_first()
                keys = [k for k, _ in it.entries()]
                for a, b in zip(keys, keys[1:]):
                    assert compare_ikeys(a, b) < 0, "out of order"
                seen = sum(1 for k in keys if parse_ikey(k)[2] <= snapshot)
                assert seen == snapshot, f"saw {seen} of {snapshot} committed entries"
                # Seeks from a thread racing with inserts stay consistent too.
                it.seek(make_ikey(b"k025000", 0, MAX_SEQ, 255))
                if it.valid:
                    assert parse_ikey(it.key())[0] >= b"k025000"
                passes[slot] += 1
                if finished:
                    return
        except BaseException as e:          # reported by the main thread
            errors.append(e)

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    seq = 1
    for p in payloads:
        seq += mem.apply(p, seq)
    done.set()
    for t in readers:
        t.join(60)
    assert not errors, errors[0]
    assert all(passes)
    assert len(dump(mem)) == n_batches * per_batch


def test_apply_concurrent_from_many_threads_matches_the_model():
    # Writers share keys (and some (key, ts) pairs, told apart by seq), apply
    # out of seq order, and race on the same tail hints; a reader iterates
    # meanwhile and must always see strictly increasing keys.
    import random
    mem, model = MemTable(), Model()
    writers, batches, size = 4, 40, 150
    plans = []
    for w in range(writers):
        rnd = random.Random(w)
        plan = []
        for b in range(batches):
            seq = 1 + (b * writers + w) * size
            recs = [Record(b"s:%03d" % rnd.randrange(120), rnd.choice([b, b + 1, w * 1000 + b]),
                           b"w%d" % w) for _ in range(size)]
            plan.append((B.encode_puts(recs)[0], seq))
        plans.append(plan)
    for plan in plans:
        for payload, seq in plan:
            model.apply(B.decode_batch(payload), seq)
    start = threading.Barrier(writers + 1)
    done = threading.Event()
    errors = []

    def write(plan):
        start.wait()
        for payload, seq in plan:
            assert mem.apply_concurrent(payload, seq) == size

    def read():
        start.wait()
        while not done.is_set():
            keys = [k for k, _ in dump(mem)]
            if not all(compare_ikeys(a, b) < 0 for a, b in zip(keys, keys[1:])):
                errors.append("out of order")
                return

    threads = [threading.Thread(target=write, args=(p,)) for p in plans]
    reader = threading.Thread(target=read)
    for t in threads + [reader]:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert not errors
    model.first_seq, model.last_seq = 1, writers * batches * size
    model.num = writers * batches * size
    check_equal(mem, model)


# -- ApplyThread ---------------------------------------------------------------------

@settings(max_examples=100)
@given(batches, st.integers(0, 3))
def test_apply_thread_matches_the_model(batch_list, gap):
    # start() + wait() is apply_concurrent() on another thread: same entries,
    # range deletes, counters and return values; one thread serves every batch.
    mem, model, applier = MemTable(), Model(), ApplyThread()
    seq = 1
    for ops in batch_list:
        payload = encode(ops)
        applier.start(mem, payload, seq)
        assert applier.wait() == len(ops)
        model.apply(B.decode_batch(payload), seq)
        seq += len(ops) + gap
    applier.close()
    check_equal(mem, model)


def test_apply_thread_inserts_while_the_caller_runs():
    # The entries go in on the thread, before wait(); the counters in wait().
    mem, applier = MemTable(), ApplyThread()
    payload = B.encode_puts([Record(b"s:%04d" % i, i, b"v" * 50) for i in range(20000)])[0]
    applier.start(mem, payload, 1)
    spins = 0
    while len(dump(mem)) < 20000:
        spins += 1
    assert len(mem) == 0                 # the counters are the caller's, in wait()
    assert applier.wait() == 20000
    assert len(mem) == 20000 and (mem.first_seq, mem.last_seq) == (1, 20000)
    applier.close()


def test_apply_thread_refuses_a_bad_batch_before_starting():
    mem, applier = MemTable(), ApplyThread()
    with pytest.raises(CorruptionError):
        applier.start(mem, b"\x05\x00\x00\x00garbage", 1)
    with pytest.raises(ValueError, match="seq_start"):
        applier.start(mem, B.encode_puts([Record(b"k", 1, b"v")])[0], 0)
    with pytest.raises(RuntimeError, match="without start"):
        applier.wait()
    assert state(mem) == state(MemTable())
    applier.start(mem, B.encode_puts([Record(b"k", 1, b"v")])[0], 1)   # still usable
    assert applier.wait() == 1


def test_apply_thread_takes_one_batch_at_a_time_and_refuses_after_close():
    mem, applier = MemTable(), ApplyThread()
    payload = B.encode_puts([Record(b"k", 1, b"v")])[0]
    applier.start(mem, payload, 1)
    with pytest.raises(RuntimeError, match="before wait"):
        applier.start(mem, payload, 2)
    assert applier.wait() == 1
    applier.close()
    applier.close()                      # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        applier.start(mem, payload, 3)
    assert len(mem) == 1


def test_apply_thread_dropped_mid_batch_finishes_it_first():
    # Freed without wait(): __dealloc__ joins the thread after the batch, so
    # the memtable and payload it uses stay alive until then.
    mem = MemTable()
    applier = ApplyThread()
    applier.start(mem, B.encode_puts([Record(b"s:%05d" % i, 1, b"v") for i in range(50000)])[0], 1)
    del applier
    gc.collect()
    assert len(dump(mem)) == 50000


def test_apply_thread_works_in_a_forked_child():
    # The thread stays in the parent: the child's ApplyThread starts its own.
    import os
    mem, applier = MemTable(), ApplyThread()
    applier.start(mem, B.encode_puts([Record(b"a", 1, b"v")])[0], 1)
    assert applier.wait() == 1
    pid = os.fork()
    if pid == 0:                         # the child: exit code 0 only if it all works
        import signal
        signal.alarm(20)                 # a wait() that hangs kills the child
        ok = False
        try:
            applier.start(mem, B.encode_puts([Record(b"b", 1, b"v")])[0], 2)
            ok = applier.wait() == 1 and len(dump(mem)) == 2
            applier.close()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    applier.start(mem, B.encode_puts([Record(b"c", 1, b"v")])[0], 3)   # the parent's still works
    assert applier.wait() == 1 and len(dump(mem)) == 2


def _readings(first, n, series=1000):
    """Batch n of 1,000-reading batches: one reading per series, ~100-byte values."""
    return B.encode_puts([Record(b"sensor:%06d" % (i % series), first + i // series, b"v" * 100)
                          for i in range(n)])[0]


def test_apply_thread_faults_in_a_spare_chunk_while_the_caller_syncs(tmp_path):
    # The time a caller's fsync leaves the thread goes into faulting in the
    # chunk the arena takes next; the arena takes it (a new spare follows),
    # and every entry is where it belongs.
    mem, applier, model = MemTable(), ApplyThread(), Model()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    seq, spares = 1, set()
    try:
        for b in range(24):
            payload = _readings(b, 1000)
            applier.start(mem, payload, seq)
            # A slow disk: the caller's fsync outlasts the thread's work (a
            # fixed 5 ms was sometimes too short on a host with stolen time).
            deadline = time.monotonic() + 10
            while applier.busy() and time.monotonic() < deadline:
                time.sleep(0.001)
            applier.datasync(fd)
            assert applier.wait() == 1000
            model.apply(B.decode_batch(payload), seq)
            seq += 1000
            info = mem.arena_info()
            assert info["spare_ready"] == 1 << 20     # faulted in completely
            spares.add(info["spare"])
    finally:
        os.close(fd)
        applier.close()
    # ~130 KB a batch: the arena runs through a 1 MiB chunk every ~8 batches.
    assert len(spares) >= 3
    check_equal(mem, model)


def test_apply_thread_stops_faulting_in_once_the_caller_waits():
    # wait() right after start(): the thread inserts, sees the caller is
    # done with its fsync, and faults nothing in.
    mem, applier = MemTable(), ApplyThread()
    applier.start(mem, _readings(0, 100_000), 1)
    assert applier.wait() == 100_000
    assert mem.arena_info()["spare_ready"] in (None, 0)
    applier.close()


def test_apply_thread_datasync_syncs_then_waits_and_reports_errors(tmp_path):
    import errno
    mem, applier = MemTable(), ApplyThread()
    with pytest.raises(RuntimeError, match="without start"):
        applier.datasync(0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"x")
    applier.start(mem, _readings(0, 1000), 1)
    assert applier.datasync(fd) is None
    assert applier.wait() == 1000
    os.close(fd)
    applier.start(mem, _readings(1, 1000), 1001)
    with pytest.raises(OSError) as info:
        applier.datasync(fd)                  # closed: EBADF, and the batch still goes in
    assert info.value.errno == errno.EBADF
    assert applier.wait() == 1000 and len(dump(mem)) == 2000
    applier.close()
