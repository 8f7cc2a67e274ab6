// Typed access to a ConfigDocument. Every getter records the key as known;
// `finish()` then reports any key nobody asked for as unknown, naming its line
// and the closest known key, so a typo never silently falls back to a
// default. A value of the wrong type or out of range is noted and the
// default used meanwhile, so `finish()` reports every mistake in the file
// at once (each with its line), not one per attempt.

public final class ConfigReader {
    public let document: ConfigDocument
    private var known: Set<String> = []
    private var knownSections: Set<String> = []
    /// Wrong values found so far (`finish` throws them together), and the
    /// keys they are about: a check that depends on one of those is skipped
    /// (its error would only be the default's, used meanwhile: helper-66).
    private var problems: [ConfigError] = []
    private var wrongKeys: Set<String> = []
    /// Most mistakes listed (the rest are counted), and most unknown keys
    /// given a "did you mean" (a file of 30,000 stray keys took 7 s;
    /// helper-66).
    public static let reportedMistakes = 50

    public init(_ document: ConfigDocument) { self.document = document }

    func fail(_ key: String, _ message: String) -> ConfigError {
        wrongKeys.insert(key)
        return ConfigError(file: document.file, line: document.entries[key]?.line, message: message)
    }

    private func lookup(_ key: String) -> ConfigDocument.Entry? {
        known.insert(key)
        if let dot = key.lastIndex(of: ".") { knownSections.insert(String(key[..<dot])) }
        return document.entries[key]
    }

    public func has(_ key: String) -> Bool { document.entries[key] != nil }

    public func int(_ key: String, default value: Int, in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let e = lookup(key) else { return value }
        guard case .integer(let n) = e.value else {
            return noted(fail(key, "'\(key)' must be an integer, found \(e.value.typeName) (\(e.value))"), value)
        }
        guard range.contains(n) else {
            return noted(fail(key, "'\(key)' = \(n) is outside \(range.lowerBound)...\(range.upperBound)"), value)
        }
        return n
    }

    public func double(_ key: String, default value: Double, in range: ClosedRange<Double>) throws(ConfigError) -> Double {
        guard let e = lookup(key) else { return value }
        let d: Double
        switch e.value {
        case .float(let x): d = x
        case .integer(let n): d = Double(n)
        default: return noted(fail(key, "'\(key)' must be a number, found \(e.value.typeName) (\(e.value))"), value)
        }
        guard range.contains(d) else {
            return noted(fail(key, "'\(key)' = \(d) is outside \(range.lowerBound)...\(range.upperBound)"), value)
        }
        return d
    }

    public func bool(_ key: String, default value: Bool) throws(ConfigError) -> Bool {
        guard let e = lookup(key) else { return value }
        guard case .bool(let b) = e.value else {
            return noted(fail(key, "'\(key)' must be true or false, found \(e.value.typeName) (\(e.value))"), value)
        }
        return b
    }

    public func string(_ key: String, default value: String, oneOf choices: [String]? = nil) throws(ConfigError) -> String {
        guard let e = lookup(key) else { return value }
        guard case .string(let s) = e.value else {
            return noted(fail(key, "'\(key)' must be a string, found \(e.value.typeName) (\(e.value))"), value)
        }
        if let choices, !choices.contains(s) {
            return noted(fail(key, "'\(key)' = \"\(s)\" is not one of \(choices.map { "\"\($0)\"" }.joined(separator: ", "))"), value)
        }
        return s
    }

    public func strings(_ key: String, default value: [String]) throws(ConfigError) -> [String] {
        guard let e = lookup(key) else { return value }
        guard case .array(let items) = e.value else {
            return noted(fail(key, "'\(key)' must be an array of strings, found \(e.value.typeName) (\(e.value))"), value)
        }
        var out: [String] = []
        for item in items {
            guard case .string(let s) = item else {
                return noted(fail(key, "'\(key)' must be an array of strings; \(item) is \(item.typeName)"), value)
            }
            out.append(s)
        }
        return out
    }

    /// Names of the sub-sections under `prefix` present in the file (e.g.
    /// the scorer sections under "scorers").
    public func subsections(of prefix: String) -> [(name: String, line: Int)] {
        var seen: [String: Int] = [:]
        for key in document.order where key.hasPrefix(prefix + ".") {
            let rest = key.dropFirst(prefix.count + 1)
            if let dot = rest.firstIndex(of: ".") {
                let name = String(rest[..<dot])
                let line = document.entries[key]!.line
                seen[name] = min(seen[name] ?? line, line)
            }
        }
        // (A header with nothing under it names a subsection too: an empty
        // [routes.x] is a route missing its keys, not nothing.)
        for h in document.headers where h.name.hasPrefix(prefix + ".") {
            let name = String(h.name.dropFirst(prefix.count + 1))
            if !name.isEmpty && !name.contains("."), seen[name] == nil { seen[name] = h.line }
        }
        return seen.map { ($0.key, $0.value) }.sorted { $0.line < $1.line }
    }

    /// A wrong value: noted for `finish`, and the default used meanwhile.
    private func noted<T>(_ problem: ConfigError, _ fallback: T) -> T {
        note(problem)
        return fallback
    }

    /// A mistake found by a check across keys, reported by `finish` with the
    /// rest; the check's caller goes on with something usable. `keys`: those
    /// whose value is unusable, so checks that read them are skipped (not
    /// those a check merely compared: each check judges the file's values,
    /// and one failing must not silence another; helper-67).
    public func note(_ problem: ConfigError, keys: [String] = []) {
        problems.append(problem)
        wrongKeys.formUnion(keys)
    }

    /// Whether a mistake was noted for any of `keys`.
    public func isWrong(_ keys: String...) -> Bool { keys.contains(where: wrongKeys.contains) }

    /// Counts every key under `prefix` as known (a section already reported
    /// as a whole is not reported again key by key).
    public func acknowledge(prefix: String) {
        for key in document.order where key.hasPrefix(prefix) { known.insert(key) }
    }

    /// `error` (a check that could not go on) with the wrong values noted
    /// before it, as one error.
    public func including(_ error: ConfigError) -> ConfigError {
        ConfigError.combined(problems + [error]) ?? error
    }

    /// Throws every wrong value noted and every key in the file that no
    /// getter asked for, together.
    public func finish() throws(ConfigError) {
        var unknown: [ConfigError] = []
        for key in document.order where !known.contains(key) {
            guard problems.count + unknown.count < Self.reportedMistakes else {
                unknown.append(ConfigError(file: document.file, line: document.entries[key]?.line, message: "unknown key '\(key)'"))
                continue
            }
            let section = key.lastIndex(of: ".").map { String(key[..<$0]) } ?? ""
            var message = "unknown key '\(key)'"
            if let near = ConfigReader.closest(to: key, among: Array(known)) {
                message += " (did you mean '\(near)'?)"
            } else if let placed = ConfigReader.sameName(as: key, among: known) {
                // (A key under the wrong header, or none: `port = 7878` at
                // the top of the file.)
                message += " (did you mean '\(placed)', under [\(placed[..<placed.lastIndex(of: ".")!])]?)"
            } else if !section.isEmpty && !knownSections.contains(section) {
                message = "unknown section '[\(section)]' (key '\(key)')"
            }
            unknown.append(ConfigError(file: document.file, line: document.entries[key]?.line, message: message))
        }
        if let all = ConfigError.combined(problems + unknown) { throw all }
    }

    /// The one known key with the same last name as `key` in another
    /// section (nil when none, or several). Not another scorer's or
    /// route's setting: that would change a different scorer (helper-74).
    static func sameName(as key: String, among known: Set<String>) -> String? {
        let name = key.split(separator: ".").last.map(String.init) ?? key
        let family = { (k: String) in ["scorers.", "routes."].first { k.hasPrefix($0) } }
        let found = known.filter { $0 != key && $0.hasSuffix("." + name) && (family(key) == nil || family($0) != family(key)) }
        return found.count == 1 ? found.first : nil
    }

    static func closest(to key: String, among candidates: [String]) -> String? {
        var best: (String, Int)?
        for c in candidates {
            let d = editDistance(Array(key.utf8), Array(c.utf8))
            if d <= max(2, key.count / 4), d < (best?.1 ?? Int.max) { best = (c, d) }
        }
        return best?.0
    }

    static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        if a.isEmpty { return b.count }
        var prev = Array(0...b.count)
        var cur = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            cur[0] = i
            for j in 1...max(1, b.count) where !b.isEmpty {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            if b.isEmpty { cur[0] = i }
            swap(&prev, &cur)
        }
        return prev[b.count]
    }
}
