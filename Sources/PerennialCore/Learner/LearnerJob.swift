// Work that forgetting items hands to the learner thread: purging every
// item-neighbourhood table of the forgotten indices visits each item's table
// (at a million items, 0.2-0.3 s), and dropping the items from every user's
// recent items visits every user; on the serving thread that held every
// connection. (Not what requests read as a whole, such as a popularity
// leaderboard: read half rebuilt, it would answer wrongly.) The learner
// runs a job before any event queued after it, so what it learns is exactly
// what it would learn had the job run at once (and what a replay of the
// log, which runs them at once, learns).
//
// Why `@unchecked Sendable`: a job is made on the admitting (serving)
// thread with the learner idle, and then run on the learner thread alone,
// which is the only writer of what a job touches (the scorers' learner
// state: co-occurrence tables, recent items, samplers). Readers on the
// serving thread meanwhile may see a table before or after its purge, as
// they may during a table's rebuild (ItemNeighbourhood): a forgotten item
// counts 0 and is excluded from every request by then (the serving
// thread's part of forgetting), so its stale entries change no answer;
// only a new item that took a forgotten index at once could be scored
// from the old one's co-occurrences until the job is done.

public struct LearnerJob: @unchecked Sendable {
    private let work: () -> Void

    public init(_ work: @escaping () -> Void) { self.work = work }

    public func run() { work() }
}
