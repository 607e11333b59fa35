"""The IndexedDB key encoding (flowdb._core.idbkey) and key validity.

Follows WPT IndexedDB/keyorder.htm (key order across and within types),
IndexedDB/key_invalid.htm and IndexedDB/key_valid.html (which values are
keys), each encoding against a plain-Python reference comparison.
"""
import math

import pytest
from hypothesis import given, strategies as st

from flowdb import CorruptionError, DataError
from flowdb._core import idbkey


def ref_cmp(a, b):
    """IndexedDB's key comparison, written out plainly (number < string < array)."""
    def rank(k):
        return 0 if isinstance(k, (int, float)) else 1 if isinstance(k, str) else 2
    ra, rb = rank(a), rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == 0:
        return (a > b) - (a < b)
    if ra == 1:
        ua = a.encode("utf-16-be", "surrogatepass")
        ub = b.encode("utf-16-be", "surrogatepass")
        return (ua > ub) - (ua < ub)
    for x, y in zip(a, b):
        c = ref_cmp(x, y)
        if c:
            return c
    return (len(a) > len(b)) - (len(a) < len(b))


numbers = st.one_of(st.integers(-2**53, 2**53), st.floats(allow_nan=False))
strings = st.text(max_size=8)
keys = st.recursive(st.one_of(numbers, strings), lambda inner: st.lists(inner, max_size=4),
                    max_leaves=10)


@given(keys, keys)
def test_bytewise_order_is_key_order(a, b):
    ea, eb = idbkey.encode(a), idbkey.encode(b)
    assert ((ea > eb) - (ea < eb)) == ref_cmp(a, b)


@given(keys)
def test_roundtrip(k):
    assert ref_cmp(idbkey.decode(idbkey.encode(k)), k) == 0


@given(keys, keys)
def test_concatenation_orders_as_pair(a, b):
    # index entries are enc(index key) + enc(pk): must order as the pair
    ea, eb = idbkey.encode(a), idbkey.encode(b)
    key, end = idbkey.decode_from(ea + eb)
    assert ref_cmp(key, a) == 0 and ea + eb == ea + eb[:] and (ea + eb)[end:] == eb


# One test case per FORMAT.md entry.
@pytest.mark.parametrize("key,hexed", [
    (1, "21bff0000000000000"),                 # number: sign bit flipped
    (-2, "213fffffffffffffff"),                # negative: all bits flipped
    (-0.0, "218000000000000000"),              # -0 is +0
    (float("inf"), "21fff0000000000000"),
    ("abc", "3061626300"),                     # string: units + terminator
    ("a\x00b", "306100ff6200"),                # code unit 0 escaped as 00 ff
    ("\u00e9", "30c3a900"),                    # 2-byte unit
    ("\uffff", "30efbfbf00"),                  # 3-byte unit
    ("\U0001F600", "30eda0bdedb88000"),        # astral: two surrogate units
    ([], "5000"),                              # array: 50 ... 00
    ([1, "a"], "5021bff0000000000000306100" "00"),
])
def test_format_doc_entries(key, hexed):
    assert idbkey.encode(key).hex() == hexed


def test_wpt_keyorder_across_types():
    # WPT IndexedDB/keyorder.htm: number < string < array, arrays element-wise
    ordered = [-math.inf, -1.5, 0, 1, 2**53, math.inf, "", "\x00", "A", "a", "aa",
               "\ud7ff", "\U0001F600", "\ue000", "\uffff", [], [-math.inf], [1], [1, 1], [1, "a"],
               ["a"], [[]], [[1]]]
    encs = [idbkey.encode(k) for k in ordered]
    assert encs == sorted(encs) and len(set(encs)) == len(encs)


def test_strings_compare_by_utf16_code_unit():
    # U+1F600 is D83D DE00 in UTF-16: below U+E000 (unlike code point order)
    assert idbkey.encode("\U0001F600") < idbkey.encode("\ue000")


@pytest.mark.parametrize("bad", [None, True, False, {}, {"a": 1}, float("nan"), b"x", set(),
                                 [None], [1, [True]], object(), 10**400])
def test_wpt_key_invalid(bad):
    # WPT IndexedDB/key_invalid.htm: not keys
    with pytest.raises(DataError):
        idbkey.encode(bad)
    assert not idbkey.is_valid(bad)


@pytest.mark.parametrize("good", [0, -0.0, 1.5, -1e300, math.inf, -math.inf, "", "x" * 1000,
                                  [], [[]], [1, "a", [2.5]], (1, 2)])
def test_wpt_key_valid(good):
    # WPT IndexedDB/key_valid.html
    assert idbkey.is_valid(good)


def test_int_and_float_are_one_key():
    assert idbkey.encode(1) == idbkey.encode(1.0)
    assert idbkey.decode(idbkey.encode(3.0)) == 3 and type(idbkey.decode(idbkey.encode(3.0))) is int
    assert idbkey.decode(idbkey.encode(2.5)) == 2.5


def test_deep_nesting_refused():
    k = []
    for _ in range(100):
        k = [k]
    with pytest.raises(DataError):
        idbkey.encode(k)


@pytest.mark.parametrize("raw", [b"", b"\x21\x00", b"\x30abc", b"\x50\x21", b"\x99", b"\x30\xff\x00",
                                 b"\x21" + b"\x00" * 8 + b"x"])
def test_decoder_distrusts_input(raw):
    with pytest.raises(CorruptionError):
        idbkey.decode(raw)


def test_encode_prefix_matches_longer_arrays():
    p = idbkey.encode_prefix(["a"])
    assert idbkey.encode(["a", 1]).startswith(p)
    assert idbkey.encode(["a"]).startswith(p)
    assert not idbkey.encode(["ab", 1]).startswith(p)
    assert idbkey.encode_prefix("a") == p


def test_successor():
    assert idbkey.successor(b"a\xff\xff") == b"b"
    with pytest.raises(ValueError):
        idbkey.successor(b"\xff")


def test_format_doc_matches_code():
    import pathlib
    import re
    from flowdb.jsondb import _keys, _schema
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md").read_text()
    section = doc[doc.index("## JsonDB"):]
    for name, code in [("number", idbkey.TYPE_NUMBER), ("string", idbkey.TYPE_STRING),
                       ("array", idbkey.TYPE_ARRAY)]:
        assert f"| {name} | `0x{code:02X}` |" in section
    for key, hexed in re.findall(r'`([^`]+)` -> `([0-9a-f]+)`', section):
        assert idbkey.encode(eval(key, {"inf": math.inf})).hex() == hexed, key
    assert "`00 4A` (`\"\\x00J\"`)" in section and _keys.PREFIX == b"\x00J"
    assert "catalog           := 00 4A 01 " in section and _keys.CATALOG_KEY == b"\x00J\x01"
    assert _keys.count_key(7) == b"\x00J\x02" + (7).to_bytes(4, "big") + b"\x01"
    assert _keys.keygen_key(7) == b"\x00J\x02" + (7).to_bytes(4, "big") + b"\x02"
    assert _keys.docs_prefix(7) == b"\x00J\x03" + (7).to_bytes(4, "big") + bytes(4)
    assert _keys.index_prefix(7, 3) == b"\x00J\x03" + (7).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert f'{{"version": {_schema.CATALOG_VERSION},' in section
    assert "unique index entry:= 00 4A 03 u32be(store_id) u32be(index_id) idbkey(index key)            -> idbkey(pk)" in section


def test_keyrange_factories_refuse_none():
    """IDBKeyRange.only/lowerBound/upperBound/bound(null) throw DataError;
    None used to give an unbounded range silently."""
    import pytest
    from flowdb import DataError
    from flowdb.jsondb import KeyRange
    for call in (lambda: KeyRange.bound(None, 5), lambda: KeyRange.bound(1, None),
                 lambda: KeyRange.bound(None, None), lambda: KeyRange.only(None),
                 lambda: KeyRange.lower_bound(None), lambda: KeyRange.upper_bound(None)):
        with pytest.raises(DataError):
            call()
    assert KeyRange.lower_bound(1).includes(10) and not KeyRange.upper_bound(1).includes(10)


@given(st.binary(max_size=4), keys, keys)
def test_key_end_is_where_decode_from_stops(prefix, a, b):
    """key_end finds an index entry's primary key without decoding (Index.pk_of)."""
    data = prefix + idbkey.encode(a) + idbkey.encode(b)
    end = len(prefix) + len(idbkey.encode(a))
    assert idbkey.key_end(data, len(prefix)) == idbkey.decode_from(data, len(prefix))[1] == end


@pytest.mark.parametrize("raw", [b"", b"\x21\x00", b"\x30abc", b"\x50\x21", b"\x99", b"\x50" * 70])
def test_key_end_distrusts_input(raw):
    with pytest.raises(CorruptionError):
        idbkey.key_end(raw)
