// The `gan` scorer: an adversarially trained candidate generator, IRGAN-style
// (Wang et al. 2017, "IRGAN: A Minimax Game for Unifying Generative and
// Discriminative Information Retrieval Models").
//
// Generator: a distribution over items for a user,
//     p(j | u) = softmax_j(z_u · w_j + c_j),   z_u = e_u + mean of x_k over
// the user's latest `context_items` items (a new user is described by what
// they just did, as in cf). It proposes candidates.
// Discriminator: a small factor model of its own, D(u, j) = σ(a_u · b_j + d_j),
// trained by logistic loss to tell the user's observed positives (label 1)
// from items the generator proposes (label 0).
//
// Per positive event (u, i), online:
//  1. draw `samples` items j_1..j_S from p(· | u): from the full softmax up
//     to `exact_softmax_items` items; in a larger catalogue, by
//     sampling-importance-resampling (Rubin 1987; the sampled softmax of
//     Bengio & Senécal 2008): `softmax_proposals` items drawn uniformly, and
//     the S drawn from them in proportion to exp(logit) (the importance
//     weight p/q, q uniform), so a step costs the same at any size;
//  2. one discriminator step on (u, i) and on each (u, j_s);
//  3. one generator step by policy gradient (REINFORCE, Williams 1992):
//     reward r_s = ln(1 + exp(f(u, j_s))) (IRGAN's reward, f the
//     discriminator's logit), minus the samples' mean as a baseline, times
//     ∇ ln p(j_s | u); plus `likelihood_weight` · ∇ ln p(i | u), the
//     maximum-likelihood term that keeps the generator anchored to what
//     users actually chose (IRGAN pre-trains its generator this way; here it
//     is kept on, online). The softmax's expectation term in ∇ ln p(i | u) is
//     estimated with the same S samples (they are drawn from p), so a step
//     touches only the rows of i, the samples, the user and their context.
// Steps are Adagrad (per row for vectors, per item for biases).
//
// Candidates for a request: the generator's `greedy_share` most likely items,
// then the rest drawn without replacement from p(·|u)^(1/temperature) by
// the Gumbel-top-k trick (Kool et al. 2019), with a generator seeded by the
// user and the number of events learned, so the same log gives the same
// candidates. They come back ordered by the generator's logit.
//
// Threads: as cf — rows in ChunkedBuffers written by the learner and read by
// the serving thread; learner and serving scratch kept apart.

import CKernels
import PerennialCore
import Synchronization

public final class GANScorer: Scorer {
    public let name = "gan"
    /// (Changed only by `adjust`, with the learner idle and no query
    /// running: the admitting thread is the serving thread.)
    public private(set) var settings: GANSettings
    let D: Int
    // Generator rows (user, context, item) and biases; discriminator rows.
    // Vector rows carry one extra float: their Adagrad accumulator.
    let genUsers: ChunkedBuffer<Float>, genContext: ChunkedBuffer<Float>, genItems: ChunkedBuffer<Float>
    let disUsers: ChunkedBuffer<Float>, disItems: ChunkedBuffer<Float>
    /// Per item: generator bias, its accumulator, discriminator bias, its accumulator.
    let biases: ChunkedBuffer<Float>
    var userRows = 0, itemRows = 0
    /// Which item indices are vacant (expired items'): never sampled.
    let vacancy: ItemVacancy

    // Learner-thread state.
    var recent: [[Int32]] = []
    var rng: SplitMix64
    var learnedItems = 0
    let learnedEvents = Atomic<UInt64>(0)
    let positives = Atomic<UInt64>(0)
    var rewardSum: Double = 0
    /// The mean reward × 1000, published by the learner for STATS.
    let meanRewardMilli = Atomic<UInt64>(0)
    private var z: [Float], dz: [Float], logits: [Float], cumulative: [Float]
    /// The items drawn for the step being learned (internal for tests).
    private(set) var drawn: [Int32] = []
    private var advantage: [Float] = [], aBefore: [Float] = []
    private var proposals: [Int32] = []
    /// Steps whose samples came from the proposals (a catalogue above
    /// `exact_softmax_items`), for STATS.
    let sampledSteps = Atomic<UInt64>(0)

    // Serving-thread scratch.
    var itemCount = 0
    private var serveZ: [Float], serveLogits: [Float] = []
    /// The greedy picks of the request being served (item-indexed; cleared after).
    private var serveTaken: [Bool] = []

    public init(settings: GANSettings, vacancy: ItemVacancy = ItemVacancy()) {
        self.settings = settings
        self.vacancy = vacancy
        D = settings.dimension
        genUsers = ChunkedBuffer(width: D + 1, fill: 0, rowsPerChunkLog2: 10)
        genContext = ChunkedBuffer(width: D + 1, fill: 0, rowsPerChunkLog2: 10)
        genItems = ChunkedBuffer(width: D + 1, fill: 0, rowsPerChunkLog2: 10)
        disUsers = ChunkedBuffer(width: D + 1, fill: 0, rowsPerChunkLog2: 10)
        disItems = ChunkedBuffer(width: D + 1, fill: 0, rowsPerChunkLog2: 10)
        biases = ChunkedBuffer(width: 4, fill: 0, rowsPerChunkLog2: 12)
        rng = SplitMix64(seed: settings.seed)
        z = .init(repeating: 0, count: D); dz = z; serveZ = z; aBefore = z
        logits = []; cumulative = []
    }

    public static let factory = ScorerFactory(
        name: "gan",
        summary: "an IRGAN-style candidate generator: softmax policy trained by REINFORCE against a discriminator, plus likelihood",
        readSettings: { r throws(ConfigError) in try GANSettings.read(r) },
        make: { s, env in GANScorer(settings: s as! GANSettings, vacancy: env.vacancy) })

    private func initialise(_ b: ChunkedBuffer<Float>, from: Int, to: Int, stream: UInt64) {
        for r in from..<to {
            var g = SplitMix64(seed: settings.seed ^ (stream << 48) ^ UInt64(r))
            let row = b.row(r)
            for k in 0..<D { row[k] = g.nextSignedUnitFloat() * 0.1 }
            row[D] = 0
        }
    }

    /// The user's id expired: their rows and recent items start again.
    /// A RELOAD that changes only how candidates are drawn from the
    /// generator (`greedy_share`, `temperature`: read per query; nothing
    /// learned depends on them) takes them in place.
    public func adjusts(to new: any ScorerSettings) -> Bool {
        guard let new = new as? GANSettings else { return false }
        var same = settings
        same.greedyShare = new.greedyShare
        same.temperature = new.temperature
        return same == new
    }

    public func adjust(to new: any ScorerSettings) {
        precondition(adjusts(to: new))
        settings = new as! GANSettings
    }

    public func forget(user: Int32) {
        let u = Int(user)
        initialise(genUsers, from: u, to: u + 1, stream: 1)
        initialise(disUsers, from: u, to: u + 1, stream: 2)
        if u < recent.count { recent[u] = [] }
    }

    /// Expired items: their rows and biases start again as at creation, and
    /// they leave every user's recent items.
    public func forget(items retired: RetiredItems) {
        for i in retired.indices.map(Int.init) where i < itemRows {
            initialise(genContext, from: i, to: i + 1, stream: 3)
            initialise(genItems, from: i, to: i + 1, stream: 4)
            initialise(disItems, from: i, to: i + 1, stream: 5)
            biases.row(i).update(repeating: 0, count: 4)
        }
        retired.remove(from: &recent)
    }

    public func grow(users: Int, items: Int) {
        if users > userRows {
            genUsers.ensure(rows: users); disUsers.ensure(rows: users)
            initialise(genUsers, from: userRows, to: users, stream: 1)
            initialise(disUsers, from: userRows, to: users, stream: 2)
            userRows = users
        }
        if items > itemRows {
            for b in [genContext, genItems, disItems] { b.ensure(rows: items) }
            biases.ensure(rows: items)
            initialise(genContext, from: itemRows, to: items, stream: 3)
            initialise(genItems, from: itemRows, to: items, stream: 4)
            initialise(disItems, from: itemRows, to: items, stream: 5)
            itemRows = items
        }
        itemCount = max(itemCount, items)
    }

    // MARK: the generator's user vector

    /// z = e_u + mean of the context rows of `items`' latest entries.
    /// `users` bounds the user rows: `userRows` on the serving thread; the
    /// learner passes .max (it only sees users already grown, and must not
    /// read `userRows`, which the serving thread writes).
    private func compose(user: Int32?, items: some BidirectionalCollection<Int32>, into z: inout [Float], limit: Int,
                         users: Int) {
        for k in 0..<D { z[k] = 0 }
        if let user, Int(user) < users {
            let e = genUsers.row(Int(user))
            for k in 0..<D { z[k] = e[k] }
        }
        let ctx = items.reversed().prefix(settings.contextItems).filter { Int($0) < limit }
        guard !ctx.isEmpty else { return }
        let inv = 1 / Float(ctx.count)
        for c in ctx {
            let x = genContext.row(Int(c))
            for k in 0..<D { z[k] += inv * x[k] }
        }
    }

    /// logits[j] = z · w_j + c_j for j in 0..<n.
    private func fillLogits(_ z: [Float], n: Int, into out: inout [Float]) {
        if out.count < n { out = .init(repeating: 0, count: max(n, 1024) * 2) }
        out.withUnsafeMutableBufferPointer { o in
            z.withUnsafeBufferPointer { zp in
                // Rows are D + 1 wide (the accumulator last): dot the first D.
                // (The C dot kernel, AVX2 where the CPU has it: the scalar
                // loop was 38% of a request's time.)
                genItems.forEachChunk(rows: n) { start, rows, count in
                    pk_dot_rows_strided(rows, count, D + 1, D, zp.baseAddress!, o.baseAddress! + start)
                }
            }
            biases.forEachChunk(rows: n) { start, b, count in
                for r in 0..<count { o[start + r] += b[4 * r] }
            }
        }
    }

    // MARK: learning (learner thread)

    public var preferredEpochs: Int { settings.epochs }
    var repeating = false
    public func beginRepeatedEpoch() {
        repeating = true
        for u in recent.indices { recent[u].removeAll(keepingCapacity: true) }
    }

    public func learn(_ e: LearnEvent) {
        learnedEvents.add(1, ordering: .relaxed)
        let u = Int(e.user)
        if u >= recent.count { recent.append(contentsOf: repeatElement([], count: u + 1 - recent.count)) }
        learnedItems = max(learnedItems, Int(e.item) + 1)
        // A rating at or above the threshold counts 1; an implicit event its
        // learning weight (`[feedback]`), which scales the step's gradients.
        let weight = e.positiveWeight(threshold: settings.positiveThreshold)
        if weight > 0 && learnedItems > 1 { step(user: e.user, item: e.item, weight: weight) }
        // (The shared fallback user's events are not one person's context.)
        if !e.sharedUser {
            recent[u].append(e.item)
            if recent[u].count > 2 * max(1, settings.contextItems) { recent[u].removeFirst(recent[u].count - settings.contextItems) }
        }
    }

    // No experience replay (`replays` stays false). Measured with a step of
    // about 20 µs: replaying one past event per event keeps 1.68 x as much
    // of an old taste in the drift scenario, but recovers from a change
    // more slowly and lowers E1 (0.0843 against 0.0864) and E5's recall
    // (0.3730 against 0.3757), the measures MovieLens-shaped data rewards.

    private func step(user: Int32, item: Int32, weight: Float) {
        let count = positives.add(1, ordering: .relaxed).newValue
        let n = learnedItems, S = settings.samples
        let context = recent[Int(user)].suffix(settings.contextItems)
        compose(user: user, items: context, into: &z, limit: n, users: .max)
        if n > settings.exactSoftmaxItems && drawFromProposals(n: n, count: S) {
            sampledSteps.add(1, ordering: .relaxed)
        } else {
            drawFromSoftmax(n: n, count: S)
        }
        adversarialStep(user: user, item: item, weight: weight, context: context, count: count)
    }

    /// S items from the softmax over all n items: every logit, then the
    /// inverse of their cumulative sum.
    func drawFromSoftmax(n: Int, count S: Int) {
        fillLogits(z, n: n, into: &logits)
        // Vacant indices (expired items') get no probability mass.
        if vacancy.any { for j in 0..<n where vacancy.isVacant(Int32(j)) { logits[j] = -.infinity } }
        // Sample S items from the softmax by inverting its cumulative sum.
        if cumulative.count < n { cumulative = .init(repeating: 0, count: logits.count) }
        var maxLogit = -Float.infinity
        for j in 0..<n { maxLogit = max(maxLogit, logits[j]) }
        let total = logits.withUnsafeBufferPointer { l in
            cumulative.withUnsafeMutableBufferPointer { c in pk_exp_cumulative(l.baseAddress!, n, maxLogit, c.baseAddress!) }
        }
        drawn.removeAll(keepingCapacity: true)
        for _ in 0..<S {
            var lo = drawFromCumulative(n, total: total)
            // (exp's clamp leaves a masked logit a mass of 1e-38: a draw of
            // exactly 0 could land on a vacant first index.)
            while lo + 1 < n && vacancy.isVacant(Int32(lo)) { lo += 1 }
            drawn.append(Int32(lo))
        }
    }

    /// An index of 0..<m drawn in proportion to the weights whose running
    /// sums `cumulative` holds (`total` their sum): the first whose running
    /// sum reaches a uniform draw below the total.
    private func drawFromCumulative(_ m: Int, total: Float) -> Int {
        let target = Float(rng.unitDouble()) * total
        var lo = 0, hi = m - 1
        while lo < hi { let mid = (lo + hi) / 2; if cumulative[mid] < target { lo = mid + 1 } else { hi = mid } }
        return lo
    }

    /// S items by sampling-importance-resampling: `softmax_proposals` live
    /// items drawn uniformly from the n, then S drawn from those with
    /// probability ∝ exp(logit). As the proposals grow, this tends to the
    /// softmax; with few, it favours the best of a random subset. False
    /// (nothing drawn) when no live item was met, as after an expiry that
    /// left most indices vacant: the caller then uses the full softmax.
    func drawFromProposals(n: Int, count S: Int) -> Bool {
        let M = settings.softmaxProposals
        proposals.removeAll(keepingCapacity: true)
        for _ in 0..<M {
            let j = Int32(rng.below(n))
            if !vacancy.isVacant(j) { proposals.append(j) }
        }
        guard !proposals.isEmpty else { return false }
        let m = proposals.count
        if logits.count < m { logits = .init(repeating: 0, count: m) }
        if cumulative.count < m { cumulative = .init(repeating: 0, count: m) }
        let rowBytes = (D + 1) * MemoryLayout<Float>.stride
        var maxLogit = -Float.infinity
        z.withUnsafeBufferPointer { zp in
            // (The rows are scattered over the catalogue: each is fetched
            // eight proposals ahead of its dot product.)
            for a in 0..<min(8, m) { pk_prefetch(genItems.row(Int(proposals[a])), rowBytes) }
            for a in 0..<m {
                if a + 8 < m {
                    pk_prefetch(genItems.row(Int(proposals[a + 8])), rowBytes)
                    pk_prefetch(biases.row(Int(proposals[a + 8])), 4)
                }
                let j = Int(proposals[a])
                var dot: Float = 0
                pk_dot_rows_strided(genItems.row(j), 1, D + 1, D, zp.baseAddress!, &dot)
                let l = dot + biases.row(j)[0]
                logits[a] = l
                maxLogit = max(maxLogit, l)
            }
        }
        let total = logits.withUnsafeBufferPointer { l in
            cumulative.withUnsafeMutableBufferPointer { c in pk_exp_cumulative(l.baseAddress!, m, maxLogit, c.baseAddress!) }
        }
        drawn.removeAll(keepingCapacity: true)
        for _ in 0..<S { drawn.append(proposals[drawFromCumulative(m, total: total)]) }
        return true
    }

    /// The discriminator's and the generator's steps on the event and the
    /// drawn items.
    private func adversarialStep(user: Int32, item: Int32, weight: Float, context: ArraySlice<Int32>, count: UInt64) {
        let n = learnedItems, S = drawn.count
        // Discriminator: the observed item is real, the drawn ones generated.
        let a = disUsers.row(Int(user))
        func disLogit(_ j: Int32) -> Float {
            let b = disItems.row(Int(j))
            var f = biases.row(Int(j))[2]
            for k in 0..<D { f += a[k] * b[k] }
            return f
        }
        // Rewards come from the discriminator before this event's step on it.
        advantage.removeAll(keepingCapacity: true)
        var mean: Float = 0
        for j in drawn {
            let f = disLogit(j)
            let r = f > 20 ? f : logf(1 + expf(f))
            advantage.append(r)
            mean += r / Float(S)
        }
        rewardSum += Double(mean)
        let milli = rewardSum / Double(count) * 1000
        meanRewardMilli.store(milli.isFinite ? UInt64(min(max(0, milli), 1e15)) : 0, ordering: .relaxed)
        for s in 0..<S { advantage[s] = settings.rewardWeight * (advantage[s] - mean) }
        disStep(user: user, item: item, label: 1, logit: disLogit(item), weight: weight)
        for j in drawn { disStep(user: user, item: j, label: 0, logit: disLogit(j), weight: weight) }

        // Generator: ascend Σ_s (A_s / S) ln p(j_s) + λ ln p(i), with the
        // softmax expectation in ∇ ln p(i) estimated by the samples:
        // d logit = Σ_s (A_s − λ) / S · e_{j_s} + λ e_i.
        let lambda = settings.likelihoodWeight
        for k in 0..<D { dz[k] = 0 }
        var updates: [(Int32, Float)] = [(item, weight * lambda)]
        for s in 0..<S { updates.append((drawn[s], weight * (advantage[s] - lambda) / Float(S))) }
        for (j, g) in updates where g != 0 {
            let w = genItems.row(Int(j))
            for k in 0..<D { dz[k] += g * w[k] }
        }
        let lr = settings.generatorLearningRate
        for (j, g) in updates where g != 0 {
            z.withUnsafeBufferPointer { ascend(genItems.row(Int(j)), scale: g, direction: $0.baseAddress!, lr: lr) }
            let b = biases.row(Int(j))
            b[1] += g * g
            b[0] += lr * g / (b[1].squareRoot() + 1e-8)
        }
        dz.withUnsafeBufferPointer { ascend(genUsers.row(Int(user)), scale: 1, direction: $0.baseAddress!, lr: lr) }
        let ctx = context.filter { Int($0) < n }
        if !ctx.isEmpty {
            let inv = 1 / Float(ctx.count)
            dz.withUnsafeBufferPointer { d in
                for c in ctx { ascend(genContext.row(Int(c)), scale: inv, direction: d.baseAddress!, lr: lr) }
            }
        }
    }

    /// row += lr / sqrt(acc) · scale · direction, Adagrad with the row's
    /// accumulator (its mean squared gradient) in row[D].
    private func ascend(_ row: UnsafeMutablePointer<Float>, scale: Float, direction: UnsafePointer<Float>, lr: Float) {
        adagradRowStep(row, direction: direction, scale: scale, width: D, accumulator: row + D, learningRate: lr)
    }

    /// One logistic-loss step of the discriminator on (user, item, label),
    /// its gradient scaled by the event's learning weight.
    private func disStep(user: Int32, item: Int32, label: Float, logit: Float, weight: Float) {
        let g = weight * (label - 1 / (1 + expf(-logit)))  // ascent on the log-likelihood
        let a = disUsers.row(Int(user)), b = disItems.row(Int(item))
        let lr = settings.discriminatorLearningRate
        // b moves along a's value from before a's own step.
        for k in 0..<D { aBefore[k] = a[k] }
        ascend(a, scale: g, direction: b, lr: lr)
        aBefore.withUnsafeBufferPointer { ascend(b, scale: g, direction: $0.baseAddress!, lr: lr) }
        let bias = biases.row(Int(item))
        bias[3] += g * g
        bias[2] += lr * g / (bias[3].squareRoot() + 1e-8)
    }

    // MARK: candidates (serving thread)

    public func recommend(_ query: ScoringQuery, into top: inout TopK) {
        let n = min(query.itemCount, itemCount)
        compose(user: query.user, items: query.history + query.sessionItems, into: &serveZ, limit: n, users: userRows)
        fillLogits(serveZ, n: n, into: &serveLogits)
        let k = top.k
        let greedy = Int((Float(k) * settings.greedyShare).rounded())
        var best = TopK(k: max(greedy, 1))
        var chosen: [(item: Int32, score: Float)] = []
        var sampled = TopK(k: max(k - greedy, 1))
        // (The item loops read the logits through a pointer taken once.)
        serveLogits.withUnsafeBufferPointer { logitsBuffer in
            let logits = logitsBuffer.baseAddress!
            if greedy > 0 {
                // (Items strictly below the k-th best cannot enter: skip the call.)
                var bar = best.threshold
                query.forEachEligibleItem { i in
                    guard Int(i) < n, logits[Int(i)] >= bar else { return }
                    best.push(i, logits[Int(i)])
                    bar = best.threshold
                }
                chosen = best.sorted()
            }
            guard k > chosen.count else { return }
            if serveTaken.count < n { serveTaken = .init(repeating: false, count: max(n, 1024) * 2) }
            for c in chosen { serveTaken[Int(c.item)] = true }
            // The rest: Gumbel-top-k over logit / temperature, seeded by the
            // user and the events learned, so a given log yields the same candidates.
            var g = SplitMix64(seed: settings.seed ^ (UInt64(UInt32(bitPattern: query.user ?? -1)) << 20)
                               ^ learnedEvents.load(ordering: .relaxed))
            sampled = TopK(k: max(k - chosen.count, 1))
            let invT = 1 / settings.temperature
            serveTaken.withUnsafeBufferPointer { takenBuffer in
                let taken = takenBuffer.baseAddress!
                var bar = sampled.threshold
                query.forEachEligibleItem { i in
                    guard Int(i) < n, !taken[Int(i)] else { return }
                    let u = GumbelTopK.uniform(&g)
                    let x = logits[Int(i)] * invT
                    if GumbelTopK.cannotEnter(x, uniform: u, threshold: bar) { return }
                    sampled.push(i, x - logf(-logf(u)))
                    bar = sampled.threshold
                }
            }
            for c in chosen { serveTaken[Int(c.item)] = false }
        }
        for c in chosen { top.push(c.item, serveLogits[Int(c.item)]) }
        if k > chosen.count { for c in sampled.sorted() { top.push(c.item, serveLogits[Int(c.item)]) } }
    }

    public func score(_ query: ScoringQuery, items: [Int32?]) -> [Float] {
        let n = min(query.itemCount, itemCount)
        compose(user: query.user, items: query.history + query.sessionItems, into: &serveZ, limit: n, users: userRows)
        fillLogits(serveZ, n: n, into: &serveLogits)
        return items.map { i in i.flatMap { Int($0) < n ? serveLogits[Int($0)] : nil } ?? 0 }
    }

    public var counters: [(String, UInt64)] {
        // The reward is clamped where it is published: a diverging
        // discriminator must not crash STATS.
        [("events", learnedEvents.load(ordering: .relaxed)), ("positives", positives.load(ordering: .relaxed)),
         ("mean_reward_milli", meanRewardMilli.load(ordering: .relaxed)),
         ("sampled_softmax_steps", sampledSteps.load(ordering: .relaxed))]
    }

    // MARK: snapshots

    public func save(to w: inout SnapshotWriter) {
        for b in [genUsers, disUsers] { w.rows(b, count: userRows) }
        for b in [genContext, genItems, disItems] { w.rows(b, count: itemRows) }
        w.rows(biases, count: itemRows)
        w.int32Lists(recent)
        w.u64(rng.state)
        w.int(learnedItems)
        w.u64(learnedEvents.load(ordering: .relaxed))
        w.u64(positives.load(ordering: .relaxed))
        w.f64(rewardSum)
        w.u64(meanRewardMilli.load(ordering: .relaxed))
    }

    public func load(from r: inout SnapshotReader) throws {
        for b in [genUsers, disUsers] { try r.rows(into: b, expected: userRows) }
        for b in [genContext, genItems, disItems] { try r.rows(into: b, expected: itemRows) }
        try r.rows(into: biases, expected: itemRows)
        recent = try r.indexLists(below: itemRows)
        rng = SplitMix64(seed: try r.u64())
        learnedItems = try r.int(in: 0...itemRows, "gan's learned items")
        learnedEvents.store(try r.u64(), ordering: .relaxed)
        positives.store(try r.u64(), ordering: .relaxed)
        rewardSum = try r.f64()
        meanRewardMilli.store(try r.u64(), ordering: .relaxed)
    }
}

#if canImport(Glibc)
import Glibc
#endif
