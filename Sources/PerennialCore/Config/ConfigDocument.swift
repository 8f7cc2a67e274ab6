// A small TOML reader for Perennial's config file: `[section]` and
// `[section.sub]` headers, `key = value` lines, `#` comments; values are
// strings ("…" with \" \\ \n \t escapes, or '…'), integers, floats, booleans
// and arrays of those (on one line or spread over several). That subset is all the config uses, and
// owning the parser lets every error name the line and the key, which a
// general TOML library does not report for semantic errors.

public enum ConfigValue: Equatable, Sendable, CustomStringConvertible {
    case string(String)
    case integer(Int)
    case float(Double)
    case bool(Bool)
    case array([ConfigValue])

    public var typeName: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .float: "a number"
        case .bool: "a boolean"
        case .array: "an array"
        }
    }

    public var description: String {
        switch self {
        case .string(let s): "\"\(s)\""
        case .integer(let i): "\(i)"
        case .float(let d): "\(d)"
        case .bool(let b): "\(b)"
        case .array(let a): "[" + a.map(\.description).joined(separator: ", ") + "]"
        }
    }
}

public struct ConfigError: Error, Sendable, CustomStringConvertible, Equatable {
    public var file: String
    public var line: Int?
    public var message: String
    /// Further errors found in the same file (ConfigReader reports them
    /// all at once, so a file with three typos takes one fix, not three).
    public var others: [ConfigError] = []

    public init(file: String, line: Int?, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    /// A line each, by line, the first `ConfigReader.reportedMistakes`
    /// of them and how many more.
    public var description: String {
        let cap = ConfigReader.reportedMistakes
        var lines = ([self] + others).prefix(cap).map(\.oneLine)
        if others.count + 1 > cap { lines.append("\(file): ... and \(others.count + 1 - cap) more mistake(s) after these") }
        return lines.joined(separator: "\n")
    }

    private var oneLine: String {
        if line == 0 { return "command line: \(message)" }
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }

    /// These errors as one, the first by line leading.
    public static func combined(_ errors: [ConfigError]) -> ConfigError? {
        var all: [ConfigError] = []
        var seen = Set<String>()
        for e in errors {
            for one in [e] + e.others {
                var bare = one
                bare.others = []
                if seen.insert(bare.description).inserted { all.append(bare) }
            }
        }
        // (Stable: mistakes of one line keep the order they were found in.)
        all = all.enumerated().sorted { ($0.element.line ?? Int.max, $0.offset) < ($1.element.line ?? Int.max, $1.offset) }.map(\.element)
        guard var first = all.first else { return nil }
        first.others = Array(all.dropFirst())
        return first
    }
}

/// The parsed file: full dotted key → value and the line it came from.
public struct ConfigDocument: Sendable {
    public struct Entry: Sendable {
        public var value: ConfigValue
        public var line: Int
        public struct Header: Sendable {
            public var name: String
            public var line: Int
        }
    }

    public var file: String
    public private(set) var entries: [String: Entry] = [:]
    /// Keys in file order, for stable error reporting.
    public private(set) var order: [String] = []
    /// `[section]` headers in file order, with their lines (a header with
    /// no keys under it is still a section the file names).
    public private(set) var headers: [Entry.Header] = []

    public init(file: String = "<defaults>") { self.file = file }

    public init(text: String, file: String) throws(ConfigError) {
        self.file = file
        var section = ""
        // (Swift reads "\r\n" as one Character: a file with Windows line
        // ends split at "\n" alone was one long line, and a comment ending
        // in "\r\n" swallowed the line after it. A byte-order mark, which
        // some editors write and nobody sees, is not part of the first line.)
        let body = text.hasPrefix("\u{FEFF}") ? Substring(text.dropFirst()) : Substring(text)
        let lines = body.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
            .map { ConfigDocument.stripComment(String($0)).trimmingSpaces() }
        var next = 0
        while next < lines.count {
            let lineNumber = next + 1
            let line = Substring(lines[next])
            next += 1
            if line.isEmpty { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), !line.hasPrefix("[[") else {
                    throw ConfigError(file: file, line: lineNumber, message: "malformed section header '\(line)'")
                }
                let name = line.dropFirst().dropLast().trimmingSpaces()
                guard ConfigDocument.isKeyPath(name) else {
                    throw ConfigError(file: file, line: lineNumber, message: "malformed section name '\(name)'")
                }
                // (TOML defines a table once; a second header would quietly
                // add to, or override, the first: review finding, helper-71.)
                if let first = headers.first(where: { $0.name == name }) {
                    throw ConfigError(file: file, line: lineNumber, message: "section '[\(name)]' appears twice (first on line \(first.line)): put its keys under one header")
                }
                section = name
                headers.append(Entry.Header(name: String(name), line: lineNumber))
                continue
            }
            guard let eq = line.firstIndex(of: "=") else {
                throw ConfigError(file: file, line: lineNumber, message: "expected 'key = value', found '\(line)'")
            }
            let key = line[..<eq].trimmingSpaces()
            let fullKey = section.isEmpty ? key : section + "." + key
            var valueText = line[line.index(after: eq)...].trimmingSpaces()
            // Where each following line's text starts in `valueText` (in
            // Unicode scalars), so an error names the line it is on.
            var continued: [(start: Int, line: Int)] = []
            // An array may go on over the following lines, up to its ']'; one
            // left open names its line rather than swallow the rest of the
            // file (review finding, helper-47). The depth and length are kept
            // as lines are added (a string never spans lines): rescanning the
            // whole value for each line took minutes for a 40,000-line array,
            // with a running server's loop frozen in a RELOAD (helper-54).
            var depth = ConfigDocument.openBrackets(valueText)
            var scalars = valueText.unicodeScalars.count
            while depth > 0 {
                guard next < lines.count, !ConfigDocument.isSectionHeader(lines[next]) else {
                    throw ConfigError(file: file, line: lineNumber, message: "bad value for '\(fullKey)': unterminated array (opened on this line; "
                                      + (next < lines.count ? "line \(next + 1) starts a section" : "the file ends") + " before its ']')")
                }
                continued.append((scalars + 1, next + 1))
                valueText += " " + lines[next]
                scalars += 1 + lines[next].unicodeScalars.count
                depth += ConfigDocument.openBrackets(lines[next])
                next += 1
            }
            guard ConfigDocument.isKeyPath(key) else {
                throw ConfigError(file: file, line: lineNumber, message: "malformed key '\(key)'")
            }
            var parser = ValueParser(text: Array(valueText.unicodeScalars))
            let value: ConfigValue
            do throws(ValueParser.Failure) {
                value = try parser.parseValue()
                parser.skipSpaces()
                if !parser.atEnd { throw ValueParser.Failure(message: "unexpected text after the value") }
            } catch let failure {
                // (The parser stops just past a bad word, or at a bad
                // character: the last character that is not a separator.)
                var at = min(parser.i, parser.text.count - 1)
                while at > 0, [" ", "\t", ",", "]"].contains(parser.text[at]) { at -= 1 }
                guard let row = continued.last(where: { $0.start <= at }) else {
                    throw ConfigError(file: file, line: lineNumber, message: "bad value for '\(fullKey)': \(failure.message)")
                }
                throw ConfigError(file: file, line: row.line,
                                  message: "bad value for '\(fullKey)' (the array opened on line \(lineNumber)): \(failure.message)")
            }
            if let previous = entries[fullKey] {
                throw ConfigError(file: file, line: lineNumber,
                                  message: "'\(fullKey)' is set twice (first on line \(previous.line))")
            }
            entries[fullKey] = Entry(value: value, line: lineNumber)
            order.append(fullKey)
        }
    }

    /// Sets a value that did not come from the file (a command-line option):
    /// line 0, so an error about it says where it came from.
    public mutating func set(_ key: String, _ value: ConfigValue) {
        if entries[key] == nil { order.append(key) }
        entries[key] = Entry(value: value, line: 0)
    }

    static func isKeyPath(_ s: String) -> Bool {
        !s.isEmpty && s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { part in
            !part.isEmpty && part.unicodeScalars.allSatisfy { c in
                (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "_" || c == "-"
            }
        }
    }

    /// Whether a line is a `[section]` header (a name, not an array's row).
    static func isSectionHeader(_ line: String) -> Bool {
        guard line.hasPrefix("["), line.hasSuffix("]"), !line.hasPrefix("[[") else { return false }
        let name = String(line.dropFirst().dropLast()).trimmingSpaces()
        // (`[true]` is an array's row; a name starts with a letter or '_'.)
        guard let first = name.first, first.isLetter || first == "_", name != "true", name != "false" else { return false }
        return isKeyPath(name)
    }

    /// How many '[' outside strings are not closed by a ']' in `text`.
    static func openBrackets(_ text: String) -> Int {
        var depth = 0
        forEachOutsideStrings(text) { _, c in
            if c == "[" { depth += 1 }
            if c == "]" { depth -= 1 }
            return true
        }
        return depth
    }

    /// Drops a `#` comment that is not inside a string.
    static func stripComment(_ line: String) -> String {
        var end = line.endIndex
        forEachOutsideStrings(line) { at, c in
            if c == "#" { end = at }
            return c != "#"
        }
        return String(line[..<end])
    }

    /// Calls `visit` with each character of `text` that is not inside a
    /// "…" or '…' string, until it returns false.
    static func forEachOutsideStrings(_ text: String, _ visit: (String.Index, Character) -> Bool) {
        var inDouble = false, inSingle = false, escaped = false
        for at in text.indices {
            let c = text[at]
            if escaped { escaped = false; continue }
            if inDouble && c == "\\" { escaped = true; continue }
            if c == "\"" && !inSingle { inDouble.toggle() }
            if c == "'" && !inDouble { inSingle.toggle() }
            if !inDouble && !inSingle, !visit(at, c) { return }
        }
    }
}

struct ValueParser {
    struct Failure: Error { var message: String }
    let text: [Unicode.Scalar]
    var i = 0
    /// Arrays open around the value being read. Nesting is bounded: each
    /// level is a frame of this recursive parser, and 300,000 of them
    /// overflowed the stack, which a SIGHUP or RELOAD of such a file
    /// turned into a crash of a running server (review finding). No
    /// setting needs more than two.
    var depth = 0
    static let maxDepth = 32

    var atEnd: Bool { i >= text.count }

    mutating func skipSpaces() {
        while i < text.count, text[i] == " " || text[i] == "\t" { i += 1 }
    }

    mutating func parseValue() throws(Failure) -> ConfigValue {
        skipSpaces()
        guard i < text.count else { throw Failure(message: "missing value") }
        switch text[i] {
        case "\"": return .string(try parseBasicString())
        case "'": return .string(try parseLiteralString())
        case "[": return try parseArray()
        default: return try parseBare()
        }
    }

    mutating func parseBasicString() throws(Failure) -> String {
        i += 1
        var s = String.UnicodeScalarView()
        while i < text.count {
            let c = text[i]
            i += 1
            if c == "\"" { return String(s) }
            if c == "\\" {
                guard i < text.count else { break }
                let e = text[i]
                i += 1
                switch e {
                case "\"": s.append("\"")
                case "\\": s.append("\\")
                case "n": s.append("\n")
                case "t": s.append("\t")
                default: throw Failure(message: "unknown escape '\\\(e)' in string")
                }
            } else {
                s.append(c)
            }
        }
        throw Failure(message: "unterminated string")
    }

    mutating func parseLiteralString() throws(Failure) -> String {
        i += 1
        var s = String.UnicodeScalarView()
        while i < text.count {
            let c = text[i]
            i += 1
            if c == "'" { return String(s) }
            s.append(c)
        }
        throw Failure(message: "unterminated string")
    }

    mutating func parseArray() throws(Failure) -> ConfigValue {
        guard depth < Self.maxDepth else { throw Failure(message: "arrays nested more than \(Self.maxDepth) deep") }
        depth += 1
        defer { depth -= 1 }
        i += 1
        var items: [ConfigValue] = []
        while true {
            skipSpaces()
            guard i < text.count else { throw Failure(message: "unterminated array") }
            if text[i] == "]" { i += 1; return .array(items) }
            items.append(try parseValue())
            skipSpaces()
            guard i < text.count else { throw Failure(message: "unterminated array") }
            if text[i] == "," { i += 1; continue }
            if text[i] == "]" { i += 1; return .array(items) }
            throw Failure(message: "expected ',' or ']' in array")
        }
    }

    mutating func parseBare() throws(Failure) -> ConfigValue {
        var word = ""
        while i < text.count, text[i] != ",", text[i] != "]", text[i] != " ", text[i] != "\t" {
            word.unicodeScalars.append(text[i])
            i += 1
        }
        if word == "true" { return .bool(true) }
        if word == "false" { return .bool(false) }
        let digits = word.replacingUnderscores()
        if let n = Int(digits) { return .integer(n) }
        let unsigned = digits.first == "-" || digits.first == "+" ? digits.dropFirst() : Substring(digits)
        if !unsigned.isEmpty, unsigned.allSatisfy(\.isASCIIDigit) {
            throw Failure(message: "\(word) is out of range for an integer (\(Int.min) to \(Int.max))")
        }
        if digits.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }), let d = Double(digits) {
            guard d.isFinite else { throw Failure(message: "\(word) is out of range for a number (it overflows to infinity)") }
            return .float(d)
        }
        if ["nan", "inf"].contains(unsigned) {
            throw Failure(message: "\(word) is not a finite number, and no setting takes one (strings need quotes)")
        }
        throw Failure(message: "'\(word)' is not a value (strings need quotes)")
    }
}

extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

extension StringProtocol {
    /// Without leading and trailing spaces, tabs and carriage returns.
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }

    func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}
