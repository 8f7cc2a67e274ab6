// Collaborative filtering over the shared table, trained online per event.
//
// What it serves is a blend of two parts (`prepareBlend`, `Blend.score`):
//
//     score(u, i) = wn · near(u, i) / max_j near(u, j)
//                 + wf(n_u) · (f(u, i) − mean_j f(u, j)) / std_j f(u, j)
//
// The neighbourhood part near(u, i) sums the co-occurrence counts of i with
// the user's latest `neighbourhood_items` items (weighted decay^k, damped by
// i's popularity; ItemNeighbourhood.swift). The factor part is
//
//     f(u, i) = b_i + v_i · z_u,    z_u = p_u + (Σ_k w_k y_{c_k}) / sqrt(Σ_k w_k)
//
// where v_i is item i's row and p_u user u's row in the shared table, b_i an
// item bias, and y_c a "context" vector for each item the user recently
// interacted with (c_0 the most recent, w_k = decay^k). The context sum is
// the asymmetric / implicit-feedback user factor of SVD++ (Koren 2008) and
// FISM (Kabbur et al. 2013), weighted toward recent items: a user is
// described by what they did, so a user seen for the first time is
// recommendable after one event, and their own row p_u refines it as their
// events accumulate. wn is `neighbourhood_weight`; wf(n) is
// `factor_weight` · n / (n + `factor_shrinkage`) for a user with n events.
//
// Learning (of the factor part) is BPR (Rendle et al. 2009): for each
// positive event (u, i) and a few sampled negatives j, one step up the
// gradient of ln σ(f(u,i) − f(u,j)), with per-row Adagrad (Duchi et al.
// 2011) step sizes. Negatives are drawn uniformly by default, or in
// proportion to recent popularity (`negative_sampling = "popularity"`: an
// item of a random recent event, so the model learns what distinguishes a
// user's item from what is merely popular now).
//
// Explicit ratings also train a small rating head: biased matrix
// factorisation (Koren, Bell & Volinsky 2009), r̂ = μ + b_u + b_i + p'_u · q'_i
// with its own factors, learned by SGD on the squared error; it answers
// rating predictions and leaves the ranking rows alone.
//
// Threads (the Scorer contract): `learn` on the learner thread owns
// `recent`, the sampler and the RNG; rows, biases and counts live in
// ChunkedBuffers that the serving thread reads; `recommend`/`score` use
// their own scratch buffers.

import CKernels
import PerennialCore
import Synchronization

public final class CollaborativeFilteringScorer: Scorer {
    public let name = "cf"
    /// (Changed only by `adjust`, with the learner idle and no query
    /// running: the admitting thread is the serving thread.)
    public private(set) var settings: CFSettings
    let table: EmbeddingTable
    /// Which item indices are vacant (expired items'): never a negative.
    let vacancy: ItemVacancy
    let d: Int

    // Own weights beside the shared rows.
    let context: ChunkedBuffer<Float>
    let contextAdagrad: ChunkedBuffer<Float>
    /// Anchors of the context rows when anchored learning is on (RowAnchors;
    /// learner thread only).
    let contextAnchor: ChunkedBuffer<Float>?
    /// Per item: bias, its Adagrad accumulator, and an interaction count.
    let itemStats: ChunkedBuffer<Float>
    /// Per item: (count + 1)^popularityDamping, the neighbourhood score's
    /// divisor, kept beside the count so a request divides rather than
    /// calling powf for each of its few hundred neighbours. Derived from
    /// itemStats: set when a count changes and when a snapshot is loaded.
    let popularityDivisor: ChunkedBuffer<Float>
    /// The most-counted items, for users nobody knows (CountLeaderboard);
    /// follows itemStats' counts. `popularScratch`: its copy for a request
    /// (serving thread).
    let popular = CountLeaderboard()
    private var popularScratch: [Int32] = []
    let neighbourhood: ItemNeighbourhood
    let ratingUsers: ChunkedBuffer<Float>
    let ratingItems: ChunkedBuffer<Float>
    var ratingMean: Double = 0
    var ratingCount: Double = 0
    var ratingMin: Float = .infinity
    var ratingMax: Float = -.infinity
    var userCount = 0

    // Learner-thread state.
    var recent: [[Int32]] = []
    var sampler: [Int32] = []
    var samplerNext = 0
    var rng: SplitMix64
    /// Admitting thread: items made room for in `grow`.
    var itemCount = 0
    /// (Written by the learner, read by STATS on the serving thread.)
    let learnedEvents = Atomic<UInt64>(0)
    /// Learner thread: 1 + the highest item index learned from.
    var learnedItems = 0
    private var z: [Float]
    private var dz: [Float]
    private var gradI: [Float]
    /// The current step's sampled negatives.
    private var negativeDraws: [Int32]
    /// settings.negativeSampling == "popularity", decided once (a string
    /// compare per sampled negative showed in profiles).
    private let popularityNegatives: Bool
    /// How many of a user's latest context items a BPR step moves
    /// (`steppedContextItems(_:)`).
    private let steppedContext: Int

    // Serving-thread scratch.
    private let batchScratch: QueryBatchScratch
    /// Indices of a batch's queries that scan the catalogue.
    private var scanned: [Int] = []
    private var serveNeighbours: [Float] = []
    /// Per item: 1 while its neighbourhood score is in `touched`.
    private var serveSeen: [UInt8] = []
    private var touched: [Int32] = []
    private var serveRecent: [Int32] = []
    /// Items whose exact factor score a request computed (the first look's
    /// bound said they might enter its top k): STATS `cf_exact_scores`.
    private var exactScores: UInt64 = 0

    static let biasSlot = 0, biasAdagradSlot = 1, countSlot = 2

    public init(settings: CFSettings, table: EmbeddingTable, vacancy: ItemVacancy = ItemVacancy()) {
        self.settings = settings
        self.table = table
        self.vacancy = vacancy
        popularityNegatives = settings.negativeSampling == "popularity"
        steppedContext = Self.steppedContextItems(settings)
        d = table.dimension
        context = ChunkedBuffer(width: d, fill: 0, rowsPerChunkLog2: 10)
        contextAdagrad = ChunkedBuffer(width: 1, fill: 0, rowsPerChunkLog2: 12)
        contextAnchor = table.anchors == nil ? nil : ChunkedBuffer(width: d, fill: 0, rowsPerChunkLog2: 10)
        itemStats = ChunkedBuffer(width: 3, fill: 0, rowsPerChunkLog2: 12)
        // prepareBlend reads a table chunk's biases at a fixed stride.
        precondition(itemStats.rowsPerChunk % table.items.rowsPerChunk == 0)
        popularityDivisor = ChunkedBuffer(width: 1, fill: 1, rowsPerChunkLog2: 12)
        neighbourhood = ItemNeighbourhood(capacity: settings.neighbours, window: settings.pairWindow)
        ratingUsers = ChunkedBuffer(width: settings.ratingFactors + 1, fill: 0, rowsPerChunkLog2: 10)
        ratingItems = ChunkedBuffer(width: settings.ratingFactors + 1, fill: 0, rowsPerChunkLog2: 10)
        rng = SplitMix64(seed: settings.seed)
        z = [Float](repeating: 0, count: d)
        dz = [Float](repeating: 0, count: d)
        gradI = [Float](repeating: 0, count: d)
        negativeDraws = [Int32](repeating: 0, count: settings.negatives)
        batchScratch = QueryBatchScratch(dimension: d)
    }

    public static let factory = ScorerFactory(
        name: "cf",
        summary: "matrix factorisation over the shared table, BPR-trained online, with a recency-weighted item context per user",
        readSettings: { r throws(ConfigError) in try CFSettings.read(r) },
        make: { s, env in CollaborativeFilteringScorer(settings: s as! CFSettings, table: env.table, vacancy: env.vacancy) })

    public func grow(users: Int, items: Int) {
        neighbourhood.grow(items: items)
        context.ensure(rows: items)
        contextAnchor?.ensure(rows: items)
        contextAdagrad.ensure(rows: items)
        itemStats.ensure(rows: items)
        popularityDivisor.ensure(rows: items)
        ratingItems.ensure(rows: items)
        ratingUsers.ensure(rows: users)
        // Rating factors start as small deterministic noise (biases at 0).
        for r in itemCount..<items { initialiseRatingItem(r) }
        itemCount = max(itemCount, items)
        for r in userCount..<max(userCount, users) { initialiseRatingUser(r) }
        userCount = max(userCount, users)
    }

    /// An item's rating factors start as small deterministic noise (bias 0).
    private func initialiseRatingItem(_ r: Int) {
        var g = SplitMix64(seed: settings.seed ^ 0xABCD ^ UInt64(r))
        let row = ratingItems.row(r)
        row[0] = 0
        for k in 1...settings.ratingFactors { row[k] = g.nextSignedUnitFloat() * 0.01 }
    }

    /// A user's rating factors start as small deterministic noise (bias 0).
    private func initialiseRatingUser(_ r: Int) {
        var g = SplitMix64(seed: settings.seed ^ 0x1234 ^ UInt64(r))
        let row = ratingUsers.row(r)
        row[0] = 0
        for k in 1...settings.ratingFactors { row[k] = g.nextSignedUnitFloat() * 0.01 }
    }

    /// The user's id expired: their context and rating factors go.
    public func forget(user: Int32) {
        if Int(user) < recent.count { recent[Int(user)] = [] }
        initialiseRatingUser(Int(user))
    }

    /// Expired items: their own weights start again as at creation, and
    /// they leave every user's recent items, the co-occurrence counts and
    /// the negative sampler.
    public func forget(items retired: RetiredItems) {
        forgetLater(items: retired)?.run()
    }

    /// The items' own rows and counts and the popularity leaderboard now
    /// (what requests read: a leaderboard changed on the learner under a
    /// request would answer strangers wrongly, review finding, helper-97);
    /// then, for the learner, what only it reads or writes and what visits
    /// every item or user: the co-occurrence purge, every user's recent
    /// items and the sampler. Until that runs, forgotten items are in none
    /// of the loop's answers: they count 0 and every request excludes them.
    public func forgetLater(items retired: RetiredItems) -> LearnerJob? {
        for i in retired.indices.map(Int.init) {
            context.row(i).update(repeating: 0, count: d)
            contextAdagrad[i] = 0
            contextAnchor?.row(i).update(repeating: 0, count: d)
            itemStats.row(i).update(repeating: 0, count: 3)
            refreshPopularityDivisor(i)
            initialiseRatingItem(i)
        }
        popular.forget(retired)
        return LearnerJob { [self] in
            neighbourhood.forget(retired)
            retired.remove(from: &recent)
            // The sampler, oldest first, without them (it fills up again from
            // its end; once full, the oldest is replaced first, as before).
            sampler = Array(sampler[samplerNext...] + sampler[..<samplerNext]).filter { !retired.contains($0) }
            samplerNext = 0
        }
    }

    /// A step's context-row gradient for the k-th latest item is
    /// decay^k / sqrt(Σw) times the user's: rows whose weight is below 5% of
    /// the latest item's would move by less than a twentieth of its step, so
    /// they are not stepped (at decay 0.8, 14 of the 20 context items, 97% of
    /// the weight). Each row step is a scattered cache miss, and the 6 left
    /// out were about a tenth of the learner's time; E1 HR@10 was unchanged
    /// (0.1319 with, 0.1317 without, with the co-occurrence window of 20
    /// then). The user vector still sums all of them.
    static func steppedContextItems(_ s: CFSettings) -> Int {
        var n = 0, w: Float = 1
        while n < s.contextItems && w >= 0.05 {
            n += 1
            w *= s.contextDecay
        }
        return n
    }

    // MARK: the user vector

    /// z = p_u + Σ_k w_k y_{c_k} / sqrt(Σ_k w_k), over the `contextItems`
    /// most recent items (most recent last in `items`). Returns Σ w_k.
    @inline(__always)
    func compose<C: BidirectionalCollection<Int32>>(user: Int32?, items: C, into z: UnsafeMutablePointer<Float>) -> Float {
        if let user {
            let p = table.user(user)
            for k in 0..<d { z[k] = p[k] }
        } else {
            for k in 0..<d { z[k] = 0 }
        }
        var totalWeight: Float = 0
        var w: Float = 1
        var taken = 0
        for _ in items.reversed() {
            if taken == settings.contextItems { break }
            totalWeight += w
            w *= settings.contextDecay
            taken += 1
        }
        guard totalWeight > 0 else { return 0 }
        let scale = 1 / totalWeight.squareRoot()
        w = scale
        taken = 0
        for c in items.reversed() {
            if taken == settings.contextItems { break }
            let y = context.row(Int(c))
            for k in 0..<d { z[k] += w * y[k] }
            w *= settings.contextDecay
            taken += 1
        }
        return totalWeight
    }

    // MARK: learning (learner thread)

    /// Repeated epochs replay only the factor updates: counts, co-occurrences
    /// and the sampler were complete after the first pass; users' contexts
    /// are rebuilt from the start so each event sees the items before it.
    var repeating = false
    public var preferredEpochs: Int { settings.epochs }
    public func beginRepeatedEpoch() {
        repeating = true
        for u in recent.indices { recent[u].removeAll(keepingCapacity: true) }
    }

    public func learn(_ e: LearnEvent) {
        learnedEvents.add(1, ordering: .relaxed)
        let u = Int(e.user), i = Int(e.item)
        if u >= recent.count { recent.append(contentsOf: repeatElement([], count: u + 1 - recent.count)) }
        if e.kind == .rating && settings.ratingHead { learnRating(e) }

        // Items the learner has seen (indices are dense in order of first
        // sight). Not `itemCount`: the serving thread grows that as it admits
        // events, ahead of the learner, and learning must depend on the log
        // order alone.
        learnedItems = max(learnedItems, Int(e.item) + 1)
        let weight = self.weight(of: e)
        if weight > 0 && learnedItems > 1 { rankStep(user: e.user, item: e.item, weight: weight) }
        // Remember the event: co-occurrences, user context, the sampler,
        // counts. The shared fallback user's events come from many people:
        // they are not chained into co-occurrences or a context.
        if !e.sharedUser {
            // (A rating's pairs count 1 whatever the rating, as they always
            // have; an implicit event's count its learning weight.)
            if !repeating { neighbourhood.learn(item: e.item, previous: recent[u][...], weight: e.occurrenceWeight) }
            recent[u].append(e.item)
            let keep = max(settings.contextItems, settings.pairWindow, 1)
            if recent[u].count > keep * 2 { recent[u].removeFirst(recent[u].count - keep) }
        }
        if repeating { return }
        if sampler.count < settings.samplerWindow {
            sampler.append(e.item)
        } else {
            sampler[samplerNext] = e.item
            samplerNext = (samplerNext + 1) % settings.samplerWindow
        }
        itemStats.row(i)[Self.countSlot] += 1
        refreshPopularityDivisor(i)
        popular.raised(e.item, to: plainCount(e.item))
    }

    /// An item's plain count, as `popular` ranks it.
    @inline(__always)
    private func plainCount(_ item: Int32) -> Double { Double(itemStats.row(Int(item))[Self.countSlot]) }

    @inline(__always)
    private func refreshPopularityDivisor(_ i: Int) {
        popularityDivisor.row(i)[0] = powf(itemStats.row(i)[Self.countSlot] + 1, settings.popularityDamping)
    }

    /// How strongly an event counts as positive: for a rating, 1, or
    /// `lowRatingWeight` below the threshold; for the other kinds, the
    /// learning weight the model gave it (`[feedback]`: a purchase more than
    /// a view).
    @inline(__always)
    private func weight(of e: LearnEvent) -> Float {
        e.positiveWeight(threshold: settings.positiveThreshold, belowThreshold: settings.lowRatingWeight)
    }

    /// Experience replay (the model's reservoir drew a past event): one more
    /// BPR step on it, against the user's current context; counts,
    /// co-occurrences and the sampler saw it the first time.
    public var replays: Bool { true }
    public func replay(_ e: LearnEvent) {
        let weight = self.weight(of: e)
        guard weight > 0, learnedItems > 1, Int(e.user) < recent.count, Int(e.item) < learnedItems else { return }
        rankStep(user: e.user, item: e.item, weight: weight)
    }

    /// A negative for `item`: from the recent-popularity sampler or uniform.
    @inline(__always)
    private func sampleNegative(not item: Int32) -> Int32 {
        // (More tries once expiry has left vacant indices: with most of a
        // shrunken catalogue vacant, 8 would often end in the fallback.)
        for _ in 0..<(vacancy.any ? 64 : 8) {
            let j: Int32
            if popularityNegatives && !sampler.isEmpty {
                j = sampler[rng.below(sampler.count)]
            } else {
                j = Int32(rng.below(learnedItems))
            }
            if j != item && !vacancy.isVacant(j) { return j }
        }
        // The next index that is neither the item nor vacant; the item
        // itself when there is none (every other index vacant after a
        // sweep: the step then skips it, and no vacant row is trained).
        var j = Int32((Int(item) + 1) % learnedItems)
        for _ in 0..<learnedItems {
            if j != item && !vacancy.isVacant(j) { return j }
            j = Int32((Int(j) + 1) % learnedItems)
        }
        return item
    }

    /// One BPR step for (user, item) against `negatives` sampled items.
    /// Row steps are Adagrad (Duchi et al. 2011) with one accumulator per
    /// row, in C (`pk_adagrad_row_follow`: AVX2 where the CPU has it).
    private func rankStep(user: Int32, item: Int32, weight: Float) {
        let ctx = recent[Int(user)]
        let lr = settings.learningRate, reg = settings.regularization
        // Anchored learning (RowAnchors): with it on, every row step (the
        // table's rows, and the context rows with their own anchors) is also
        // pulled toward the row's anchor, which then follows the row
        // (EmbeddingTable.step).
        // Draw the negatives first (the same draws in the same order as
        // drawing each in its own step) and start fetching the rows this
        // step will touch: the rows are scattered over megabytes, and
        // fetched one by one their cache misses dominated the learner.
        let rowBytes = d * MemoryLayout<Float>.stride
        for n in 0..<settings.negatives {
            let j = sampleNegative(not: item)
            negativeDraws[n] = j
            pk_prefetch(table.item(j), rowBytes)
            pk_prefetch(itemStats.row(Int(j)), 12)
            pk_prefetch(table.itemAdagrad.row(Int(j)), 4)
            if let a = table.anchors { pk_prefetch(a.items.row(Int(j)), rowBytes) }
        }
        var fetched = 0
        for c in ctx.reversed() {
            if fetched == settings.contextItems { break }
            pk_prefetch(context.row(Int(c)), rowBytes)
            if fetched < steppedContext {
                pk_prefetch(contextAdagrad.row(Int(c)), 4)
                if let a = contextAnchor { pk_prefetch(a.row(Int(c)), rowBytes) }
            }
            fetched += 1
        }
        z.withUnsafeMutableBufferPointer { zb in
        dz.withUnsafeMutableBufferPointer { dzb in
        gradI.withUnsafeMutableBufferPointer { gib in
            let z = zb.baseAddress!, dz = dzb.baseAddress!, gi = gib.baseAddress!
            let totalWeight = compose(user: user, items: ctx, into: z)
            for k in 0..<d { dz[k] = 0; gi[k] = 0 }
            let vi = table.item(item)
            let si = itemStats.row(Int(item))
            var gradBiasI: Float = 0
            for j in negativeDraws where j != item {
                let vj = table.item(j)
                let sj = itemStats.row(Int(j))
                let x = pk_dot_diff(si[Self.biasSlot] - sj[Self.biasSlot], z, vi, vj, d)
                // d/dx ln σ(x) = σ(−x)
                let g = weight * stableSigmoid(-x)
                if g < 1e-6 { continue }
                pk_bpr_accumulate(g, vi, vj, z, dz, gi, d)
                gradBiasI += g
                // v_j moves away from z; b_j down.
                table.stepItem(j, along: z, alpha: -g, reg: reg, lr: lr)
                adagradScalar(&sj[Self.biasSlot], grad: -g - reg * sj[Self.biasSlot], accumulator: &sj[Self.biasAdagradSlot], lr: lr)
            }
            if gradBiasI == 0 { return }
            table.stepItem(item, along: gi, alpha: 1, reg: reg, lr: lr)
            adagradScalar(&si[Self.biasSlot], grad: gradBiasI - reg * si[Self.biasSlot], accumulator: &si[Self.biasAdagradSlot], lr: lr)
            // A user in their first events steps with the meta-learned
            // per-dimension scales (MetaStart).
            table.stepUser(user, along: dz, alpha: 1, reg: reg, lr: lr)
            // Context vectors: ∂z/∂y_c = w_c / sqrt(Σw), for the latest
            // `steppedContext` of them.
            if totalWeight > 0 {
                var w = 1 / totalWeight.squareRoot()
                var taken = 0
                for c in ctx.reversed() {
                    if taken == steppedContext { break }
                    table.step(context.row(Int(c)), anchor: contextAnchor?.row(Int(c)), along: dz, alpha: w, reg: reg,
                               accumulator: contextAdagrad.row(Int(c)), lr: lr, scale: nil)
                    w *= settings.contextDecay
                    taken += 1
                }
            }
        }}}
    }

    @inline(__always)
    private func adagradScalar(_ value: inout Float, grad: Float, accumulator: inout Float, lr: Float) {
        accumulator += grad * grad
        value += lr * grad / (accumulator + 1e-8).squareRoot()
    }

    /// One SGD step of the rating head on (user, item, rating).
    private func learnRating(_ e: LearnEvent) {
        let f = settings.ratingFactors
        let lr = settings.ratingLearningRate, reg = settings.ratingRegularization
        let pu = ratingUsers.row(Int(e.user)), qi = ratingItems.row(Int(e.item))
        let err = e.value - predict(pu, qi)
        ratingMin = min(ratingMin, e.value)
        ratingMax = max(ratingMax, e.value)
        ratingCount += 1
        ratingMean += (Double(e.value) - ratingMean) / ratingCount
        pu[0] += lr * (err - reg * pu[0])
        qi[0] += lr * (err - reg * qi[0])
        for k in 1...f {
            let a = pu[k], b = qi[k]
            pu[k] += lr * (err * b - reg * a)
            qi[k] += lr * (err * a - reg * b)
        }
    }

    @inline(__always)
    private func predict(_ pu: UnsafeMutablePointer<Float>, _ qi: UnsafeMutablePointer<Float>) -> Float {
        var r = Float(ratingMean) + pu[0] + qi[0]
        for k in 1...settings.ratingFactors { r += pu[k] * qi[k] }
        return r
    }

    // MARK: serving

    /// Final scores for the eligible items: the neighbourhood score scaled to
    /// [0, 1] by its maximum, plus the factor weight times the factor score
    /// standardised over the catalogue (so the two parts have comparable
    /// scales whatever the table's magnitude).
    public func recommend(_ query: ScoringQuery, into top: inout TopK) {
        guard scansCatalogue(query) else { return recommendPopular(query, into: &top) }
        scanCatalogue(1, itemCount: query.itemCount) { _ in query }
        finish(query, slot: 0, into: &top)
    }

    /// Several queries: their factor bounds come from one pass over the
    /// catalogue (pk_score_quantised_batch, which gives each query exactly
    /// the bounds it gets alone), the rest is per query as in `recommend`.
    public func recommend(batch queries: [ScoringQuery], into tops: inout [TopK]) {
        scanned.removeAll(keepingCapacity: true)
        for i in queries.indices {
            // (The model builds a batch's queries at one moment, so their
            // catalogues are the same; any other query is answered alone.)
            if scansCatalogue(queries[i]) && (scanned.isEmpty || queries[i].itemCount == queries[scanned[0]].itemCount) {
                scanned.append(i)
            } else {
                recommend(queries[i], into: &tops[i])
            }
        }
        guard let first = scanned.first else { return }
        scanCatalogue(scanned.count, itemCount: queries[first].itemCount) { queries[scanned[$0]] }
        prefetchNeighbourhood(queries[first])
        for (slot, i) in scanned.enumerated() {
            // The next query's co-occurrence tables (kilobytes scattered over
            // megabytes) come in while this one finishes.
            if slot + 1 < scanned.count { prefetchNeighbourhood(queries[scanned[slot + 1]]) }
            finish(queries[i], slot: slot, into: &tops[i])
        }
    }

    /// Starts fetching the co-occurrence tables `neighbourScores` will read.
    private func prefetchNeighbourhood(_ query: ScoringQuery) {
        guard settings.neighbourhoodWeight > 0 else { return }
        for c in latestItems(query).suffix(settings.neighbourhoodItems) { neighbourhood.prefetch(c) }
    }

    /// Whether the query is answered from the factor and neighbourhood
    /// parts (otherwise nobody knows the user, and popularity answers).
    @inline(__always)
    private func scansCatalogue(_ query: ScoringQuery) -> Bool {
        query.user != nil || !query.history.isEmpty || !query.sessionItems.isEmpty
    }

    /// Nobody knows this user: the most interacted-with items (from the
    /// leaderboard when it can tell, else from every count).
    private func recommendPopular(_ query: ScoringQuery, into top: inout TopK) {
        let score = { (i: Int32) in self.itemStats.row(Int(i))[Self.countSlot] }
        if popular.rank(query, into: &top, scratch: &popularScratch, score: score) { return }
        top.reset(k: top.k)
        query.forEachEligibleItem { i in top.push(i, score(i)) }
    }

    /// The rest of a query after the catalogue pass left its factor bounds
    /// in `slot`: neighbourhood scores, the blend, the top k (exact scores).
    private func finish(_ query: ScoringQuery, slot: Int, into top: inout TopK) {
        let blend = prepareBlend(query, slot: slot)
        let f = batchScratch.scores(slot)
        serveNeighbours.withUnsafeBufferPointer { near in
            let nb = near.baseAddress!
            if let candidates = query.candidates {
                for i in candidates where !query.exclusions.contains(i) {
                    top.push(i, blend.score(near: nb[Int(i)], factor: exactFactor(Int(i), slot: slot)))
                }
            } else {
                selectFromCatalogue(query, slot: slot, blend: blend, near: nb, bounds: f, into: &top)
            }
        }
        clearNeighbourScores()
    }

    /// The query's history then its session items, in a reused scratch
    /// array (no allocation per request).
    private func latestItems(_ query: ScoringQuery) -> ArraySlice<Int32> {
        serveRecent.removeAll(keepingCapacity: true)
        serveRecent.append(contentsOf: query.history)
        serveRecent.append(contentsOf: query.sessionItems)
        return serveRecent[...]
    }

    /// Top-k over the whole catalogue, from the first look's upper bounds
    /// `f` on the factor scores. Items with a neighbourhood score
    /// (`touched`, a few hundred at most) come first; every other item
    /// scores wf · (factor − mean), which orders like its factor score, so a
    /// SIMD scan (`pk_next_at_least`) visits only the items whose bound can
    /// beat the current k-th. An item is pushed with its exact score, and
    /// skipped only when its bound cannot enter (the blend is monotone in
    /// the factor score, so the bound's blend bounds the item's), so the
    /// result is the same as scoring every item exactly.
    private func selectFromCatalogue(_ query: ScoringQuery, slot: Int, blend: Blend, near nb: UnsafePointer<Float>,
                                     bounds f: UnsafeMutablePointer<Float>, into top: inout TopK) {
        let n = query.itemCount
        guard blend.wf > 0, blend.wf.isFinite, blend.mean.isFinite else {
            // No factor part to order by: every item. With wf = 0 the factor
            // adds nothing, and no dot product is needed.
            let noFactor = blend.wf == 0 && blend.mean.isFinite
            for i in 0..<n where !query.exclusions.contains(Int32(i)) {
                top.push(Int32(i), blend.score(near: nb[i], factor: noFactor ? blend.mean : exactFactor(i, slot: slot)))
            }
            return
        }
        // The bounds are scratch: a touched item's is set to NaN once it
        // has been seen, so the scan passes over it.
        for j in touched where Int(j) < n && !f[Int(j)].isNaN {
            // (The bound first: it rules out most items without reading
            // the exclusions, another scattered load.)
            let bf = f[Int(j)]
            if blend.score(near: nb[Int(j)], factor: bf) + blend.wf * blend.roundingMargin(bf) >= top.threshold,
               !query.exclusions.contains(j) {
                top.push(j, blend.score(near: nb[Int(j)], factor: exactFactor(Int(j), slot: slot)))
            }
            f[Int(j)] = .nan
        }
        // s >= threshold needs factor >= mean + threshold / wf.
        func bound() -> Float {
            guard top.count == top.k else { return -.infinity }
            let b = blend.mean + top.threshold / blend.wf
            let lowered = b - blend.roundingMargin(b)
            return lowered.isFinite ? lowered : b
        }
        let rowBytes = d * MemoryLayout<Float>.stride
        var i = pk_next_at_least(f, 0, n, bound())
        while i < n {
            // The next candidate's row (scattered over megabytes) is fetched
            // while this one is scored. The bound only rises, so an item the
            // old bound passed over cannot enter later.
            let next = pk_next_at_least(f, i + 1, n, bound())
            if next < n { pk_prefetch(table.items.row(next), rowBytes) }
            if !query.exclusions.contains(Int32(i)) { top.push(Int32(i), blend.score(near: nb[i], factor: exactFactor(i, slot: slot))) }
            i = next >= n || f[next] >= bound() ? next : pk_next_at_least(f, next + 1, n, bound())
        }
    }

    public func score(_ query: ScoringQuery, items: [Int32?]) -> [Float] {
        // Nobody knows the user: the same popularity counts `recommend`
        // ranks by, so SCORE orders items as RECOMMEND would.
        guard scansCatalogue(query) else {
            return items.map { i in i.map { itemStats.row(Int($0))[Self.countSlot] } ?? 0 }
        }
        // The same blend as `recommend`, over the whole catalogue, so that
        // scores are comparable with it.
        scanCatalogue(1, itemCount: query.itemCount) { _ in query }
        let blend = prepareBlend(query, slot: 0)
        let out = items.map { i in i.map { blend.score(near: serveNeighbours[Int($0)], factor: exactFactor(Int($0), slot: 0)) } ?? 0 }
        clearNeighbourScores()
        return out
    }

    /// How a request combines the two parts: wn · near + wf · (factor − mean).
    struct Blend {
        var wn: Float, wf: Float, mean: Float
        @inline(__always) func score(near: Float, factor: Float) -> Float { wn * near + wf * (factor - mean) }
        /// How far (in factor units) a bound near `factor` is lowered before
        /// it rules an item out: covers the rounding of the bound's and the
        /// blend's last additions, so no item that would enter is skipped.
        @inline(__always) func roundingMargin(_ factor: Float) -> Float { 1e-3 * (abs(factor) + abs(mean)) + 1e-6 }
    }

    /// The catalogue pass for `count` queries (slot s holds query(s)):
    /// each one's user vector, then the first look on the 8-bit copies of
    /// the item rows (QuantisedItems): an upper bound on every item's factor
    /// score (bias included), and the moments of the approximate scores,
    /// chunk by chunk of the table, every query of the batch scoring a chunk
    /// before the next is read. A 1,024-row chunk of the table lies inside
    /// one 4,096-row chunk of itemStats (asserted in init), so its biases are
    /// at a fixed stride.
    private func scanCatalogue(_ count: Int, itemCount n: Int, query: (Int) -> ScoringQuery) {
        let scratch = batchScratch
        scratch.ensure(slots: count, rows: n + table.items.rowsPerChunk)
        let copies = table.quantisedItems
        copies.refresh(from: table, count: n)
        for s in 0..<count {
            let q = query(s)
            _ = compose(user: q.user, items: latestItems(q), into: scratch.vector(s))
            scratch.quantiseQuery(s)
            scratch.sums[s] = 0
            scratch.squares[s] = 0
        }
        table.items.forEachChunk(rows: n) { first, _, rowCount in
            scratch.aimOutputs(count: count, at: first)
            pk_score_quantised_batch(copies.blocks.row(first >> 4), rowCount, d, scratch.queryPointers, scratch.queryTerms, count,
                                     copies.scales.row(first), copies.norms.row(first),
                                     itemStats.row(first) + Self.biasSlot, 3, scratch.outPointers, scratch.sums, scratch.squares)
        }
        // Rows the learner wrote during the pass: their copies were stale,
        // so they are scored exactly (bound +inf).
        copies.forEachWrittenSinceRefresh(table, count: n) { i in
            for s in 0..<count { scratch.scores(s)[i] = .infinity }
        }
    }

    /// Item i's exact factor score (bias included) for the query in `slot`.
    @inline(__always)
    private func exactFactor(_ i: Int, slot: Int) -> Float {
        exactScores &+= 1
        var dot: Float = 0
        pk_dot_rows(table.items.row(i), 1, d, batchScratch.vector(slot), &dot)
        return dot + itemStats.row(i)[Self.biasSlot]
    }

    /// After the catalogue pass: the query's neighbourhood scores in
    /// `serveNeighbours` (the caller reads them, then calls
    /// `clearNeighbourScores`) and the blend's terms, from the moments of
    /// the approximate factor scores in `slot` (the first look's; close to
    /// the exact ones', and the same for a query alone or in a batch).
    private func prepareBlend(_ query: ScoringQuery, slot: Int) -> Blend {
        let n = query.itemCount
        if serveNeighbours.count < n { serveNeighbours.append(contentsOf: repeatElement(0, count: n - serveNeighbours.count)) }
        if serveSeen.count < n { serveSeen.append(contentsOf: repeatElement(0, count: n - serveSeen.count)) }
        let nbMax = serveNeighbours.withUnsafeMutableBufferPointer { neighbourScores(latestItems(query), into: $0.baseAddress!) }
        let sum = batchScratch.sums[slot], sq = batchScratch.squares[slot]
        let mean = Float(sum / Double(max(n, 1)))
        let std = Float(max(sq / Double(max(n, 1)) - Double(mean) * Double(mean), 1e-12).squareRoot())
        return Blend(wn: settings.neighbourhoodWeight / max(nbMax, 1e-12),
                     wf: factorWeight(evidence: query.history.count) / std, mean: mean)
    }

    private func clearNeighbourScores() {
        // (Through pointers: indexing the arrays checked uniqueness per item.)
        serveNeighbours.withUnsafeMutableBufferPointer { near in
            serveSeen.withUnsafeMutableBufferPointer { seen in
                for j in touched {
                    near[Int(j)] = 0
                    seen[Int(j)] = 0
                }
            }
        }
        touched.removeAll(keepingCapacity: true)
    }

    /// The blend's weights are read per query and shape nothing learned or
    /// cached, so a RELOAD that changes only them takes them in place.
    public func adjusts(to new: any ScorerSettings) -> Bool {
        guard let new = new as? CFSettings else { return false }
        var same = settings
        same.factorWeight = new.factorWeight
        same.neighbourhoodWeight = new.neighbourhoodWeight
        same.factorShrinkage = new.factorShrinkage
        // (The neighbourhood's reach into the user's latest items is read
        // per query too; the co-occurrence counts do not depend on it.)
        same.neighbourhoodItems = new.neighbourhoodItems
        same.neighbourhoodDecay = new.neighbourhoodDecay
        return same == new
    }

    /// Step sizes, regularisation, negatives per event and how ratings
    /// count are read per learning step and shape no state, so a RELOAD
    /// changes them in place: a rebuild copies the whole learned state on
    /// the loop (seconds at a million items; review finding, helper-77).
    public func retunes(to new: any ScorerSettings) -> Bool {
        guard let new = new as? CFSettings else { return false }
        var same = new
        same.learningRate = settings.learningRate
        same.regularization = settings.regularization
        same.negatives = settings.negatives
        same.positiveThreshold = settings.positiveThreshold
        same.lowRatingWeight = settings.lowRatingWeight
        same.ratingLearningRate = settings.ratingLearningRate
        same.ratingRegularization = settings.ratingRegularization
        same.epochs = settings.epochs
        return adjusts(to: same)
    }

    public func adjust(to new: any ScorerSettings) {
        precondition(adjusts(to: new) || retunes(to: new))
        settings = new as! CFSettings
        if negativeDraws.count != settings.negatives { negativeDraws = [Int32](repeating: 0, count: settings.negatives) }
    }

    /// factorWeight · n / (n + factorShrinkage): the factor part's weight for
    /// a user with n events (shrinkage toward the neighbourhood when n is small).
    @inline(__always)
    func factorWeight(evidence n: Int) -> Float {
        let s = settings.factorShrinkage
        return s == 0 ? settings.factorWeight : settings.factorWeight * Float(n) / (Float(n) + s)
    }

    /// Accumulates the neighbourhood scores of the latest items into `out`
    /// (recording touched entries); returns the largest score.
    private func neighbourScores(_ items: ArraySlice<Int32>, into out: UnsafeMutablePointer<Float>) -> Float {
        guard settings.neighbourhoodWeight > 0 else { return 0 }
        var w: Float = 1
        serveSeen.withUnsafeMutableBufferPointer { seen in
            for c in items.suffix(settings.neighbourhoodItems).reversed() {
                neighbourhood.accumulate(from: c, weight: w, into: out, seen: seen.baseAddress!, touched: &touched)
                w *= settings.neighbourhoodDecay
            }
        }
        var best: Float = 0
        for j in touched {
            let damped = out[Int(j)] / popularityDivisor.row(Int(j))[0]
            out[Int(j)] = damped
            best = max(best, damped)
        }
        return best
    }

    // MARK: snapshots

    public func save(to w: inout SnapshotWriter) {
        w.rows(context, count: itemCount)
        w.rows(contextAdagrad, count: itemCount)
        w.bool(contextAnchor != nil)
        if let contextAnchor { w.rows(contextAnchor, count: itemCount) }
        w.rows(itemStats, count: itemCount)
        neighbourhood.save(to: &w, items: itemCount)
        w.rows(ratingUsers, count: userCount)
        w.rows(ratingItems, count: itemCount)
        w.f64(ratingMean); w.f64(ratingCount); w.f32(ratingMin); w.f32(ratingMax)
        w.int32Lists(recent)
        w.int32s(sampler)
        w.int(samplerNext)
        w.u64(rng.state)
        w.int(learnedItems)
        w.u64(learnedEvents.load(ordering: .relaxed))
    }

    public func load(from r: inout SnapshotReader) throws {
        try r.rows(into: context, expected: itemCount)
        try r.rows(into: contextAdagrad, expected: itemCount)
        if try r.bool() {
            // Saved with anchoring on; dropped if it is off now.
            try r.rows(into: contextAnchor ?? ChunkedBuffer(width: d, fill: 0), expected: itemCount)
        } else if let contextAnchor {
            for i in 0..<itemCount { contextAnchor.row(i).update(from: context.row(i), count: d) }
        }
        try r.rows(into: itemStats, expected: itemCount)
        for i in 0..<itemCount { refreshPopularityDivisor(i) }
        try neighbourhood.load(from: &r, items: itemCount)
        try r.rows(into: ratingUsers, expected: userCount)
        try r.rows(into: ratingItems, expected: itemCount)
        ratingMean = try r.f64(); ratingCount = try r.f64(); ratingMin = try r.f32(); ratingMax = try r.f32()
        // (Indices checked against the restored rows: SnapshotReader.)
        recent = try r.indexLists(below: itemCount)
        sampler = try r.indices(below: itemCount)
        samplerNext = try r.int(in: 0...max(sampler.count - 1, 0), "cf's sampler position")
        rng = SplitMix64(seed: try r.u64())
        learnedItems = try r.int(in: 0...itemCount, "cf's learned items")
        learnedEvents.store(try r.u64(), ordering: .relaxed)
        popular.rebuild(items: itemCount, count: plainCount)
    }

    public func predictRating(user: Int32?, item: Int32?) -> Float? {
        guard settings.ratingHead else { return nil }
        var r = Float(ratingMean)
        if let user, Int(user) < ratingUsers.allocatedRows { r += ratingUsers.row(Int(user))[0] }
        if let item, Int(item) < ratingItems.allocatedRows { r += ratingItems.row(Int(item))[0] }
        if let user, let item, Int(user) < ratingUsers.allocatedRows {
            let pu = ratingUsers.row(Int(user)), qi = ratingItems.row(Int(item))
            for k in 1...settings.ratingFactors { r += pu[k] * qi[k] }
        }
        // Never predict outside the ratings seen.
        return ratingCount > 0 ? min(max(r, ratingMin), ratingMax) : r
    }

    public var counters: [(String, UInt64)] {
        [("events", learnedEvents.load(ordering: .relaxed)), ("neighbour_pairs", neighbourhood.pairs), ("exact_scores", exactScores),
         ("items_requantised", table.quantisedItems.requantised),
         ("weights_bytes", UInt64(context.bytes + contextAdagrad.bytes + itemStats.bytes + popularityDivisor.bytes + ratingUsers.bytes + ratingItems.bytes + neighbourhood.bytes + popular.bytes))]
    }
}


#if canImport(Glibc)
import Glibc
#endif
