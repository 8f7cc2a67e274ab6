// Recovery while serving: after a restart the log since the newest snapshot
// is replayed a slice at a time on the loop thread (`EventLoop.recoveryTurn`),
// between turns that answer requests. Reads are served from the model as
// far as the replay has got. FEEDBACK is accepted meanwhile: numbered after
// the log's last event, appended to the log (durable as usual) and to this
// replay's own queue (`accept`), which the replay takes after the records
// the log held at the start, so every event is admitted and learned in log
// order. Other writes wait for the end (RequestHandler). Replay is the same
// code as before the port opened (`Model.replayAdmitting`, then `learn` in
// order): the model it ends with is the one a closed-port recovery of the
// same log builds.
//
// Everything a bad log can throw was found before the port opened: the log
// was read whole once (checksums, torn tail cut, sequence continuity), so
// the replay here only meets a file changed under a running server.

import Foundation
import PerennialCore
import PerennialProtocol

final class LogRecovery {
    let model: Model
    /// The sequence the log ends at: its last at the start (from the read
    /// before the port opened), then that of the last FEEDBACK accepted.
    private(set) var targetSeq: UInt64
    /// The sequence the replay starts after (the snapshot's).
    let startSeq: UInt64
    /// Events the log holds after the snapshot, accepted ones included.
    private(set) var totalEvents: Int
    private var reader: LogReader
    /// Records the log held at the start not read yet: the reader stops
    /// there (the file goes on with the accepted records, taken from
    /// `accepted` instead).
    private var recordsLeftInFile: Int
    /// FEEDBACK accepted during the replay, in log order, from `acceptedNext`.
    private var accepted: [LogRecord] = []
    private var acceptedNext = 0
    /// Events accepted during the replay, all told: bounded
    /// (RequestHandler.replayBudget), so the replay always ends, however
    /// fast clients send.
    private(set) var acceptedTotal = 0
    /// The ids the model will hold when the replay ends, for the id bounds.
    var ids: IdsAhead
    /// The current feedback record's events, admitted, learned up to `nextEvent`.
    private var scratch: [LearnEvent] = []
    private var nextEvent = 0
    let startedNs = MonotonicClock.nowNanos()
    private(set) var replayedEvents = 0
    /// Time spent replaying, not serving: the learner's first estimate of
    /// its cost (the wall time includes the reads answered between slices:
    /// helper-65 measured 4x the cost under a read load).
    private(set) var replayingNanos: UInt64 = 0
    /// What to do once the whole log is replayed (open the log for
    /// appending, start the learner), and when the replay fails (the
    /// server then stops): run by `EventLoop.recoveryTurn`.
    let finish: (LogRecovery) throws -> Void
    let failed: (any Error) -> Void

    init(model: Model, reader: LogReader, targetSeq: UInt64, records: Int, totalEvents: Int, ids: IdsAhead,
         finish: @escaping (LogRecovery) throws -> Void, failed: @escaping (any Error) -> Void) {
        self.model = model
        self.ids = ids
        self.reader = reader
        self.targetSeq = targetSeq
        self.startSeq = targetSeq - UInt64(totalEvents)
        self.recordsLeftInFile = records
        self.totalEvents = totalEvents
        self.finish = finish
        self.failed = failed
    }

    /// Replays for about `budgetNanos` (at least one event or record; a
    /// deletion with slow scorers takes milliseconds alone); true once the
    /// whole log is replayed.
    func step(budgetNanos: UInt64) throws -> Bool {
        let start = MonotonicClock.nowNanos()
        defer { replayingNanos &+= MonotonicClock.nowNanos() &- start }
        let deadline = start + budgetNanos
        while true {
            if nextEvent < scratch.count {
                model.learn(scratch[nextEvent])
                nextEvent += 1
                replayedEvents += 1
            } else if recordsLeftInFile > 0 {
                guard let record = try reader.next() else {
                    throw LogError("the log ended \(recordsLeftInFile) record(s) short of what it held when the server started: changed under the running server")
                }
                recordsLeftInFile -= 1
                do { try model.replayAdmitting(record, into: &scratch) } catch let e as LogError {
                    throw LogError("\(reader.position): \(e.description)")
                }
                nextEvent = 0
            } else {
                guard acceptedNext < accepted.count else { return true }
                let record = accepted[acceptedNext]
                acceptedNext += 1
                // (What is replayed goes: the queue holds only the backlog.)
                if acceptedNext >= 64 && acceptedNext * 2 >= accepted.count {
                    accepted.removeFirst(acceptedNext)
                    acceptedNext = 0
                }
                try model.replayAdmitting(record, into: &scratch)
                nextEvent = 0
            }
            // (The clock is read after each step: a step costs from a few
            // µs, an event with cf, to milliseconds, a deletion with five
            // scorers; helper-65 saw 136 ms slices reading it every 16.)
            if MonotonicClock.nowNanos() >= deadline { return false }
        }
    }

    /// A FEEDBACK accepted during the replay, just appended to the log:
    /// replayed after everything before it. Reads see its events at once as
    /// the user's latest (`Model.unreplayed`).
    func accept(_ record: LogRecord) {
        guard case .feedback(let first, let events) = record else { preconditionFailure("only FEEDBACK is accepted during a replay") }
        precondition(first == targetSeq + 1)
        accepted.append(record)
        targetSeq += UInt64(events.count)
        totalEvents += events.count
        acceptedTotal += events.count
        ids.note(record, model: model)
        model.unreplayed?.note(record)
    }

    /// The replay's own cost per event so far (nil before it has a pace:
    /// `eventsForAPace` events learned).
    var nanosPerEvent: Double? {
        replayedEvents >= Int(Self.eventsForAPace) ? Double(replayingNanos) / Double(replayedEvents) : nil
    }
    static let eventsForAPace: UInt64 = 256

    /// The replay's time and events so far.
    var elapsedNanos: UInt64 { MonotonicClock.nowNanos() - startedNs }

    /// Milliseconds the rest of the replay should take at its pace so far
    /// (nil before it has a pace).
    var estimatedMillisLeft: UInt64? {
        guard replayedEvents >= Int(Self.eventsForAPace) else { return nil }
        let left = Double(max(0, totalEvents - replayedEvents))
        return UInt64(left * Double(elapsedNanos) / Double(replayedEvents) / 1e6)
    }

    /// When the last slice ended (0: none yet), for the next one's budget.
    var lastSliceEndNs: UInt64 = 0

    var report: LogScanReport { reader.report }
}

/// The ids a model will hold once a replay ends, as far as the id bounds
/// (`limits.max_user_ids`, `max_item_ids`) need: those it held when the
/// replay began and the new ones the rest of the log, and FEEDBACK accepted
/// meanwhile, name. An upper bound: expiry, deletions and min_occurrences
/// only lower the real count. (FEEDBACK accepted during a replay is checked
/// against it: the model itself has not admitted the rest of the log yet.)
struct IdsAhead {
    let usersAtStart: Int
    let itemsAtStart: Int
    private(set) var users = Set<UInt64>()
    private(set) var items = Set<UInt64>()

    init(model: Model) {
        // (As the bounds count: not the shared fallbacks' rows, helper-90.)
        usersAtStart = model.clientUserIDs
        itemsAtStart = model.clientItemIDs
    }

    /// Notes a record of the log (read in order before the replay admits it).
    mutating func note(_ record: LogRecord, model: Model) {
        switch record {
        case .feedback(_, let events):
            for e in events {
                if model.users.index(of: e.user) == nil { users.insert(e.user) }
                if model.items.index(of: e.item) == nil { items.insert(e.item) }
            }
        case .upsert(let item, _, _):
            if model.items.index(of: item) == nil { items.insert(item) }
        case .deleteItems, .deleteItemsUnremembered, .deleteUsers:
            break
        }
    }

    /// The users and items the model would hold at most with `events` too.
    func projected(with events: [WireEvent], model: Model) -> (users: Int, items: Int) {
        var newUsers = Set<UInt64>(), newItems = Set<UInt64>()
        for e in events {
            if model.users.index(of: e.user) == nil && !users.contains(e.user) { newUsers.insert(e.user) }
            if model.items.index(of: e.item) == nil && !items.contains(e.item) { newItems.insert(e.item) }
        }
        return (usersAtStart + users.count + newUsers.count, itemsAtStart + items.count + newItems.count)
    }
}
