"""Protocol rules of one connection, driven with bytes through ``MQTTConnection``.

Keep alive 0 on 3.1.1, a client's Maximum Packet Size against our CONNACK, PUBREC with
a failure reason code, acknowledgements of the wrong type, and client PUBLISH to ``$``
topics. No sockets: the core on a ``FakeClock`` (tests/helpers.py).
"""

from __future__ import annotations

from helpers import V5, V311, Client, FakeClock, make_core


def test_mqtt311_keep_alive_zero_is_accepted_under_max_keepalive(clock: FakeClock) -> None:
    """3.1.1 section 3.1.2.10: 0 turns keep alive off; the server may not refuse it.

    Above max_keepalive a 3.1.1 client is still refused (return code 2, as mosquitto);
    a 5.0 client asking for 0 is told max_keepalive (Server Keep Alive) as before.
    """
    core = make_core(clock, max_keepalive=60)
    c = Client(core, V311)
    # CONNECT, 3.1.1, clean session, keep alive 0, client id "z", written out by hand
    c.conn.receive_data(bytes.fromhex("100d00044d5154540402000000017a"))
    assert c.raw() == bytes.fromhex("20020000")  # CONNACK, return code 0
    assert not c.conn.wants_close
    assert [s.keep_alive for s in core.client_summaries()] == [0]
    clock.now += 86400.0  # a day of silence: no keep-alive timeout
    c.conn.handle_timer()
    assert not c.conn.wants_close

    greedy = Client(core, V311)
    assert greedy.connect("greedy", keep_alive=61).reason_code == 0x85  # return code 2
    assert greedy.conn.wants_close

    v5 = Client(core, V5)
    connack = v5.connect("v5", keep_alive=0)
    assert connack.reason_code == 0
    assert connack.properties.server_keep_alive == 60
    assert v5.conn.keep_alive == 60
