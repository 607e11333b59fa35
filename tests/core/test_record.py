"""Record: validation, equality, repr, pickling, key_str -- against a tiny
pure-Python reference of API.md "Data model"."""
import copy
import pickle

import pytest
from hypothesis import given, strategies as st

from flowdb._core.record import NEVER, Record

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_VALUE = 64 * 1024 * 1024


# -- reference -----------------------------------------------------------------

def ref_record(key, ts, value, expire_at=INT64_MAX):
    """The fields a valid Record holds, or the exception type it raises
    (arguments are checked in order, each fully before the next)."""
    def as_int(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError
        if not INT64_MIN <= v <= INT64_MAX:
            raise ValueError
        return v
    try:
        if isinstance(key, str):
            key = key.encode("utf-8")
        elif isinstance(key, (bytes, bytearray, memoryview)):
            key = bytes(key)
        else:
            raise TypeError
        if not 1 <= len(key) <= 65535:
            raise ValueError
        ts = as_int(ts)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError
        value = bytes(value)
        if len(value) > MAX_VALUE:
            raise ValueError
        expire_at = as_int(expire_at)
    except (TypeError, ValueError) as e:
        return type(e) if type(e) in (TypeError, ValueError) else ValueError
    return (key, ts, value, expire_at)


def fields(r):
    return (r.key, r.ts, r.value, r.expire_at)


anything = st.one_of(st.binary(max_size=4), st.text(max_size=3), st.integers(-2**64, 2**64),
                     st.booleans(), st.none(), st.floats(allow_nan=False), st.just(bytearray(b"ba")))


@given(anything, anything, anything, anything)
def test_constructor_matches_reference(key, ts, value, expire_at):
    want = ref_record(key, ts, value, expire_at)
    if isinstance(want, type):
        with pytest.raises(want):
            Record(key, ts, value, expire_at)
    else:
        r = Record(key, ts, value, expire_at)
        assert fields(r) == want
        assert type(r.key) is bytes and type(r.value) is bytes


# -- named edge cases -------------------------------------------------------------

def test_never_is_int64_max():
    assert NEVER == 2**63 - 1
    assert Record(b"k", 1, b"v").expire_at == NEVER


def test_keyword_arguments():
    r = Record(key=b"k", ts=1, value=b"v", expire_at=7)
    assert fields(r) == (b"k", 1, b"v", 7)


def test_str_key_is_utf8_encoded():
    assert Record("é€", 0, b"").key == "é€".encode("utf-8")


def test_str_key_with_lone_surrogate_is_value_error():
    with pytest.raises(ValueError):          # UnicodeEncodeError is a ValueError
        Record("\ud800", 0, b"")


def test_bytearray_and_memoryview_are_copied_to_bytes():
    ba = bytearray(b"key")
    r = Record(ba, 0, memoryview(b"val"))
    ba[0] = ord("X")
    assert fields(r) == (b"key", 0, b"val", NEVER)
    assert type(r.key) is bytes and type(r.value) is bytes


def test_bytes_subclass_key_becomes_plain_bytes():
    class B(bytes):
        pass
    assert type(Record(B(b"k"), 0, B(b"v")).key) is bytes


def test_empty_key_is_value_error():
    with pytest.raises(ValueError):
        Record(b"", 0, b"v")
    with pytest.raises(ValueError):
        Record("", 0, b"v")


def test_key_of_65535_bytes_is_accepted_65536_refused():
    assert len(Record(b"k" * 65535, 0, b"").key) == 65535
    with pytest.raises(ValueError):
        Record(b"k" * 65536, 0, b"")


def test_key_any_bytes_including_nul_and_ff():
    assert Record(b"\x00\xff\x00", 0, b"").key == b"\x00\xff\x00"


def test_key_wrong_type_is_type_error():
    for bad in (None, 1, 1.5, [b"k"], object()):
        with pytest.raises(TypeError):
            Record(bad, 0, b"v")


def test_ts_bool_is_type_error():
    with pytest.raises(TypeError):
        Record(b"k", True, b"v")
    with pytest.raises(TypeError):
        Record(b"k", 0, b"v", expire_at=False)


def test_ts_float_and_none_are_type_error():
    for bad in (1.0, None, "1"):
        with pytest.raises(TypeError):
            Record(b"k", bad, b"v")


def test_ts_int64_bounds():
    assert Record(b"k", INT64_MIN, b"").ts == INT64_MIN
    assert Record(b"k", INT64_MAX, b"").ts == INT64_MAX


def test_ts_out_of_int64_is_value_error_not_overflow_error():
    for bad in (2**63, INT64_MIN - 1, 2**200):
        with pytest.raises(ValueError) as exc:
            Record(b"k", bad, b"v")
        assert not isinstance(exc.value, OverflowError)
        with pytest.raises(ValueError) as exc:
            Record(b"k", 0, b"v", bad)
        assert not isinstance(exc.value, OverflowError)


def test_int_subclass_ts_is_accepted():
    class T(int):
        pass
    assert Record(b"k", T(5), b"").ts == 5


def test_value_wrong_type_is_type_error():
    for bad in ("str", None, 1, [1]):
        with pytest.raises(TypeError):
            Record(b"k", 0, bad)


def test_value_64_mib_accepted_one_more_refused():
    big = bytes(MAX_VALUE)
    assert len(Record(b"k", 0, big).value) == MAX_VALUE
    with pytest.raises(ValueError):
        Record(b"k", 0, big + b"x")


def test_empty_value_allowed():
    assert Record(b"k", 0, b"").value == b""


def test_key_str_decodes_utf8():
    assert Record("sensor/é", 0, b"").key_str() == "sensor/é"


def test_key_str_replaces_bad_bytes():
    assert Record(b"a\xffb", 0, b"").key_str() == "a\ufffdb"


def test_equal_when_all_four_fields_equal():
    assert Record(b"k", 1, b"v", 5) == Record("k", 1, bytearray(b"v"), 5)
    assert not (Record(b"k", 1, b"v", 5) != Record(b"k", 1, b"v", 5))


@pytest.mark.parametrize("other", [
    Record(b"K", 1, b"v", 5), Record(b"k", 2, b"v", 5),
    Record(b"k", 1, b"V", 5), Record(b"k", 1, b"v", 6)],
    ids=["key", "ts", "value", "expire_at"])
def test_unequal_when_one_field_differs(other):
    r = Record(b"k", 1, b"v", 5)
    assert r != other and not (r == other)


def test_comparison_with_other_types_is_not_implemented():
    r = Record(b"k", 1, b"v", 5)
    assert r.__eq__((b"k", 1, b"v", 5)) is NotImplemented
    assert r != (b"k", 1, b"v", 5)
    assert r != None  # noqa: E711


def test_unhashable_because_mutable():
    with pytest.raises(TypeError):
        hash(Record(b"k", 1, b"v"))


def test_fields_are_mutable():
    r = Record(b"k", 1, b"v")
    r.key, r.ts, r.value, r.expire_at = b"k2", 2, b"v2", 3
    assert fields(r) == (b"k2", 2, b"v2", 3)


def test_repr_never():
    assert repr(Record(b"k", 1, b"v")) == "Record(key=b'k', ts=1, value=b'v', expire_at=NEVER)"


def test_repr_with_expiry():
    assert repr(Record(b"k", -1, b"", 10)) == "Record(key=b'k', ts=-1, value=b'', expire_at=10)"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol):
    r = Record(b"\x00k\xff", INT64_MIN, b"v" * 100, 123)
    back = pickle.loads(pickle.dumps(r, protocol))
    assert type(back) is Record and back == r


def test_copy_and_deepcopy():
    r = Record(b"k", 1, b"v", 2)
    assert copy.copy(r) == r and copy.copy(r) is not r
    assert copy.deepcopy(r) == r


def test_class_lives_in_its_package_module():
    # Pickles name the module; it must be importable as flowdb._core.record.
    assert Record.__module__ == "flowdb._core.record"
