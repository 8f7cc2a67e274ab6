"""`limits.max_inbox_bytes` bounds what all connections' receive buffers
hold for frames still arriving (review finding, helper-33: 400 clients each
sending the start of a 4 MiB frame took 1.9 GB of memory, and the defaults
allowed about 16 GB). Past the budget a frame needing a larger buffer is
refused BUSY; the budget comes back when the buffers go."""

from __future__ import annotations

import socket
import struct
import time

import perennial
from perennial import protocol as P
from perennial.protocol import Opcode

LIMITS = P.Limits(max_frame_bytes=1 << 26, max_items=1000, max_events=10000)


def _start_of_large_frame(rid: int, length: int = 700_000) -> bytes:
    """A FEEDBACK header announcing `length` bytes, and 20 KB of them."""
    return struct.pack("<IBBHI", length, 1, int(Opcode.FEEDBACK), 0, rid) + b"\0" * 20_000


def _read_frame(s: socket.socket) -> P.Frame:
    dec = P.FrameDecoder(LIMITS)
    s.settimeout(10)
    while True:
        data = s.recv(1 << 16)
        assert data, "closed without a reply"
        dec.feed(data)
        f = dec.next_frame()
        if f is not None:
            return f


def test_partly_received_frames_beyond_the_budget_are_refused_busy(start_server) -> None:
    srv = start_server("[limits]\nmax_inbox_bytes = 1048576\n")
    first = socket.create_connection(srv.address)
    first.sendall(_start_of_large_frame(1))           # its buffer grows to 1 MiB: within the budget
    with srv.client() as c:
        deadline = time.monotonic() + 10               # until the server has read it
        while c.stats()["connection_buffer_bytes"] < 1 << 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.stats()["connection_buffer_bytes"] >= 1 << 20
        assert c.stats()["inbox_budget_refusals"] == 0
    second = socket.create_connection(srv.address)
    second.sendall(_start_of_large_frame(7))
    reply = _read_frame(second)
    assert reply.opcode == Opcode.ERROR and reply.request_id == 7, reply
    assert reply.payload["code"] == "BUSY" and "max_inbox_bytes" in reply.payload["message"], reply.payload
    second.close()
    with srv.client() as c:
        assert c.stats()["inbox_budget_refusals"] == 1
        # A small frame still goes through meanwhile (no larger buffer needed).
        assert c.feedback([perennial.Event(1, 2)]).last_seq == 1
    first.close()                                      # its buffer goes, and the budget with it
    with srv.client() as c:
        big = [perennial.Event(1 + i % 50, 1 + i % 900) for i in range(10_000)]   # a 290 KB frame
        assert c.feedback(big).last_seq == 10_001
        assert c.stats()["inbox_budget_refusals"] == 1
