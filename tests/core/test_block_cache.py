"""BlockCache (flowdb/_core/block_cache.pyx): LRU order, byte accounting,
counters, capacity 0, the hash table under churn (against a model), and
consistency under concurrent use."""
import os
import platform
import random
import threading
from collections import OrderedDict

import pytest

from flowdb._core.block_cache import BlockCache

A, B, C = (1, 0), (1, 100), (2, 0)


def test_get_put():
    c = BlockCache(100)
    assert c.get((1, 0)) is None
    c.put((1, 0), b"abc")
    assert c.get((1, 0)) == b"abc"
    assert (c.hits, c.misses) == (1, 1)
    assert c.usage == 3 and c.capacity == 100 and len(c) == 1
    assert c._check()


def test_returns_the_same_object():
    c = BlockCache(100)
    v = b"some block"
    c.put(A, v)
    assert c.get(A) is v


def test_lru_eviction_order():
    c = BlockCache(10)
    c.put(A, b"1234")
    c.put(B, b"1234")
    assert c.get(A) == b"1234"          # A is now the most recent
    c.put(C, b"1234")                   # evicts B, the least recent
    assert c.get(B) is None
    assert c.get(A) == b"1234" and c.get(C) == b"1234"
    assert c.usage == 8
    assert c.keys() == [C, A]
    assert c._check()


def test_eviction_frees_enough_bytes():
    c = BlockCache(10)
    for i in range(5):
        c.put((0, i), b"xx")
    c.put(A, b"x" * 9)
    assert c.usage <= 10
    assert c.get(A) is not None
    assert all(c.get((0, i)) is None for i in range(5))
    assert c._check()


def test_replacing_a_key_recharges_it():
    c = BlockCache(100)
    c.put(A, b"x" * 50)
    c.put(A, b"x" * 10)
    assert c.usage == 10 and len(c) == 1
    assert c.get(A) == b"x" * 10
    assert c._check()


def test_value_larger_than_capacity_is_not_stored():
    c = BlockCache(10)
    c.put(A, b"x" * 5)
    c.put(B, b"x" * 11)
    assert c.get(B) is None
    assert c.get(A) is not None


def test_capacity_zero_disables_caching():
    c = BlockCache(0)
    c.put(A, b"x")
    c.put(B, b"")
    assert c.get(A) is None
    assert c.usage == 0 and len(c) == 0
    assert c.misses == 1


def test_negative_capacity_rejected():
    with pytest.raises(ValueError):
        BlockCache(-1)


@pytest.mark.parametrize("key", ["a", 1, (1,), (1, 2, 3), (-1, 0), (0, -1), (2**64, 0), (1.5, 0)])
def test_bad_keys_rejected(key):
    c = BlockCache(100)
    with pytest.raises((TypeError, OverflowError)):
        c.put(key, b"x")
    with pytest.raises((TypeError, OverflowError)):
        c.get(key)
    assert len(c) == 0 and c.hits == c.misses == 0


@pytest.mark.parametrize("value", ["str", bytearray(b"x"), memoryview(b"x"), None, 1])
def test_values_must_be_bytes(value):
    c = BlockCache(100)
    with pytest.raises(TypeError):
        c.put(A, value)
    assert len(c) == 0


def test_bytes_subclass_rejected():
    class B2(bytes):
        pass
    with pytest.raises(TypeError):
        BlockCache(100).put(A, B2(b"x"))


def test_full_64_bit_keys():
    c = BlockCache(100)
    big = (2**64 - 1, 2**64 - 1)
    c.put(big, b"a")
    c.put((2**64 - 1, 0), b"b")
    c.put((0, 2**64 - 1), b"c")
    assert [c.get(k) for k in (big, (2**64 - 1, 0), (0, 2**64 - 1))] == [b"a", b"b", b"c"]


def test_erase_file():
    c = BlockCache(1000)
    for f in (1, 2):
        for off in range(0, 50, 10):
            c.put((f, off), b"x" * 10)
    assert c.erase_file(1) == 5
    assert c.usage == 50 and len(c) == 5
    assert c.get((1, 0)) is None and c.get((2, 0)) is not None
    assert c.erase_file(1) == 0
    assert c._check()


def test_contains_is_neither_a_use_nor_a_hit():
    c = BlockCache(30)
    c.put(A, b"x" * 10)
    c.put(B, b"y" * 10)
    assert A in c and C not in c and (A in c, B in c) == (True, True)
    assert (c.hits, c.misses) == (0, 0)
    c.put(C, b"z" * 20)                 # A is still the least recently used: it goes
    assert A not in c and B in c and C in c
    with pytest.raises(TypeError):
        (1, 2, 3) in c


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim and /proc: glibc on Linux")
def test_release_free_memory_returns_erased_blocks_of_another_thread():
    # Blocks allocated by one thread, erased: glibc keeps their pages in
    # that thread's arena until release_free_memory hands them back.
    # One block in four stays, so the freed ones lie between live ones (no
    # heap top to shrink), as a compaction's inputs lie among other tables'.
    c = BlockCache(256 << 20)

    def fill():
        for i in range(8192):
            c.put((1 + (i % 4 == 0), i), bytes(8192) + b"%d" % i)
    t = threading.Thread(target=fill)
    t.start()
    t.join()
    full = _rss_bytes()
    c.erase_file(1)                     # 6144 blocks, 48 MiB
    erased = _rss_bytes()
    assert erased > full - (8 << 20)    # freed, but still the process's
    assert c.release_free_memory() is True
    assert _rss_bytes() < erased - (24 << 20)
    assert len(c) == 2048 and c.get((2, 0)) == bytes(8192) + b"0" and c._check()


def test_clear():
    c = BlockCache(1000)
    for i in range(100):
        c.put((i % 3, i), b"x" * 5)
    c.clear()
    assert len(c) == 0 and c.usage == 0 and c.keys() == []
    assert c._check()
    c.put(A, b"y")
    assert c.get(A) == b"y"


def test_hit_rate():
    c = BlockCache(10)
    assert c.hit_rate() == 0.0
    c.put(A, b"x")
    c.get(A)
    c.get(B)
    assert c.hit_rate() == 0.5


def test_values_are_released():
    import sys
    c = BlockCache(100)
    v = b"released" * 3
    base = sys.getrefcount(v)
    c.put(A, v)
    assert sys.getrefcount(v) == base + 1
    c.put(A, b"other")                  # replaced
    assert sys.getrefcount(v) == base
    c.put(B, v)
    c.erase_file(B[0])
    assert sys.getrefcount(v) == base
    c.put(C, v)
    c.clear()
    assert sys.getrefcount(v) == base
    c.put(C, v)
    del c
    assert sys.getrefcount(v) == base


@pytest.mark.parametrize("seed", range(6))
def test_matches_an_lru_model(seed):
    """Random puts, gets, erases and clears, checked against an OrderedDict
    LRU, with the internal invariants checked along the way."""
    rng = random.Random(seed)
    cap = rng.choice([50, 500, 5000])
    c = BlockCache(cap)
    model, usage = OrderedDict(), 0
    files = rng.randrange(1, 6)
    for step in range(4000):
        k = (rng.randrange(files), rng.randrange(0, 200 * 4096, 4096))
        r = rng.random()
        if r < 0.45:
            v = bytes([step % 256]) * rng.randrange(0, cap // 4 + 2)
            c.put(k, v)
            if len(v) <= cap:
                if k in model:
                    usage -= len(model.pop(k))
                model[k] = v
                usage += len(v)
                while usage > cap:
                    usage -= len(model.popitem(last=False)[1])
        elif r < 0.95:
            got = c.get(k)
            want = model.get(k)
            assert got == want
            if want is not None:
                model.move_to_end(k)
        elif r < 0.99:
            f = rng.randrange(files)
            doomed = [x for x in model if x[0] == f]
            assert c.erase_file(f) == len(doomed)
            for x in doomed:
                usage -= len(model.pop(x))
        else:
            c.clear()
            model.clear()
            usage = 0
        if step % 97 == 0:
            assert c._check()
            assert c.keys() == list(reversed(model))
        assert c.usage == usage and len(c) == len(model)
    assert c._check()
    assert c.keys() == list(reversed(model))


def test_many_small_entries_against_a_model():
    """Thousands of entries: the hash table grows many times and deletes
    (eviction, replacement, erase_file) shift long probe runs back."""
    rng = random.Random(42)
    cap = 6000
    c = BlockCache(cap)
    model, usage = OrderedDict(), 0
    for step in range(60000):
        k = (rng.randrange(8), rng.randrange(4000) * 512)
        r = rng.random()
        if r < 0.6:
            v = b"x" * rng.randrange(0, 4)
            c.put(k, v)
            if k in model:
                usage -= len(model.pop(k))
            model[k] = v
            usage += len(v)
            while usage > cap:
                usage -= len(model.popitem(last=False)[1])
        elif r < 0.9995:
            want = model.get(k)
            assert c.get(k) == want
            if want is not None:
                model.move_to_end(k)
        else:
            f = rng.randrange(8)
            doomed = [x for x in model if x[0] == f]
            assert c.erase_file(f) == len(doomed)
            for x in doomed:
                usage -= len(model.pop(x))
        if step % 5000 == 0:
            assert c._check()
    assert len(c) == len(model) > 1000 and c.usage == usage
    assert c._check()
    assert c.keys() == list(reversed(model))
    assert all(c.get(k) == v for k, v in list(model.items()))


def test_concurrent_use_keeps_accounting_exact():
    c = BlockCache(5000)
    errors, gets = [], [0] * 8

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(5000):
                k = (rng.randrange(4), rng.randrange(100))
                if rng.random() < 0.5:
                    c.put(k, bytes(rng.randrange(1, 200)))
                else:
                    v = c.get(k)
                    gets[seed] += 1
                    assert v is None or isinstance(v, bytes)
                if rng.random() < 0.001:
                    c.erase_file(rng.randrange(4))
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert c._check()
    assert c.usage == sum(len(c.get(k)) for k in c.keys())
    assert c.usage <= c.capacity
    assert c.hits + c.misses == sum(gets) + len(c.keys())
