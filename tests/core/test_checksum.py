"""The core's CRC-32C (include/fdb_crc32c.h) against the crc32c package, the
reference: the instruction path and the table path, every length around the
interleaved streams' strides, any start alignment, any starting value."""
import os

import crc32c as reference
import pytest
from hypothesis import given, settings, strategies as st

from flowdb._core import checksum
from flowdb._core.checksum import crc32c


@pytest.fixture(params=["instruction", "table"])
def path(request):
    if request.param == "instruction" and not checksum.hardware():
        pytest.skip("this CPU has no crc32 instruction (SSE4.2)")
    checksum._use_hardware(request.param == "instruction")
    yield request.param
    checksum._use_hardware(True)


def test_check_value():
    # The CRC-32C check value (RFC 3720, B.4) and the iSCSI test vectors.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E


# 768 and 24576 are the strides of the short and long interleaved streams.
LENGTHS = sorted({*range(0, 80), *(b + d for b in (256, 768, 8192, 24576, 3 * 24576)
                                   for d in (-9, -1, 0, 1, 7, 8, 9))})


def test_every_length_and_alignment(path):
    data = os.urandom(3 * 24576 + 40)
    for n in LENGTHS:
        for align in (0, 1, 3, 7):
            chunk = data[align:align + n]
            assert crc32c(chunk) == reference.crc32c(chunk), (path, n, align)
            assert crc32c(memoryview(data)[align:align + n]) == reference.crc32c(chunk)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=5000), value=st.integers(0, 2**32 - 1),
       cut=st.integers(0, 5000))
def test_continues_like_the_reference(data, value, cut):
    for hw in (True, False):
        checksum._use_hardware(hw and checksum.hardware())
        assert crc32c(data, value) == reference.crc32c(data, value=value)
        head, tail = data[:cut], data[cut:]
        assert crc32c(tail, crc32c(head)) == crc32c(data)
    checksum._use_hardware(True)


def test_large_buffers_release_the_gil_and_agree(path):
    data = os.urandom(checksum.HOLD_GIL_MAX + 12345)
    assert crc32c(data) == reference.crc32c(data)
    assert crc32c(bytearray(data), 7) == reference.crc32c(data, value=7)


@pytest.mark.parametrize("bad", [None, "text", 12, [1, 2]])
def test_refuses_what_is_not_a_buffer(bad):
    with pytest.raises(TypeError):
        crc32c(bad)


def test_refuses_a_value_outside_32_bits():
    with pytest.raises(OverflowError):
        crc32c(b"x", 2**32)
    with pytest.raises(OverflowError):
        crc32c(b"x", -1)
