#!/usr/bin/env bash
# Benchmark: bulk retirement. N accounts (default 1000) each hold a current
# credential and a previous one in its overlap; the ledger is then told that
# every overlap ends in the same second (T, LEAD seconds after the daemon
# starts: default 60, time for its start-up recovery), and the daemon retires
# them all (refuse logins, end sessions, drop the roles). Reports how long after
# T the last retired login was gone from pg_roles, and the rate.
#
#   benches/retire.sh            # N=1000, CONCURRENCY=16
#   N=200 LEAD=30 benches/retire.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh

N=${N:-1000}
CONCURRENCY=${CONCURRENCY:-16}
LEAD=${LEAD:-60}
cargo build --release --locked -q --bin credrotd
BIN=$PWD/target/release/credrotd
work=$(mktemp -d /tmp/credrotd-retire.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
    stop_test_pg
}
trap cleanup EXIT
trap "exit 130" INT TERM
CREDROTD_TEST_PG_OPTS="-c log_statement=none" start_test_pg
split_pg_url "$CREDROTD_TEST_PG_URL"
password=$PG_PASSWORD
base_url=$PG_BASE_URL
PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$base_url" -c "CREATE DATABASE retire"
db_url=${base_url%/*}/retire
psql_db() { PGPASSWORD="$password" psql -X -q -tA -v ON_ERROR_STOP=1 "$db_url" "$@"; }
psql_db -c "CREATE SCHEMA app; CREATE TABLE app.items (id int)"
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
        echo "  ret_$i: { database: main, purpose: bench, owner: bench, grants: [ { schema: app, privileges: [USAGE] } ] }"
    done
} > "$work/inventory.yaml"

echo "issuing and rotating $N accounts (two rounds)"
for _ in 1 2; do
    RUST_LOG=warn "$BIN" -c "$work/inventory.yaml" rotate --all 2>/dev/null | tail -1
done

# Every previous credential's overlap now ends at T.
t_ms=$(( ($(date +%s) + LEAD) * 1000 ))
retiring=$("${CREDROTD_TEST_PYTHON:-python3}" - "$work/state.db" "$t_ms" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n = db.execute("UPDATE credentials SET retire_at = ? WHERE state = 'retiring'", (int(sys.argv[2]),)).rowcount
db.commit()
print(n)
EOF
)
echo "$retiring credentials retire at T = $(date -u -d "@$((t_ms / 1000))" +%T)"
logins="SELECT count(*) FROM pg_roles WHERE rolname LIKE 'ret\\_%\\_2%'"
before=$(psql_db -c "$logins")

RUST_LOG=warn "$BIN" -c "$work/inventory.yaml" run 2> "$work/daemon.log" &
pid=$!
# The last count taken before T: nothing may be retired early.
at_t=$before
while :; do
    kill -0 "$pid" || { cat "$work/daemon.log"; exit 1; }
    count=$(psql_db -c "$logins")
    [ "$(date +%s%3N)" -lt "$t_ms" ] || break
    at_t=$count
    sleep 0.2
done
target=$((before - retiring))
while :; do
    now=$(psql_db -c "$logins")
    [ "$now" -le "$target" ] && break
    kill -0 "$pid" || { cat "$work/daemon.log"; exit 1; }
    sleep 0.1
done
done_ms=$(date +%s%3N)
echo "logins before: $before, just before T: $at_t (none retired early: $([ "$at_t" -eq "$before" ] && echo yes || echo NO)), after: $now"
awk -v n="$retiring" -v d=$((done_ms - t_ms)) 'BEGIN { printf "retired %d credentials %.2f s after T: %.0f per second\n", n, d / 1000, n / (d / 1000) }'
