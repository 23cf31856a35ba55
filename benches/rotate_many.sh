#!/usr/bin/env bash
# Benchmark: `credrotd rotate --all` on an inventory of N accounts (default 1000).
#
#   benches/rotate_many.sh                 # N=1000 against a throwaway scram-sha-256 cluster
#   N=1000 CONCURRENCY=16 benches/rotate_many.sh
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres benches/rotate_many.sh
#                                          # against an existing server (e.g. the local one)
#
# Reports wall time and peak RSS (GNU time) for a first issue of every account
# and for a second rotation (which also keeps the first credentials in overlap),
# then drops everything it created.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh

N=${N:-1000}
CONCURRENCY=${CONCURRENCY:-16}
cargo build --release --locked -q
BIN=target/release/credrotd

if [ -z "${BENCH_PG_URL:-}" ]; then
    trap stop_test_pg EXIT
    start_test_pg
    BENCH_PG_URL=$CREDROTD_TEST_PG_URL
    where="a throwaway PostgreSQL (scram-sha-256)"
else
    where="$BENCH_PG_URL"
fi
# Split a password out of the URL: credrotd reads it from a file.
split_pg_url "$BENCH_PG_URL"
password=$PG_PASSWORD
base_url=$PG_BASE_URL

tag=b$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
db=credrotd_bench_$tag
work=$(mktemp -d /tmp/credrotd-bench.XXXXXX)
psql_admin() { PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$base_url" "$@"; }
cleanup() {
    # BENCH_KEEP_LOG=FILE keeps the server log (e.g. with
    # CREDROTD_TEST_PG_OPTS="-c log_min_duration_statement=0" for statement timings).
    if [ -n "${BENCH_KEEP_LOG:-}" ] && [ -n "${CREDROTD_TEST_PG_LOG:-}" ]; then
        cp "$CREDROTD_TEST_PG_LOG" "$BENCH_KEEP_LOG" || true
    fi
    PGPASSWORD="$password" psql -X -q "$base_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    PGPASSWORD="$password" psql -X -q -tA "$base_url" \
        -c "SELECT format('DROP ROLE IF EXISTS %I;', rolname) FROM pg_roles WHERE rolname LIKE '${tag}%' ORDER BY length(rolname) DESC" \
        2>/dev/null | PGPASSWORD="$password" psql -X -q "$base_url" >/dev/null 2>&1 || true
    rm -rf "$work"
    stop_test_pg
}
trap cleanup EXIT

psql_admin -c "CREATE DATABASE $db"
db_url=${base_url%/*}/$db
PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$db_url" \
    -c "CREATE SCHEMA app; CREATE TABLE app.items (id int); CREATE TABLE app.audit (id int)"
printf '%s' "$password" > "$work/admin.pw"

{
    echo "version: 1"
    echo "environment: development"
    echo "state: sqlite://$work/state.db"
    echo "rotation: { concurrency: $CONCURRENCY }"
    echo "defaults: { schedule: \"0 0 3 * * *\", overlap: 1h, store: local }"
    echo "databases:"
    echo "  main: { engine: postgres, url: \"$db_url\", password_file: $work/admin.pw, max_connections: 8 }"
    echo "stores:"
    echo "  local: { kind: file, dir: $work/secrets, mode: \"0400\" }"
    echo "accounts:"
    for i in $(seq 1 "$N"); do
        echo "  ${tag}_acc$i:"
        echo "    database: main"
        echo "    purpose: benchmark account $i"
        echo "    owner: bench"
        echo "    grants:"
        echo "      - { schema: app, privileges: [USAGE] }"
        echo "      - { schema: app, tables: [items], privileges: [SELECT, INSERT] }"
    done
} > "$work/inventory.yaml"

$BIN -c "$work/inventory.yaml" check | tail -1
echo "benchmark: rotate --all, $N accounts, concurrency $CONCURRENCY, against $where"
for round in first second; do
    /usr/bin/time -f "%e %M" -o "$work/time" env RUST_LOG=warn $BIN -c "$work/inventory.yaml" rotate --all | tail -1
    read -r wall rss < "$work/time"
    echo "  $round rotation: wall ${wall}s, peak RSS $((rss / 1024)) MiB"
done
