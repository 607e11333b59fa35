"""Query and ScanRange: what a read asks for, normalised to one shape.

Both are inclusive at both ends (keys bytewise, timestamps), as in the
original flowdb.  A prefix is stored as its own key bounds: keys in
[prefix, prefix + 0xff...] is not expressible for arbitrary binary keys, so
a prefix is kept as such and the reader stops at the first key without it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from flowdb._validate import as_key, as_ts, as_prefix

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Op(enum.Enum):
    """The kinds of mutation a batch can hold."""

    PUT = "put"
    DELETE = "delete"
    DELETE_RANGE = "delete_range"


@dataclass(frozen=True)
class KeyFilter:
    """Which keys a read covers: a prefix, an inclusive range, or all."""

    prefix_bytes: bytes | None = None
    start: bytes | None = None
    end: bytes | None = None

    @staticmethod
    def prefix(p) -> "KeyFilter":
        return KeyFilter(prefix_bytes=as_prefix(p))

    @staticmethod
    def range(a, b) -> "KeyFilter":
        return KeyFilter(start=as_key(a, "start"), end=as_key(b, "end"))

    @staticmethod
    def all() -> "KeyFilter":
        return KeyFilter(prefix_bytes=b"")


@dataclass(frozen=True)
class ScanRange:
    """A key filter plus an inclusive [ts_start, ts_end] time range.

    The constructors are classmethods, so Query (the eager twin) builds
    Query objects from the same code.
    """

    keys: KeyFilter
    ts_start: int = INT64_MIN
    ts_end: int = INT64_MAX

    @classmethod
    def all(cls):
        return cls(KeyFilter.all())

    @classmethod
    def prefix(cls, p):
        return cls(KeyFilter.prefix(p))

    @classmethod
    def key_range(cls, start, end):
        return cls(KeyFilter.range(start, end))

    @classmethod
    def time_range(cls, start, end):
        return cls(KeyFilter.all(), as_ts(start, "start"), as_ts(end, "end"))

    @classmethod
    def prefix_time_range(cls, p, start, end):
        return cls(KeyFilter.prefix(p), as_ts(start, "start"), as_ts(end, "end"))

    @classmethod
    def key_time_range(cls, start_key, end_key, start, end):
        return cls(KeyFilter.range(start_key, end_key), as_ts(start, "start"), as_ts(end, "end"))


class Query(ScanRange):
    """The eager twin of ScanRange: Engine.query(q) returns a list."""
