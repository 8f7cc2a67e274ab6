#!/usr/bin/env bash
# Builds the libFuzzer target over the protocol decoders and runs it for a
# bounded time, seeded with the protocol's test vectors.
#   fuzz/run.sh [SECONDS]        (default 60; the full run uses -runs=10000000)
# Findings land in fuzz/findings/; turn each into a vector and a test.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
swift build -c debug --sanitize=fuzzer --sanitize=address --product FrameFuzzer
mkdir -p corpus findings
cp ../protocol/vectors/*.bin corpus/
exec .build/debug/FrameFuzzer corpus -max_total_time="$seconds" -max_len=65536 -artifact_prefix=findings/ -print_final_stats=1 "${@:2}"
