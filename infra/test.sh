#!/usr/bin/env bash
# The whole test suite, on a fresh machine as well as a warm one: builds Floe once (release
# profile, shared by every step) while running the Rust tests, then the Python tests in which pyiceberg,
# DuckDB and the trino client read Floe's tables. Needs no running services: the embedded defaults are what is
# tested here.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${FLOE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/floe}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

echo "== rust tests (release profile, target dir $CARGO_TARGET_DIR)"
# Also builds the floe binary that the end-to-end tests (Rust and Python) run: one build, with
# the features the test targets need, instead of a second one for the binary alone.
cargo test --release --locked --workspace --no-fail-fast
test -x "$CARGO_TARGET_DIR/release/floe" || { echo "floe binary missing after the build" >&2; exit 1; }

echo "== python tests (pyiceberg, DuckDB, trino client)"
VENV="$CACHE/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
FLOE_BIN="$CARGO_TARGET_DIR/release/floe" "$VENV/bin/python" -m pytest -q tests/python
