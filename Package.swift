// swift-tools-version:6.0
import PackageDescription

// Perennial: a recommendation model server that never stops learning.
// Layout and reasons: ../shared/DESIGN.md. Plugins live under Plugins/<Name>,
// the Swift client under clients/swift, everything else under Sources/.
// The scoring loops call small PerennialCore helpers (row access, exclusion
// tests, the top-k heap) for every item of the catalogue; letting the
// optimiser inline them across modules keeps those loops tight. Dynamic
// exclusivity checks are off in release builds of the core and the scorers: their
// shared state is raw memory (ChunkedBuffer), whose access rules are the
// documented thread contract, not Swift exclusivity. They are off in the
// server too, where every frame paid for them (about 4% of a PING's server
// time); debug builds, which the tests run, keep them. Not in the protocol
// target: the client libraries use it, and unsafe flags would stop other
// packages from depending on them.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-cross-module-optimization", "-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "Perennial",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "perennial", targets: ["perennial"]),
        .library(name: "PerennialClient", targets: ["PerennialClient"]),
        .library(name: "PerennialProtocol", targets: ["PerennialProtocol"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // libuv from the system (Debian: libuv1-dev).
        .systemLibrary(
            name: "CLibUV",
            path: "Sources/CLibUV",
            pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev"])]
        ),
        // Frame codec and message types: pure Swift, no I/O.
        .target(name: "PerennialProtocol", path: "Sources/PerennialProtocol"),
        // Table, id maps, histories, learner, scorer plugin API, config.
        .target(name: "PerennialCore", dependencies: ["CKernels"], path: "Sources/PerennialCore", swiftSettings: hotPath),
        // C: dot-product kernels (a plain loop and an AVX2/FMA path chosen at run time),
        // CRC-32C, and the SIGBUS guard for reading a snapshot through its mapping.
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        // Scorer plugins, one folder each, and the registry that lists them.
        .target(name: "Popularity", dependencies: ["PerennialCore"], path: "Plugins/Popularity", swiftSettings: hotPath),
        .target(name: "CollaborativeFiltering", dependencies: ["PerennialCore", "CKernels"], path: "Plugins/CollaborativeFiltering",
                swiftSettings: hotPath),
        .target(name: "TextCNN", dependencies: ["PerennialCore", "CKernels"], path: "Plugins/TextCNN", swiftSettings: hotPath),
        .target(name: "SessionRNN", dependencies: ["PerennialCore", "CKernels"], path: "Plugins/SessionRNN", swiftSettings: hotPath),
        .target(name: "GANCandidates", dependencies: ["PerennialCore", "CKernels"], path: "Plugins/GANCandidates", swiftSettings: hotPath),
        .target(name: "PerennialPlugins", dependencies: ["PerennialCore", "Popularity", "CollaborativeFiltering", "TextCNN", "SessionRNN", "GANCandidates"],
                path: "Sources/PerennialPlugins"),
        // The evaluation protocols of EVALUATION.md (E1–E5), run in process.
        .target(name: "PerennialEval", dependencies: ["PerennialCore", "PerennialPlugins"], path: "Sources/PerennialEval"),
        // The load tool's parts: driver, open-loop pacer, latency histogram, workloads.
        // epoll(7) for the load tool's client.
        .systemLibrary(name: "CEpoll", path: "Sources/CEpoll"),
        .target(name: "PerennialBench", dependencies: ["PerennialProtocol", "PerennialClient", "CEpoll"], path: "Sources/PerennialBench"),
        // prctl and close_range for the server's forked snapshot writer.
        .systemLibrary(name: "CProcess", path: "Sources/CProcess"),
        // The libuv server: loop, connections, routing, limits, stats.
        .target(
            name: "PerennialServer",
            dependencies: ["CLibUV", "CProcess", "PerennialProtocol", "PerennialCore", "PerennialPlugins"],
            path: "Sources/PerennialServer",
            swiftSettings: hotPath
        ),
        // The bundled Swift client (async/await).
        .target(name: "PerennialClient", dependencies: ["PerennialProtocol"], path: "clients/swift/Sources/PerennialClient"),
        // Command line: serve, replay, eval, bench, admin, versions, log.
        .executableTarget(
            name: "perennial",
            dependencies: [
                "PerennialServer", "PerennialCore", "PerennialClient", "PerennialProtocol", "PerennialEval", "PerennialPlugins",
                "PerennialBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/perennial",
            resources: []
        ),
        .testTarget(name: "PerennialProtocolTests", dependencies: ["PerennialProtocol"], path: "Tests/PerennialProtocolTests"),
        // Where the test suites put their data directories (one folder per test process).
        .target(name: "ScratchDirectory", path: "Tests/ScratchDirectory"),
        .testTarget(name: "PerennialCoreTests", dependencies: ["PerennialCore", "Popularity", "CollaborativeFiltering", "TextCNN", "SessionRNN", "GANCandidates", "CKernels", "PerennialEval", "PerennialPlugins", "ScratchDirectory"], path: "Tests/PerennialCoreTests"),
        .testTarget(
            name: "PerennialServerTests",
            dependencies: ["PerennialServer", "PerennialClient", "PerennialProtocol", "PerennialCore", "PerennialPlugins", "PerennialBench", "ScratchDirectory"],
            path: "Tests/PerennialServerTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
