#!/usr/bin/env bash
# Command 2 of the README: every test. Swift's suite (codec against the
# protocol vectors, core, the server over real sockets), then the Python
# client's pytest suite against a real server binary it starts itself.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
if ! python3 -c "import pytest" 2>/dev/null; then
  echo "test: installing pytest" >&2
  python3 -m pip install -q pytest || exit 1
fi

echo "== swift test =="
swift build --build-tests || exit 1
swift test --disable-xctest
swift_status=$?

echo "== python client tests (pytest), against the release build users run =="
swift build -c release --product perennial || exit 1
PERENNIAL_BIN="$PWD/.build/release/perennial" PERENNIAL_REQUIRE_SERVER=1 PYTHONPATH="$PWD/clients/python" \
  python3 -m pytest -q clients/python/tests
py_status=$?

echo "== python client type check (mypy --strict) =="
if ! python3 -c "import mypy" 2>/dev/null; then
  echo "test: installing mypy" >&2
  python3 -m pip install -q mypy || exit 1
fi
(cd clients/python && python3 -m mypy --strict perennial tests/typecheck_client.py)
mypy_status=$?

echo "== summary: swift test exit $swift_status, pytest exit $py_status, mypy exit $mypy_status =="
[ $swift_status -eq 0 ] && [ $py_status -eq 0 ] && [ $mypy_status -eq 0 ]
