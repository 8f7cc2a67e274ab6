"""Send the request vectors of protocol/vectors to the real server.

Every request vector the server must refuse gets the vector's error code,
detail and request id back in an ERROR frame; after a non-fatal error the
connection still answers a PING, after a fatal one it is closed.  Valid
request vectors must get past the server's codec (their reply is the
opcode's reply, or an ERROR that is not a codec error: e.g. a
min_applied_seq above what was accepted).
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from perennial import protocol
from perennial.protocol import Opcode

VECTORS_DIR = (Path(__file__).resolve().parent / ".." / ".." / ".." / "protocol" / "vectors").resolve()
INDEX = json.loads((VECTORS_DIR / "index.json").read_text(encoding="utf-8"))

CODEC_ERRORS = {"MALFORMED_FRAME", "FRAME_TOO_LARGE", "UNSUPPORTED_VERSION", "UNKNOWN_OPCODE",
                "MALFORMED_PAYLOAD", "INVALID_EVENT"}
PING_ID = 0xFFFFFFF0


def _flags(data: bytes) -> int:
    return struct.unpack_from("<H", data, 6)[0] if len(data) >= 8 else 0


def _request_vectors() -> List[Dict[str, Any]]:
    out = []
    for v in INDEX["vectors"]:
        if v["expect"] == "need_more":
            continue
        data = (VECTORS_DIR / v["file"]).read_bytes()
        if v["expect"] == "frame":
            if v["frame"]["flags"] & 1 or v["frame"]["opcode"] == "SHUTDOWN":
                continue
        else:
            code = v["error"]["code"]
            header_rule = code in ("MALFORMED_FRAME", "FRAME_TOO_LARGE", "UNSUPPORTED_VERSION") or (
                code == "MALFORMED_PAYLOAD" and _flags(data) & ~1)
            if _flags(data) & 1 and not header_rule:
                continue  # a reply layout problem: only clients decode replies
        out.append(v)
    return out


REQUESTS = _request_vectors()


def _read_frames(s: socket.socket, n: int) -> Tuple[List[protocol.Frame], bool]:
    """Up to n frames; also whether the server closed the connection."""
    dec = protocol.FrameDecoder(protocol.Limits(max_frame_bytes=64 << 20))
    out: List[protocol.Frame] = []
    while len(out) < n:
        f = dec.next_frame()
        if f is not None:
            out.append(f)
            continue
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        dec.feed(chunk)
    return out, False


@pytest.mark.parametrize("vec", REQUESTS, ids=[v["name"] for v in REQUESTS])
def test_server_answers_vector(server: Tuple[str, int], vec: Dict[str, Any]) -> None:
    data = (VECTORS_DIR / vec["file"]).read_bytes()
    with socket.create_connection(server, timeout=10) as s:
        s.sendall(data)
        if vec["expect"] == "error" and vec["error"]["fatal"]:
            frames, closed = _read_frames(s, 2)
            assert len(frames) >= 1, "no ERROR frame before the close"
            err = frames[0]
            assert err.opcode == Opcode.ERROR and err.is_reply
            assert err.payload["code"] == vec["error"]["code"]
            assert err.request_id == vec["error"]["request_id"]
            assert closed and len(frames) == 1, "connection not closed after a fatal error"
            return
        s.sendall(protocol.encode_request(Opcode.PING, PING_ID))
        frames, closed = _read_frames(s, 2)
        assert len(frames) == 2, "connection closed (got %r)" % (frames,)
        reply, pong = frames
        assert pong.opcode == Opcode.PING and pong.request_id == PING_ID
        if vec["expect"] == "error":
            want = vec["error"]
            assert reply.opcode == Opcode.ERROR, "expected %s, got %s %r" % (
                want["code"], reply.opcode_name, reply.payload)
            assert reply.payload["code"] == want["code"], reply.payload
            assert reply.payload["detail"] == want["detail"], reply.payload
            assert reply.request_id == want["request_id"]
        else:
            assert reply.request_id == vec["frame"]["request_id"]
            if reply.opcode == Opcode.ERROR:
                assert reply.payload["code"] not in CODEC_ERRORS, reply.payload
            else:
                assert reply.opcode_name == vec["frame"]["opcode"] and reply.is_reply
