"""``--log-level debug``: one line per packet received and sent, like mosquitto ``-v``.

For an operator debugging a client: the direction, the client id and address, the
packet type and its fields (QoS, retain, DUP, packet identifier, topic, payload size,
reason codes, ...) and the packet's size in bytes. The fields also go into the record
(``extra=``), so ``--log-format json`` has them as keys.

Nothing here runs unless the ``trio_mqtt.connection`` logger is enabled for DEBUG:
``MQTTConnection`` asks that once per read and once per write batch, never per
packet, so the PUBLISH path costs the same as without this module when DEBUG is off.
The sent packets are decoded again from the bytes about to be written (what the client
gets, topic aliases and all); a received packet's size is that of its encoding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from trio_mqtt.errors import MQTTProtocolError
from trio_mqtt.mqtt.codec import MAX_PACKET_SIZE, PacketReader, encode
from trio_mqtt.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from trio_mqtt.peer import PeerInfo

__all__ = ["log_received", "log_sent", "packet_fields", "split_frames"]

_PACKET_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}


def packet_fields(packet: Packet) -> dict[str, object]:
    """What the debug line shows of ``packet``, in order (the size is added apart)."""
    fields: dict[str, object] = {}
    match packet:
        case Publish():
            fields["qos"] = packet.qos
            fields["retain"] = int(packet.retain)
            fields["dup"] = int(packet.dup)
            if packet.packet_id is not None:
                fields["packet_id"] = packet.packet_id
            fields["topic"] = packet.topic
            if packet.properties.topic_alias is not None:
                fields["topic_alias"] = packet.properties.topic_alias
            fields["payload_size"] = len(packet.payload)
        case Connect():
            fields["connect_client_id"] = packet.client_id
            fields["protocol"] = int(packet.protocol_version)
            fields["clean_start"] = int(packet.clean_start)
            fields["keep_alive"] = packet.keep_alive
            if packet.username is not None:
                fields["username"] = packet.username
            if packet.will is not None:
                fields["will_topic"] = packet.will.topic
                fields["will_qos"] = packet.will.qos
                fields["will_retain"] = int(packet.will.retain)
        case Connack():
            fields["session_present"] = int(packet.session_present)
            fields["reason_code"] = _hex(packet.reason_code)
        case Puback() | Pubrec() | Pubrel() | Pubcomp():
            fields["packet_id"] = packet.packet_id
            fields["reason_code"] = _hex(packet.reason_code)
        case Subscribe():
            fields["packet_id"] = packet.packet_id
            fields["filters"] = ", ".join(
                f"{request.topic_filter} q{request.qos}" for request in packet.subscriptions
            )
        case Suback() | Unsuback():
            fields["packet_id"] = packet.packet_id
            fields["reason_codes"] = ",".join(_hex(code) for code in packet.reason_codes)
        case Unsubscribe():
            fields["packet_id"] = packet.packet_id
            fields["filters"] = ", ".join(packet.topic_filters)
        case Disconnect():
            fields["reason_code"] = _hex(packet.reason_code)
        case Auth():
            fields["reason_code"] = _hex(packet.reason_code)
            method = packet.properties.authentication_method
            if method is not None:
                fields["authentication_method"] = method
        case _:
            pass  # PINGREQ, PINGRESP: the type says it all
    return fields


def _hex(code: int) -> str:
    return f"0x{code:02x}"


def _text(fields: dict[str, object]) -> str:
    return " ".join(
        f"{key}={value!r}"
        if isinstance(value, str) and not value.startswith("0x")
        else f"{key}={value}"
        for key, value in fields.items()
    )


def _emit(
    log: logging.Logger,
    name: str,
    fields: dict[str, object],
    size: int | None,
    *,
    received: bool,
    client_id: str,
    peer: PeerInfo,
) -> None:
    log.debug(
        "%s %s %s %r (%s): %s%s(%s bytes)",
        "received" if received else "sending",
        name,
        "from" if received else "to",
        client_id,
        peer.describe(),
        _text(fields),
        " " if fields else "",
        "?" if size is None else size,
        extra={
            **peer.log_fields(),
            "event": "packet-received" if received else "packet-sent",
            "client_id": client_id,
            "packet_type": name,
            **fields,
            "size": size,
        },
    )


def log_received(
    log: logging.Logger,
    packets: list[Packet],
    version: ProtocolVersion,
    client_id: str,
    peer: PeerInfo,
) -> None:
    """One DEBUG line per packet read from the client."""
    for packet in packets:
        who = client_id
        if isinstance(packet, Connect):
            version = packet.protocol_version
            who = client_id or packet.client_id
        try:
            size: int | None = len(encode(packet, version))
        except MQTTProtocolError:
            size = None
        name = type(packet).__name__.upper()
        _emit(log, name, packet_fields(packet), size, received=True, client_id=who, peer=peer)


def split_frames(data: bytes | bytearray) -> Iterator[bytes | bytearray]:
    """The complete MQTT packets in ``data``, one by one (a truncated tail is left out)."""
    pos = 0
    end = len(data)
    while pos + 1 < end:
        length = 0
        shift = 0
        index = pos + 1
        while index < end and index < pos + 5:
            byte = data[index]
            length |= (byte & 0x7F) << shift
            shift += 7
            index += 1
            if not byte & 0x80:
                break
        else:
            return
        frame_end = index + length
        if frame_end > end:
            return
        yield data[pos:frame_end]
        pos = frame_end


def log_sent(
    log: logging.Logger,
    data: bytes,
    version: ProtocolVersion,
    client_id: str,
    peer: PeerInfo,
) -> None:
    """One DEBUG line per packet in ``data``, the bytes about to be written."""
    for frame in split_frames(data):
        size = len(frame)
        name = _PACKET_NAMES.get(frame[0] >> 4, "?")
        fields: dict[str, object] = {}
        reader = PacketReader(
            max_packet_size=MAX_PACKET_SIZE, protocol_version=version, server_side=False
        )
        try:
            packets = reader.feed(frame)
        except MQTTProtocolError:
            packets = []
        if len(packets) == 1:
            fields = packet_fields(packets[0])
        _emit(log, name, fields, size, received=False, client_id=client_id, peer=peer)
