"""Check perennial.protocol against every vector in protocol/vectors/index.json.

Needs no server.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest

from perennial import protocol
from perennial.errors import ProtocolError

VECTORS_DIR = (Path(__file__).resolve().parent / ".." / ".." / ".." / "protocol" / "vectors").resolve()
INDEX = json.loads((VECTORS_DIR / "index.json").read_text(encoding="utf-8"))
LIMITS = protocol.Limits(**INDEX["limits"])
VECTORS: List[Dict[str, Any]] = INDEX["vectors"]


def _data(v: Dict[str, Any]) -> bytes:
    return (VECTORS_DIR / v["file"]).read_bytes()


def test_index_shape() -> None:
    assert INDEX["limits"] == {"max_frame_bytes": 4194304, "max_items": 1000, "max_events": 10000}
    assert len(VECTORS) >= 36
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names))
    for v in VECTORS:
        assert v["file"] == v["name"] + ".bin"
        assert v["expect"] in ("frame", "error", "need_more")
        assert v["expect"] in v
    # a valid request and reply for every opcode but ERROR (reply only)
    seen = {(v["frame"]["opcode"], v["frame"]["flags"]) for v in VECTORS if v["expect"] == "frame"}
    for op in protocol.Opcode:
        if op != protocol.Opcode.ERROR:
            assert (op.name, 0) in seen, op.name
        assert (op.name, 1) in seen, op.name


def _same(a: Any, b: Any) -> bool:
    """Equality that treats ints and floats alike only where JSON would."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vec: Dict[str, Any]) -> None:
    data = _data(vec)
    expect = vec["expect"]
    if expect == "need_more":
        assert protocol.decode_frame(data, LIMITS) is None
        dec = protocol.FrameDecoder(LIMITS)
        dec.feed(data)
        assert dec.next_frame() is None
        assert dec.buffered == len(data)
        return

    if expect == "error":
        want = vec["error"]
        with pytest.raises(ProtocolError) as info:
            protocol.decode_frame(data, LIMITS)
        err = info.value
        assert err.code_name == want["code"], str(err)
        assert err.fatal is want["fatal"]
        assert err.detail == want["detail"]
        assert err.request_id == want["request_id"]
        if not err.fatal:
            assert err.consumed == len(data)
        # byte by byte through the incremental decoder: need-more, then the same error
        dec = protocol.FrameDecoder(LIMITS)
        raised = None
        for i in range(len(data)) if len(data) < 2048 else ():
            dec.feed(data[i:i + 1])
            try:
                f = dec.next_frame()
            except ProtocolError as e:
                raised = e
                break
            assert f is None
        if len(data) < 2048:
            assert raised is not None and raised.code_name == want["code"]
            assert raised.detail == want["detail"]
        return

    want = vec["frame"]
    res = protocol.decode_frame(data, LIMITS)
    assert res is not None
    frame, size = res
    assert size == len(data)
    got = frame.to_json()
    assert _same(got, want), "decoded %r\nexpected %r" % (got, want)
    # encode the JSON form: same bytes
    assert protocol.encode_frame(protocol.Frame.from_json(want)) == data
    # the incremental decoder, fed in two pieces, finds the same frame
    dec = protocol.FrameDecoder(LIMITS)
    dec.feed(data[:len(data) // 2])
    assert dec.next_frame() is None
    dec.feed(data[len(data) // 2:])
    f2 = dec.next_frame()
    assert f2 is not None and _same(f2.to_json(), want)
    assert dec.next_frame() is None and dec.buffered == 0


def test_stream_of_all_valid_frames() -> None:
    """Every valid vector back to back, fed in odd-sized chunks, decodes in order."""
    valid = [v for v in VECTORS if v["expect"] == "frame"]
    stream = b"".join(_data(v) for v in valid)
    dec = protocol.FrameDecoder(LIMITS)
    out = []
    for i in range(0, len(stream), 37):
        dec.feed(stream[i:i + 37])
        while True:
            f = dec.next_frame()
            if f is None:
                break
            out.append(f.to_json())
    assert len(out) == len(valid)
    for got, v in zip(out, valid):
        assert _same(got, v["frame"]), v["name"]


def test_non_fatal_error_skips_frame() -> None:
    """After a non-fatal error the decoder carries on with the next frame; after a fatal one it stays dead."""
    names = {v["name"]: v for v in VECTORS}
    stream = _data(names["unknown_opcode_0x42"]) + _data(names["ping_request"])
    dec = protocol.FrameDecoder(LIMITS)
    dec.feed(stream)
    with pytest.raises(ProtocolError) as info:
        dec.next_frame()
    assert info.value.code_name == "UNKNOWN_OPCODE" and not info.value.fatal
    f = dec.next_frame()
    assert f is not None and f.opcode == protocol.Opcode.PING

    dec = protocol.FrameDecoder(LIMITS)
    dec.feed(_data(names["malformed_frame_length_4"]) + _data(names["ping_request"]))
    for _ in range(2):
        with pytest.raises(ProtocolError) as info:
            dec.next_frame()
        assert info.value.code_name == "MALFORMED_FRAME" and info.value.fatal
