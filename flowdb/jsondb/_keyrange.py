"""KeyRange: IDBKeyRange, and its translation to engine byte ranges."""
from flowdb._errors import DataError
from flowdb.jsondb import _keys


class KeyRange:
    """A range of keys, as IDBKeyRange.  Build with only / lower_bound /
    upper_bound / bound; `None` bounds are unbounded."""

    __slots__ = ("lower", "upper", "lower_open", "upper_open", "_lo", "_hi")

    def __init__(self, lower=None, upper=None, lower_open=False, upper_open=False):
        self.lower = lower
        self.upper = upper
        self.lower_open = bool(lower_open)
        self.upper_open = bool(upper_open)
        self._lo = None if lower is None else _keys.encode(lower)
        self._hi = None if upper is None else _keys.encode(upper)
        if self._lo is not None and self._hi is not None:
            if self._lo > self._hi or (self._lo == self._hi and (self.lower_open or self.upper_open)):
                raise DataError("the lower bound of a KeyRange is above its upper bound")

    @classmethod
    def only(cls, key):
        if key is None:
            raise DataError("None is not a valid key")
        return cls(key, key)

    @classmethod
    def lower_bound(cls, key, open=False):
        if key is None:
            raise DataError("None is not a valid key")
        return cls(key, None, lower_open=open)

    @classmethod
    def upper_bound(cls, key, open=False):
        if key is None:
            raise DataError("None is not a valid key")
        return cls(None, key, upper_open=open)

    @classmethod
    def bound(cls, lower, upper, lower_open=False, upper_open=False):
        if lower is None or upper is None:      # IDBKeyRange.bound(null, ...): DataError
            raise DataError("None is not a valid key (KeyRange.bound needs both bounds)")
        return cls(lower, upper, lower_open, upper_open)

    def includes(self, key):
        enc = _keys.encode(key)
        return self.includes_encoded(enc)

    def includes_encoded(self, enc):
        if self._lo is not None and (enc < self._lo or (self.lower_open and enc == self._lo)):
            return False
        if self._hi is not None and (enc > self._hi or (self.upper_open and enc == self._hi)):
            return False
        return True

    def byte_range(self, base):
        """[lo, hi) over engine keys base + idbkey(k) + anything, for the
        keys k in this range (every idbkey is prefix-free)."""
        if self._lo is None:
            lo = base
        elif self.lower_open:
            lo = _keys.successor(base + self._lo)
        else:
            lo = base + self._lo
        if self._hi is None:
            hi = _keys.successor(base)
        elif self.upper_open:
            hi = base + self._hi
        else:
            hi = _keys.successor(base + self._hi)
        return lo, hi

    def __repr__(self):
        return (f"KeyRange({self.lower!r}, {self.upper!r}, lower_open={self.lower_open}, "
                f"upper_open={self.upper_open})")


def as_range(query):
    """None, a KeyRange, or a key (-> KeyRange.only)."""
    if query is None or isinstance(query, KeyRange):
        return query
    return KeyRange.only(query)
