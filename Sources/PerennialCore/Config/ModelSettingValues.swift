// The settings that go into the stored model, as "key" -> "value" strings
// under their config keys (`table.dimension`, `scorers.cf.neighbours`,
// `lifelong.replay`, ...). Each snapshot records them in its description,
// so a start-up that cannot load a snapshot under the current config can
// name the keys that changed (RELOAD compares the settings themselves).
// Keys are found by reflection: a setting's config key is its property name
// in snake case, for every scorer's settings type.

extension PerennialConfig {
    public var modelSettingValues: [String: String] {
        var values = ["table.dimension": "\(tableDimension)", "table.seed": "\(tableSeed)"]
        for (key, value) in reflectedSettings(lifelong) { values["lifelong." + key] = value }
        for (key, value) in reflectedSettings(feedbackWeights) { values["feedback." + key] = value }
        for s in scorers {
            for (key, value) in reflectedSettings(s.settings) { values["scorers.\(s.name).\(key)"] = value }
        }
        return values
    }

    /// "key: was -> now" for each key both hold with different values, sorted.
    public static func changedSettingValues(was: [String: String], now: [String: String]) -> [String] {
        was.keys.sorted().compactMap { key in
            guard let before = was[key], let after = now[key], before != after else { return nil }
            return "\(key) \(before) -> \(after)"
        }
    }
}

/// A settings value's stored properties as (config key, value) pairs.
func reflectedSettings(_ settings: Any) -> [(key: String, value: String)] {
    Mirror(reflecting: settings).children.compactMap { c in
        guard let label = c.label else { return nil }
        let key = label.reduce(into: "") { k, ch in k += ch.isUppercase ? "_" + ch.lowercased() : String(ch) }
        return (key, "\(c.value)")
    }
}
