// The `text-cnn` scorer: items ranked by what their text says, so an item
// nobody has touched yet is recommendable the moment its text arrives.
//
// Model. The text encoder (TextEncoder.swift) maps an item's text to a
// vector y in its own space of `dimension` + 1 floats; the last coordinate
// acts as the item's bias. An item is represented by v_i = y_i + o_i, where
// o_i is the item's own offset learned from its events (collaborative topic
// regression's idea, Wang & Blei 2011): o_i starts at zero, so a new item
// starts exactly at the encoder's guess, and moves from it only as events
// on the item arrive — the blend of text and behaviour follows the
// evidence. Trained online by BPR (Rendle et al. 2009) end to end: for a
// positive event (u, i) on an item with text and a negative j drawn
// uniformly from the items with text the learner has seen, one step down
// −ln σ(q_u · (v_i − v_j)), where q_u is a per-user vector learned alongside
// (its bias slot fixed at 1). Gradients of a minibatch of
// `batch` positives are summed and applied with Adam: dense weights every
// batch, embedding and user rows lazily, where touched. So the encoder
// learns, from behaviour alone, which words and tags predict who likes what.
//
// Scoring. A user is described by their content profile: the sum of the
// L2-normalised vectors v of the items in their history and session (a
// user vector learned on the encoder's moving target is weaker than this
// for items never seen, as the E3 prototypes showed). An item's score is
// the profile · its normalised encoding (the cosine up to the profile's
// length, which ranking ignores). A user with no history gets the items'
// learned bias (what the text says about popularity). Items without text
// are not ranked by this scorer.
//
// Threads. Texts arrive on the admitting thread and are kept, tokenised,
// twice: as served (the newest, behind a mutex) and as the learner sees them
// (changes taken in log order, so learning depends on the log alone). Encoder weights are one buffer
// allocated once (the serving thread reads while the learner writes, as
// with the shared table). Cached item encodings belong to the serving
// thread alone (EncodingCache: refreshed a generation at a time once the
// encoder has taken `refreshSteps` steps).

import CKernels
import PerennialCore
import Synchronization

public final class TextCNNScorer: Scorer {
    public let name = "text-cnn"
    public let settings: TextCNNSettings
    let shape: TextEncoderShape
    let encoder: TextEncoder
    let tokenizer: Tokenizer
    let D: Int  // encoder output width, dimension + 1

    // Weights and Adam moments, one flat buffer each (never moved).
    let params: UnsafeMutablePointer<Float>
    let grad: UnsafeMutablePointer<Float>
    let adamM: UnsafeMutablePointer<Float>
    let adamV: UnsafeMutablePointer<Float>
    var adam: Adam
    /// Dense encoder steps taken (read by the serving thread).
    let steps = Atomic<Int>(0)

    // Per-user vectors and their moments (learner thread only).
    let users: ChunkedBuffer<Float>
    let userM: ChunkedBuffer<Float>
    let userV: ChunkedBuffer<Float>
    var userRows = 0
    // Per-item offsets from behaviour, and their moments.
    let offsets: ChunkedBuffer<Float>
    let offsetM: ChunkedBuffer<Float>
    let offsetV: ChunkedBuffer<Float>
    var offsetRows = 0

    /// Tokenised texts by item as served: the newest (admitting thread
    /// writes, serving thread reads).
    let texts = Mutex<[Int32: TokenizedText]>([:])
    /// Text changes the learner has not taken yet, in log order, each with
    /// its log position: it applies to events after that position. The
    /// learner's own copy follows them event by event, so what it learns
    /// depends on the log alone (a live server and its replay agree) and
    /// not on how far behind the learner was when a text arrived.
    private let textChanges = Mutex<[(after: UInt64, item: Int32, tokens: TokenizedText)]>([])
    private let textChangesWaiting = Atomic<Int>(0)
    /// The texts as of the event being learned (learner thread only).
    private var learnerTexts: [Int32: TokenizedText] = [:]

    // Learner-thread state.
    var seenItems: [Int32] = []
    var seen = Set<Int32>()
    var rng: SplitMix64
    var inBatch = 0
    var pendingEmbedding: [Int32: Int] = [:]
    var pendingEmbeddingGrad: [Float] = []
    var pendingUsers: [Int32: Int] = [:]
    var pendingUserGrad: [Float] = []
    var pendingOffsets: [Int32: Int] = [:]
    var pendingOffsetGrad: [Float] = []
    // Counters the learner writes and STATS reads on the serving thread.
    let learnedPositives = Atomic<UInt64>(0)
    let skippedNoText = Atomic<UInt64>(0)
    private var traceI: EncoderTrace, traceJ: EncoderTrace
    private var scratch: EncoderScratch
    private var dyI: [Float], dyJ: [Float], diff: [Float]

    // Serving-thread state: cached normalised encodings (D floats, then the
    // raw bias), a generation at a time.
    let cache: EncodingCache
    private var serveTrace: EncoderTrace
    /// Items one request encodes for the next generation of the cache, at
    /// most; a request that scores only a few items encodes
    /// `refreshesPerScoredItem` per item it scores, at least
    /// `minimumRefreshes` (review finding, helper-47: a 5-item SCORE paid
    /// for 512 encodings, 5 ms, while a refresh was under way). Items never
    /// encoded are always encoded at once.
    static let refreshesPerRequest = 512, refreshesPerScoredItem = 4, minimumRefreshes = 32
    /// The request's content profile (D floats; never moves, so scoring
    /// reads it through a pointer, without exclusivity checks per item).
    private let profile: UnsafeMutablePointer<Float>
    var itemCount = 0

    /// Anchored learning of the encoder's dense weights (convolutions and
    /// projection), when `[lifelong] anchor_strength` > 0: each minibatch
    /// step adds λ(θ − anchor) to the gradient, and the anchor follows θ as
    /// a moving average (RowAnchors explains the idea). Holds the weights
    /// from `shape.kernelOffset(0)` on (the embeddings are not anchored).
    /// Learner thread only.
    let anchor: UnsafeMutablePointer<Float>?
    let anchorStrength: Float, anchorRate: Float

    public init(settings: TextCNNSettings, anchors: RowAnchors? = nil) {
        self.settings = settings
        anchorStrength = anchors?.strength ?? 0
        anchorRate = anchors?.rate ?? 0
        shape = TextEncoderShape(buckets: settings.buckets, tokenDim: settings.tokenDimension, widths: [1, 2, 3],
                                 filters: settings.filters, output: settings.dimension + 1)
        encoder = TextEncoder(shape: shape)
        tokenizer = Tokenizer(buckets: settings.buckets, maxWords: settings.maxWords)
        D = shape.output
        let n = shape.count
        params = .allocate(capacity: n)
        grad = .allocate(capacity: n)
        adamM = .allocate(capacity: n)
        adamV = .allocate(capacity: n)
        for b in [grad, adamM, adamV] { b.initialize(repeating: 0, count: n) }
        params.initialize(repeating: 0, count: n)
        adam = Adam(learningRate: settings.learningRate)
        rng = SplitMix64(seed: settings.seed)
        users = ChunkedBuffer(width: D, fill: 0, rowsPerChunkLog2: 10)
        userM = ChunkedBuffer(width: D, fill: 0, rowsPerChunkLog2: 10)
        userV = ChunkedBuffer(width: D, fill: 0, rowsPerChunkLog2: 10)
        cache = EncodingCache(width: D + 1)
        offsets = ChunkedBuffer(width: D, fill: 0, rowsPerChunkLog2: 10)
        offsetM = ChunkedBuffer(width: D, fill: 0, rowsPerChunkLog2: 10)
        offsetV = ChunkedBuffer(width: D, fill: 0, rowsPerChunkLog2: 10)
        traceI = EncoderTrace(shape: shape)
        traceJ = EncoderTrace(shape: shape)
        serveTrace = EncoderTrace(shape: shape)
        scratch = EncoderScratch(shape: shape)
        dyI = .init(repeating: 0, count: D)
        dyJ = .init(repeating: 0, count: D)
        diff = .init(repeating: 0, count: D)
        profile = .allocate(capacity: D)
        profile.initialize(repeating: 0, count: D)
        let dense = shape.kernelOffset(0)
        anchor = anchors == nil ? nil : .allocate(capacity: n - dense)
        initialiseWeights()
        anchor?.initialize(from: params + dense, count: n - dense)
    }

    deinit {
        for b in [params, grad, adamM, adamV, profile] { b.deallocate() }
        anchor?.deallocate()
    }

    /// Embeddings uniform with the spread of N(0, 0.1); kernels with three
    /// times He's spread for their fan-in (the mean-of-ids inputs are small),
    /// the projection with 1/sqrt(fan-in); biases 0.
    private func initialiseWeights() {
        var g = SplitMix64(seed: settings.seed ^ 0x7E47)
        let sqrt3: Float = 1.7320508
        func fill(_ from: Int, _ count: Int, std: Float) {
            for k in 0..<count { params[from + k] = g.nextSignedUnitFloat() * std * sqrt3 }
        }
        let e = shape.tokenDim, F = shape.filters
        fill(0, shape.embeddingCount, std: 0.1)
        for (wi, w) in shape.widths.enumerated() {
            fill(shape.kernelOffset(wi), F * w * e, std: (2 / Float(w * e)).squareRoot() * 3)
        }
        fill(shape.projectionOffset, D * shape.projectionInputs, std: 1 / Float(shape.projectionInputs).squareRoot())
    }

    public static let factory = ScorerFactory(
        name: "text-cnn",
        summary: "a convolutional text encoder trained online by BPR: ranks items, cold ones included, by their text",
        readSettings: { r throws(ConfigError) in try TextCNNSettings.read(r) },
        make: { s, env in TextCNNScorer(settings: s as! TextCNNSettings, anchors: env.table.anchors) })

    /// A user's vector starts as small deterministic noise, bias slot 1.
    private func initialiseUser(_ u: Int) {
        var g = SplitMix64(seed: settings.seed ^ 0x05E4 ^ UInt64(u))
        let row = users.row(u)
        for k in 0..<(D - 1) { row[k] = g.nextSignedUnitFloat() * 0.1 * 1.7320508 }
        row[D - 1] = 1
    }

    /// The user's id expired: their vector, its Adam state and any gradient
    /// for it waiting in the minibatch start again.
    public func forget(user: Int32) {
        initialiseUser(Int(user))
        userM.row(Int(user)).update(repeating: 0, count: D)
        userV.row(Int(user)).update(repeating: 0, count: D)
        if let at = pendingUsers[user] { for k in 0..<D { pendingUserGrad[at + k] = 0 } }
    }

    /// Expired items: their texts (served, waiting and the learner's), their
    /// offsets with their Adam state and any gradient waiting in the
    /// minibatch, and their cached encodings go; they leave the negatives'
    /// pool. (The learner is idle: its state may be changed here.)
    public func forget(items retired: RetiredItems) {
        texts.withLock { t in for i in retired.indices { t.removeValue(forKey: i) } }
        let dropped = textChanges.withLock { queue -> Int in
            let before = queue.count
            queue.removeAll { retired.contains($0.item) }
            return before - queue.count
        }
        textChangesWaiting.subtract(dropped, ordering: .relaxed)
        for i in retired.indices {
            learnerTexts.removeValue(forKey: i)
            seen.remove(i)
            guard Int(i) < offsetRows else { continue }
            offsets.row(Int(i)).update(repeating: 0, count: D)
            offsetM.row(Int(i)).update(repeating: 0, count: D)
            offsetV.row(Int(i)).update(repeating: 0, count: D)
            if let at = pendingOffsets[i] { for k in 0..<D { pendingOffsetGrad[at + k] = 0 } }
            cache.invalidate(Int(i))
        }
        seenItems.removeAll(where: retired.contains)
    }

    public func grow(users n: Int, items: Int) {
        users.ensure(rows: n)
        userM.ensure(rows: n)
        userV.ensure(rows: n)
        for u in userRows..<max(userRows, n) { initialiseUser(u) }
        userRows = max(userRows, n)
        cache.grow(items: items)
        offsets.ensure(rows: items)
        offsetM.ensure(rows: items)
        offsetV.ensure(rows: items)
        offsetRows = max(offsetRows, items)
        itemCount = max(itemCount, items)
    }

    public func itemTextChanged(_ item: Int32, text: String, after seq: UInt64) {
        let tokens = tokenizer.tokenize(text)
        texts.withLock { $0[item] = tokens }
        textChanges.withLock { $0.append((seq, item, tokens)) }
        textChangesWaiting.add(1, ordering: .releasing)
        cache.invalidate(Int(item))
    }

    /// Takes the text changes made before event `seq` into the learner's copy.
    private func takeTextChanges(before seq: UInt64) {
        guard textChangesWaiting.load(ordering: .acquiring) > 0 else { return }
        let taken = textChanges.withLock { queue -> Int in
            var n = 0
            while n < queue.count && queue[n].after < seq {
                learnerTexts[queue[n].item] = queue[n].tokens
                n += 1
            }
            queue.removeFirst(n)
            return n
        }
        textChangesWaiting.subtract(taken, ordering: .relaxed)
    }

    // MARK: learning (learner thread)

    public var preferredEpochs: Int { settings.epochs }

    public func learn(_ e: LearnEvent) {
        takeTextChanges(before: e.seq)
        guard let tokensI = learnerTexts[e.item] else { skippedNoText.add(1, ordering: .relaxed); return }
        if seen.insert(e.item).inserted { seenItems.append(e.item) }
        bprStep(e, tokensI)
    }

    /// Experience replay: one more BPR step on a past event (its item seen,
    /// with text).
    public var replays: Bool { true }
    public func replay(_ e: LearnEvent) {
        guard seen.contains(e.item), let tokensI = learnerTexts[e.item] else { return }
        bprStep(e, tokensI)
    }

    /// One BPR step for a positive event against a uniformly drawn item
    /// with text, its gradients added to the minibatch.
    private func bprStep(_ e: LearnEvent, _ tokensI: TokenizedText) {
        // A rating at or above the threshold counts 1; an implicit event its
        // learning weight (`[feedback]`), which scales the step's gradient.
        let weight = e.positiveWeight(threshold: settings.positiveThreshold)
        guard weight > 0, seenItems.count > 1 else { return }
        var j = e.item
        while j == e.item { j = seenItems[rng.below(seenItems.count)] }
        guard let tokensJ = learnerTexts[j] else { return }
        learnedPositives.add(1, ordering: .relaxed)

        encoder.forward(params, tokensI, trace: &traceI)
        encoder.forward(params, tokensJ, trace: &traceJ)
        let q = users.row(Int(e.user))
        let oi = offsets.row(Int(e.item)), oj = offsets.row(Int(j))
        var x: Float = 0
        for k in 0..<D { diff[k] = traceI.y[k] + oi[k] - traceJ.y[k] - oj[k]; x += q[k] * diff[k] }
        // d/dx of −ln σ(x) is −(1 − σ(x)) = −σ(−x).
        let g = -weight * sigmoid(-x)
        for k in 0..<D { dyI[k] = g * q[k]; dyJ[k] = -g * q[k] }
        let ug = pendingRow(&pendingUsers, &pendingUserGrad, e.user)
        pendingUserGrad.withUnsafeMutableBufferPointer { pu in
            for k in 0..<(D - 1) { pu[ug + k] += g * diff[k] }
        }
        // The offsets get the same gradient as the encoder outputs.
        let gi = pendingRow(&pendingOffsets, &pendingOffsetGrad, e.item)
        let gj = pendingRow(&pendingOffsets, &pendingOffsetGrad, j)
        pendingOffsetGrad.withUnsafeMutableBufferPointer { po in
            for k in 0..<D { po[gi + k] += dyI[k]; po[gj + k] += dyJ[k] }
        }
        let e = shape.tokenDim
        let addEmbedding = { (id: Int32, de: UnsafePointer<Float>) in
            let at = self.pendingRow(&self.pendingEmbedding, &self.pendingEmbeddingGrad, id, width: e)
            self.pendingEmbeddingGrad.withUnsafeMutableBufferPointer { pe in
                for k in 0..<e { pe[at + k] += de[k] }
            }
        }
        encoder.backward(params, tokensI, trace: traceI, dy: dyI, grad: grad, scratch: &scratch, embedding: addEmbedding)
        encoder.backward(params, tokensJ, trace: traceJ, dy: dyJ, grad: grad, scratch: &scratch, embedding: addEmbedding)
        inBatch += 1
        if inBatch >= settings.batch { applyBatch() }
    }

    /// The slot of `key`'s pending gradient (`width` floats, zero when new).
    private func pendingRow(_ index: inout [Int32: Int], _ store: inout [Float], _ key: Int32, width: Int? = nil) -> Int {
        if let at = index[key] { return at }
        let at = store.count
        store.append(contentsOf: repeatElement(0, count: width ?? D))
        index[key] = at
        return at
    }

    /// One Adam step from the minibatch's summed gradients.
    private func applyBatch() {
        let dense = shape.kernelOffset(0)
        if let anchor {
            for k in dense..<shape.count { grad[k] += anchorStrength * (params[k] - anchor[k - dense]) }
        }
        adam.step(params + dense, grad: grad + dense, m: adamM + dense, v: adamV + dense, count: shape.count - dense)
        if let anchor {
            for k in dense..<shape.count { anchor[k - dense] += anchorRate * (params[k] - anchor[k - dense]) }
        }
        let e = shape.tokenDim
        pendingEmbeddingGrad.withUnsafeMutableBufferPointer { pe in
            for (id, at) in pendingEmbedding {
                let o = Int(id) * e
                adam.rowStep(params + o, grad: pe.baseAddress! + at, m: adamM + o, v: adamV + o, count: e)
            }
        }
        pendingUserGrad.withUnsafeMutableBufferPointer { pu in
            for (u, at) in pendingUsers {
                // The bias slot (last) stays 1.
                adam.rowStep(users.row(Int(u)), grad: pu.baseAddress! + at, m: userM.row(Int(u)), v: userV.row(Int(u)), count: D - 1)
            }
        }
        pendingOffsetGrad.withUnsafeMutableBufferPointer { po in
            for (i, at) in pendingOffsets {
                adam.rowStep(offsets.row(Int(i)), grad: po.baseAddress! + at, m: offsetM.row(Int(i)), v: offsetV.row(Int(i)), count: D)
            }
        }
        pendingOffsets.removeAll(keepingCapacity: true)
        pendingOffsetGrad.removeAll(keepingCapacity: true)
        pendingEmbedding.removeAll(keepingCapacity: true)
        pendingEmbeddingGrad.removeAll(keepingCapacity: true)
        pendingUsers.removeAll(keepingCapacity: true)
        pendingUserGrad.removeAll(keepingCapacity: true)
        inBatch = 0
        steps.add(1, ordering: .releasing)
    }

    // MARK: scoring (serving thread)

    /// The item's cached normalised encoding (D floats, then the raw bias),
    /// from the cache's live generation; nil for an item without text.
    @inline(__always)
    private func encoding(_ item: Int32) -> UnsafeMutablePointer<Float>? {
        cache.row(Int(item), encode: encode)
    }

    /// Writes the item's normalised encoding as the encoder and its offset
    /// stand now; false for an item without text.
    private func encode(_ item: Int, into row: UnsafeMutablePointer<Float>) -> Bool {
        guard let tokens = texts.withLock({ $0[Int32(item)] }) else { return false }
        encoder.forward(params, tokens, trace: &serveTrace)
        let o = offsets.row(item)
        var norm: Float = 0
        for k in 0..<D { row[k] = serveTrace.y[k] + o[k]; norm += row[k] * row[k] }
        row[D] = row[D - 1]
        let inv = norm > 0 ? 1 / norm.squareRoot() : 0
        for k in 0..<D { row[k] *= inv }
        return true
    }

    /// Encodes every item's text into the cache now: the first request
    /// after a start encoded the whole catalogue while every connection
    /// waited (5.6 s at a million items; review finding, helper-77). About
    /// 5 µs an item, at start-up.
    public func warmUp() {
        for i in 0..<itemCount { _ = cache.row(i, encode: encode) }
    }

    /// The most of a user's latest items a profile reads: a request's cost
    /// stays bounded whatever `history.max_items_per_user` keeps (1,000 was
    /// that bound's default until it rose to 10,000 for the exclusions).
    static let profileItems = 1000

    /// Sums the normalised encodings of the user's latest items and the
    /// session's into `profile`; false when none has text. (First, the
    /// cache's next generation advances by a request's share: in
    /// proportion to the `scored` items.)
    private func buildProfile(_ query: ScoringQuery, scored: Int) -> Bool {
        let budget = min(Self.refreshesPerRequest, max(Self.minimumRefreshes, Self.refreshesPerScoredItem * scored))
        cache.advance(now: steps.load(ordering: .acquiring), every: settings.refreshSteps,
                      budget: budget, items: itemCount, encode: encode)
        for k in 0..<D { profile[k] = 0 }
        var any = false
        func add(_ item: Int32) {
            guard let v = encoding(item) else { return }
            for k in 0..<D { profile[k] += v[k] }
            any = true
        }
        for item in query.history.suffix(Self.profileItems) { add(item) }
        for item in query.sessionItems { add(item) }
        return any
    }

    @inline(__always)
    private func score(_ v: UnsafeMutablePointer<Float>, hasProfile: Bool) -> Float {
        hasProfile ? pk_dot(profile, v, D) : v[D]
    }

    public func recommend(_ query: ScoringQuery, into top: inout TopK) {
        let hasProfile = buildProfile(query, scored: query.candidates?.count ?? itemCount)
        query.forEachEligibleItem { item in
            guard let v = encoding(item) else { return }
            top.push(item, score(v, hasProfile: hasProfile))
        }
    }

    public func score(_ query: ScoringQuery, items: [Int32?]) -> [Float] {
        let hasProfile = buildProfile(query, scored: items.count)
        return items.map { item in
            guard let item, let v = encoding(item) else { return 0 }
            return score(v, hasProfile: hasProfile)
        }
    }

    public var counters: [(String, UInt64)] {
        [("positives_learned", learnedPositives.load(ordering: .relaxed)),
         ("events_without_text", skippedNoText.load(ordering: .relaxed)),
         ("encoder_steps", UInt64(steps.load(ordering: .relaxed))),
         ("items_with_text", UInt64(texts.withLock { $0.count }))]
    }

    // MARK: snapshots

    public func save(to w: inout SnapshotWriter) {
        let dense = shape.kernelOffset(0)
        w.bool(anchor != nil)
        if let anchor { w.floats(anchor, count: shape.count - dense) }
        w.floats(params, count: shape.count)
        w.floats(grad, count: shape.count)
        w.floats(adamM, count: shape.count)
        w.floats(adamV, count: shape.count)
        w.int(adam.steps)
        w.int(steps.load(ordering: .relaxed))
        w.rows(users, count: userRows)
        w.rows(userM, count: userRows)
        w.rows(userV, count: userRows)
        w.rows(offsets, count: offsetRows)
        w.rows(offsetM, count: offsetRows)
        w.rows(offsetV, count: offsetRows)
        w.int32s(seenItems)
        w.u64(rng.state)
        w.int(inBatch)
        for (index, store, width) in [(pendingEmbedding, pendingEmbeddingGrad, shape.tokenDim), (pendingUsers, pendingUserGrad, D),
                                      (pendingOffsets, pendingOffsetGrad, D)] {
            let keys = index.keys.sorted()
            w.int32s(keys)
            for k in keys { for j in 0..<width { w.f32(store[index[k]! + j]) } }
        }
        w.u64(learnedPositives.load(ordering: .relaxed))
        w.u64(skippedNoText.load(ordering: .relaxed))
    }

    public func load(from r: inout SnapshotReader) throws {
        let dense = shape.kernelOffset(0)
        let savedAnchor = try r.bool()
        let scratchAnchor = savedAnchor && anchor == nil ? UnsafeMutablePointer<Float>.allocate(capacity: shape.count - dense) : nil
        defer { scratchAnchor?.deallocate() }
        if savedAnchor { try r.floats(into: anchor ?? scratchAnchor!, count: shape.count - dense) }
        try r.floats(into: params, count: shape.count)
        // Saved without anchors: the anchor starts at the restored weights.
        if !savedAnchor, let anchor { anchor.update(from: params + dense, count: shape.count - dense) }
        try r.floats(into: grad, count: shape.count)
        try r.floats(into: adamM, count: shape.count)
        try r.floats(into: adamV, count: shape.count)
        adam.restore(steps: try r.int(in: 0...Int.max, "text-cnn's optimiser steps"))
        steps.store(try r.int(in: 0...Int.max, "text-cnn's steps"), ordering: .releasing)
        try r.rows(into: users, expected: userRows)
        try r.rows(into: userM, expected: userRows)
        try r.rows(into: userV, expected: userRows)
        try r.rows(into: offsets, expected: offsetRows)
        try r.rows(into: offsetM, expected: offsetRows)
        try r.rows(into: offsetV, expected: offsetRows)
        // (Indices and token ids checked against what they index:
        // SnapshotReader. Distinct seen items: a negative is drawn from them
        // until it differs from the positive.)
        seenItems = try r.indices(below: offsetRows)
        seen = Set(seenItems)
        guard seen.count == seenItems.count else { throw LogError("snapshot: text-cnn's seen items repeat") }
        rng = SplitMix64(seed: try r.u64())
        inBatch = try r.int(in: 0...Int.max, "text-cnn's events in the batch")
        pendingEmbedding = [:]; pendingEmbeddingGrad = []
        for k in try r.indices(below: settings.buckets) {
            let at = pendingRow(&pendingEmbedding, &pendingEmbeddingGrad, k, width: shape.tokenDim)
            for j in 0..<shape.tokenDim { pendingEmbeddingGrad[at + j] = try r.f32() }
        }
        pendingUsers = [:]; pendingUserGrad = []
        for k in try r.indices(below: userRows) {
            let at = pendingRow(&pendingUsers, &pendingUserGrad, k)
            for j in 0..<D { pendingUserGrad[at + j] = try r.f32() }
        }
        pendingOffsets = [:]; pendingOffsetGrad = []
        for k in try r.indices(below: offsetRows) {
            let at = pendingRow(&pendingOffsets, &pendingOffsetGrad, k)
            for j in 0..<D { pendingOffsetGrad[at + j] = try r.f32() }
        }
        learnedPositives.store(try r.u64(), ordering: .relaxed)
        skippedNoText.store(try r.u64(), ordering: .relaxed)
        cache.invalidateAll()
    }
}


#if canImport(Glibc)
import Glibc
#endif
