"""The cluster layer: trio-mqtt nodes sharing traffic and state through NATS JetStream."""
