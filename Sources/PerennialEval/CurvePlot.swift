// A line chart as SVG, for E1's curve (HR@10 per tenth of the test phase,
// one line per variant): written by the tool itself, so drawing it needs
// nothing installed, and any browser or the README renders it.

import Foundation

public struct CurvePlot {
    public struct Series {
        public var name: String
        public var values: [Double]
        public init(name: String, values: [Double]) {
            self.name = name
            self.values = values
        }
    }

    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]

    public init(title: String, xLabel: String, yLabel: String, series: [Series]) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.series = series
    }

    static let colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#7f7f7f"]

    public var svg: String {
        let width = 760.0, height = 420.0
        let left = 70.0, right = 200.0, top = 40.0, bottom = 60.0
        let plotW = width - left - right, plotH = height - top - bottom
        let points = series.map(\.values.count).max() ?? 0
        let maxY = niceCeiling(series.flatMap(\.values).max() ?? 1)
        func x(_ i: Int) -> Double { left + (points <= 1 ? 0 : Double(i) / Double(points - 1) * plotW) }
        func y(_ v: Double) -> Double { top + plotH - v / maxY * plotH }
        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="22" font-size="15">\(escape(title))</text>

            """
        // Grid and y ticks.
        for t in 0...5 {
            let v = maxY * Double(t) / 5
            s += "<line x1=\"\(left)\" y1=\(q(y(v))) x2=\(q(left + plotW)) y2=\(q(y(v))) stroke=\"#ddd\"/>\n"
            s += "<text x=\(q(left - 8)) y=\(q(y(v) + 4)) text-anchor=\"end\">\(String(format: "%.3f", v))</text>\n"
        }
        // At most about 15 labels on the x axis.
        let labelEvery = max(1, (points + 14) / 15)
        for i in stride(from: 0, to: points, by: labelEvery) {
            s += "<text x=\(q(x(i))) y=\(q(top + plotH + 18)) text-anchor=\"middle\">\(i + 1)</text>\n"
        }
        s += "<line x1=\"\(left)\" y1=\(q(top + plotH)) x2=\(q(left + plotW)) y2=\(q(top + plotH)) stroke=\"black\"/>\n"
        s += "<line x1=\"\(left)\" y1=\"\(top)\" x2=\"\(left)\" y2=\(q(top + plotH)) stroke=\"black\"/>\n"
        s += "<text x=\(q(left + plotW / 2)) y=\(q(height - 15)) text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        s += "<text transform=\"translate(18,\(top + plotH / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (n, line) in series.enumerated() {
            let colour = Self.colours[n % Self.colours.count]
            let path = line.values.enumerated().map { String(format: "%.1f,%.1f", x($0.offset), y($0.element)) }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            for (i, v) in line.values.enumerated() {
                s += "<circle cx=\(q(x(i))) cy=\(q(y(v))) r=\"3\" fill=\"\(colour)\"/>\n"
            }
            let ly = top + 10 + Double(n) * 20
            s += "<line x1=\(q(left + plotW + 15)) y1=\(q(ly)) x2=\(q(left + plotW + 40)) y2=\(q(ly)) stroke=\"\(colour)\" stroke-width=\"2\"/>\n"
            s += "<text x=\(q(left + plotW + 46)) y=\(q(ly + 4))>\(escape(line.name))</text>\n"
        }
        return s + "</svg>\n"
    }

    private func q(_ v: Double) -> String { "\"" + String(format: "%.1f", v) + "\"" }

    private func escape(_ t: String) -> String {
        t.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// The smallest of 1, 2, 2.5, 5 × 10^k at or above v.
    private func niceCeiling(_ v: Double) -> Double {
        guard v > 0 else { return 1 }
        let p = pow(10, floor(log10(v)))
        for m in [1.0, 2.0, 2.5, 5.0, 10.0] where m * p >= v { return m * p }
        return 10 * p
    }
}
