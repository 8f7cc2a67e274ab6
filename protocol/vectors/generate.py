#!/usr/bin/env python3
"""Generate the Perennial wire-protocol test vectors.

Standard library only, and deliberately independent of every codec in this
repository: each frame is assembled byte by byte with ``struct.pack`` so that
the vectors are a reference the Swift codec and the Python client are both
checked against (see ../PROTOCOL.md, "Test vectors").

Run from anywhere:

    python3 protocol/vectors/generate.py

It rewrites ``<name>.bin`` for every vector and ``index.json`` in the folder
of this script, and removes ``.bin`` files that no vector names any more.
The output is deterministic.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))

MAX_FRAME_BYTES = 4194304
MAX_ITEMS = 1000
MAX_EVENTS = 10000

REPLY = 0x0001

OPCODES = {
    "HELLO": 0x01,
    "PING": 0x02,
    "RECOMMEND": 0x03,
    "SCORE": 0x04,
    "FEEDBACK": 0x05,
    "UPSERT_ITEM": 0x06,
    "STATS": 0x07,
    "DELETE_ITEMS": 0x08,
    "DELETE_USERS": 0x09,
    "RELOAD": 0x10,
    "SNAPSHOT": 0x11,
    "SHUTDOWN": 0x12,
    "ERROR": 0x7F,
}

ERROR_CODES = {
    "MALFORMED_FRAME": 1,
    "FRAME_TOO_LARGE": 2,
    "UNSUPPORTED_VERSION": 3,
    "UNKNOWN_OPCODE": 4,
    "MALFORMED_PAYLOAD": 5,
    "INVALID_ARGUMENT": 6,
    "INVALID_EVENT": 7,
    "UNKNOWN_SCORER": 8,
    "UNAUTHORIZED": 9,
    "NOT_SUPPORTED": 10,
    "TIMEOUT": 11,
    "SHUTTING_DOWN": 12,
    "STORAGE": 13,
    "INTERNAL": 14,
    "BUSY": 15,
    "CAPACITY": 16,
    "RECOVERING": 17,
}

FATAL = {"MALFORMED_FRAME", "FRAME_TOO_LARGE", "UNSUPPORTED_VERSION", "BUSY"}

KINDS = {"view": 1, "click": 2, "purchase": 3, "rating": 4}

MAX_ID = 2**63 - 1

RULES = [
    "A vector file holds exactly one frame (or a prefix of one). Decode it with the "
    "limits above; a valid vector must consume every byte of the file.",
    "Header (needs the 12 header bytes; fewer -> need_more): 1. length < 8 -> "
    "MALFORMED_FRAME (fatal); 2. length > max_frame_bytes -> FRAME_TOO_LARGE (fatal), "
    "decided on the header alone; 3. version != 1 -> UNSUPPORTED_VERSION (fatal). "
    "Otherwise fewer than 4 + length bytes -> need_more. Then, on the complete frame: "
    "4. reserved flag bits (any bit but 0) -> MALFORMED_PAYLOAD; 5. opcode not in the "
    "table, or ERROR without the REPLY flag -> UNKNOWN_OPCODE.",
    "Frames without the REPLY flag decode with the request layout of their opcode, "
    "frames with it with the reply layout.",
    "Payload fields are read and checked in wire order; the first problem wins.",
    "Structural problems -> MALFORMED_PAYLOAD: payload shorter than its layout, bytes "
    "left over, invalid UTF-8 in a str16/str32, a reply f32 that is NaN or infinite, a "
    "reply u8 flag (SCORE known, UPSERT_ITEM created/truncated) other than 0 or 1, a "
    "reply id that is 0 or >= 2^63.",
    "Requests only: well-formed fields out of range -> INVALID_ARGUMENT: an id (user, "
    "item, list element) of 0 or >= 2^63, RECOMMEND k outside 1..max_items, an ids16 "
    "count above max_items, SCORE items count outside 1..max_items, FEEDBACK n outside "
    "1..max_events, a RECOMMEND session_id over 256 bytes. A count is checked as soon as it is read, before its elements, so "
    "a count above its limit is INVALID_ARGUMENT even when the payload then ends early.",
    "FEEDBACK events are checked as each is read: kind not 1..4, value NaN/infinite, "
    "rating outside 0..10, other kinds' weight outside 0..1000, user or item 0 or >= "
    "2^63 -> INVALID_EVENT with detail = the 0-based event index.",
    "error.request_id is the header's request_id field (always readable when a codec "
    "error is raised, since every check needs the 12 header bytes); error.detail is 0 "
    "except for INVALID_EVENT.",
    "Replies are not range-checked against the limits (counts, k); reply vectors are "
    "valid frames.",
]


# --------------------------------------------------------------------------
# byte-level helpers


def u8(v: int) -> bytes:
    return struct.pack("<B", v)


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def i64(v: int) -> bytes:
    return struct.pack("<q", v)


def f32(v: float) -> bytes:
    b = struct.pack("<f", v)
    if not math.isnan(v):
        # every float in a vector must be exactly representable in binary32
        assert struct.unpack("<f", b)[0] == v, v
    return b


def str16(s: str) -> bytes:
    b = s.encode("utf-8")
    return u16(len(b)) + b


def raw16(b: bytes) -> bytes:
    return u16(len(b)) + b


def str32(s: str) -> bytes:
    b = s.encode("utf-8")
    return u32(len(b)) + b


def raw32(b: bytes) -> bytes:
    return u32(len(b)) + b


def ids16(ids: List[int]) -> bytes:
    return u16(len(ids)) + b"".join(u64(i) for i in ids)


def header(opcode: int, flags: int, request_id: int, payload_len: int,
           version: int = 1, length: Optional[int] = None) -> bytes:
    if length is None:
        length = 8 + payload_len
    return u32(length) + u8(version) + u8(opcode) + u16(flags) + u32(request_id)


def frame(opcode: int, flags: int, request_id: int, payload: bytes,
          version: int = 1) -> bytes:
    return header(opcode, flags, request_id, len(payload), version) + payload


def event(user: int, item: int, kind: int, value: float, timestamp: int) -> bytes:
    b = u64(user) + u64(item) + u8(kind) + f32(value) + i64(timestamp)
    assert len(b) == 29
    return b


def ev_json(user: int, item: int, kind: str, value: float, timestamp: int) -> Dict[str, Any]:
    return {"user": user, "item": item, "kind": kind, "value": value, "timestamp": timestamp}


# --------------------------------------------------------------------------
# vector registry

VECTORS: List[Tuple[str, bytes, Dict[str, Any]]] = []


def add_frame(name: str, description: str, data: bytes, opcode: str, flags: int,
              request_id: int, payload: Dict[str, Any]) -> None:
    entry = {
        "name": name,
        "file": name + ".bin",
        "description": description,
        "expect": "frame",
        "frame": {
            "version": 1,
            "opcode": opcode,
            "flags": flags,
            "request_id": request_id,
            "payload": payload,
        },
    }
    VECTORS.append((name, data, entry))


def add_error(name: str, description: str, data: bytes, code: str, request_id: int,
              detail: int = 0) -> None:
    assert code in ERROR_CODES
    entry = {
        "name": name,
        "file": name + ".bin",
        "description": description,
        "expect": "error",
        "error": {
            "code": code,
            "fatal": code in FATAL,
            "detail": detail,
            "request_id": request_id,
        },
    }
    VECTORS.append((name, data, entry))


def add_need_more(name: str, description: str, data: bytes) -> None:
    entry = {
        "name": name,
        "file": name + ".bin",
        "description": description,
        "expect": "need_more",
        "need_more": True,
    }
    VECTORS.append((name, data, entry))


# --------------------------------------------------------------------------
# valid frames: a request and a reply for every opcode


def valid_vectors() -> None:
    op = OPCODES

    # HELLO
    p = u16(1) + str16("perennial-py") + str16("")
    add_frame("hello_request", "HELLO request without a token", frame(op["HELLO"], 0, 1, p),
              "HELLO", 0, 1, {"protocol_version": 1, "client_name": "perennial-py", "token": ""})
    p = u16(1) + str16("client-\u00e9t\u00e9") + str16("s3cret-t\u00f6ken")
    add_frame("hello_request_token", "HELLO request with a token; non-ASCII client name",
              frame(op["HELLO"], 0, 2, p), "HELLO", 0, 2,
              {"protocol_version": 1, "client_name": "client-\u00e9t\u00e9",
               "token": "s3cret-t\u00f6ken"})
    p = u16(1) + u32(MAX_FRAME_BYTES) + u32(MAX_ITEMS) + u32(MAX_EVENTS) + str16("perennial/0.1.0")
    add_frame("hello_reply", "HELLO reply with the default limits",
              frame(op["HELLO"], REPLY, 1, p), "HELLO", REPLY, 1,
              {"protocol_version": 1, "max_frame_bytes": MAX_FRAME_BYTES, "max_items": MAX_ITEMS,
               "max_events": MAX_EVENTS, "server_name": "perennial/0.1.0"})

    # PING
    add_frame("ping_request", "PING request (empty payload)", frame(op["PING"], 0, 7, b""),
              "PING", 0, 7, {})
    add_frame("ping_reply", "PING reply (empty payload)", frame(op["PING"], REPLY, 7, b""),
              "PING", REPLY, 7, {})
    add_frame("ping_request_max_request_id", "PING with request_id 2^32-1",
              frame(op["PING"], 0, 0xFFFFFFFF, b""), "PING", 0, 0xFFFFFFFF, {})

    # RECOMMEND
    p = u64(42) + u16(10) + u64(0) + str16("") + str16("") + ids16([]) + ids16([]) + ids16([])
    add_frame("recommend_request_minimal",
              "RECOMMEND without scorer, session, exclude or candidates",
              frame(op["RECOMMEND"], 0, 3, p), "RECOMMEND", 0, 3,
              {"user": 42, "k": 10, "min_applied_seq": 0, "scorer": "", "session_id": "",
               "session_items": [], "exclude": [], "candidates": []})
    p = (u64(1001) + u16(5) + u64(123456789) + str16("popularity") + str16("sess-\u2603")
         + ids16([11, 12, 13]) + ids16([20, MAX_ID]) + ids16([11, 30, 31, 32]))
    add_frame("recommend_request_full",
              "RECOMMEND with scorer, min_applied_seq, session id and items, exclude and "
              "candidates (one exclude is the largest valid id)",
              frame(op["RECOMMEND"], 0, 4, p), "RECOMMEND", 0, 4,
              {"user": 1001, "k": 5, "min_applied_seq": 123456789, "scorer": "popularity",
               "session_id": "sess-\u2603", "session_items": [11, 12, 13],
               "exclude": [20, MAX_ID], "candidates": [11, 30, 31, 32]})
    p = (u64(7) + u16(3) + u64(0) + str16("") + str16("") + ids16([5, 6]) + ids16([])
         + ids16([]))
    add_frame("recommend_request_session",
              "RECOMMEND with session items only",
              frame(op["RECOMMEND"], 0, 5, p), "RECOMMEND", 0, 5,
              {"user": 7, "k": 3, "min_applied_seq": 0, "scorer": "", "session_id": "",
               "session_items": [5, 6], "exclude": [], "candidates": []})
    p = (u64(7) + u16(10) + u64(0) + str16("cf") + str16("") + ids16([]) + ids16([])
         + ids16([]) + str16("text-cnn"))
    add_frame("recommend_request_shadow",
              "RECOMMEND with the optional trailing shadow_scorer",
              frame(op["RECOMMEND"], 0, 8, p), "RECOMMEND", 0, 8,
              {"user": 7, "k": 10, "min_applied_seq": 0, "scorer": "cf", "session_id": "",
               "session_items": [], "exclude": [], "candidates": [], "shadow_scorer": "text-cnn"})
    cands = list(range(1, MAX_ITEMS + 1))
    p = (u64(MAX_ID) + u16(MAX_ITEMS) + u64(0) + str16("") + str16("") + ids16([])
         + ids16([]) + ids16(cands))
    add_frame("recommend_request_limits",
              "RECOMMEND at the limits: user 2^63-1, k = max_items, max_items candidates",
              frame(op["RECOMMEND"], 0, 6, p), "RECOMMEND", 0, 6,
              {"user": MAX_ID, "k": MAX_ITEMS, "min_applied_seq": 0, "scorer": "",
               "session_id": "", "session_items": [], "exclude": [], "candidates": cands})
    items = [(31, 4.0), (30, 2.25), (11, 0.5), (32, -1.5)]
    p = u64(98765) + u16(len(items)) + b"".join(u64(i) + f32(s) for i, s in items)
    add_frame("recommend_reply", "RECOMMEND reply with four items, best first",
              frame(op["RECOMMEND"], REPLY, 4, p), "RECOMMEND", REPLY, 4,
              {"applied_seq": 98765, "items": [[i, s] for i, s in items]})
    p = u64(0) + u16(0)
    add_frame("recommend_reply_empty", "RECOMMEND reply with no items",
              frame(op["RECOMMEND"], REPLY, 3, p), "RECOMMEND", REPLY, 3,
              {"applied_seq": 0, "items": []})

    # SCORE
    p = u64(42) + str16("popularity") + ids16([3]) + ids16([1, 2, 999999])
    add_frame("score_request", "SCORE three items with a session item",
              frame(op["SCORE"], 0, 8, p), "SCORE", 0, 8,
              {"user": 42, "scorer": "popularity", "session_items": [3],
               "items": [1, 2, 999999]})
    scores = [(0.75, 1), (0.125, 1), (0.0, 0)]
    p = u16(len(scores)) + b"".join(f32(s) + u8(k) for s, k in scores)
    add_frame("score_reply", "SCORE reply; the last item is unknown to the server",
              frame(op["SCORE"], REPLY, 8, p), "SCORE", REPLY, 8,
              {"scores": [[s, k] for s, k in scores]})

    # FEEDBACK
    evs = [
        (1, 100, "view", 0.0, 0),
        (1, 101, "click", 1.0, 1700000000),
        (2, 100, "purchase", 2.5, 1700000001),
        (2, 102, "rating", 4.5, -5),
        (MAX_ID, MAX_ID, "rating", 10.0, 0),
        (3, 103, "click", 1000.0, 0),
    ]
    p = u32(len(evs)) + b"".join(event(u, i, KINDS[k], v, t) for u, i, k, v, t in evs)
    add_frame("feedback_request",
              "FEEDBACK with six events of all four kinds, incl. ratings 4.5 and 10, the "
              "largest ids, weight 1000 and a negative timestamp",
              frame(op["FEEDBACK"], 0, 9, p), "FEEDBACK", 0, 9,
              {"events": [ev_json(*e) for e in evs]})
    p = u32(1) + event(5, 6, KINDS["click"], 0.0, 0)
    add_frame("feedback_request_single", "FEEDBACK with one click, value 0 (means 1)",
              frame(op["FEEDBACK"], 0, 10, p), "FEEDBACK", 0, 10,
              {"events": [ev_json(5, 6, "click", 0.0, 0)]})
    p = u64(17) + u64(22) + u64(22) + u64(15)
    add_frame("feedback_reply", "FEEDBACK acknowledgement for sequences 17..22",
              frame(op["FEEDBACK"], REPLY, 9, p), "FEEDBACK", REPLY, 9,
              {"first_seq": 17, "last_seq": 22, "durable_seq": 22, "applied_seq": 15})

    # UPSERT_ITEM
    text = "Caf\u00e9 cr\u00e8me \u2014 \u6771\u4eac \U0001F338 \"quoted\"\nline two"
    attrs = [("genre", "jazz"), ("pays", "C\u00f4te d'Ivoire"), ("empty", ""),
             ("\u8a00\u8a9e", "\u65e5\u672c\u8a9e")]
    p = (u64(555) + str32(text) + u16(len(attrs))
         + b"".join(str16(k) + str16(v) for k, v in attrs))
    add_frame("upsert_item_request",
              "UPSERT_ITEM with non-ASCII text (2-, 3- and 4-byte UTF-8) and attributes",
              frame(op["UPSERT_ITEM"], 0, 11, p), "UPSERT_ITEM", 0, 11,
              {"item": 555, "text": text, "attributes": [[k, v] for k, v in attrs]})
    p = u64(556) + str32("") + u16(0)
    add_frame("upsert_item_request_empty", "UPSERT_ITEM with empty text and no attributes",
              frame(op["UPSERT_ITEM"], 0, 12, p), "UPSERT_ITEM", 0, 12,
              {"item": 556, "text": "", "attributes": []})
    p = u8(1) + u8(0)
    add_frame("upsert_item_reply", "UPSERT_ITEM reply: created, not truncated",
              frame(op["UPSERT_ITEM"], REPLY, 11, p), "UPSERT_ITEM", REPLY, 11,
              {"created": 1, "truncated": 0})
    p = u8(0) + u8(1)
    add_frame("upsert_item_reply_truncated", "UPSERT_ITEM reply: updated, text truncated",
              frame(op["UPSERT_ITEM"], REPLY, 12, p), "UPSERT_ITEM", REPLY, 12,
              {"created": 0, "truncated": 1})

    # DELETE_ITEMS
    add_frame("delete_items_request", "DELETE_ITEMS of three items",
              frame(op["DELETE_ITEMS"], 0, 61, ids16([555, 7, MAX_ID])), "DELETE_ITEMS", 0, 61,
              {"items": [555, 7, MAX_ID]})
    add_frame("delete_items_reply", "DELETE_ITEMS reply: two of them were held",
              frame(op["DELETE_ITEMS"], REPLY, 61, u16(2)), "DELETE_ITEMS", REPLY, 61,
              {"deleted": 2})

    # DELETE_USERS
    add_frame("delete_users_request", "DELETE_USERS of two users",
              frame(op["DELETE_USERS"], 0, 64, ids16([42, 2**40])), "DELETE_USERS", 0, 64,
              {"users": [42, 2**40]})
    add_frame("delete_users_reply", "DELETE_USERS reply: one of them was held",
              frame(op["DELETE_USERS"], REPLY, 64, u16(1)), "DELETE_USERS", REPLY, 64,
              {"deleted": 1})

    # STATS
    add_frame("stats_request", "STATS request", frame(op["STATS"], 0, 13, b""),
              "STATS", 0, 13, {})
    counters = [("connections", 1), ("connections_total", 3), ("requests_total", 12345),
                ("errors_total", 0), ("events_accepted", 2**40 + 7),
                ("events_durable", 2**40), ("events_applied", 2**40 - 1),
                ("learner_queue", 8), ("users", 1000), ("items", 250),
                ("uptime_ms", 2**64 - 1)]
    p = u16(len(counters)) + b"".join(str16(n) + u64(v) for n, v in counters)
    add_frame("stats_reply", "STATS reply with the documented counters (one is 2^64-1)",
              frame(op["STATS"], REPLY, 13, p), "STATS", REPLY, 13,
              {"counters": [[n, v] for n, v in counters]})

    # admin
    for name, rid in (("RELOAD", 14), ("SNAPSHOT", 15), ("SHUTDOWN", 16)):
        add_frame(name.lower() + "_request", name + " request (empty payload)",
                  frame(op[name], 0, rid, b""), name, 0, rid, {})
    add_frame("reload_reply", "RELOAD reply (empty payload)",
              frame(op["RELOAD"], REPLY, 14, b""), "RELOAD", REPLY, 14, {})
    add_frame("snapshot_reply", "SNAPSHOT reply covering sequence 2^40+3, the third version at that position",
              frame(op["SNAPSHOT"], REPLY, 15, u64(2**40 + 3) + str16("v1099511627779.2")), "SNAPSHOT", REPLY, 15,
              {"seq": 2**40 + 3, "version": "v1099511627779.2"})
    add_frame("shutdown_reply", "SHUTDOWN reply (empty payload)",
              frame(op["SHUTDOWN"], REPLY, 16, b""), "SHUTDOWN", REPLY, 16, {})

    # ERROR
    msg = "event 3: rating 11 is outside 0\u202610"
    p = u16(ERROR_CODES["INVALID_EVENT"]) + u32(3) + str16(msg)
    add_frame("error_reply_invalid_event", "ERROR reply INVALID_EVENT, detail 3, non-ASCII message",
              frame(op["ERROR"], REPLY, 9, p), "ERROR", REPLY, 9,
              {"code": "INVALID_EVENT", "detail": 3, "message": msg})
    p = u16(ERROR_CODES["UNKNOWN_SCORER"]) + u32(0) + str16("no scorer named 'nope'")
    add_frame("error_reply_unknown_scorer", "ERROR reply UNKNOWN_SCORER",
              frame(op["ERROR"], REPLY, 4, p), "ERROR", REPLY, 4,
              {"code": "UNKNOWN_SCORER", "detail": 0, "message": "no scorer named 'nope'"})
    msg = "event 2: item id 77 would be new, and the model holds its most item ids, 1000000 (limits.max_item_ids)"
    p = u16(ERROR_CODES["CAPACITY"]) + u32(2) + str16(msg)
    add_frame("error_reply_capacity", "ERROR reply CAPACITY (code 16), detail 2",
              frame(op["ERROR"], REPLY, 11, p), "ERROR", REPLY, 11,
              {"code": "CAPACITY", "detail": 2, "message": msg})
    msg = "the server is replaying its log after a restart (at sequence 5000 of 60000, 8% done, about 969 ms left)"
    p = u16(ERROR_CODES["RECOVERING"]) + u32(969) + str16(msg)
    add_frame("error_reply_recovering", "ERROR reply RECOVERING (code 17), detail 969 (ms left)",
              frame(op["ERROR"], REPLY, 12, p), "ERROR", REPLY, 12,
              {"code": "RECOVERING", "detail": 969, "message": msg})
    p = u16(ERROR_CODES["MALFORMED_FRAME"]) + u32(0) + str16("")
    add_frame("error_reply_fatal_no_id", "ERROR reply MALFORMED_FRAME with request id 0 and an "
              "empty message", frame(op["ERROR"], REPLY, 0, p), "ERROR", REPLY, 0,
              {"code": "MALFORMED_FRAME", "detail": 0, "message": ""})


# --------------------------------------------------------------------------
# invalid frames


def invalid_vectors() -> None:
    op = OPCODES

    # need more
    full = frame(op["PING"], 0, 5, b"")
    add_need_more("need_more_empty", "no bytes at all", b"")
    add_need_more("need_more_header", "7 of the 12 header bytes of a PING", full[:7])
    p = u64(42) + u16(10) + u64(0) + str16("") + str16("") + ids16([]) + ids16([]) + ids16([])
    full = frame(op["RECOMMEND"], 0, 6, p)
    add_need_more("need_more_payload",
                  "complete RECOMMEND header, payload cut 5 bytes short", full[:-5])
    add_need_more("need_more_header_only", "a complete STATS header announcing 4 payload "
                  "bytes that have not arrived", header(op["STATS"], 0, 6, 4))

    # header rules (fatal)
    add_error("malformed_frame_length_4",
              "length 4 (< 8); the 12 header bytes are present, request id 77",
              u32(4) + u8(1) + u8(op["PING"]) + u16(0) + u32(77), "MALFORMED_FRAME", 77)
    add_error("malformed_frame_length_0", "length 0",
              u32(0) + u8(1) + u8(op["PING"]) + u16(0) + u32(0), "MALFORMED_FRAME", 0)
    add_error("malformed_frame_before_version",
              "length 7 and version 2: rule 1 (length) wins over rule 3 (version)",
              u32(7) + u8(2) + u8(op["PING"]) + u16(0) + u32(3), "MALFORMED_FRAME", 3)
    add_error("frame_too_large_header_only",
              "length 4194305 (> max_frame_bytes) with only the 12 header bytes present",
              header(op["FEEDBACK"], 0, 12, 0, length=MAX_FRAME_BYTES + 1),
              "FRAME_TOO_LARGE", 12)
    add_error("frame_too_large_before_version",
              "length 0xFFFFFFFF and version 0: rule 2 (size) wins over rule 3 (version)",
              header(op["PING"], 0, 13, 0, version=0, length=0xFFFFFFFF),
              "FRAME_TOO_LARGE", 13)
    add_error("unsupported_version_2", "a complete PING with version 2",
              frame(op["PING"], 0, 14, b"", version=2), "UNSUPPORTED_VERSION", 14)
    add_error("unsupported_version_0_header_only",
              "version 0 with only the header present (payload of 4 bytes announced): "
              "decided on the header", header(op["STATS"], 0, 15, 4, version=0),
              "UNSUPPORTED_VERSION", 15)

    # header rules (not fatal)
    add_error("unknown_opcode_0x42", "opcode 0x42 with a 3-byte payload",
              frame(0x42, 0, 16, b"abc"), "UNKNOWN_OPCODE", 16)
    add_error("unknown_opcode_reply_flag", "opcode 0x00 with the REPLY flag",
              frame(0x00, REPLY, 17, b""), "UNKNOWN_OPCODE", 17)
    add_error("error_opcode_as_request", "ERROR opcode without the REPLY flag (reply-only)",
              frame(op["ERROR"], 0, 18, u16(14) + u32(0) + str16("")), "UNKNOWN_OPCODE", 18)
    add_error("reserved_flag_bit", "PING with flag bit 1 set",
              frame(op["PING"], 0x0002, 19, b""), "MALFORMED_PAYLOAD", 19)
    add_error("reserved_flag_high_bit", "PING reply with flags 0x8001",
              frame(op["PING"], 0x8001, 20, b""), "MALFORMED_PAYLOAD", 20)
    add_error("reserved_flag_before_opcode",
              "opcode 0x42 with flag bit 2: rule 4 (flags) wins over rule 5 (opcode)",
              frame(0x42, 0x0004, 21, b""), "MALFORMED_PAYLOAD", 21)

    # structure
    add_error("ping_request_nonempty", "PING request with a 1-byte payload",
              frame(op["PING"], 0, 22, b"\x00"), "MALFORMED_PAYLOAD", 22)
    add_error("stats_reply_trailing_byte", "STATS reply with one counter and a trailing byte",
              frame(op["STATS"], REPLY, 23, u16(1) + str16("users") + u64(1) + b"\x00"),
              "MALFORMED_PAYLOAD", 23)
    p = u64(42) + u16(10) + u64(0) + str16("") + str16("") + ids16([]) + ids16([]) + ids16([])
    add_error("recommend_request_trailing_bytes",
              "valid RECOMMEND followed by 2 bytes, read as the length (513) of a shadow_scorer the payload cuts short",
              frame(op["RECOMMEND"], 0, 24, p + b"\x01\x02"), "MALFORMED_PAYLOAD", 24)
    add_error("recommend_request_bytes_after_shadow_scorer",
              "RECOMMEND with a shadow_scorer, then 1 byte left over",
              frame(op["RECOMMEND"], 0, 78, p + str16("cf") + b"\x00"), "MALFORMED_PAYLOAD", 78)
    add_error("feedback_reply_too_short", "FEEDBACK reply with 24 of its 32 bytes",
              frame(op["FEEDBACK"], REPLY, 25, u64(1) + u64(2) + u64(2)),
              "MALFORMED_PAYLOAD", 25)
    add_error("recommend_request_too_short", "RECOMMEND request that stops after k",
              frame(op["RECOMMEND"], 0, 26, u64(42) + u16(10)), "MALFORMED_PAYLOAD", 26)
    add_error("feedback_request_truncated_event",
              "FEEDBACK announcing 2 events, carrying 1 and a half",
              frame(op["FEEDBACK"], 0, 27, u32(2) + event(1, 2, 2, 1.0, 0)
                    + event(1, 3, 2, 1.0, 0)[:10]), "MALFORMED_PAYLOAD", 27)
    add_error("hello_request_bad_utf8", "HELLO whose client_name str16 is the bytes ff fe",
              frame(op["HELLO"], 0, 28, u16(1) + raw16(b"\xff\xfe") + str16("")),
              "MALFORMED_PAYLOAD", 28)
    add_error("hello_request_version_2_longer",
              "HELLO naming protocol_version 2 with a byte more than version 1's layout: "
              "the version is checked first",
              frame(op["HELLO"], 0, 91, u16(2) + str16("future") + str16("") + b"\x00"),
              "UNSUPPORTED_VERSION", 91)
    add_error("recommend_request_bad_utf8_scorer",
              "RECOMMEND whose scorer is a truncated 2-byte sequence (c3)",
              frame(op["RECOMMEND"], 0, 29, u64(42) + u16(10) + u64(0) + raw16(b"pop\xc3")
                    + str16("") + ids16([]) + ids16([]) + ids16([])),
              "MALFORMED_PAYLOAD", 29)
    add_error("upsert_item_request_bad_utf8_text",
              "UPSERT_ITEM whose str32 text contains an encoded surrogate (ed a0 80)",
              frame(op["UPSERT_ITEM"], 0, 30, u64(5) + raw32(b"ok\xed\xa0\x80") + u16(0)),
              "MALFORMED_PAYLOAD", 30)
    add_error("str16_longer_than_payload",
              "HELLO whose client_name announces 200 bytes but the payload ends after 3",
              frame(op["HELLO"], 0, 31, u16(1) + u16(200) + b"abc"), "MALFORMED_PAYLOAD", 31)
    add_error("recommend_reply_nan_score", "RECOMMEND reply whose second score is NaN",
              frame(op["RECOMMEND"], REPLY, 32, u64(5) + u16(2) + u64(1) + f32(1.0) + u64(2)
                    + struct.pack("<I", 0x7FC00000)), "MALFORMED_PAYLOAD", 32)
    add_error("recommend_reply_infinite_score", "RECOMMEND reply whose score is -infinity",
              frame(op["RECOMMEND"], REPLY, 33, u64(5) + u16(1) + u64(1)
                    + struct.pack("<I", 0xFF800000)), "MALFORMED_PAYLOAD", 33)
    add_error("score_reply_known_2", "SCORE reply with known = 2",
              frame(op["SCORE"], REPLY, 34, u16(1) + f32(0.5) + u8(2)),
              "MALFORMED_PAYLOAD", 34)
    add_error("upsert_item_reply_created_2", "UPSERT_ITEM reply with created = 2",
              frame(op["UPSERT_ITEM"], REPLY, 35, u8(2) + u8(0)), "MALFORMED_PAYLOAD", 35)
    add_error("error_reply_too_short", "ERROR reply missing its message",
              frame(op["ERROR"], REPLY, 36, u16(5) + u32(0)), "MALFORMED_PAYLOAD", 36)

    # requests: out of range -> INVALID_ARGUMENT
    def rec(user: int, k: int, excl: bytes = ids16([]), cands: bytes = ids16([])) -> bytes:
        return (u64(user) + u16(k) + u64(0) + str16("") + str16("") + ids16([]) + excl
                + cands)

    add_error("recommend_request_user_2pow63", "RECOMMEND for user 2^63 (ids must be < 2^63)",
              frame(op["RECOMMEND"], 0, 40, rec(2**63, 10)), "INVALID_ARGUMENT", 40)
    add_error("recommend_request_user_0", "RECOMMEND for user 0",
              frame(op["RECOMMEND"], 0, 41, rec(0, 10)), "INVALID_ARGUMENT", 41)
    add_error("recommend_request_k_0", "RECOMMEND with k = 0",
              frame(op["RECOMMEND"], 0, 42, rec(42, 0)), "INVALID_ARGUMENT", 42)
    add_error("recommend_request_k_1001", "RECOMMEND with k = 1001 (> max_items)",
              frame(op["RECOMMEND"], 0, 43, rec(42, 1001)), "INVALID_ARGUMENT", 43)
    p = u64(42) + u16(10) + u64(0) + str16("") + str16("s" * 257) + ids16([]) + ids16([]) + ids16([])
    add_error("recommend_request_session_id_257", "RECOMMEND whose session_id is 257 bytes (at most 256)",
              frame(op["RECOMMEND"], 0, 79, p), "INVALID_ARGUMENT", 79)
    p = u64(42) + u16(10) + u64(0) + str16("") + str16("\u00e9" * 128) + ids16([]) + ids16([]) + ids16([])
    add_frame("recommend_request_session_id_256", "RECOMMEND whose session_id is 256 bytes (128 two-byte characters)",
              frame(op["RECOMMEND"], 0, 80, p), "RECOMMEND", 0, 80,
              {"user": 42, "k": 10, "min_applied_seq": 0, "scorer": "", "session_id": "\u00e9" * 128,
               "session_items": [], "exclude": [], "candidates": []})
    add_error("recommend_request_exclude_id_0", "RECOMMEND whose exclude list contains 0",
              frame(op["RECOMMEND"], 0, 44, rec(42, 10, excl=ids16([5, 0]))),
              "INVALID_ARGUMENT", 44)
    add_error("recommend_request_candidates_over_limit_short",
              "RECOMMEND announcing 1001 candidates and carrying none: the count is "
              "checked before the elements",
              frame(op["RECOMMEND"], 0, 45, rec(42, 10, cands=u16(1001))),
              "INVALID_ARGUMENT", 45)
    add_error("upsert_item_request_attributes_over_limit_short",
              "UPSERT_ITEM announcing 1001 attributes and carrying none: the count is "
              "checked before the elements",
              frame(op["UPSERT_ITEM"], 0, 92, u64(5) + str32("x") + u16(1001)),
              "INVALID_ARGUMENT", 92)
    add_error("score_request_no_items", "SCORE with an empty item list",
              frame(op["SCORE"], 0, 46, u64(42) + str16("") + ids16([]) + ids16([])),
              "INVALID_ARGUMENT", 46)
    add_error("score_request_item_2pow64_minus_1", "SCORE of item 2^64-1",
              frame(op["SCORE"], 0, 47, u64(42) + str16("") + ids16([]) + ids16([2**64 - 1])),
              "INVALID_ARGUMENT", 47)
    add_error("delete_items_request_no_items", "DELETE_ITEMS with an empty item list",
              frame(op["DELETE_ITEMS"], 0, 62, ids16([])), "INVALID_ARGUMENT", 62)
    add_error("delete_items_request_item_0", "DELETE_ITEMS naming item 0",
              frame(op["DELETE_ITEMS"], 0, 63, ids16([5, 0])), "INVALID_ARGUMENT", 63)
    add_error("delete_users_request_user_2pow63", "DELETE_USERS naming user 2^63",
              frame(op["DELETE_USERS"], 0, 65, ids16([2**63])), "INVALID_ARGUMENT", 65)
    add_error("upsert_item_request_item_0", "UPSERT_ITEM of item 0",
              frame(op["UPSERT_ITEM"], 0, 48, u64(0) + str32("x") + u16(0)),
              "INVALID_ARGUMENT", 48)
    add_error("feedback_request_n_0", "FEEDBACK with n = 0",
              frame(op["FEEDBACK"], 0, 49, u32(0)), "INVALID_ARGUMENT", 49)
    big = u32(MAX_EVENTS + 1) + b"".join(
        event(1 + (i % 97), 1 + (i % 1009), 1 + (i % 3), 1.0, 0) for i in range(MAX_EVENTS + 1))
    add_error("feedback_request_n_10001", "FEEDBACK with 10001 valid events (> max_events)",
              frame(op["FEEDBACK"], 0, 50, big), "INVALID_ARGUMENT", 50)
    add_error("feedback_request_n_10001_short",
              "FEEDBACK announcing 10001 events and carrying one: the count is checked "
              "before the events",
              frame(op["FEEDBACK"], 0, 51, u32(MAX_EVENTS + 1) + event(1, 2, 2, 1.0, 0)),
              "INVALID_ARGUMENT", 51)

    # FEEDBACK events -> INVALID_EVENT, detail = index
    ok = event(1, 2, KINDS["click"], 1.0, 0)

    def fb(rid: int, *evs: bytes) -> bytes:
        return frame(op["FEEDBACK"], 0, rid, u32(len(evs)) + b"".join(evs))

    nan = u64(1) + u64(3) + u8(KINDS["view"]) + struct.pack("<I", 0x7FC00000) + i64(0)
    add_error("feedback_nan_value_index_1", "FEEDBACK of 3 events whose event 1 has value NaN",
              fb(60, ok, nan, ok), "INVALID_EVENT", 60, detail=1)
    add_error("feedback_kind_9_index_0", "FEEDBACK whose event 0 has kind 9",
              fb(61, event(1, 2, 9, 1.0, 0), ok), "INVALID_EVENT", 61, detail=0)
    add_error("feedback_kind_0_index_1", "FEEDBACK whose event 1 has kind 0",
              fb(62, ok, event(1, 2, 0, 1.0, 0)), "INVALID_EVENT", 62, detail=1)
    add_error("feedback_rating_11", "FEEDBACK whose event 2 is a rating of 11",
              fb(63, ok, ok, event(1, 2, KINDS["rating"], 11.0, 0)), "INVALID_EVENT", 63,
              detail=2)
    add_error("feedback_rating_negative", "FEEDBACK whose event 0 is a rating of -0.5",
              fb(64, event(1, 2, KINDS["rating"], -0.5, 0)), "INVALID_EVENT", 64, detail=0)
    add_error("feedback_weight_1001", "FEEDBACK whose event 1 is a purchase of weight 1001",
              fb(65, ok, event(1, 2, KINDS["purchase"], 1001.0, 0)), "INVALID_EVENT", 65,
              detail=1)
    inf = u64(1) + u64(3) + u8(KINDS["click"]) + struct.pack("<I", 0x7F800000) + i64(0)
    add_error("feedback_infinite_value", "FEEDBACK whose event 0 has value +infinity",
              fb(66, inf), "INVALID_EVENT", 66, detail=0)
    add_error("feedback_user_0", "FEEDBACK whose event 3 has user 0",
              fb(67, ok, ok, ok, event(0, 2, KINDS["click"], 1.0, 0)), "INVALID_EVENT", 67,
              detail=3)
    add_error("feedback_item_0", "FEEDBACK whose event 0 has item 0",
              fb(68, event(1, 0, KINDS["view"], 0.0, 0)), "INVALID_EVENT", 68, detail=0)
    add_error("feedback_item_2pow63", "FEEDBACK whose event 1 has item 2^63",
              fb(69, ok, event(1, 2**63, KINDS["click"], 1.0, 0)), "INVALID_EVENT", 69,
              detail=1)
    add_error("feedback_invalid_event_before_short",
              "FEEDBACK announcing 2 events whose event 0 has kind 5 and whose payload ends "
              "after it: events are checked as they are read, so INVALID_EVENT 0 wins",
              frame(op["FEEDBACK"], 0, 70, u32(2) + event(1, 2, 5, 1.0, 0)),
              "INVALID_EVENT", 70, detail=0)


def main() -> int:
    valid_vectors()
    invalid_vectors()
    names = [n for n, _, _ in VECTORS]
    assert len(names) == len(set(names)), "duplicate vector name"
    wanted = set()
    for name, data, _ in VECTORS:
        path = os.path.join(HERE, name + ".bin")
        wanted.add(name + ".bin")
        with open(path, "wb") as f:
            f.write(data)
    for fname in os.listdir(HERE):
        if fname.endswith(".bin") and fname not in wanted:
            os.remove(os.path.join(HERE, fname))
    index = {
        "protocol_version": 1,
        "limits": {"max_frame_bytes": MAX_FRAME_BYTES, "max_items": MAX_ITEMS,
                   "max_events": MAX_EVENTS},
        "rules": RULES,
        "vectors": [entry for _, _, entry in VECTORS],
    }
    with open(os.path.join(HERE, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, ensure_ascii=False)
        f.write("\n")
    kinds: Dict[str, int] = {}
    for _, _, e in VECTORS:
        kinds[e["expect"]] = kinds.get(e["expect"], 0) + 1
    print("wrote %d vectors (%s) to %s" % (
        len(VECTORS), ", ".join("%s: %d" % kv for kv in sorted(kinds.items())), HERE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
