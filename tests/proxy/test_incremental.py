"""ProxyParser: incremental feeding, leftover bytes, detection, and fuzzing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mqtt.errors import ProxyProtocolError
from trio_mqtt.proxy import ProxyHeader, ProxyParser, looks_like_proxy_header, parse_proxy_header

from .builders import SIG, inet, ssl_value, tlv, v2, v2_with_crc
from .test_valid import VALID

PAYLOAD = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x16\x03\x01"
VALID_BYTES = [data for _, data, _ in VALID]


def one_shot(data: bytes) -> tuple[ProxyHeader, int] | str | None:
    """Outcome of parsing ``data`` at once; an error becomes the string "error"."""
    try:
        return parse_proxy_header(data)
    except ProxyProtocolError:
        return "error"


def chunked(data: bytes, cuts: list[int]) -> tuple[ProxyHeader, bytes] | str | None:
    """Outcome of feeding ``data`` to a ProxyParser in pieces cut at ``cuts``."""
    parser = ProxyParser()
    bounds = [0, *sorted(set(cuts)), len(data)]
    try:
        for start, end in itertools.pairwise(bounds):
            header = parser.feed(data[start:end])
            if header is not None:
                return header, parser.leftover + data[end:]
    except ProxyProtocolError:
        return "error"
    return None


@pytest.mark.parametrize("data", VALID_BYTES, ids=[name for name, *_ in VALID])
def test_every_split_position_gives_same_header_and_leftover(data: bytes) -> None:
    stream = data + PAYLOAD
    result = parse_proxy_header(stream)
    assert result is not None
    expected, consumed = result
    assert consumed == len(data)
    for cut in range(len(stream) + 1):
        parser = ProxyParser()
        first = parser.feed(stream[:cut])
        if cut < len(data):
            assert first is None
            header = parser.feed(stream[cut:])
            assert parser.leftover == PAYLOAD
        else:
            header = first
            # stream[cut:] was never fed: it goes straight to the next layer.
            assert parser.leftover == stream[len(data) : cut]
        assert header == expected
        assert parser.header == expected


@pytest.mark.parametrize("data", VALID_BYTES, ids=[name for name, *_ in VALID])
def test_byte_at_a_time(data: bytes) -> None:
    parser = ProxyParser()
    results = [parser.feed(bytes([b])) for b in data]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None
    assert parser.leftover == b""
    assert parser.buffered == 0


def test_empty_feed_is_harmless() -> None:
    parser = ProxyParser()
    assert parser.feed(b"") is None
    assert parser.feed(b"PROXY UNKNOWN\r") is None
    assert parser.feed(b"") is None
    assert parser.buffered == 14
    assert parser.feed(b"\nrest") is not None
    assert parser.leftover == b"rest"


def test_feed_after_header_is_a_caller_bug() -> None:
    parser = ProxyParser()
    assert parser.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(RuntimeError, match="after the header was complete"):
        parser.feed(b"more")


def test_leftover_before_header_is_a_caller_bug() -> None:
    parser = ProxyParser()
    parser.feed(b"PROXY ")
    assert parser.header is None
    with pytest.raises(RuntimeError, match="once a header was parsed"):
        _ = parser.leftover


def test_error_is_sticky() -> None:
    parser = ProxyParser()
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        parser.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        parser.feed(b"PROXY UNKNOWN\r\n")


def test_max_header_size_must_hold_the_fixed_part() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ProxyParser(max_header_size=15)
    assert ProxyParser(max_header_size=16).max_header_size == 16
    assert ProxyParser().max_header_size == 4096


def test_v2_body_is_not_reparsed_until_complete() -> None:
    # A LOCAL header with a 1000-byte NOOP: the parser waits for exactly 1019 bytes.
    data = v2(0x20, 0x00, tlv(0x04, bytes(1000)))
    parser = ProxyParser()
    assert parser.feed(data[:16]) is None
    for i in range(16, len(data) - 1):
        assert parser.feed(data[i : i + 1]) is None
    assert parser.feed(data[-1:] + b"x") is not None
    assert parser.leftover == b"x"


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"", None),
        (b"P", None),
        (b"PROXY", None),
        (b"PROXY ", True),
        (b"PROXY TCP4 1.2.3.4", True),
        (b"\r", None),
        (SIG[:11], None),
        (SIG, True),
        (SIG + b"\x21", True),
        (b"\x10", False),  # MQTT CONNECT
        (b"\x16\x03\x01", False),  # TLS handshake record
        (b"proxy ", False),
        (b"PROXY\r", False),
        (b"PR0", False),
        (SIG[:4] + b"\x01", False),
    ],
)
def test_looks_like_proxy_header(first: bytes, expected: bool | None) -> None:
    assert looks_like_proxy_header(first) is expected


INET_BLOCK = inet(bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8]), 1, 2)

# Inputs that look like headers and are then damaged: they reach deep into the parser.
seeds = st.sampled_from(
    [
        *VALID_BYTES,
        v2_with_crc(0x21, 0x11, INET_BLOCK, tlv(0x20, ssl_value(7, 0, tlv(0x22, b"cn")))),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        SIG,
        b"PROXY ",
    ]
)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif action == "drop":
            del data[pos]
        else:
            data.insert(pos, draw(st.integers(0, 255)))
    return bytes(data) + draw(st.binary(max_size=20))


any_input = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: SIG + b),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    damaged(),
)


@given(any_input)
def test_any_bytes_give_header_none_or_protocol_error(data: bytes) -> None:
    try:
        result = parse_proxy_header(data, max_header_size=512)
    except ProxyProtocolError as exc:
        assert str(exc)
        return
    if result is not None:
        header, consumed = result
        assert 15 <= consumed <= len(data)
        assert header.raw_length == consumed
        assert header.version in (1, 2)
        assert (header.source is None) == (header.destination is None)


@given(any_input, st.lists(st.integers(0, 400), max_size=6))
def test_pieces_and_whole_agree(data: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    whole = one_shot(data)
    pieces = chunked(data, cuts)
    if whole is None or whole == "error":
        assert pieces == whole
    else:
        assert isinstance(whole, tuple)
        header, consumed = whole
        assert pieces == (header, data[consumed:])


@given(st.sampled_from(VALID_BYTES), st.binary(max_size=50), st.data())
def test_valid_input_split_anywhere_with_payload(
    data: bytes, payload: bytes, draw: st.DataObject
) -> None:
    stream = data + payload
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    result = chunked(stream, cuts)
    assert isinstance(result, tuple)
    header, leftover = result
    assert header.raw_length == len(data)
    assert leftover == payload
