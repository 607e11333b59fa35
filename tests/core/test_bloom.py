"""Bloom filter (flowdb/_core/bloom.pyx): the documented hash and probe
sequence, no false negatives, and a false-positive rate near theory."""
import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from flowdb._core.bloom import (BLOOM_SEED, MAX_PROBES, MIN_FILTER_BITS,
                                BloomFilterBuilder, hash64, may_contain, num_probes)

M64 = 2**64 - 1


# -- reference (docs/FORMAT.md, "Bloom block") ------------------------------------

def ref_hash64(data, seed=BLOOM_SEED):
    """MurmurHash64A, words read little-endian."""
    m, r = 0xC6A4A7935BD1E995, 47
    h = (seed ^ (len(data) * m)) & M64
    n8 = len(data) // 8
    for i in range(n8):
        w = int.from_bytes(data[8 * i:8 * i + 8], "little")
        w = (w * m) & M64
        w ^= w >> r
        w = (w * m) & M64
        h ^= w
        h = (h * m) & M64
    rest = data[8 * n8:]
    if rest:
        h ^= int.from_bytes(rest, "little")
        h = (h * m) & M64
    h ^= h >> r
    h = (h * m) & M64
    h ^= h >> r
    return h


def ref_filter(keys, bits_per_key):
    if bits_per_key <= 0:
        return b""
    nbits = max(MIN_FILTER_BITS, len(keys) * bits_per_key)
    nbytes = (nbits + 7) // 8
    nbits = nbytes * 8
    k = min(max(round(bits_per_key * math.log(2)), 1), MAX_PROBES)
    bits = bytearray(nbytes)
    for key in keys:
        h = ref_hash64(key)
        delta = ((h >> 33) | (h << 31)) & M64
        for _ in range(k):
            b = h % nbits
            bits[b // 8] |= 1 << (b % 8)
            h = (h + delta) & M64
    return bytes(bits) + bytes([k])


def build(keys, bits_per_key=10):
    b = BloomFilterBuilder(bits_per_key)
    for k in keys:
        b.add(k)
    return b.finish()


# -- tests -------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.integers(0, M64))
def test_hash_matches_reference(data, seed):
    assert hash64(data, seed) == ref_hash64(data, seed)


def test_hash_known_values():
    # Pinned: the filter format depends on these never changing.
    assert hash64(b"") == ref_hash64(b"")
    assert hash64(b"sensor:000001") == ref_hash64(b"sensor:000001")
    assert len({hash64(b"k%d" % i) for i in range(10000)}) == 10000


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=20), unique=True, max_size=300), st.integers(1, 25))
def test_filter_matches_reference_bytes(keys, bits_per_key):
    assert build(keys, bits_per_key) == ref_filter(keys, bits_per_key)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=30), unique=True, max_size=500), st.integers(1, 30))
def test_no_false_negatives(keys, bits_per_key):
    f = build(keys, bits_per_key)
    assert all(may_contain(f, k) for k in keys)


@pytest.mark.parametrize("bits,k", [(1, 1), (2, 1), (3, 2), (5, 3), (10, 7), (20, 14), (43, 30), (44, 30), (100, 30)])
def test_num_probes(bits, k):
    assert num_probes(bits) == k


def test_false_positive_rate_within_2x_of_theory():
    n, bits_per_key = 10_000, 10
    keys = [b"sensor:%06d" % i for i in range(n)]
    f = build(keys, bits_per_key)
    m = (len(f) - 1) * 8
    k = f[-1]
    assert k == 7
    theory = (1 - math.exp(-k * n / m)) ** k           # ~0.0082 for 10 bits/key
    rng = random.Random(42)
    probes = 200_000
    fp = sum(may_contain(f, b"other:%d" % rng.getrandbits(64)) for _ in range(probes))
    rate = fp / probes
    assert theory / 2 <= rate <= theory * 2, (rate, theory)


def test_filter_layout():
    keys = [b"a", b"b", b"c"]
    f = build(keys, 10)
    assert len(f) == MIN_FILTER_BITS // 8 + 1           # 3 keys * 10 bits < 64
    assert f[-1] == 7
    f = build([b"%d" % i for i in range(100)], 10)
    assert len(f) == 1000 // 8 + 1


def test_disabled_filter_matches_everything():
    f = build([b"a"], 0)
    assert f == b""
    assert may_contain(f, b"anything")


def test_empty_key_set_matches_nothing():
    f = build([], 10)
    assert len(f) == MIN_FILTER_BITS // 8 + 1
    assert not any(may_contain(f, b"k%d" % i) for i in range(100))


def test_reserved_probe_counts_match_everything():
    f = bytearray(build([b"a"], 10))
    for k in (0, 31, 255):
        f[-1] = k
        assert may_contain(bytes(f), b"not there")
    assert may_contain(b"\x07", b"x")                  # no bit array


def test_empty_user_key():
    f = build([b""], 10)
    assert may_contain(f, b"")
