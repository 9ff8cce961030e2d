"""Tests of the sans-IO MQTT codec and topics."""
