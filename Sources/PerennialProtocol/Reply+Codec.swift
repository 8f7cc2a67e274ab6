// Reply payloads: encode (server side) and decode (client side).

extension Reply {
    /// Appends this reply as one whole frame with the REPLY flag.
    public func encode(into out: inout [UInt8], requestID: UInt32) {
        let start = out.beginFrame(opcode: opcode.rawValue, flags: FrameFlags.reply, requestID: requestID)
        switch self {
        case .hello(let h):
            out.put(h.protocolVersion)
            out.put(h.maxFrameBytes)
            out.put(h.maxItems)
            out.put(h.maxEvents)
            out.putStr16(h.serverName)
        case .ping, .reload, .shutdown:
            break
        case .recommend(let r):
            out.put(r.appliedSeq)
            out.put(UInt16(r.items.count))
            for it in r.items {
                out.put(it.item)
                out.put(it.score)
            }
        case .score(let scores):
            out.put(UInt16(scores.count))
            for s in scores {
                out.put(s.score)
                out.put(UInt8(s.known ? 1 : 0))
            }
        case .feedback(let a):
            out.put(a.firstSeq)
            out.put(a.lastSeq)
            out.put(a.durableSeq)
            out.put(a.appliedSeq)
        case .upsertItem(let u):
            out.put(UInt8(u.created ? 1 : 0))
            out.put(UInt8(u.truncated ? 1 : 0))
        case .deleteItems(let deleted), .deleteUsers(let deleted):
            out.put(deleted)
        case .stats(let counters):
            out.put(UInt16(counters.count))
            for c in counters {
                out.putStr16(c.name)
                out.put(c.value)
            }
        case .snapshot(let seq, let version):
            out.put(seq)
            out.putStr16(version)
        case .error(let e):
            out.put(e.rawCode)
            out.put(e.detail)
            out.putStr16(e.message)
        }
        out.endFrame(start)
    }

    /// Appends an ERROR frame for a request id.
    public static func encodeError(_ error: ProtocolError, requestID: UInt32, into out: inout [UInt8]) {
        Reply.error(ErrorReply(code: error.code, detail: error.detail, message: error.message))
            .encode(into: &out, requestID: requestID)
    }

    /// Decodes a reply payload (client side). Non-finite scores are
    /// MALFORMED_PAYLOAD: a server never sends them.
    public static func decode(opcode: Opcode, payload: UnsafeRawBufferPointer) throws(ProtocolError) -> Reply {
        var r = ByteReader(payload)
        let reply: Reply
        switch opcode {
        case .hello:
            reply = .hello(HelloReply(
                protocolVersion: try r.u16("protocol_version"), maxFrameBytes: try r.u32("max_frame_bytes"),
                maxItems: try r.u32("max_items"), maxEvents: try r.u32("max_events"),
                serverName: try r.str16("server_name")))
        case .ping: reply = .ping
        case .reload: reply = .reload
        case .shutdown: reply = .shutdown
        case .recommend:
            let applied = try r.u64("applied_seq")
            let n = Int(try r.u16("n"))
            try r.need(n * 12, "items")
            var items = [RankedItem]()
            items.reserveCapacity(n)
            for _ in 0..<n {
                let item = try r.u64("item")
                let score = try r.f32("score")
                if !score.isFinite { throw ProtocolError(.malformedPayload, "non-finite score \(score) for item \(item)") }
                items.append(RankedItem(item: item, score: score))
            }
            reply = .recommend(RecommendReply(appliedSeq: applied, items: items))
        case .score:
            let n = Int(try r.u16("n"))
            try r.need(n * 5, "scores")
            var scores = [ItemScore]()
            scores.reserveCapacity(n)
            for _ in 0..<n {
                let score = try r.f32("score")
                let known = try r.flag("known")
                if !score.isFinite { throw ProtocolError(.malformedPayload, "non-finite score \(score)") }
                scores.append(ItemScore(score: score, known: known))
            }
            reply = .score(scores)
        case .feedback:
            reply = .feedback(FeedbackAck(firstSeq: try r.u64("first_seq"), lastSeq: try r.u64("last_seq"),
                                          durableSeq: try r.u64("durable_seq"), appliedSeq: try r.u64("applied_seq")))
        case .upsertItem:
            reply = .upsertItem(UpsertReply(created: try r.flag("created"), truncated: try r.flag("truncated")))
        case .deleteItems:
            reply = .deleteItems(deleted: try r.u16("deleted"))
        case .deleteUsers:
            reply = .deleteUsers(deleted: try r.u16("deleted"))
        case .stats:
            let n = Int(try r.u16("n"))
            var counters = [StatCounter]()
            for _ in 0..<n {
                let name = try r.str16("name")
                counters.append(StatCounter(name, try r.u64("value")))
            }
            reply = .stats(counters)
        case .snapshot:
            reply = .snapshot(seq: try r.u64("seq"), version: try r.str16("version"))
        case .error:
            reply = .error(ErrorReply(rawCode: try r.u16("code"), detail: try r.u32("detail"), message: try r.str16("message")))
        }
        try r.expectEnd()
        return reply
    }
}
