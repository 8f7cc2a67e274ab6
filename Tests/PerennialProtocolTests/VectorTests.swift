// Every vector in protocol/vectors/index.json, decoded and re-encoded by the
// Swift codec exactly as the index says.

import Foundation
import Testing
import PerennialProtocol

private let vectorsDir = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("protocol/vectors")

private struct Vector: CustomStringConvertible {
    var name: String
    var file: String
    var expect: String
    var frame: [String: Any]?
    var error: [String: Any]?
    var description: String { name }
}

private func loadIndex() throws -> (limits: ProtocolLimits, vectors: [Vector]) {
    let data = try Data(contentsOf: vectorsDir.appendingPathComponent("index.json"))
    let root = try JSONSerialization.jsonObject(with: data) as! [String: Any]
    let l = root["limits"] as! [String: Any]
    let limits = ProtocolLimits(maxFrameBytes: l["max_frame_bytes"] as! Int, maxItems: l["max_items"] as! Int,
                                maxEvents: l["max_events"] as! Int)
    let vectors = (root["vectors"] as! [[String: Any]]).map {
        Vector(name: $0["name"] as! String, file: $0["file"] as! String, expect: $0["expect"] as! String,
               frame: $0["frame"] as? [String: Any], error: $0["error"] as? [String: Any])
    }
    return (limits, vectors)
}

private enum Decoded {
    case needMore
    case frame(FrameHeader, Any)  // Request or Reply
    case error(ProtocolError, requestID: UInt32)
}

private func decode(_ bytes: [UInt8], limits: ProtocolLimits) -> Decoded {
    bytes.withUnsafeBytes { raw in
        switch FrameDecoder.decode(raw, limits: limits) {
        case .needMore: return .needMore
        case .fatal(let e, let id): return .error(e, requestID: id)
        case .frame(let h):
            let payload = UnsafeRawBufferPointer(rebasing: raw[FrameHeader.size..<h.frameLength])
            do throws(ProtocolError) {
                let op = try FrameDecoder.opcode(of: h)
                if h.isReply { return .frame(h, try Reply.decode(opcode: op, payload: payload)) }
                return .frame(h, try Request.decode(opcode: op, payload: payload, limits: limits))
            } catch {
                return .error(error, requestID: h.requestID)
            }
        }
    }
}

// MARK: JSON forms (PROTOCOL.md, "Test vectors")

private func json(_ r: Request) -> [String: Any] {
    switch r {
    case .hello(let h): ["protocol_version": h.protocolVersion, "client_name": h.clientName, "token": h.token]
    case .ping, .stats, .reload, .snapshot, .shutdown: [:]
    case .recommend(let q):
        ["user": q.user, "k": q.k, "min_applied_seq": q.minAppliedSeq, "scorer": q.scorer, "session_id": q.sessionID,
         "session_items": q.sessionItems, "exclude": q.exclude, "candidates": q.candidates]
            .merging(q.shadowScorer.isEmpty ? [:] : ["shadow_scorer": q.shadowScorer]) { a, _ in a }
    case .score(let s): ["user": s.user, "scorer": s.scorer, "session_items": s.sessionItems, "items": s.items]
    case .feedback(let events):
        ["events": events.map { ["user": $0.user, "item": $0.item, "kind": $0.kind.name, "value": $0.value, "timestamp": $0.timestamp] as [String: Any] }]
    case .upsertItem(let u): ["item": u.item, "text": u.text, "attributes": u.attributes.map { [$0.key, $0.value] }]
    case .deleteItems(let items): ["items": items]
    case .deleteUsers(let users): ["users": users]
    }
}

private func json(_ r: Reply) -> [String: Any] {
    switch r {
    case .hello(let h):
        ["protocol_version": h.protocolVersion, "max_frame_bytes": h.maxFrameBytes, "max_items": h.maxItems,
         "max_events": h.maxEvents, "server_name": h.serverName]
    case .ping, .reload, .shutdown: [:]
    case .recommend(let r): ["applied_seq": r.appliedSeq, "items": r.items.map { [$0.item, $0.score] as [Any] }]
    case .score(let s): ["scores": s.map { [$0.score, $0.known ? 1 : 0] as [Any] }]
    case .feedback(let a): ["first_seq": a.firstSeq, "last_seq": a.lastSeq, "durable_seq": a.durableSeq, "applied_seq": a.appliedSeq]
    case .upsertItem(let u): ["created": u.created ? 1 : 0, "truncated": u.truncated ? 1 : 0]
    case .deleteItems(let deleted), .deleteUsers(let deleted): ["deleted": deleted]
    case .stats(let c): ["counters": c.map { [$0.name, $0.value] as [Any] }]
    case .snapshot(let seq, let version): ["seq": seq, "version": version]
    case .error(let e): ["code": e.code?.name ?? String(e.rawCode), "detail": e.detail, "message": e.message]
    }
}

/// Structural equality of JSON-like values; numbers compare as doubles
/// (vector floats are exact in binary32, integers below 2^53 or exact).
private func same(_ a: Any, _ b: Any) -> Bool {
    switch (a, b) {
    case (let x as String, let y as String): return x == y
    case (let x as [String: Any], let y as [String: Any]):
        return x.count == y.count && x.allSatisfy { k, v in y[k].map { same(v, $0) } ?? false }
    case (let x as [Any], let y as [Any]):
        return x.count == y.count && zip(x, y).allSatisfy(same)
    default:
        return number(a) != nil && number(a) == number(b)
    }
}

private func number(_ v: Any) -> Double? {
    switch v {
    case let n as UInt64: Double(n)
    case let n as Int64: Double(n)
    case let n as UInt32: Double(n)
    case let n as UInt16: Double(n)
    case let n as Int: Double(n)
    case let n as Float: Double(n)
    case let n as Double: n
    case let n as NSNumber: n.doubleValue
    default: nil
    }
}

@Suite struct VectorTests {
    @Test func indexHasEnoughVectors() throws {
        let (_, vectors) = try loadIndex()
        #expect(vectors.count >= 30)
        #expect(Set(vectors.map(\.expect)) == ["frame", "error", "need_more"])
    }

    @Test(arguments: try! loadIndex().vectors.map(\.name))
    func vector(_ name: String) throws {
        let (limits, vectors) = try loadIndex()
        let v = vectors.first { $0.name == name }!
        let bytes = [UInt8](try Data(contentsOf: vectorsDir.appendingPathComponent(v.file)))
        let decoded = decode(bytes, limits: limits)
        switch v.expect {
        case "need_more":
            guard case .needMore = decoded else { Issue.record("\(name): expected need_more, got \(decoded)"); return }
        case "error":
            let e = v.error!
            guard case .error(let err, let id) = decoded else { Issue.record("\(name): expected an error, got \(decoded)"); return }
            #expect(err.code.name == e["code"] as? String, "\(name): \(err)")
            #expect(err.fatal == (e["fatal"] as? Bool ?? false), "\(name)")
            if let detail = e["detail"] as? Int { #expect(Int(err.detail) == detail, "\(name)") }
            if let rid = e["request_id"] as? Int { #expect(Int(id) == rid, "\(name)") }
        case "frame":
            let f = v.frame!
            guard case .frame(let h, let message) = decoded else { Issue.record("\(name): expected a frame, got \(decoded)"); return }
            #expect(Int(h.version) == f["version"] as? Int)
            #expect(Opcode(rawValue: h.opcode)?.name == f["opcode"] as? String)
            #expect(Int(h.flags) == f["flags"] as? Int)
            #expect(Int(h.requestID) == f["request_id"] as? Int)
            var reencoded: [UInt8] = []
            if let r = message as? Request {
                #expect(same(json(r), f["payload"]!), "\(name): \(json(r))")
                r.encode(into: &reencoded, requestID: h.requestID)
            } else if let r = message as? Reply {
                #expect(same(json(r), f["payload"]!), "\(name): \(json(r))")
                r.encode(into: &reencoded, requestID: h.requestID)
            }
            #expect(reencoded == bytes, "\(name): re-encoding differs")
        default:
            Issue.record("unknown expectation \(v.expect)")
        }
    }
}
