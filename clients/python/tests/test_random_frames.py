"""Random and mutated frames thrown at a live server: every connection gets
answers or a clean close, never a hang, and the server keeps serving (and
its connection count returns to where it was)."""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

import perennial

VECTORS = Path(__file__).resolve().parents[3] / "protocol" / "vectors"


def _drain(sock: socket.socket) -> None:
    """Reads until the server closes or stays quiet for a moment."""
    sock.settimeout(0.2)
    try:
        while sock.recv(65536):
            pass
    except (socket.timeout, ConnectionError):
        pass


def test_random_and_mutated_frames(server) -> None:
    host, port = server
    rng = random.Random(99)
    seeds = [p.read_bytes() for p in sorted(VECTORS.glob("*.bin"))]
    with perennial.Client(host, port) as c:
        base = c.stats()["connections"]
    for n in range(300):
        kind = n % 3
        if kind == 0:  # pure noise
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
        elif kind == 1:  # a vector with random bytes flipped
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data)
        else:  # a valid header with a random opcode and a random payload
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 120)))
            data = struct.pack("<IBBHI", 8 + len(payload), 1, rng.randint(0, 255), 0, n) + payload
        with socket.create_connection((host, port)) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            _drain(s)
    with perennial.Client(host, port) as c:
        assert c.ping()
        deadline = time.monotonic() + 5
        while c.stats()["connections"] != base and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.stats()["connections"] == base
