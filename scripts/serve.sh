#!/usr/bin/env bash
# Command 1 of the README: set up, build the release binary, and run the
# server with the bundled defaults (127.0.0.1:7878, data in ./data).
# Extra arguments go to `perennial serve` (e.g. --config config/perennial.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product perennial
exec .build/release/perennial serve "$@"
