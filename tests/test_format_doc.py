"""docs/FORMAT.md is the system of record: its constants must equal the code's.

Each test reads a value out of the document's text and compares it with the
constant the implementing module uses, so neither can change alone.
"""
import math
import pathlib
import re

import pytest

from flowdb import _manifest, _wal
from flowdb._core import block, bloom, checksum, coding, table

DOC = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md").read_text()


def doc_int(pattern):
    m = re.search(pattern, DOC)
    assert m, f"FORMAT.md no longer says {pattern!r}"
    return int(m.group(1), 0)


def doc_magic(prefix):
    m = re.search(prefix + r'magic:8 = "([A-Z]+)\\x00"', DOC)
    assert m, f"FORMAT.md no longer gives the magic after {prefix!r}"
    return m.group(1).encode() + b"\x00"


def test_internal_key_trailer_is_16_bytes():
    assert "(`FDB_TRAILER_SIZE = 8 + 8`)" in DOC
    assert coding.TRAILER_SIZE == 8 + 8


def test_checksum_is_the_documented_crc32c():
    assert doc_int(r'`crc32c\("123456789"\) = (0x[0-9A-F]+)`') == checksum.crc32c(b"123456789")
    assert "polynomial\n0x82F63B78" in DOC


@pytest.mark.parametrize("name,value", [("DELETE", coding.KIND_DELETE), ("PUT", coding.KIND_PUT),
                                        ("RANGE_DEL", coding.KIND_RANGE_DEL)])
def test_kinds_match(name, value):
    assert doc_int(rf"\| `{name}` \| (\d+) \|") == value


def test_key_and_value_limits_match():
    assert doc_int(r"user_key\s+:= 1\.\.(\d+) bytes") == coding.MAX_KEY
    assert coding.MAX_SEQ == 2**doc_int(r"`seq` is a (\d+)-bit sequence number") - 1


def test_wal_header_matches():
    assert doc_magic(r"segment := header record\*\nheader  := ") == _wal.WAL_MAGIC
    assert doc_int(r'"FLOWWAL\\x00"  version:u32le = (\d+)') == _wal.WAL_VERSION
    # magic 8 + version 4 + reserved 4
    assert _wal.WAL_HEADER_SIZE == 8 + 4 + 4
    # crc 4 + length 4 + seq_start 8 + synced 8
    assert _wal.RECORD_HEADER_SIZE == 4 + 4 + 8 + 8
    assert "record  := crc:u32le length:u32le seq_start:u64le synced:u64le batch" in DOC
    assert "(the 20 + length bytes after crc)" in DOC
    assert sorted(_wal._LAYOUTS) == [1, 2] and _wal._LAYOUTS[1].size == 4 + 4 + 8
    assert doc_int(r"`count \* (\d+) <= length - 4`") == _wal.MIN_ENTRY_SIZE


def test_manifest_header_matches():
    assert doc_magic(r"manifest := header edit\*\nheader   := ") == _manifest.MANIFEST_MAGIC
    assert doc_int(r'"FLOWMAN\\x00"  version:u32le = (\d+)') == _manifest.MANIFEST_VERSION
    assert _manifest.MANIFEST_HEADER_SIZE == 8 + 4 + 4
    assert _manifest.EDIT_HEADER_SIZE == 4 + 4
    assert doc_int(r"valid edit has `length >= (\d+)`") == _manifest.MIN_EDIT_BODY
    assert doc_int(r"When the manifest exceeds (\d+) MiB") * 2**20 == _manifest.REWRITE_BYTES


def test_sstable_constants_match():
    assert doc_int(r"BLOCK_TRAILER_SIZE = 1 \+ 4 = (\d+)") == table.BLOCK_TRAILER_SIZE
    assert doc_int(r"BLOCK_HANDLE_SIZE = 8 \+ 8 = (\d+)") == table.BLOCK_HANDLE_SIZE
    assert doc_int(r"FOOTER_SIZE = 4\*16 \+ 4 \+ 4 \+ 8 = (\d+)") == table.FOOTER_SIZE
    assert doc_magic(r"crc:u32le\s+# crc32c of the 68 bytes before it\n\s+") == table.TABLE_MAGIC
    assert doc_int(r"format_version:u32le = (\d+)") == table.FORMAT_VERSION
    assert doc_int(r"BLOCK_RESTART_INTERVAL = (\d+)") == block.RESTART_INTERVAL


def test_bloom_constants_match():
    assert doc_int(r"MurmurHash64A\(user_key, seed = (0x[0-9a-f]+)\)") == bloom.BLOOM_SEED
    assert doc_int(r"clamped to 1\.\.(\d+)") == bloom.MAX_PROBES
    assert doc_int(r"max\((\d+), num_user_keys") == bloom.MIN_FILTER_BITS
    assert doc_int(r"10 bits/key: k = (\d+)") == bloom.num_probes(10) == round(10 * math.log(2))


def test_single_file_store_constants():
    from flowdb import _single_file, _storage

    m = re.search(r'slot      := 4096 bytes at offsets 0 and 4096:\n\s+magic:8 = "([A-Z0-9]+)\\x00"', DOC)
    assert m and m.group(1).encode() + b"\x00" == _single_file.SLOT_MAGIC
    assert _single_file.SLOT_SIZE == 4096 and _single_file.DATA_START == 8192
    assert "starting at a multiple of 4096, at or after 8192" in DOC and _single_file.ALIGN == 4096
    assert _single_file._SLOT.size == doc_int(r"crc32c of the (\d+) bytes before it")
    assert "`DIR/flowdb.db`" in DOC and _storage.STORE_NAME == "flowdb.db"
    assert "at most 12288 bytes" in DOC and _single_file.DATA_START + _single_file.ALIGN == 12288
