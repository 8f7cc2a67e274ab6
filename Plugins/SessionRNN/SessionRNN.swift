// The `session-rnn` scorer: the next item from what the session just did.
//
// Model (GRU4Rec's shape, Hidasi et al. 2016). The session's last `steps`
// items, read as their rows in the shared table, run through a GRU
// (GRU.swift) from a zero state; its last state h is mapped into the item
// space, q = W_o h + b_o, and item j scores s_j = q · v_j + b_j, with v_j
// the same shared rows.
//
// Learning, online from the stream: every event of a user is a next-item
// example whose input is that user's previous `steps` items. The loss is
// the sampled softmax over the true item and `negatives` items drawn
// uniformly from those seen so far (Jean et al. 2015): −ln softmax(s)_true.
// Its gradient, p_k − [k is true], flows to the candidates' rows and
// biases, to W_o, through the GRU by backpropagation through time, and
// into the input rows scaled by `table_gradient_scale`. Steps are Adagrad
// (Duchi et al. 2011): per weight for the GRU and W_o, per row (one
// mean-squared accumulator, the table's own) for item rows.
//
// Scoring blends in transition counts: the GRU's scores, standardised over
// the items ranked, plus `transition_weight` · ln(1 + Σ_k decay^(k-1) ·
// count of (k-th latest session item → j) transitions seen), where each
// event counted a transition from each of its user's previous
// `transition_window` items, weighted the same way: a sequence-aware
// item-to-item neighbourhood, directed (session-based kNN's idea, Ludewig
// & Jannach 2018; window 1 is first-order Markov). The counts recall exact
// short-range sequences that the GRU, with 64 numbers of state, ranks less
// sharply (E1 and E4 figures for both parts are in docs/quality.md); weight
// 0 is the GRU alone.
//
// Threads: learning state (per-user recent items, RNG) is the learner's;
// weights are one buffer allocated once, item biases and transition counts
// live in ChunkedBuffers, read by the serving thread while the learner
// writes (Hogwild-style, as with the shared table); the serving thread has
// its own GRU trace and scratch.

import CKernels
import PerennialCore
import Synchronization

public final class SessionRNNScorer: Scorer {
    public let name = "session-rnn"
    /// (Changed only by `adjust`, with the learner idle and no query
    /// running: the admitting thread is the serving thread.)
    public private(set) var settings: SessionRNNSettings
    let table: EmbeddingTable
    /// Which item indices are vacant (expired items'): never a negative.
    let vacancy: ItemVacancy
    let d: Int
    let layout: GRULayout
    /// GRU weights, then W_o (d × d), then b_o (d).
    let params: UnsafeMutablePointer<Float>
    let grad: UnsafeMutablePointer<Float>
    let accum: UnsafeMutablePointer<Float>
    let count: Int
    var woOffset: Int { layout.count }
    var boOffset: Int { layout.count + d * d }
    /// Per item: bias and its Adagrad accumulator.
    let itemBias: ChunkedBuffer<Float>
    let transitions: ItemNeighbourhood

    // Learner-thread state.
    var recent: [[Int32]] = []
    var rng: SplitMix64
    var learnedItems = 0
    let learnedEvents = Atomic<UInt64>(0)
    /// Transitions are counted once per event: only events beyond this
    /// sequence number add one (a bulk fit's later passes do not).
    var transitionsCountedTo: UInt64 = 0
    let transitionsCounted = Atomic<UInt64>(0)
    private var trace: GRUTrace
    private var backScratch: GRUBackwardScratch
    private var q: [Float], dq: [Float], dh: [Float], h: [Float]
    private var cands: [Int32], logits: [Float]
    private let rowGrad: UnsafeMutablePointer<Float>

    // Serving-thread state.
    var itemCount = 0
    private var serveTrace: GRUTrace
    private var serveQ: [Float], serveH: [Float]
    private var serveScores: [Float] = []
    private var serveTransitions: [Float] = []
    private var touched: [Int32] = []

    public init(settings: SessionRNNSettings, table: EmbeddingTable, vacancy: ItemVacancy = ItemVacancy()) {
        self.settings = settings
        self.table = table
        self.vacancy = vacancy
        d = table.dimension
        layout = GRULayout(inputs: d, hidden: d)
        count = layout.count + d * d + d
        params = .allocate(capacity: count)
        grad = .allocate(capacity: count)
        accum = .allocate(capacity: count)
        grad.initialize(repeating: 0, count: count)
        accum.initialize(repeating: 0, count: count)
        params.initialize(repeating: 0, count: count)
        itemBias = ChunkedBuffer(width: 2, fill: 0, rowsPerChunkLog2: 12)
        transitions = ItemNeighbourhood(capacity: settings.transitionSlots, window: 1)
        rng = SplitMix64(seed: settings.seed)
        trace = GRUTrace(layout: layout, maxSteps: settings.steps)
        serveTrace = GRUTrace(layout: layout, maxSteps: settings.steps)
        backScratch = GRUBackwardScratch(layout: layout)
        q = .init(repeating: 0, count: d); dq = q; dh = q; h = q; serveQ = q; serveH = q
        cands = .init(repeating: 0, count: settings.negatives + 1)
        logits = .init(repeating: 0, count: settings.negatives + 1)
        rowGrad = .allocate(capacity: d)
        rowGrad.initialize(repeating: 0, count: d)
        // Weights uniform with standard deviation 1/sqrt(fan-in); biases 0.
        var g = SplitMix64(seed: settings.seed ^ 0x6E0)
        let spread = 1.7320508 / Float(d).squareRoot()
        for k in 0..<layout.bOffset { params[k] = g.nextSignedUnitFloat() * spread }
        for k in 0..<(d * d) { params[woOffset + k] = g.nextSignedUnitFloat() * spread }
    }

    deinit {
        params.deallocate(); grad.deallocate(); accum.deallocate(); rowGrad.deallocate()
    }

    public static let factory = ScorerFactory(
        name: "session-rnn",
        summary: "a GRU over the session's recent items (shared rows in and out), trained online by sampled softmax, blended with transition counts",
        readSettings: { r throws(ConfigError) in try SessionRNNSettings.read(r) },
        make: { s, env in SessionRNNScorer(settings: s as! SessionRNNSettings, table: env.table, vacancy: env.vacancy) })

    public func grow(users: Int, items: Int) {
        itemBias.ensure(rows: items)
        transitions.grow(items: items)
        itemCount = max(itemCount, items)
    }

    // MARK: learning (learner thread)

    public var preferredEpochs: Int { settings.epochs }

    public func beginRepeatedEpoch() {
        for u in recent.indices { recent[u].removeAll(keepingCapacity: true) }
    }

    /// A RELOAD that changes only `transition_weight` (read per query; the
    /// counts do not depend on it) takes it in place.
    public func adjusts(to new: any ScorerSettings) -> Bool {
        guard let new = new as? SessionRNNSettings else { return false }
        var same = settings
        same.transitionWeight = new.transitionWeight
        return same == new
    }

    public func adjust(to new: any ScorerSettings) {
        precondition(adjusts(to: new))
        settings = new as! SessionRNNSettings
    }

    /// The user's id expired: their sequence starts again.
    public func forget(user: Int32) {
        if Int(user) < recent.count { recent[Int(user)] = [] }
    }

    /// Expired items: their biases start again, and they leave every
    /// user's sequence and the transition counts.
    public func forget(items retired: RetiredItems) {
        forgetLater(items: retired)?.run()
    }

    /// The items' biases now; the transition-count purge and every user's
    /// sequence (learner state, visiting every item and user), returned
    /// for the learner.
    public func forgetLater(items retired: RetiredItems) -> LearnerJob? {
        for i in retired.indices { itemBias.row(Int(i)).update(repeating: 0, count: 2) }
        return LearnerJob { [self] in
            transitions.forget(retired)
            retired.remove(from: &recent)
        }
    }

    public func learn(_ e: LearnEvent) {
        learnedEvents.add(1, ordering: .relaxed)
        defer { transitionsCountedTo = max(transitionsCountedTo, e.seq) }
        // The shared fallback user's events are many people's: no sequence.
        if e.sharedUser { return }
        let u = Int(e.user)
        if u >= recent.count { recent.append(contentsOf: repeatElement([], count: u + 1 - recent.count)) }
        learnedItems = max(learnedItems, Int(e.item) + 1)
        if let last = recent[u].last {
            // (An implicit event's learning weight, `[feedback]`, scales the
            // step; a rating is a step of the sequence like any other.)
            let weight = e.occurrenceWeight
            if learnedItems > 1 && weight > 0 { trainStep(inputs: recent[u].suffix(settings.steps), target: e.item, weight: weight) }
            if e.seq > transitionsCountedTo && last != e.item {
                // From each of the previous `transitionWindow` items, the
                // k-th most recent counting decay^(k-1).
                var w: Float = 1, counted: UInt64 = 0
                for p in recent[u].suffix(settings.transitionWindow).reversed() {
                    if p != e.item && w > 0 { transitions.add(p, e.item, w); counted += 1 }
                    w *= settings.transitionDecay
                }
                transitionsCounted.add(counted, ordering: .relaxed)
            }
        }
        recent[u].append(e.item)
        let keep = max(settings.steps, settings.transitionWindow)
        if recent[u].count > 2 * keep { recent[u].removeFirst(recent[u].count - keep) }
    }

    /// One sampled-softmax step for "after `inputs` comes `target`".
    private func trainStep(inputs: ArraySlice<Int32>, target: Int32, weight: Float) {
        let K = settings.negatives, lr = settings.learningRate
        // Candidates: the target, then uniform negatives over the items the
        // learner has reached (a draw equal to the target is masked out).
        cands[0] = target
        for k in 1...K {
            cands[k] = Int32(rng.below(learnedItems))
            // (A vacant index, an expired item's, is drawn again a few
            // times; with none vacant the draws are as they always were.)
            var redraws = 0
            while vacancy.isVacant(cands[k]) && redraws < 64 {
                cands[k] = Int32(rng.below(learnedItems))
                redraws += 1
            }
        }
        // Drawn before the forward pass (which draws nothing, so the draws
        // are the same), their rows are fetched while the GRU runs: in a
        // large catalogue each is a cache miss, and one after another they
        // were most of a step (0.85 ms per event at 200,000 items).
        let rowBytes = d * MemoryLayout<Float>.stride
        for k in 0...K {
            pk_prefetch(table.item(cands[k]), rowBytes)
            pk_prefetch(itemBias.row(Int(cands[k])), 8)
            pk_prefetch(table.itemAdagrad.row(Int(cands[k])), 4)
        }
        // Forward: the GRU, then q = W_o h + b_o.
        trace.reset()
        for x in inputs { trace.step(params, input: table.item(x)) }
        let last = trace.last
        for k in 0..<d { h[k] = last[last.startIndex + k] }
        project(h, into: &q)
        var maxLogit = -Float.infinity
        for k in 0...K {
            // (A vacant index drawn is masked the same way: no step on its row.)
            if k > 0 && (cands[k] == target || vacancy.isVacant(cands[k])) { logits[k] = -.infinity; continue }
            let s = itemBias.row(Int(cands[k]))[0] + pk_dot(q, table.item(cands[k]), d)
            logits[k] = s
            maxLogit = max(maxLogit, s)
        }
        var z: Float = 0
        for k in 0...K { logits[k] = expf(logits[k] - maxLogit); z += logits[k] }
        // logits now hold softmax numerators; dL/ds_k = p_k − [k = 0], times
        // the event's weight (its loss counts that many times).
        for k in 0...K { logits[k] = weight * (logits[k] / z - (k == 0 ? 1 : 0)) }
        // dq = Σ_k dL/ds_k v_k, before the rows move.
        for j in 0..<d { dq[j] = 0 }
        for k in 0...K where logits[k] != 0 {
            let v = table.item(cands[k]), g = logits[k]
            for j in 0..<d { dq[j] += g * v[j] }
        }
        // W_o, b_o; dh = W_oᵀ dq.
        let gWo = grad + woOffset, gbo = grad + boOffset
        for j in 0..<d { dh[j] = 0 }
        dq.withUnsafeBufferPointer { dqp in
            h.withUnsafeBufferPointer { hp in pk_outer_acc(gWo, d, d, dqp.baseAddress!, hp.baseAddress!) }
            dh.withUnsafeMutableBufferPointer { dhp in pk_matvec_t_acc(params + woOffset, d, d, dqp.baseAddress!, dhp.baseAddress!) }
        }
        for j in 0..<d { gbo[j] += dq[j] }
        // Through the GRU; input rows get their gradient as it comes.
        let scale = settings.tableGradientScale
        let inputItems = Array(inputs)
        trace.backward(params, dLast: dh, grad: grad, scratch: &backScratch) { t, dx in
            guard scale > 0 else { return }
            for j in 0..<d { rowGrad[j] = scale * dx[j] }
            rowStep(inputItems[t])
        }
        // Candidate rows and biases.
        for k in 0...K where logits[k] != 0 {
            let g = logits[k]
            for j in 0..<d { rowGrad[j] = g * q[j] }
            rowStep(cands[k])
            let b = itemBias.row(Int(cands[k]))
            b[1] += g * g
            b[0] -= lr * g / (b[1].squareRoot() + 1e-8)
        }
        // Dense weights: per-weight Adagrad (in C, eight weights at a time:
        // this loop was 40% of the learner in Swift).
        pk_adagrad_dense(params, grad, accum, lr, count)
    }

    /// Adagrad on one item row of the shared table with `rowGrad`, using the
    /// table's per-row accumulator (the row's mean squared gradient). Not
    /// anchored (`[lifelong] anchor_strength`): with the pull toward the
    /// anchors, E4 fell from 0.1016 to 0.0951.
    private func rowStep(_ item: Int32) {
        adagradRowStep(table.item(item), direction: rowGrad, scale: -1, width: d,
                       accumulator: table.itemAdagrad.row(Int(item)), learningRate: settings.learningRate)
        table.noteItemChanged(item)
    }

    private func project(_ h: [Float], into out: inout [Float]) {
        h.withUnsafeBufferPointer { hp in
            out.withUnsafeMutableBufferPointer { o in pk_dot_rows(params + woOffset, d, d, hp.baseAddress!, o.baseAddress!) }
        }
        for j in 0..<d { out[j] += params[boOffset + j] }
    }

    // MARK: scoring (serving thread)

    /// The session's latest `count` items the model holds: the request's
    /// session items, else the user's latest history.
    private func sessionInputs(_ query: ScoringQuery, last count: Int) -> ArraySlice<Int32> {
        let items = query.sessionItems.isEmpty ? Array(query.history) : query.sessionItems
        return items.filter { Int($0) < itemCount }.suffix(count)
    }

    /// Fills `serveQ` from the session; false when it is empty.
    /// Also returns the items transitions are read from.
    private func prepare(_ query: ScoringQuery) -> (hasSession: Bool, latest: ArraySlice<Int32>) {
        let session = sessionInputs(query, last: max(settings.steps, settings.transitionWindow))
        guard !session.isEmpty else { return (false, []) }
        serveTrace.reset()
        for x in session.suffix(settings.steps) { serveTrace.step(params, input: table.item(x)) }
        let last = serveTrace.last
        for k in 0..<d { serveH[k] = last[last.startIndex + k] }
        project(serveH, into: &serveQ)
        return (true, session.suffix(settings.transitionWindow))
    }

    /// Raw GRU scores for items 0..<n into serveScores (biases alone
    /// without a session).
    private func rawScores(n: Int, hasSession: Bool) {
        if serveScores.count < n { serveScores = .init(repeating: 0, count: max(n, 1024) * 2) }
        serveScores.withUnsafeMutableBufferPointer { out in
            let o = out.baseAddress!
            if hasSession {
                serveQ.withUnsafeBufferPointer { qp in
                    table.items.forEachChunk(rows: n) { start, rows, count in
                        pk_dot_rows(rows, count, d, qp.baseAddress!, o + start)
                    }
                }
            } else {
                for i in 0..<n { o[i] = 0 }
            }
            itemBias.forEachChunk(rows: n) { start, b, count in
                for r in 0..<count { o[start + r] += b[2 * r] }
            }
        }
    }

    /// ln(1 + Σ_k decay^(k-1) · transitions from the k-th latest item → j)
    /// for every j with one, into serveTransitions.
    private func gatherTransitions(from latest: ArraySlice<Int32>, n: Int) {
        // (Sized for every item the transitions may name, not just the query's n.)
        let room = max(n, itemCount)
        if serveTransitions.count < room { serveTransitions = .init(repeating: 0, count: max(room, 1024) * 2) }
        for j in touched where Int(j) < serveTransitions.count { serveTransitions[Int(j)] = 0 }
        touched.removeAll(keepingCapacity: true)
        guard settings.transitionWeight > 0 else { return }
        // (The counts are positive, so an item is touched once however
        // many of the latest items lead to it: `accumulate` adds an item to
        // `touched` only while its sum is 0.)
        var w: Float = 1
        for c in latest.reversed() where w > 0 {
            serveTransitions.withUnsafeMutableBufferPointer { t in
                transitions.accumulate(from: c, weight: w, into: t.baseAddress!, touched: &touched)
            }
            w *= settings.transitionDecay
        }
        for j in touched where Int(j) < serveTransitions.count {
            serveTransitions[Int(j)] = settings.transitionWeight * logf(1 + serveTransitions[Int(j)])
        }
    }

    public func recommend(_ query: ScoringQuery, into top: inout TopK) {
        let n = min(query.itemCount, itemCount)
        let (hasSession, latest) = prepare(query)
        rawScores(n: n, hasSession: hasSession)
        gatherTransitions(from: latest, n: n)
        // Standardise over the items that may be returned. (Through
        // pointers taken once: these loops visit every item.)
        serveScores.withUnsafeBufferPointer { scoresBuffer in
            serveTransitions.withUnsafeBufferPointer { transitionsBuffer in
                let raw = scoresBuffer.baseAddress!, bonus = transitionsBuffer.baseAddress!
                var sum = 0.0, sq = 0.0, m = 0
                query.forEachEligibleItem { i in
                    guard Int(i) < n else { return }
                    let s = Double(raw[Int(i)]); sum += s; sq += s * s; m += 1
                }
                guard m > 0 else { return }
                let mean = sum / Double(m)
                let std = max(1e-6, (sq / Double(m) - mean * mean).squareRoot())
                let mf = Float(mean), inv = Float(1 / std)
                query.forEachEligibleItem { i in
                    guard Int(i) < n else { return }
                    let s = (raw[Int(i)] - mf) * inv + bonus[Int(i)]
                    if s.isFinite { top.push(i, s) }
                }
            }
        }
    }

    public func score(_ query: ScoringQuery, items: [Int32?]) -> [Float] {
        let n = min(query.itemCount, itemCount)
        let (hasSession, latest) = prepare(query)
        rawScores(n: n, hasSession: hasSession)
        gatherTransitions(from: latest, n: n)
        // Standardised over the whole catalogue, so a score means the same
        // whichever items are asked about.
        var sum = 0.0, sq = 0.0
        for i in 0..<n { let s = Double(serveScores[i]); sum += s; sq += s * s }
        let mean = n > 0 ? sum / Double(n) : 0
        let std = max(1e-6, (n > 0 ? sq / Double(n) - mean * mean : 1).squareRoot())
        return items.map { item in
            guard let item, Int(item) < n else { return 0 }
            let s = Float((Double(serveScores[Int(item)]) - mean) / std) + serveTransitions[Int(item)]
            return s.isFinite ? s : 0
        }
    }

    public var counters: [(String, UInt64)] {
        [("events", learnedEvents.load(ordering: .relaxed)), ("transitions", transitionsCounted.load(ordering: .relaxed))]
    }

    // MARK: snapshots

    public func save(to w: inout SnapshotWriter) {
        w.floats(params, count: count)
        w.floats(accum, count: count)
        w.rows(itemBias, count: itemCount)
        transitions.save(to: &w, items: itemCount)
        w.int32Lists(recent)
        w.u64(rng.state)
        w.int(learnedItems)
        w.u64(learnedEvents.load(ordering: .relaxed))
        w.u64(transitionsCountedTo)
        w.u64(transitionsCounted.load(ordering: .relaxed))
    }

    public func load(from r: inout SnapshotReader) throws {
        try r.floats(into: params, count: count)
        try r.floats(into: accum, count: count)
        try r.rows(into: itemBias, expected: itemCount)
        try transitions.load(from: &r, items: itemCount)
        recent = try r.indexLists(below: itemCount)
        rng = SplitMix64(seed: try r.u64())
        learnedItems = try r.int(in: 0...itemCount, "session-rnn's learned items")
        learnedEvents.store(try r.u64(), ordering: .relaxed)
        transitionsCountedTo = try r.u64()
        transitionsCounted.store(try r.u64(), ordering: .relaxed)
    }
}

#if canImport(Glibc)
import Glibc
#endif
