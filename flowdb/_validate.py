"""Argument checks shared by every public call: one place that decides what
a key, a timestamp or a TTL is, and which exception a bad one raises."""
from __future__ import annotations

MAX_KEY = 65535
MAX_VALUE = 64 * 1024 * 1024
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NEVER = INT64_MAX
# The largest TTL whose microseconds fit in int64 (~9.22e12 s).
MAX_TTL_SECS = INT64_MAX // 1_000_000


def as_key(key, what="key") -> bytes:
    """A record key: bytes (str is UTF-8 encoded), 1..65535 bytes."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    elif isinstance(key, (bytearray, memoryview)):
        key = bytes(key)
    elif not isinstance(key, bytes):
        raise TypeError(f"{what} must be bytes or str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"{what} must not be empty")
    if len(key) > MAX_KEY:
        raise ValueError(f"{what} is {len(key)} bytes; the limit is {MAX_KEY}")
    return key


def as_prefix(prefix) -> bytes:
    """A key prefix: like a key, but b"" (every key) is allowed."""
    if prefix == b"" or prefix == "":
        return b""
    return as_key(prefix, "prefix")


def as_ts(ts, what="ts") -> int:
    """A signed 64-bit timestamp (bool is refused: it is not a time)."""
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise TypeError(f"{what} must be an int, not {type(ts).__name__}")
    if not INT64_MIN <= ts <= INT64_MAX:
        raise ValueError(f"{what}={ts} does not fit in a signed 64-bit integer")
    return ts


def as_ttl(ttl, what="ttl_secs") -> int | None:
    """None, or a TTL in seconds in 1..MAX_TTL_SECS."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"{what} must be an int or None, not {type(ttl).__name__}")
    if ttl <= 0 or ttl > MAX_TTL_SECS:
        raise ValueError(f"{what}={ttl} is outside 1..{MAX_TTL_SECS}")
    return ttl


def as_value(value, what="value") -> bytes:
    """A record value: bytes-like, at most 64 MiB."""
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    elif not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE:
        raise ValueError(f"{what} is {len(value)} bytes; the limit is {MAX_VALUE}")
    return value


def expiry(ts: int, ttl_secs: int) -> int:
    """expire_at = ts + ttl_secs * 1e6; ValueError if that overflows int64."""
    at = ts + ttl_secs * 1_000_000
    if at > INT64_MAX:
        raise ValueError(f"ts={ts} + ttl_secs={ttl_secs} overflows the 64-bit expire_at")
    return at
