"""The harness's free ports: never ones the kernel may give an outgoing connection meanwhile."""

from __future__ import annotations

import socket
from pathlib import Path

from shared.ops.harness import free_port


def test_a_free_port_is_bindable_and_below_the_ephemeral_range() -> None:
    start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < start for port in ports), sorted(ports)
    assert len(ports) > 1  # drawn, not one fixed port
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if it was not free
