"""MergingIterator: the k-way merge of Iterators (flowdb/_core/merge.pyx).

Reference: the sorted union of the children's entries, in internal-key
order, equal keys earlier child first.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdb._core.iterator import Iterator, VectorIterator, VectorSource
from flowdb._core.merge import MergingIterator
from flowdb._errors import CorruptionError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_SEQ = 2**56 - 1


def ik(key: bytes, ts: int, seq: int, kind: int = 1) -> bytes:
    return key + struct.pack(">QQ", ts + 2**63, (seq << 8) | kind)


def order(ikey: bytes):
    """Internal-key order as a Python sort key: ukey, ts, then seq descending."""
    ukey, ts_u, trailer = ikey[:-16], *struct.unpack(">QQ", ikey[-16:])
    return (ukey, ts_u, -trailer)


def model_merge(children):
    """Sorted union; the (child index, position) tie-break keeps earlier children first."""
    tagged = [(order(k), ci, pos, k, v)
              for ci, entries in enumerate(children)
              for pos, (k, v) in enumerate(sorted(entries, key=lambda kv: order(kv[0])))]
    tagged.sort(key=lambda t: (t[0], t[1], t[2]))
    return [(k, v) for *_, k, v in tagged]


def merged(children, target=None):
    m = MergingIterator([VectorIterator(c) for c in children])
    if target is None:
        m.seek_to_first()
    else:
        m.seek(target)
    return list(m.entries())


# -- named edge cases -------------------------------------------------------------

def test_merge_is_an_iterator():
    assert isinstance(MergingIterator([]), Iterator)


def test_merge_of_no_children_is_empty():
    m = MergingIterator([])
    m.seek_to_first()
    assert not m.valid
    m.seek(ik(b"a", 0, 1))
    assert not m.valid


def test_merge_of_one_child_is_that_child():
    entries = [(ik(b"a", 1, 3), b"x"), (ik(b"b", -1, 2), b"y")]
    assert merged([entries]) == model_merge([entries])


def test_merge_of_empty_children_is_empty():
    assert merged([[], [], []]) == []


def test_merge_interleaves_overlapping_children():
    a = [(ik(b"a", 1, 5), b"a1"), (ik(b"c", 1, 5), b"c1"), (ik(b"e", 0, 1), b"e0")]
    b = [(ik(b"b", 1, 6), b"b1"), (ik(b"c", 2, 7), b"c2"), (ik(b"d", 0, 1), b"d0")]
    assert [v for _, v in merged([a, b])] == [b"a1", b"b1", b"c1", b"c2", b"d0", b"e0"]


def test_merge_orders_versions_of_a_key_ts_newest_first():
    a = [(ik(b"k", 5, 3), b"s3")]
    b = [(ik(b"k", 5, 9), b"s9"), (ik(b"k", 5, 1), b"s1")]
    assert [v for _, v in merged([a, b])] == [b"s9", b"s3", b"s1"]


def test_merge_orders_ts_as_signed_and_keys_bytewise():
    a = [(ik(b"a", INT64_MAX, 1), b"max"), (ik(b"a\x00", INT64_MIN, 1), b"a0")]
    b = [(ik(b"a", INT64_MIN, 1), b"min"), (ik(b"a", -1, 1), b"neg"), (ik(b"\xff", 0, 1), b"ff")]
    assert [v for _, v in merged([a, b])] == [b"min", b"neg", b"max", b"a0", b"ff"]


def test_merge_duplicates_across_children_come_earlier_child_first():
    k = ik(b"dup", 7, 4)
    out = merged([[(k, b"first")], [(k, b"second")], [(k, b"third")]])
    assert out == [(k, b"first"), (k, b"second"), (k, b"third")]


def test_merge_seek_lands_on_first_entry_at_or_after_target():
    a = [(ik(b"a", 1, 1), b"a"), (ik(b"c", 1, 1), b"c")]
    b = [(ik(b"b", 1, 1), b"b"), (ik(b"d", 1, 1), b"d")]
    assert [v for _, v in merged([a, b], ik(b"b", 1, 1))] == [b"b", b"c", b"d"]
    assert [v for _, v in merged([a, b], ik(b"bb", INT64_MIN, MAX_SEQ, 0xFF))] == [b"c", b"d"]


def test_merge_seek_between_versions_respects_seq_descending():
    a = [(ik(b"k", 1, 9), b"s9"), (ik(b"k", 1, 5), b"s5")]
    b = [(ik(b"k", 1, 7), b"s7"), (ik(b"k", 1, 2), b"s2")]
    # (k, 1, seq 6, kind 0xff): the first entry with seq <= 6.
    assert [v for _, v in merged([a, b], ik(b"k", 1, 6, 0xFF))] == [b"s5", b"s2"]


def test_merge_seek_past_the_end_is_invalid():
    a = [(ik(b"a", 1, 1), b"a")]
    assert merged([a, []], ik(b"z", 0, 1)) == []


def test_merge_seek_after_exhaustion_repositions_every_child():
    a = [(ik(b"a", 1, 1), b"a"), (ik(b"c", 1, 1), b"c")]
    b = [(ik(b"b", 1, 1), b"b")]
    m = MergingIterator([VectorIterator(a), VectorIterator(b)])
    m.seek_to_first()
    assert len(list(m.entries())) == 3
    assert not m.valid
    m.seek(ik(b"a", 1, 1))
    assert [v for _, v in m.entries()] == [b"a", b"b", b"c"]
    m.seek_to_first()
    assert m.value() == b"a"


def test_merge_seek_for_prev_of_no_children_is_invalid():
    m = MergingIterator([])
    m.seek_for_prev(ik(b"a", 1, 1))
    assert not m.valid


def test_merge_rejects_children_that_are_not_iterators():
    with pytest.raises(TypeError):
        MergingIterator([object()])


def test_merge_keeps_children_alive():
    m = MergingIterator([VectorIterator([(ik(b"a", 1, 1), b"a" * 100)])])
    import gc
    gc.collect()
    m.seek_to_first()
    assert m.value() == b"a" * 100
    assert len(m.children) == 1


def test_merge_of_merges():
    a = [(ik(b"a", 1, 1), b"a")]
    b = [(ik(b"b", 1, 1), b"b")]
    c = [(ik(b"c", 1, 1), b"c")]
    inner = MergingIterator([VectorIterator(a), VectorIterator(c)])
    outer = MergingIterator([inner, VectorIterator(b)])
    outer.seek_to_first()
    assert [v for _, v in outer.entries()] == [b"a", b"b", b"c"]


# -- errors --------------------------------------------------------------------------

def _failing(entries, fail_after, error):
    return VectorSource(entries, fail_after=fail_after, error=error).new_iterator()


def test_merge_child_error_on_seek_to_first_raises_the_childs_error():
    boom = CorruptionError("child 1 is broken", path="000007.sst", offset=42)
    m = MergingIterator([VectorIterator([(ik(b"a", 1, 1), b"a")]),
                         _failing([(ik(b"b", 1, 1), b"b")], 0, boom)])
    with pytest.raises(CorruptionError) as e:
        m.seek_to_first()
    assert e.value is boom
    assert not m.valid


def test_merge_child_error_mid_iteration_stops_the_merge_and_is_sticky():
    boom = CorruptionError("bad block")
    entries = [(ik(bytes([65 + i]), 1, 1), b"v") for i in range(5)]
    m = MergingIterator([VectorIterator([(ik(b"0", 1, 1), b"z")]),
                         _failing(entries, 3, boom)])
    m.seek_to_first()            # failing child: move 1
    m.next()                     # "0" consumed; the failing child is now the top
    m.next()                     # move 2
    with pytest.raises(CorruptionError) as e:
        m.next()                 # move 3 succeeds, then move 4 fails
        m.next()
    assert e.value is boom
    assert not m.valid
    with pytest.raises(CorruptionError):
        m.seek_to_first()        # the status is sticky


def test_merge_child_error_on_seek_raises():
    boom = OSError("EIO")
    m = MergingIterator([_failing([(ik(b"a", 1, 1), b"a")], 0, boom)])
    with pytest.raises(OSError) as e:
        m.seek(ik(b"a", 0, 1))
    assert e.value is boom


# -- model ------------------------------------------------------------------------------

KEYS = [b"\x00", b"a", b"a\x00", b"ab", b"b", b"\xff"]
TSS = [INT64_MIN, -1, 0, 1, INT64_MAX]


@st.composite
def children_strategy(draw):
    n = draw(st.integers(0, 5))
    children = []
    for _ in range(n):
        keys = draw(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(TSS),
                                       st.integers(1, 20), st.sampled_from([0, 1])),
                             max_size=12, unique=True))
        children.append([(ik(k, t, s, kd), b"%d" % i) for i, (k, t, s, kd) in enumerate(keys)])
    return children


@settings(max_examples=300, deadline=None)
@given(children_strategy())
def test_merge_matches_model_from_first(children):
    assert merged(children) == model_merge(children)


@settings(max_examples=300, deadline=None)
@given(children_strategy(), st.sampled_from(KEYS), st.sampled_from(TSS), st.integers(0, 21),
       st.sampled_from([0, 1, 0xFF]))
def test_merge_matches_model_after_seek(children, key, ts, seq, kind):
    target = ik(key, ts, seq, kind)
    expected = [kv for kv in model_merge(children) if order(kv[0]) >= order(target)]
    assert merged(children, target) == expected


@settings(max_examples=300, deadline=None)
@given(children_strategy(), st.sampled_from(KEYS), st.sampled_from(TSS), st.integers(0, 21),
       st.sampled_from([0, 1, 0xFF]))
def test_merge_seek_for_prev_then_next_matches_model(children, key, ts, seq, kind):
    """The last entry <= target; next() then goes on forward from there
    (equal keys: from the earliest child's)."""
    target = ik(key, ts, seq, kind)
    model = model_merge(children)
    below = [order(k) for k, _ in model if order(k) <= order(target)]
    m = MergingIterator([VectorIterator(c) for c in children])
    m.seek_for_prev(target)
    if not below:
        assert not m.valid
        return
    assert order(m.key()) == below[-1]
    assert list(m.entries()) == [kv for kv in model if order(kv[0]) >= below[-1]]
