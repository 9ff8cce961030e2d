"""A Trio-native NATS client for the cluster layer: sans-IO protocol, thin trio layer.

``protocol`` parses and serializes the NATS client protocol without I/O.
"""
