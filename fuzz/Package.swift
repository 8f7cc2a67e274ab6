// swift-tools-version:6.0
// libFuzzer targets for Perennial's decoders, kept out of the main package
// because they only link with -sanitize=fuzzer. Build and run: fuzz/run.sh.
import PackageDescription

let package = Package(
    name: "PerennialFuzz",
    dependencies: [.package(name: "Perennial", path: "..")],
    targets: [
        .executableTarget(
            name: "FrameFuzzer",
            dependencies: [.product(name: "PerennialProtocol", package: "Perennial")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
