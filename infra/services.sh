#!/usr/bin/env bash
# Local services for Floe's real stack, on loopback ports, with their data in a temp folder:
#   - an S3-compatible server (MinIO where installed, else s3s-fs built from crates.io),
#     reached over TLS only: its address is a TLS terminator (Debian's stunnel4) in front of
#     it, so clients speak https and verify the certificate (FLOE_S3_CA_FILE=<the CA>),
#   - PostgreSQL (Debian's, started with initdb/pg_ctl; installed with apt-get when missing),
#     over TLS only for the floe user: clients verify its certificate (PGSSLMODE=verify-full,
#     PGSSLROOTCERT=<the CA>),
#   - a Kafka-compatible broker (tansu, built from crates.io, SQLite storage in the folder) that
#     requires SASL/SCRAM-SHA-256, reached over TLS only: its advertised address is a TLS
#     terminator (stunnel4 again) in front of it, so clients speak SASL_SSL and verify the
#     certificate (the FLOE_KAFKA_PROPERTIES_* lines of the printed environment).
# The certificates come from a throwaway CA made here with openssl ($FLOE_SERVICES_DIR/ca.pem).
#
#   infra/services.sh up             install what is missing, start, create the bucket and
#                                    database; prints `export FLOE_…` lines on stdout, so that
#                                    eval "$(infra/services.sh up)" points every floe command
#                                    in the shell at the real stack
#   infra/services.sh env            the same export lines, for services already up
#   infra/services.sh status         what runs
#   infra/services.sh down           stop everything and delete the data
#   infra/services.sh stop|start s3|postgres|kafka
#                                    stop or start one service, keeping its data (outage tests)
#
# Settings (environment): FLOE_SERVICES_DIR (data, logs, pids; default $TMPDIR/floe-services),
# FLOE_SERVICES_S3_PORT (19000, TLS), FLOE_SERVICES_S3_SERVER_PORT (19001, the S3 server behind
# it, loopback), FLOE_SERVICES_PG_PORT (15432), FLOE_SERVICES_KAFKA_PORT (19092,
# TLS), FLOE_SERVICES_KAFKA_BROKER_PORT (19093, the broker behind it, loopback, SCRAM required),
# FLOE_CACHE_DIR (where tools built from crates.io are kept; default ~/.cache/floe).
# Progress goes to stderr; stdout carries only the export lines.
set -euo pipefail

DIR="${FLOE_SERVICES_DIR:-${TMPDIR:-/tmp}/floe-services}"
CACHE="${FLOE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/floe}"
TOOLS="$CACHE/tools"
S3_PORT="${FLOE_SERVICES_S3_PORT:-19000}"
S3_SERVER_PORT="${FLOE_SERVICES_S3_SERVER_PORT:-19001}"
PG_PORT="${FLOE_SERVICES_PG_PORT:-15432}"
KAFKA_PORT="${FLOE_SERVICES_KAFKA_PORT:-19092}"
KAFKA_BROKER_PORT="${FLOE_SERVICES_KAFKA_BROKER_PORT:-19093}"
KAFKA_USER="floe"
KAFKA_PASSWORD="floe-kafka-local"
BUCKET="floe"
S3_KEY="floe-local"
S3_SECRET="floe-local-secret"
PG_USER="floe"
PG_PASSWORD="floe-local"
PG_DB="floe"

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }

# Waits until something accepts connections on 127.0.0.1:$1 (or gives up after $2 seconds).
wait_port() {
  local port=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------------------- S3

s3_binary() {
  if command -v minio >/dev/null 2>&1; then echo minio; return; fi
  if [ -x "$TOOLS/bin/s3s-fs" ]; then echo "$TOOLS/bin/s3s-fs"; return; fi
  if command -v s3s-fs >/dev/null 2>&1; then command -v s3s-fs; return; fi
  say "installing s3s-fs 0.14.1 from crates.io into $TOOLS (a few minutes, once)"
  cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root "$TOOLS" \
    --target-dir "$CACHE/tools-target" >&2 || die "could not build s3s-fs"
  echo "$TOOLS/bin/s3s-fs"
}

s3_start() {
  if alive "$DIR/s3.pid" && alive "$DIR/s3-tls.pid"; then return; fi
  s3_stop
  port_open "$S3_PORT" && die "port $S3_PORT is taken by something else (set FLOE_SERVICES_S3_PORT)"
  port_open "$S3_SERVER_PORT" \
    && die "port $S3_SERVER_PORT is taken by something else (set FLOE_SERVICES_S3_SERVER_PORT)"
  local bin
  bin=$(s3_binary)
  mkdir -p "$DIR/s3/$BUCKET"
  if [ "$(basename "$bin")" = minio ]; then
    MINIO_ROOT_USER="$S3_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET" \
      nohup "$bin" server "$DIR/s3" --address "127.0.0.1:$S3_SERVER_PORT" \
      --console-address "127.0.0.1:0" >"$DIR/s3.log" 2>&1 &
  else
    # s3s-fs keeps each bucket as a folder of the root: the bucket exists already.
    nohup "$bin" --host 127.0.0.1 --port "$S3_SERVER_PORT" --access-key "$S3_KEY" \
      --secret-key "$S3_SECRET" "$DIR/s3" >"$DIR/s3.log" 2>&1 &
  fi
  echo $! >"$DIR/s3.pid"
  wait_port "$S3_SERVER_PORT" 60 || die "the S3 server did not start; see $DIR/s3.log"
  tls_front s3 "$S3_PORT" "$S3_SERVER_PORT"
  say "S3 ($(basename "$bin")) over TLS on 127.0.0.1:$S3_PORT, bucket $BUCKET"
}

s3_stop() {
  stop_pids s3-tls s3
}

# ---------------------------------------------------------------------------- PostgreSQL

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$d" ] && command -v pg_ctl >/dev/null 2>&1; then d=$(dirname "$(command -v pg_ctl)"); fi
  if [ -z "$d" ]; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed (apt-get install postgresql, as root)"
    say "installing PostgreSQL from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2; } \
      || die "could not install PostgreSQL"
    d=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  echo "$d"
}

# Runs a PostgreSQL tool as the user that owns the cluster (postgres when we are root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Installs a Debian package (as root) when `command` is missing.
apt_install() {
  local command=$1 package=$2
  command -v "$command" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "$command is not installed (apt-get install $package, as root)"
  say "installing $package from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >&2; } \
    || die "could not install $package"
}

# A throwaway CA ($DIR/ca.pem) and a certificate it signs for 127.0.0.1 ($DIR/tls/server.crt
# and server.key), which PostgreSQL and the broker's TLS terminator present.
tls_ca() {
  [ -f "$DIR/tls/server.crt" ] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl makes the test CA: apt-get install openssl"
  local t="$DIR/tls"
  mkdir -p "$t"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=floe test CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$t/ca.key" -out "$DIR/ca.pem" 2>/dev/null || die "could not make the test CA"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$t/server.key" -out "$t/server.csr" 2>/dev/null || die "could not make a key"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$t/ext.cnf"
  openssl x509 -req -in "$t/server.csr" -CA "$DIR/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 30 -extfile "$t/ext.cnf" -out "$t/server.crt" 2>/dev/null || die "could not sign"
  chmod 644 "$DIR/ca.pem"
}

# A TLS terminator (Debian's stunnel4) on 127.0.0.1:$2 presenting the test CA's certificate,
# passing connections on to the plain service on 127.0.0.1:$3; its pid in $DIR/$1-tls.pid.
tls_front() {
  local name=$1 accept=$2 connect=$3
  apt_install stunnel4 stunnel4
  tls_ca
  cat >"$DIR/$name-tls.conf" <<EOF
foreground = yes
debug = warning
pid =
[$name]
accept = 127.0.0.1:$accept
connect = 127.0.0.1:$connect
cert = $DIR/tls/server.crt
key = $DIR/tls/server.key
EOF
  stunnel4 "$DIR/$name-tls.conf" >"$DIR/$name-tls.log" 2>&1 &
  echo $! >"$DIR/$name-tls.pid"
  wait_port "$accept" 30 || die "the TLS terminator of $name did not start; see $DIR/$name-tls.log"
}

# Stops the processes whose pids are in $DIR/<name>.pid, for each name given.
stop_pids() {
  local p
  for p in "$@"; do
    if alive "$DIR/$p.pid"; then
      kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
      for _ in $(seq 50); do alive "$DIR/$p.pid" || break; sleep 0.1; done
      kill -9 "$(cat "$DIR/$p.pid")" 2>/dev/null || true
    fi
    rm -f "$DIR/$p.pid"
  done
}

# PostgreSQL presents the test CA's certificate; the floe user may connect over TLS only.
pg_tls() {
  tls_ca
  install -m 600 "$DIR/tls/server.key" "$DIR/pg/server.key"
  install -m 644 "$DIR/tls/server.crt" "$DIR/pg/server.crt"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR/pg/server.key" "$DIR/pg/server.crt"
  # Plain connections of the floe user are refused: whatever reaches the catalog as floe
  # (Floe, the tests' own clients) speaks TLS and verifies the CA.
  local hba="$DIR/pg/pg_hba.conf"
  { echo "hostnossl all $PG_USER 127.0.0.1/32 reject"; cat "$hba"; } >"$hba.new" && mv "$hba.new" "$hba"
  [ "$(id -u)" = 0 ] && chown postgres "$hba"
  return 0
}

pg_start() {
  local bin
  bin=$(pg_bin)
  if [ ! -f "$DIR/pg/PG_VERSION" ]; then
    mkdir -p "$DIR/pg"
    if [ "$(id -u)" = 0 ]; then
      # The cluster runs as postgres, which must be able to reach its folder (mktemp -d is 0700).
      chmod o+x "$DIR"
      chown postgres "$DIR/pg" && chmod 700 "$DIR/pg"
    fi
    as_pg "$bin/initdb" -D "$DIR/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --no-instructions >"$DIR/pg-init.log" 2>&1 || die "initdb failed; see $DIR/pg-init.log"
    pg_tls
  fi
  if ! as_pg "$bin/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then
    port_open "$PG_PORT" && die "port $PG_PORT is taken by something else (set FLOE_SERVICES_PG_PORT)"
    touch "$DIR/pg.log"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR/pg.log"
    as_pg "$bin/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w -t 60 \
      -o "-p $PG_PORT -k $DIR/pg -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on -c ssl=on" \
      start >/dev/null || die "PostgreSQL did not start; see $DIR/pg.log"
  fi
  local psql=(env -u PGSSLMODE -u PGSSLROOTCERT "$bin/psql" -h "$DIR/pg" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
  if [ "$(as_pg "${psql[@]}" -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != 1 ]; then
    as_pg "${psql[@]}" -d postgres -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >&2
  fi
  if [ "$(as_pg "${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    as_pg "${psql[@]}" -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2
  fi
  say "PostgreSQL on 127.0.0.1:$PG_PORT, database $PG_DB"
}

pg_stop() {
  [ -f "$DIR/pg/PG_VERSION" ] || return 0
  local bin
  bin=$(pg_bin)
  if as_pg "$bin/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$DIR/pg" -m fast -w stop >/dev/null || true
  fi
}

# ---------------------------------------------------------------------------- Kafka

# Apache Kafka cannot be fetched from the package registries; tansu speaks its protocol. Its
# SQLite storage is used because the memory one cannot fetch from an offset inside a batch.
kafka_binary() {
  if [ -x "$TOOLS/bin/tansu" ]; then echo "$TOOLS/bin/tansu"; return; fi
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  # Only the SQLite storage (`libsql`): the S3 (`dynostore`) and PostgreSQL ones would be built
  # for nothing.
  say "installing tansu 0.6.0 from crates.io into $TOOLS (about 8 minutes on 2 cores, once)"
  cargo install --quiet --locked tansu@0.6.0 --features libsql --root "$TOOLS" \
    --target-dir "$CACHE/tools-target" >&2 || die "could not build tansu"
  echo "$TOOLS/bin/tansu"
}

# Runs the broker on its own loopback port, advertising the TLS terminator's address; extra
# arguments go to `tansu broker`.
kafka_broker() {
  local bin=$1
  shift
  # The subshell execs the broker, so that $! is the broker itself (stop kills it).
  (cd "$DIR/kafka" && RUST_LOG="${FLOE_SERVICES_KAFKA_LOG:-warn}" exec "$bin" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_BROKER_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "sqlite://kafka.db" "$@") >>"$DIR/kafka.log" 2>&1 &
  echo $! >"$DIR/kafka.pid"
  wait_port "$KAFKA_BROKER_PORT" 60 || die "the Kafka broker did not start; see $DIR/kafka.log"
}

kafka_start() {
  if alive "$DIR/kafka.pid" && alive "$DIR/kafka-tls.pid"; then return; fi
  kafka_stop
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by something else (set FLOE_SERVICES_KAFKA_PORT)"
  port_open "$KAFKA_BROKER_PORT" \
    && die "port $KAFKA_BROKER_PORT is taken by something else (set FLOE_SERVICES_KAFKA_BROKER_PORT)"
  local bin
  bin=$(kafka_binary)
  tls_ca
  mkdir -p "$DIR/kafka"
  if [ ! -f "$DIR/kafka/user" ]; then
    # The broker stores its SCRAM users itself, and takes the request only while it does not
    # yet require authentication: once, before the real start.
    kafka_broker "$bin"
    "$bin" user create --broker "tcp://127.0.0.1:$KAFKA_BROKER_PORT" --mechanism scram256 \
      "$KAFKA_USER" "$KAFKA_PASSWORD" >>"$DIR/kafka.log" 2>&1 \
      || die "could not create the broker's SCRAM user; see $DIR/kafka.log"
    kafka_stop
    touch "$DIR/kafka/user"
  fi
  kafka_broker "$bin" --authentication
  tls_front kafka "$KAFKA_PORT" "$KAFKA_BROKER_PORT"
  say "Kafka (tansu, SASL/SCRAM-SHA-256) over TLS on 127.0.0.1:$KAFKA_PORT"
}

kafka_stop() {
  stop_pids kafka-tls kafka
}

# ---------------------------------------------------------------------------- commands

print_env() {
  cat <<EOF
export FLOE_WAREHOUSE=s3://$BUCKET/warehouse
export FLOE_CATALOG=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB?sslmode=verify-full
export PGSSLMODE=verify-full
export PGSSLROOTCERT=$DIR/ca.pem
export FLOE_S3_ENDPOINT=https://127.0.0.1:$S3_PORT
export FLOE_S3_CA_FILE=$DIR/ca.pem
export FLOE_S3_REGION=us-east-1
export FLOE_S3_PATH_STYLE=true
export FLOE_S3_ACCESS_KEY_ID=$S3_KEY
export FLOE_S3_SECRET_ACCESS_KEY=$S3_SECRET
export FLOE_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export FLOE_KAFKA_PROPERTIES_SECURITY_PROTOCOL=SASL_SSL
export FLOE_KAFKA_PROPERTIES_SSL_CA_LOCATION=$DIR/ca.pem
export FLOE_KAFKA_PROPERTIES_SASL_MECHANISM=SCRAM-SHA-256
export FLOE_KAFKA_PROPERTIES_SASL_USERNAME=$KAFKA_USER
export FLOE_KAFKA_PROPERTIES_SASL_PASSWORD=$KAFKA_PASSWORD
EOF
}

status() {
  local ok=0
  if alive "$DIR/s3.pid" && alive "$DIR/s3-tls.pid" && port_open "$S3_PORT"; then
    echo "s3: up on 127.0.0.1:$S3_PORT (TLS)"
  else echo "s3: down"; ok=1; fi
  if port_open "$PG_PORT" && [ -f "$DIR/pg/postmaster.pid" ]; then echo "postgres: up on 127.0.0.1:$PG_PORT"; else echo "postgres: down"; ok=1; fi
  if alive "$DIR/kafka.pid" && alive "$DIR/kafka-tls.pid" && port_open "$KAFKA_PORT"; then
    echo "kafka: up on 127.0.0.1:$KAFKA_PORT (TLS, SASL/SCRAM)"
  else echo "kafka: down"; ok=1; fi
  return $ok
}

mkdir -p "$DIR"
case "${1:-}" in
  up)
    s3_start
    pg_start
    kafka_start
    print_env
    ;;
  env) print_env ;;
  status) status ;;
  down)
    s3_stop
    pg_stop
    kafka_stop
    rm -rf "$DIR"
    say "stopped; data removed"
    ;;
  stop)
    case "${2:-}" in
      s3) s3_stop ;;
      postgres) pg_stop ;;
      kafka) kafka_stop ;;
      *) die "usage: $0 stop s3|postgres|kafka" ;;
    esac
    ;;
  start)
    case "${2:-}" in
      s3) s3_start ;;
      postgres) pg_start ;;
      kafka) kafka_start ;;
      *) die "usage: $0 start s3|postgres|kafka" ;;
    esac
    ;;
  *)
    sed -n '2,/^set -e/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
