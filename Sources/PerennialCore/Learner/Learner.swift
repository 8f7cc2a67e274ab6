// The learner: one thread that applies accepted events to the model in
// sequence order, fed by a bounded queue from the serving thread. When the
// queue has no room for a batch, `tryEnqueue` says so and the server stops
// reading that connection until `onProgress` reports room: backpressure,
// never a drop.
//
// It also runs the jobs forgetting items hands it (LearnerJob: the scorers'
// table purges), each before any event queued after it.
//
// Threading invariant (why this is `@unchecked Sendable`): `ring`, `head`,
// `count`, `jobs` and `stopping` are read and written only with `mutex`
// held; the model is touched by this thread only through `Model.learn` and
// those jobs.

import Foundation
import Synchronization

public final class Learner: @unchecked Sendable {
    public let capacity: Int
    private let model: Model
    private var ring: [LearnEvent]
    private var head = 0
    private var count = 0
    private var jobs: [LearnerJob] = []
    private var stopping = false
    /// Allocated, not stored properties: a pthread mutex or condition must
    /// not move, and `&property` is not promised to pass the property's
    /// own, stable address (review finding, helper-51).
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var thread: Thread?
    /// Set (under `mutex`) when the thread has done its last job and event.
    private var finishedRunning = false
    private let finished = DispatchSemaphore(value: 0)
    /// Called on the learner thread after each applied chunk, with the
    /// applied sequence. Must be cheap and thread-safe (the server wakes its
    /// loop with `uv_async_send`).
    private let onProgress: @Sendable (UInt64) -> Void
    /// The learner's recent cost: nanoseconds spent applying, and events
    /// applied, both halved whenever the events pass 200,000 (a decayed
    /// average that follows a model whose cost grows). Written by this
    /// thread alone; a reader may see one a chunk ahead of the other, which
    /// moves the estimate by a chunk's worth at most.
    private let recentNanos = Atomic<UInt64>(0)
    private let recentEvents = Atomic<UInt64>(0)
    /// Set by `forgetCost` (any thread); the learner thread clears its
    /// counters at its next chunk, so they keep a single writer.
    private let costReset = Atomic<Bool>(false)

    /// A first estimate (a replay of the log through the same model), used
    /// until the learner has measured its own; only before `start`.
    public func seedCost(nanos: UInt64, events: UInt64) {
        precondition(thread == nil, "seedCost is for before the learner starts")
        // (A short replay's time is mostly reading the log: not a cost per event.)
        guard events >= 10_000 else { return }
        let scale = max(1, events / 100_000)
        recentNanos.store(nanos / scale, ordering: .relaxed)
        recentEvents.store(events / scale, ordering: .relaxed)
    }

    /// The model's cost per event changed (a RELOAD added or removed
    /// scorers): forget the old average; until the next chunk is measured
    /// `nanosPerEvent` is nil.
    public func forgetCost() {
        costReset.store(true, ordering: .relaxed)
        recentEvents.store(0, ordering: .relaxed)
    }

    /// Nanoseconds per event applied lately (nil before the first chunk of
    /// 256 events).
    /// Recovery replays the log through the same `Model.learn`, so this
    /// also estimates how long replaying N events would take.
    public var nanosPerEvent: Double? {
        let events = recentEvents.load(ordering: .relaxed)
        guard events >= 256 else { return nil }
        return Double(recentNanos.load(ordering: .relaxed)) / Double(events)
    }

    public init(model: Model, capacity: Int, onProgress: @escaping @Sendable (UInt64) -> Void = { _ in }) {
        self.model = model
        self.capacity = capacity
        self.onProgress = onProgress
        ring = [LearnEvent](repeating: LearnEvent(seq: 0, user: 0, item: 0, kind: .view, value: 0, timestamp: 0), count: capacity)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        pthread_cond_destroy(wake)
        mutex.deallocate()
        wake.deallocate()
    }

    public func start() {
        let t = Thread { [self] in run() }
        t.name = "perennial-learner"
        thread = t
        t.start()
    }

    /// Events waiting to be applied.
    public var queued: Int {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return count
    }

    /// Queues the whole batch, or nothing when there is not room for all of it.
    public func tryEnqueue(_ events: [LearnEvent]) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard !stopping, capacity - count >= events.count else { return false }
        var tail = (head + count) % capacity
        for e in events {
            ring[tail] = e
            tail += 1
            if tail == capacity { tail = 0 }
        }
        count += events.count
        pthread_cond_signal(wake)
        return true
    }

    /// Runs `job` on the learner thread before any event queued after it
    /// (with none queued now: the model hands jobs over with the learner
    /// idle). Before the thread starts, or once it has stopped, the job runs
    /// here and now: no other thread learns then. Never refused, even while
    /// stopping (the thread does every job before it ends).
    public func enqueue(_ job: LearnerJob) {
        pthread_mutex_lock(mutex)
        guard thread != nil, !finishedRunning else {
            pthread_mutex_unlock(mutex)
            job.run()
            return
        }
        jobs.append(job)
        pthread_cond_signal(wake)
        pthread_mutex_unlock(mutex)
    }

    /// Whether a batch of `n` events would fit now, in a queue held to
    /// `allowance` events (at most the capacity).
    public func hasRoom(for n: Int, within allowance: Int? = nil) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return min(allowance ?? capacity, capacity) - count >= n
    }

    /// Applies everything queued, then ends the thread; returns when done.
    public func stop() {
        pthread_mutex_lock(mutex)
        let wasRunning = thread != nil && !stopping
        stopping = true
        pthread_cond_signal(wake)
        pthread_mutex_unlock(mutex)
        if wasRunning { finished.wait() }
        // The thread's closure holds the learner (and so the model): drop
        // the thread, or a stopped learner would never be freed (helper-55).
        pthread_mutex_lock(mutex)
        thread = nil
        pthread_mutex_unlock(mutex)
    }

    private func run() {
        let chunkSize = 256
        var local = [LearnEvent]()
        local.reserveCapacity(chunkSize)
        while true {
            pthread_mutex_lock(mutex)
            while count == 0 && jobs.isEmpty && !stopping { pthread_cond_wait(wake, mutex) }
            if !jobs.isEmpty {
                // (Jobs first: each was handed over with no event queued,
                // so any queued now came after it.)
                let due = jobs
                jobs.removeAll()
                pthread_mutex_unlock(mutex)
                for job in due { job.run() }
                onProgress(model.appliedSeq)
                continue
            }
            if count == 0 && stopping {
                finishedRunning = true
                pthread_mutex_unlock(mutex)
                break
            }
            let n = min(count, chunkSize)
            for _ in 0..<n {
                local.append(ring[head])
                head += 1
                if head == capacity { head = 0 }
            }
            count -= n
            pthread_mutex_unlock(mutex)
            let t0 = MonotonicClock.nowNanos()
            for e in local { model.learn(e) }
            if costReset.exchange(false, ordering: .relaxed) {
                recentNanos.store(0, ordering: .relaxed)
                recentEvents.store(0, ordering: .relaxed)
            }
            var nanos = recentNanos.load(ordering: .relaxed) + (MonotonicClock.nowNanos() - t0)
            var events = recentEvents.load(ordering: .relaxed) + UInt64(local.count)
            if events > 200_000 { nanos /= 2; events /= 2 }
            recentNanos.store(nanos, ordering: .relaxed)
            recentEvents.store(events, ordering: .relaxed)
            let last = local[local.count - 1].seq
            local.removeAll(keepingCapacity: true)
            onProgress(last)
        }
        finished.signal()
    }
}
