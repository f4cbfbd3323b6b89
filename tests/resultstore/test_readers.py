"""BytesReader: the Reader over bytes in memory that whole-value backends return."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resultstore._loops import run_sync
from resultstore.stores.base import BytesReader


@given(
    parts=st.lists(st.binary(max_size=50), max_size=6),
    sizes=st.lists(st.integers(min_value=0, max_value=70), max_size=12),
)
def test_reads_of_any_size_give_back_the_buffers_in_order(
    parts: list[bytes], sizes: list[int]
) -> None:
    reader = BytesReader(parts)
    expected = b"".join(parts)
    got = b""
    for size in sizes:
        chunk = run_sync(reader.read(size))
        assert chunk == expected[len(got) : len(got) + size]
        got += chunk
    got += run_sync(reader.read())
    assert got == expected
    assert run_sync(reader.read(1)) == b""


@given(parts=st.lists(st.binary(max_size=50), max_size=6), size=st.integers(0, 400))
def test_readinto_fills_the_buffer_unless_the_data_ends(parts: list[bytes], size: int) -> None:
    buffer = bytearray(size)
    got = run_sync(BytesReader(parts).readinto(memoryview(buffer)))
    expected = b"".join(parts)
    assert got == min(size, len(expected))
    assert bytes(buffer[:got]) == expected[:got]


def test_a_single_buffer_is_not_copied_up_front() -> None:
    data = bytearray(b"abcdef")
    reader = BytesReader(data)
    data[0:1] = b"X"  # the reader sees the caller's buffer, not a snapshot
    assert run_sync(reader.read(3)) == b"Xbc"


@pytest.mark.parametrize("parts", [[b"abc"], [b"a", b"bc"]])
def test_a_reader_at_its_end_stays_there_whichever_call_got_it_there(
    parts: list[bytes],
) -> None:
    reader = BytesReader(parts)
    assert run_sync(reader.readinto(memoryview(bytearray(10)))) == 3
    assert run_sync(reader.read(10)) == b""  # it replayed the value from the start
    assert run_sync(reader.read()) == b""
    assert run_sync(reader.readinto(memoryview(bytearray(10)))) == 0


def test_read_after_a_partial_readinto_goes_on_from_there() -> None:
    reader = BytesReader([b"ab", b"cdef"])
    assert run_sync(reader.readinto(memoryview(bytearray(3)))) == 3
    assert run_sync(reader.read(2)) == b"de"
    assert run_sync(reader.read()) == b"f"
