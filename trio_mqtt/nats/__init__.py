"""A Trio-native NATS client for the cluster layer: sans-IO protocol, thin trio layer.

``protocol`` parses and serializes the NATS client protocol without I/O; ``client``
runs it over a trio socket (:func:`open_nats_client`); ``jetstream`` adds streams,
acknowledged publishing and key-value buckets as JSON request/reply on top.
"""

from trio_mqtt.nats.client import (
    NATSClient,
    NATSConnectionClosed,
    NATSConnectionError,
    NATSTimeoutError,
    NoRespondersError,
    open_nats_client,
)
from trio_mqtt.nats.jetstream import (
    Entry,
    InvalidKeyError,
    JetStreamError,
    KeyExistsError,
    KeyValue,
    PubAck,
    Watcher,
    WrongRevisionError,
    api_request,
    ensure_stream,
    publish_acked,
)
from trio_mqtt.nats.protocol import (
    NEED_DATA,
    Closed,
    Err,
    Event,
    Headers,
    Info,
    Msg,
    NATSConnection,
    NATSError,
    NATSLocalError,
    NATSProtocolError,
    Ok,
    Ping,
    Pong,
)

__all__ = [
    "NEED_DATA",
    "Closed",
    "Entry",
    "Err",
    "Event",
    "Headers",
    "Info",
    "InvalidKeyError",
    "JetStreamError",
    "KeyExistsError",
    "KeyValue",
    "Msg",
    "NATSClient",
    "NATSConnection",
    "NATSConnectionClosed",
    "NATSConnectionError",
    "NATSError",
    "NATSLocalError",
    "NATSProtocolError",
    "NATSTimeoutError",
    "NoRespondersError",
    "Ok",
    "Ping",
    "Pong",
    "PubAck",
    "Watcher",
    "WrongRevisionError",
    "api_request",
    "ensure_stream",
    "open_nats_client",
    "publish_acked",
]
