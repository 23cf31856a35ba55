#!/usr/bin/env bash
# Benchmark: the daemon at rest. Starts `credrotd run` with an inventory of N
# accounts (default 1000) on a daily schedule against a throwaway scram-sha-256
# PostgreSQL, waits until every account is issued, then reports the daemon's
# resident memory and the CPU time it uses over IDLE seconds (default 600).
#
#   benches/idle.sh                  # N=1000, IDLE=600
#   N=100 IDLE=60 benches/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh

N=${N:-1000}
IDLE=${IDLE:-600}
cargo build --release --locked -q
BIN=$PWD/target/release/credrotd
work=$(mktemp -d /tmp/credrotd-idle.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
    stop_test_pg
}
trap cleanup EXIT
start_test_pg
split_pg_url "$CREDROTD_TEST_PG_URL"
password=$PG_PASSWORD
base_url=$PG_BASE_URL
PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$base_url" -c "CREATE DATABASE idle"
db_url=${base_url%/*}/idle
PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$db_url" -c "CREATE SCHEMA app; CREATE TABLE app.items (id int)"
printf '%s' "$password" > "$work/admin.pw"
{
    echo "version: 1"
    echo "environment: development"
    echo "state: sqlite://$work/state.db"
    echo "admin: { socket: $work/admin.sock }"
    echo "rotation: { concurrency: 16 }"
    echo "defaults: { schedule: \"0 0 3 * * *\", overlap: 1h, store: local }"
    echo "databases:"
    echo "  main: { engine: postgres, url: \"$db_url\", password_file: $work/admin.pw, max_connections: 8 }"
    echo "stores:"
    echo "  local: { kind: file, dir: $work/secrets, mode: \"0400\" }"
    echo "accounts:"
    for i in $(seq 1 "$N"); do
        echo "  idle_acc$i: { database: main, purpose: bench, owner: bench, grants: [ { schema: app, privileges: [USAGE] } ] }"
    done
} > "$work/inventory.yaml"

RUST_LOG=warn "$BIN" -c "$work/inventory.yaml" run 2> "$work/daemon.log" &
pid=$!
start=$(date +%s)
until [ "$(ls "$work/secrets" 2>/dev/null | wc -l)" -ge "$N" ]; do
    kill -0 "$pid" || { cat "$work/daemon.log"; exit 1; }
    sleep 1
done
echo "issued $N accounts in $(( $(date +%s) - start ))s"
sleep 2
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
c0=$(cpu); r0=$(rss)
sleep "$IDLE"
c1=$(cpu); r1=$(rss)
echo "idle RSS with $N accounts: $((r0 / 1024)) MiB at start of the idle window, $((r1 / 1024)) MiB after ${IDLE}s"
awk '/RssAnon|RssFile/ { printf "  %s %d MiB\n", $1, $2 / 1024 }' "/proc/$pid/status"
echo "  threads: $(ls "/proc/$pid/task" | wc -l)"
awk -v d=$((c1 - c0)) -v t="$ticks" -v s="$IDLE" 'BEGIN { printf "CPU time over %ds idle: %.2fs (%.4f%% of one core)\n", s, d / t, 100 * d / t / s }'
