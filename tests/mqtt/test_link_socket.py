"""The link's socket sends at once (TCP_NODELAY).

Why: a command reply or an event is one small packet; with Nagle's algorithm each waited behind the
previous one's delayed ACK (up to 40 ms): bench_mqtt measured p99 52 ms without it, 12 ms with it.
"""

import socket

from conftest import plant_config, wait_for

from controller.link import client as mq


def test_the_link_socket_has_tcp_nodelay(broker):
    settings = plant_config().mqtt
    c = mq.make_client(settings, "nodelay-test", password=None)
    connected = []
    c.on_connect = lambda *_args: connected.append(True)
    c.connect("127.0.0.1", broker.port, 30)
    c.loop_start()
    try:
        wait_for(lambda: connected, what="connected")
        assert c.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        c.loop_stop()
        c.disconnect()
