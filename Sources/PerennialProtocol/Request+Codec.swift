// Request payloads: decode (server side) and encode (client side), field by
// field as PROTOCOL.md lays them out.

extension Request {
    /// Decodes a request payload. Structural problems throw MALFORMED_PAYLOAD,
    /// out-of-range fields INVALID_ARGUMENT, bad events INVALID_EVENT with the
    /// event's index as `detail`.
    public static func decode(opcode: Opcode, payload: UnsafeRawBufferPointer, limits: ProtocolLimits) throws(ProtocolError) -> Request {
        var r = ByteReader(payload)
        let request: Request
        switch opcode {
        case .hello:
            let version = try r.u16("protocol_version")
            // Checked before the rest, in layout order: another protocol's
            // HELLO may be laid out otherwise, and must hear that its
            // version is the problem (review finding, helper-88).
            if version != 1 {
                throw ProtocolError(.unsupportedVersion, "client speaks protocol \(version); this server speaks 1", fatal: true)
            }
            let name = try r.str16("client_name")
            let token = try r.str16("token")
            request = .hello(Hello(protocolVersion: version, clientName: name, token: token))
        case .ping: request = .ping
        case .stats: request = .stats
        case .reload: request = .reload
        case .snapshot: request = .snapshot
        case .shutdown: request = .shutdown
        case .recommend:
            let user = try r.u64("user")
            try ProtocolID.check(user, "user")
            let k = try r.u16("k")
            if k == 0 || Int(k) > limits.maxItems {
                throw ProtocolError(.invalidArgument, "k = \(k) is outside 1...\(limits.maxItems) (the server's limits.max_items)")
            }
            var q = RecommendRequest(user: user, k: k)
            q.minAppliedSeq = try r.u64("min_applied_seq")
            q.scorer = try r.str16("scorer")
            q.sessionID = try r.str16("session_id")
            // (A rule of the wire format, checked where it is read, in
            // layout order; it was the server's alone, after the scorer's
            // name was checked: review finding, helper-79.)
            if q.sessionID.utf8.count > RecommendRequest.maxSessionIDBytes {
                throw ProtocolError(.invalidArgument, "session_id is \(q.sessionID.utf8.count) bytes; at most \(RecommendRequest.maxSessionIDBytes)")
            }
            q.sessionItems = try r.ids16("session_items", limit: limits.maxItems)
            q.exclude = try r.ids16("exclude", limit: limits.maxItems)
            q.candidates = try r.ids16("candidates", limit: limits.maxItems)
            // Optional trailing field (absent in older clients' requests).
            if r.remaining > 0 { q.shadowScorer = try r.str16("shadow_scorer") }
            request = .recommend(q)
        case .score:
            let user = try r.u64("user")
            try ProtocolID.check(user, "user")
            let scorer = try r.str16("scorer")
            let session = try r.ids16("session_items", limit: limits.maxItems)
            let items = try r.ids16("items", limit: limits.maxItems)
            if items.isEmpty { throw ProtocolError(.invalidArgument, "items: SCORE needs at least one item") }
            request = .score(ScoreRequest(user: user, scorer: scorer, sessionItems: session, items: items))
        case .feedback:
            request = .feedback(try decodeEvents(&r, limits: limits))
        case .upsertItem:
            let item = try r.u64("item")
            try ProtocolID.check(item, "item")
            let text = try r.str32("text")
            let n = Int(try r.u16("attributes"))
            if n > limits.maxItems {
                throw ProtocolError(.invalidArgument, "attributes: \(n), limit is \(limits.maxItems) (the server's limits.max_items)")
            }
            var attributes: [ItemAttribute] = []
            for _ in 0..<n {
                let key = try r.str16("attribute key")
                let value = try r.str16("attribute value")
                attributes.append(ItemAttribute(key: key, value: value))
            }
            request = .upsertItem(UpsertItem(item: item, text: text, attributes: attributes))
        case .deleteItems:
            let items = try r.ids16("items", limit: limits.maxItems)
            if items.isEmpty { throw ProtocolError(.invalidArgument, "items: DELETE_ITEMS needs at least one item") }
            request = .deleteItems(items)
        case .deleteUsers:
            let users = try r.ids16("users", limit: limits.maxItems)
            if users.isEmpty { throw ProtocolError(.invalidArgument, "users: DELETE_USERS needs at least one user") }
            request = .deleteUsers(users)
        case .error:
            throw ProtocolError(.unknownOpcode, "ERROR is a reply-only opcode")
        }
        try r.expectEnd()
        return request
    }

    /// FEEDBACK's batch: the count is checked first, then events are read and
    /// validated in order (so an invalid event is reported even if the payload
    /// is cut short after it). One bad event refuses the whole batch.
    static func decodeEvents(_ r: inout ByteReader, limits: ProtocolLimits) throws(ProtocolError) -> [WireEvent] {
        let n = Int(try r.u32("event count"))
        if n == 0 || n > limits.maxEvents {
            throw ProtocolError(.invalidArgument, "FEEDBACK carries \(n) events; allowed 1...\(limits.maxEvents)")
        }
        var events = [WireEvent]()
        events.reserveCapacity(min(n, r.remaining / WireEvent.wireSize + 1))
        for i in 0..<n {
            let user = try r.u64("user")
            let item = try r.u64("item")
            let rawKind = try r.u8("kind")
            let value = try r.f32("value")
            let timestamp = try r.i64("timestamp")
            func bad(_ why: String) -> ProtocolError {
                ProtocolError(.invalidEvent, "event \(i): \(why); no event of this batch was accepted", detail: UInt32(i))
            }
            guard ProtocolID.isValid(user) else { throw bad("user id \(user) out of range 1...\(ProtocolID.max)") }
            guard ProtocolID.isValid(item) else { throw bad("item id \(item) out of range 1...\(ProtocolID.max)") }
            guard let kind = EventKind(rawValue: rawKind) else { throw bad("unknown kind \(rawKind) (1 view, 2 click, 3 purchase, 4 rating)") }
            if let problem = WireEvent.problem(kind: kind, value: value) { throw bad(problem) }
            events.append(WireEvent(user: user, item: item, kind: kind, value: value, timestamp: timestamp))
        }
        return events
    }

    /// What in this request its encoding cannot carry, if anything: a list
    /// of more than 65,535 ids or attributes (`u16` counts), a `str16`
    /// over 65,535 bytes, a text over 4 GiB, more than 2³² events. `encode`
    /// would cut them silently (a partial deletion that looks whole), so a
    /// client checks this first and refuses the request.
    public var wireProblem: String? {
        let most = Int(UInt16.max)
        func ids(_ list: [UInt64], _ what: String) -> String? {
            list.count > most ? "\(what) has \(list.count) ids; a request carries at most \(most)" : nil
        }
        func str16(_ s: String, _ what: String) -> String? {
            s.utf8.count > most ? "\(what) is \(s.utf8.count) bytes; at most \(most)" : nil
        }
        switch self {
        case .hello(let h):
            return str16(h.clientName, "the client name") ?? str16(h.token, "the token")
        case .ping, .stats, .reload, .snapshot, .shutdown:
            return nil
        case .recommend(let q):
            let longSession = q.sessionID.utf8.count > RecommendRequest.maxSessionIDBytes
                ? "the session id is \(q.sessionID.utf8.count) bytes; at most \(RecommendRequest.maxSessionIDBytes)" : nil
            return str16(q.scorer, "the scorer name") ?? longSession ?? str16(q.shadowScorer, "the shadow scorer name")
                ?? ids(q.sessionItems, "the session's item list") ?? ids(q.exclude, "the exclude list") ?? ids(q.candidates, "the candidate list")
        case .score(let s):
            return str16(s.scorer, "the scorer name") ?? ids(s.sessionItems, "the session's item list") ?? ids(s.items, "the item list")
        case .feedback(let events):
            return events.count > Int(UInt32.max) ? "a FEEDBACK carries at most \(UInt32.max) events" : nil
        case .upsertItem(let u):
            if u.text.utf8.count > Int(UInt32.max) { return "the item text is over 4 GiB" }
            if u.attributes.count > most { return "the item has \(u.attributes.count) attributes; a request carries at most \(most)" }
            for a in u.attributes {
                if let p = str16(a.key, "attribute key \"\(a.key.prefix(40))\"") ?? str16(a.value, "the value of attribute \"\(a.key.prefix(40))\"") { return p }
            }
            return nil
        case .deleteItems(let list):
            return ids(list, "the item list")
        case .deleteUsers(let list):
            return ids(list, "the user list")
        }
    }

    /// Appends this request as one whole frame.
    public func encode(into out: inout [UInt8], requestID: UInt32) {
        let start = out.beginFrame(opcode: opcode.rawValue, flags: 0, requestID: requestID)
        switch self {
        case .hello(let h):
            out.put(h.protocolVersion)
            out.putStr16(h.clientName)
            out.putStr16(h.token)
        case .ping, .stats, .reload, .snapshot, .shutdown:
            break
        case .recommend(let q):
            out.put(q.user)
            out.put(q.k)
            out.put(q.minAppliedSeq)
            out.putStr16(q.scorer)
            out.putStr16(q.sessionID)
            out.putIDs16(q.sessionItems)
            out.putIDs16(q.exclude)
            out.putIDs16(q.candidates)
            if !q.shadowScorer.isEmpty { out.putStr16(q.shadowScorer) }
        case .score(let s):
            out.put(s.user)
            out.putStr16(s.scorer)
            out.putIDs16(s.sessionItems)
            out.putIDs16(s.items)
        case .feedback(let events):
            Request.encodeFeedback(events[...], into: &out)
        case .upsertItem(let u):
            out.put(u.item)
            out.putStr32(u.text)
            out.put(UInt16(u.attributes.count))
            for a in u.attributes {
                out.putStr16(a.key)
                out.putStr16(a.value)
            }
        case .deleteItems(let ids), .deleteUsers(let ids):
            out.putIDs16(ids)
        }
        out.endFrame(start)
    }

    /// FEEDBACK's payload for a slice of events, without building a Request
    /// (the streaming clients encode straight from their batches).
    public static func encodeFeedback(_ events: ArraySlice<WireEvent>, into out: inout [UInt8]) {
        out.reserveCapacity(out.count + 4 + events.count * WireEvent.wireSize)
        out.put(UInt32(events.count))
        for e in events {
            out.put(e.user)
            out.put(e.item)
            out.put(e.kind.rawValue)
            out.put(e.value)
            out.put(e.timestamp)
        }
    }
}
