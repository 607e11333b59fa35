"""Argument checks shared by every public call: one place that decides what
a key, a timestamp or a TTL is, and which exception a bad one raises."""
from __future__ import annotations

# Keys, timestamps and values are checked by the Cython core, the same code
# that checks every Record of a batch.
from flowdb._core.record import as_key, as_prefix, as_ts, as_value  # noqa: F401 (re-exported)

MAX_KEY = 65535
MAX_VALUE = 64 * 1024 * 1024
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NEVER = INT64_MAX
# The largest TTL whose microseconds fit in int64 (~9.22e12 s).
MAX_TTL_SECS = INT64_MAX // 1_000_000


def as_ttl(ttl, what="ttl_secs") -> int | None:
    """None, or a TTL in seconds in 1..MAX_TTL_SECS."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"{what} must be an int or None, not {type(ttl).__name__}")
    if ttl <= 0 or ttl > MAX_TTL_SECS:
        raise ValueError(f"{what}={ttl} is outside 1..{MAX_TTL_SECS}")
    return ttl


def expiry(ts: int, ttl_secs: int) -> int:
    """expire_at = ts + ttl_secs * 1e6; ValueError if that overflows int64."""
    at = ts + ttl_secs * 1_000_000
    if at > INT64_MAX:
        raise ValueError(f"ts={ts} + ttl_secs={ttl_secs} overflows the 64-bit expire_at")
    return at
