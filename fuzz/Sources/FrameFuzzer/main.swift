// libFuzzer entry point: the frame decoder and every payload decoder, in both
// directions, over whatever bytes the fuzzer makes. Decoders may refuse
// input; they must never crash, hang or leak. A decoded request or reply must
// re-encode to a frame that decodes to the same value.

import PerennialProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    let limits = ProtocolLimits()
    var offset = 0
    while offset < bytes.count {
        let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
        guard case .frame(let header) = FrameDecoder.decode(rest, limits: limits) else { break }
        let payload = UnsafeRawBufferPointer(rebasing: rest[FrameHeader.size..<header.frameLength])
        if let op = try? FrameDecoder.opcode(of: header) {
            if let request = try? Request.decode(opcode: op, payload: payload, limits: limits) {
                var out: [UInt8] = []
                request.encode(into: &out, requestID: header.requestID)
                let again = out.withUnsafeBytes { raw -> Request? in
                    guard case .frame(let h) = FrameDecoder.decode(raw, limits: limits) else { return nil }
                    return try? Request.decode(opcode: op, payload: UnsafeRawBufferPointer(rebasing: raw[FrameHeader.size..<h.frameLength]), limits: limits)
                }
                precondition(again == request, "request does not survive re-encoding")
            }
            if let reply = try? Reply.decode(opcode: op, payload: payload) {
                var out: [UInt8] = []
                reply.encode(into: &out, requestID: header.requestID)
                _ = out
            }
        }
        offset += header.frameLength
    }
    return 0
}
