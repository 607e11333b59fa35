"""Type stubs for the compiled flowdb._core.record module."""

NEVER: int

class Record:
    """One time-series record: (key, ts) -> value, live while expire_at > now (us)."""

    key: bytes
    ts: int
    value: bytes
    expire_at: int

    def __init__(self, key: bytes | str | bytearray | memoryview, ts: int,
                 value: bytes | bytearray | memoryview, expire_at: int = ...) -> None: ...
    def key_str(self) -> str: ...
    def __eq__(self, other: object) -> bool: ...

def as_key(key: bytes | str | bytearray | memoryview, what: str = ...) -> bytes: ...
def as_ts(ts: int, what: str = ...) -> int: ...
def as_value(value: bytes | bytearray | memoryview, what: str = ...) -> bytes: ...
