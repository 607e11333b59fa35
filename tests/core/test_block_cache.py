"""BlockCache (flowdb/_block_cache.py): LRU order, byte accounting, counters,
capacity 0, and consistency under concurrent use."""
import random
import threading

import pytest

from flowdb._block_cache import BlockCache


def test_get_put():
    c = BlockCache(100)
    assert c.get((1, 0)) is None
    c.put((1, 0), b"abc")
    assert c.get((1, 0)) == b"abc"
    assert (c.hits, c.misses) == (1, 1)
    assert c.usage == 3 and c.capacity == 100 and len(c) == 1


def test_lru_eviction_order():
    c = BlockCache(10)
    c.put("a", b"1234")
    c.put("b", b"1234")
    assert c.get("a") == b"1234"          # a is now the most recent
    c.put("c", b"1234")                   # evicts b, the least recent
    assert c.get("b") is None
    assert c.get("a") == b"1234" and c.get("c") == b"1234"
    assert c.usage == 8


def test_eviction_frees_enough_bytes():
    c = BlockCache(10)
    for i in range(5):
        c.put(i, b"xx")
    c.put("big", b"x" * 9)
    assert c.usage <= 10
    assert c.get("big") is not None
    assert all(c.get(i) is None for i in range(4))


def test_replacing_a_key_recharges_it():
    c = BlockCache(100)
    c.put("k", b"x" * 50)
    c.put("k", b"x" * 10)
    assert c.usage == 10 and len(c) == 1


def test_value_larger_than_capacity_is_not_stored():
    c = BlockCache(10)
    c.put("a", b"x" * 5)
    c.put("huge", b"x" * 11)
    assert c.get("huge") is None
    assert c.get("a") is not None


def test_capacity_zero_disables_caching():
    c = BlockCache(0)
    c.put("a", b"x")
    c.put("empty", b"")
    assert c.get("a") is None
    assert c.usage == 0
    assert c.misses == 1


def test_negative_capacity_rejected():
    with pytest.raises(ValueError):
        BlockCache(-1)


def test_erase_file():
    c = BlockCache(1000)
    for f in (1, 2):
        for off in range(0, 50, 10):
            c.put((f, off), b"x" * 10)
    assert c.erase_file(1) == 5
    assert c.usage == 50
    assert c.get((1, 0)) is None and c.get((2, 0)) is not None


def test_hit_rate():
    c = BlockCache(10)
    assert c.hit_rate() == 0.0
    c.put("a", b"x")
    c.get("a")
    c.get("b")
    assert c.hit_rate() == 0.5


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
        except Exception as e:          # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert c.usage == sum(len(c._map[k]) for k in c._map)
    assert c.usage <= c.capacity
    assert c.hits + c.misses == sum(gets)
