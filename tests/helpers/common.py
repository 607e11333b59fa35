"""Helpers shared by the engine tests (no flowdb import at module level, so
that collection of unrelated tests never depends on the engine building)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import crc32c as _crc32c

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NEVER = INT64_MAX
MAX_KEY = 65535
MAX_VALUE = 64 * 1024 * 1024
MAX_TTL_SECS = INT64_MAX // 1_000_000

TESTS_DIR = Path(__file__).resolve().parents[1]
HELPERS_DIR = Path(__file__).resolve().parent

FULL = os.environ.get("FLOWDB_FULL") == "1"

# Engine tests run against this backend; FLOWDB_STORAGE_BACKEND=single_file
# reruns them against the single-file one (API.md: both pass the same
# tests).  Child processes inherit it.
BACKEND_ENV = "FLOWDB_STORAGE_BACKEND"


def backend():
    """The StorageBackendKind the tests open stores with."""
    from flowdb import StorageBackendKind

    return StorageBackendKind[os.environ.get(BACKEND_ENV, "multi_file").upper()]


def now_us() -> int:
    """The engine's clock: wall-clock microseconds."""
    return time.time_ns() // 1000


def rec(r):
    """A Record as a plain tuple (key, ts, value, expire_at), for clear diffs."""
    return (r.key, r.ts, r.value, r.expire_at)


def recs(records):
    return [rec(r) for r in records]


def dump(engine):
    """Every live record of the store, as tuples, in the store's order."""
    return recs(engine.query_by_prefix(b""))


def crc32c(data: bytes) -> int:
    return _crc32c.crc32c(data)


def child_env() -> dict:
    """Environment for a child Python that must import the same flowdb."""
    import flowdb

    root = str(Path(flowdb.__file__).resolve().parents[1])
    env = dict(os.environ)
    parts = [root, str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_model_child(script, data_dir, examples, seed) -> dict:
    """Runs a hypothesis model script (tests/reliability/*_model.py) in a child:
    it must exit 0 and print a JSON summary last; some calls refused, some accepted."""
    import json
    p = subprocess.run([sys.executable, str(script), str(data_dir), str(examples), str(seed)],
                       env=child_env(), capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["refused"] > 0 and out["accepted"] > 0, out
    return out


def run_python(code: str, *args, timeout=120) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (same flowdb), returns the result."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          env=child_env(), capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------- WAL format
# docs/FORMAT.md: segment := header record*; header 16 bytes;
# record := crc:u32le length:u32le seq_start:u64le batch

WAL_HEADER = 16
WAL_RECORD_HEADER = 24  # crc 4 + length 4 + seq_start 8 + synced 8 (version 2)


def wal_files(data_dir) -> list[Path]:
    return sorted(Path(data_dir).glob("*.wal"), key=lambda p: int(p.stem))


def sst_files(data_dir) -> list[Path]:
    return sorted(Path(data_dir).glob("*.sst"), key=lambda p: int(p.stem))


def wal_records(path) -> list[tuple[int, int]]:
    """[(offset, total_size)] of the valid records of a WAL segment, in order."""
    data = Path(path).read_bytes()
    out = []
    pos = WAL_HEADER
    while pos + WAL_RECORD_HEADER <= len(data):
        crc, length = struct.unpack_from("<II", data, pos)
        end = pos + WAL_RECORD_HEADER + length
        if end > len(data) or crc32c(data[pos + 4:end]) != crc:
            break
        out.append((pos, end - pos))
        pos = end
    return out


# ----------------------------------------------------------- MANIFEST format
# manifest := header edit*; header 16 bytes; edit := crc:u32le length:u32le body

MANIFEST_HEADER = 16


def manifest_edits(path) -> list[tuple[int, int]]:
    """[(offset, total_size)] of the valid edits of a MANIFEST."""
    data = Path(path).read_bytes()
    out = []
    pos = MANIFEST_HEADER
    while pos + 8 <= len(data):
        crc, length = struct.unpack_from("<II", data, pos)
        end = pos + 8 + length
        if end > len(data) or crc32c(data[pos + 4:end]) != crc:
            break
        out.append((pos, end - pos))
        pos = end
    return out


def flip_byte(path, offset, mask=0xFF):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))
