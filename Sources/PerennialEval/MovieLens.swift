// Reading a MovieLens-shaped folder (EVALUATION.md, "Data"): ratings.csv,
// movies.csv and the optional tags.csv, into the event stream sorted stably
// by (timestamp, user, item), and each item's text.

import Foundation
import PerennialCore
#if canImport(Glibc)
import Glibc
#endif

public struct Rating: Sendable, Equatable {
    public var user: UInt64
    public var item: UInt64
    public var rating: Float
    public var timestamp: Int64
    public init(user: UInt64, item: UInt64, rating: Float, timestamp: Int64) {
        self.user = user
        self.item = item
        self.rating = rating
        self.timestamp = timestamp
    }
}

public struct MovieLensData: Sendable {
    /// All rating events in stream order.
    public var ratings: [Rating]
    /// movieId → title + genres + tags (EVALUATION.md's "item text").
    public var itemTexts: [(item: UInt64, text: String)]
    public var name: String
    /// Rows of movies.csv and tags.csv that could not be read (too few
    /// fields, an id that is not a number), as "file row N", and how many:
    /// their texts are left out, which a loader says rather than hides.
    public var skippedTextRows: (count: Int, first: String?) = (0, nil)

    public init(ratings: [Rating], itemTexts: [(item: UInt64, text: String)] = [], name: String) {
        self.ratings = ratings
        self.itemTexts = itemTexts
        self.name = name
    }

    /// A share of the users with all their ratings (item texts kept whole):
    /// each user is kept when a hash of their id and `seed` falls below
    /// `fraction`, so the draw is the same on every run and every machine.
    /// Run a protocol on a few such samples to see how much a figure moves
    /// with the users who happen to be in the data (a held-out data set of
    /// the same shape is such a draw).
    public func sampledUsers(fraction: Double, seed: UInt64) -> MovieLensData {
        precondition(fraction > 0 && fraction <= 1)
        let bound = fraction >= 1 ? UInt64.max : UInt64(fraction * 0x1p64)
        var kept = self
        kept.ratings = ratings.filter { r in
            var h = SplitMix64(seed: r.user ^ (seed &* 0x9E37_79B9_7F4A_7C15))
            return h.next() <= bound
        }
        kept.name = "\(name) (users sampled: \(fraction), seed \(seed))"
        return kept
    }

    public static func load(folder: String) throws -> MovieLensData {
        let ratingsPath = (folder as NSString).appendingPathComponent("ratings.csv")
        guard FileManager.default.fileExists(atPath: ratingsPath) else {
            throw CommandError("no ratings.csv in \(folder)")
        }
        var ratings: [Rating] = []
        var lineNo = 0
        for fields in try CSV.rows(path: ratingsPath) {
            lineNo += 1
            if lineNo == 1 { continue }
            guard fields.count >= 4, let u = UInt64(fields[0]), let i = UInt64(fields[1]),
                  let r = Float(fields[2]), let t = Int64(fields[3]) else {
                throw CommandError("\(ratingsPath):\(lineNo): expected userId,movieId,rating,timestamp")
            }
            ratings.append(Rating(user: u, item: i, rating: r, timestamp: t))
        }
        // Stable sort by (timestamp, user, item): ties keep file order.
        let order = ratings.indices.sorted { a, b in
            let x = ratings[a], y = ratings[b]
            if x.timestamp != y.timestamp { return x.timestamp < y.timestamp }
            if x.user != y.user { return x.user < y.user }
            if x.item != y.item { return x.item < y.item }
            return a < b
        }
        ratings = order.map { ratings[$0] }

        var texts: [UInt64: String] = [:]
        var itemOrder: [UInt64] = []
        var skipped: (count: Int, first: String?) = (0, nil)
        func skip(_ path: String, _ row: Int) {
            skipped.count += 1
            if skipped.first == nil { skipped.first = "\(path) row \(row)" }
        }
        let moviesPath = (folder as NSString).appendingPathComponent("movies.csv")
        if FileManager.default.fileExists(atPath: moviesPath) {
            for (row, f) in try CSV.rows(path: moviesPath).enumerated() where row > 0 {
                guard f.count >= 3, let id = UInt64(f[0]) else { skip(moviesPath, row + 1); continue }
                texts[id] = f[1] + " " + f[2].replacingOccurrences(of: "|", with: " ")
                itemOrder.append(id)
            }
        }
        let tagsPath = (folder as NSString).appendingPathComponent("tags.csv")
        if FileManager.default.fileExists(atPath: tagsPath) {
            for (row, f) in try CSV.rows(path: tagsPath).enumerated() where row > 0 {
                guard f.count >= 3, let id = UInt64(f[1]) else { skip(tagsPath, row + 1); continue }
                if texts[id] == nil { texts[id] = ""; itemOrder.append(id) }
                texts[id]! += " " + f[2]
            }
        }
        var data = MovieLensData(ratings: ratings, itemTexts: itemOrder.map { ($0, texts[$0]!) },
                                 name: (folder as NSString).lastPathComponent)
        data.skippedTextRows = skipped
        return data
    }
}

public struct CommandError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// RFC 4180-style CSV: quoted fields may hold commas, quotes ("") and newlines.
enum CSV {
    static func rows(path: String) throws -> [[String]] {
        guard let data = FileManager.default.contents(atPath: path) else { throw CommandError("cannot read \(path)") }
        let bytes = [UInt8](data)
        var rows: [[String]] = []
        var row: [String] = []
        var field: [UInt8] = []
        var inQuotes = false
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if inQuotes {
                if b == UInt8(ascii: "\"") {
                    if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "\"") { field.append(b); i += 1 } else { inQuotes = false }
                } else {
                    field.append(b)
                }
            } else if b == UInt8(ascii: "\"") {
                inQuotes = true
            } else if b == UInt8(ascii: ",") {
                row.append(String(decoding: field, as: UTF8.self)); field.removeAll(keepingCapacity: true)
            } else if b == UInt8(ascii: "\n") {
                row.append(String(decoding: field, as: UTF8.self)); field.removeAll(keepingCapacity: true)
                rows.append(row); row = []
            } else if b != UInt8(ascii: "\r") {
                field.append(b)
            }
            i += 1
        }
        if !field.isEmpty || !row.isEmpty { row.append(String(decoding: field, as: UTF8.self)); rows.append(row) }
        return rows
    }
}
