"""AWS's PP2_TYPE_AWS (0xEA) TLV: subtype 0x01 carries the VPC endpoint id in ASCII."""

from __future__ import annotations

import pytest

from trio_mqtt.peer import PeerInfo
from trio_mqtt.proxy import ProxyParser

from .builders import inet, tlv, v2

ADDRESSES = inet(bytes([203, 0, 113, 7]), bytes([10, 0, 0, 5]), 51234, 1883)


def header_with(tlvs: bytes) -> PeerInfo:
    header = ProxyParser().feed(v2(0x21, 0x11, ADDRESSES + tlvs))
    assert header is not None
    return PeerInfo(listener="l", transport="tcp", proxy_header=header)


def test_vpc_endpoint_id_is_parsed() -> None:
    peer = header_with(tlv(0xEA, b"\x01vpce-08d2bf15fac5001c9"))
    assert peer.aws_vpc_endpoint_id == "vpce-08d2bf15fac5001c9"
    assert peer.proxy_header is not None
    assert peer.proxy_header.aws_vpc_endpoint_id == "vpce-08d2bf15fac5001c9"
    assert [(t.type, t.value) for t in peer.custom_tlvs] == [(0xEA, b"\x01vpce-08d2bf15fac5001c9")]


@pytest.mark.parametrize(
    "value",
    [
        b"",  # no subtype
        b"\x01",  # no id
        b"\x02vpce-08d2bf15fac5001c9",  # another subtype
        b"\x01vpce-08d2\x00bf15",  # not an id: NUL
        b"\x01vpce 08d2",  # not an id: space
        b"\x01vpce-\xc3\xa9",  # not ASCII
        b"\x01" + b"a" * 256,  # longer than any id
    ],
    ids=["empty", "no-id", "other-subtype", "nul", "space", "non-ascii", "too-long"],
)
def test_anything_else_is_no_id_but_is_kept_raw(value: bytes) -> None:
    peer = header_with(tlv(0xEA, value))
    assert peer.aws_vpc_endpoint_id is None
    assert [(t.type, t.value) for t in peer.tlvs] == [(0xEA, value)]


def test_the_first_vpce_tlv_wins_and_other_tlvs_do_not_matter() -> None:
    peer = header_with(
        tlv(0xE0, b"\x01vpce-not-aws")
        + tlv(0xEA, b"\x01vpce-first")
        + tlv(0xEA, b"\x01vpce-second")
    )
    assert peer.aws_vpc_endpoint_id == "vpce-first"


def test_no_header_no_tlvs() -> None:
    peer = PeerInfo(listener="l", transport="tcp")
    assert (peer.tlvs, peer.custom_tlvs, peer.aws_vpc_endpoint_id) == ((), (), None)
