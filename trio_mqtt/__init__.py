"""trio-mqtt: an MQTT 3.1.1 and 5.0 broker on Trio, built to sit behind load balancers."""

from trio_mqtt._version import __version__
from trio_mqtt.broker.core import ClientSummary, ConnectHook, PublishHook, SubscribeHook
from trio_mqtt.broker.enhanced_auth import AuthContinue, Authenticator, AuthFailure, AuthSuccess
from trio_mqtt.broker.message import Message
from trio_mqtt.config import (
    BrokerConfig,
    ListenerConfig,
    ProxyMode,
    ProxyPolicy,
    TLSConfig,
    Transport,
    load_config,
)
from trio_mqtt.errors import (
    ConfigError,
    ListenerBindError,
    LocalProtocolError,
    MQTTProtocolError,
    ProxyProtocolError,
    RemoteProtocolError,
    TrioMQTTError,
)
from trio_mqtt.mqtt.packets import Properties
from trio_mqtt.mqtt.reason_codes import ReasonCode
from trio_mqtt.peer import Endpoint, PeerInfo, TLSInfo
from trio_mqtt.server.app import Broker, MessageStream, open_broker, serve

__all__ = [
    "AuthContinue",
    "AuthFailure",
    "AuthSuccess",
    "Authenticator",
    "Broker",
    "BrokerConfig",
    "ClientSummary",
    "ConfigError",
    "ConnectHook",
    "Endpoint",
    "ListenerBindError",
    "ListenerConfig",
    "LocalProtocolError",
    "MQTTProtocolError",
    "Message",
    "MessageStream",
    "PeerInfo",
    "Properties",
    "ProxyMode",
    "ProxyPolicy",
    "ProxyProtocolError",
    "PublishHook",
    "ReasonCode",
    "RemoteProtocolError",
    "SubscribeHook",
    "TLSConfig",
    "TLSInfo",
    "Transport",
    "TrioMQTTError",
    "__version__",
    "load_config",
    "open_broker",
    "serve",
]
