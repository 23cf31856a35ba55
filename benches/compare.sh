#!/usr/bin/env bash
# Benchmark: credrotd's rotation throughput against the floor of the same server
# work (benches/floor.rs: create the login with a client-side SCRAM verifier and
# its membership, then a fresh verify login; nothing else), side by side on one
# throwaway scram-sha-256 PostgreSQL, at each N of NS, with the same concurrency.
#
#   benches/compare.sh                  # NS="1000 10000", CONCURRENCY=8
#   NS=1000 CONCURRENCY=8 benches/compare.sh
#   FSYNCS=1 NS=1000 benches/compare.sh  # also count credrotd's fsyncs (strace)
#
# For each system and round (1: first issue, 2 and 3: later rotations, with the
# earlier logins still in their overlap) it prints rotations per second, the
# PostgreSQL CPU per rotation (all server processes, from /proc: the
# postmaster's own and reaped children's time plus the live backends') and the
# client CPU per rotation (GNU time), and credrotd's ratio to the floor.
# OpenBao's database engine is not run (its plugin setup is not scripted yet).
# The cluster logs no statements (log_statement=none) so that logging does not
# dominate either side.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh

NS=${NS:-"1000 10000"}
CONCURRENCY=${CONCURRENCY:-8}
ROUNDS=${ROUNDS:-3}
cargo build --release --locked -q --bin credrotd --example floor
BIN=$PWD/target/release/credrotd
FLOOR=$PWD/target/release/examples/floor

work=$(mktemp -d /tmp/credrotd-compare.XXXXXX)
cleanup() {
    rm -rf "$work"
    stop_test_pg
}
trap cleanup EXIT
trap "exit 130" INT TERM
CREDROTD_TEST_PG_OPTS="-c log_statement=none -c max_connections=300" start_test_pg
split_pg_url "$CREDROTD_TEST_PG_URL"
password=$PG_PASSWORD
base_url=$PG_BASE_URL
pgdata=$(dirname "$CREDROTD_TEST_PG_LOG")/data
postmaster=$(head -1 "$pgdata/postmaster.pid")
ticks=$(getconf CLK_TCK)
psql_db() { PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# CPU ticks of the whole server so far: the postmaster's own and its reaped
# children's (fields 14-17 of /proc/PID/stat), plus every live child's.
server_ticks() {
    local total p
    total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$postmaster/stat")
    for p in $(pgrep -P "$postmaster"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# measure LABEL N CMD...: runs CMD, prints one table row.
measure() {
    local label=$1 n=$2 before after wall user sys
    shift 2
    before=$(server_ticks)
    /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }
    after=$(server_ticks)
    read -r wall user sys < "$work/time"
    awk -v l="$label" -v n="$n" -v w="$wall" -v u="$user" -v s="$sys" \
        -v srv=$((after - before)) -v t="$ticks" 'BEGIN {
        printf "| %s | %d | %.1f | %.1f ms | %.1f ms |\n", l, n, n / w, srv / t * 1000 / n, (u + s) * 1000 / n
    }' | tee -a "$work/rows"
    echo "$label $n $wall" >> "$work/rates"
}

echo "benchmark: credrotd vs the floor, concurrency $CONCURRENCY, $(nproc) cores, $(PGPASSWORD="$password" psql -X -tA "$base_url" -c 'SELECT version()' | cut -d' ' -f1-2)"
echo
echo "| system, round | accounts | rotations/s | PostgreSQL CPU per rotation | client CPU per rotation |"
echo "| --- | --- | --- | --- | --- |"
for n in $NS; do
    for system in floor credrotd; do
        db=cmp_${system}_$n
        tag=c${system:0:1}$n
        psql_db "$base_url" -c "CREATE DATABASE $db"
        db_url=${base_url%/*}/$db
        psql_db "$db_url" -c "CREATE SCHEMA app; CREATE TABLE app.items (id int)"
        if [ "$system" = credrotd ]; then
            printf '%s' "$password" > "$work/admin.pw"
            {
                echo "version: 1"
                echo "environment: development"
                echo "state: sqlite://$work/state-$n.db"
                echo "rotation: { concurrency: $CONCURRENCY }"
                echo "defaults: { schedule: \"0 0 3 * * *\", overlap: 1h, store: local }"
                echo "databases:"
                echo "  main: { engine: postgres, url: \"$db_url\", password_file: $work/admin.pw, max_connections: $CONCURRENCY }"
                echo "stores:"
                echo "  local: { kind: file, dir: $work/secrets-$n, mode: \"0400\" }"
                echo "accounts:"
                for i in $(seq 1 "$n"); do
                    echo "  ${tag}_$i: { database: main, purpose: bench, owner: bench, grants: [ { schema: app, privileges: [USAGE] }, { schema: app, tables: [items], privileges: [SELECT, INSERT] } ] }"
                done
            } > "$work/inventory-$n.yaml"
        fi
        for round in $(seq 1 "$ROUNDS"); do
            if [ "$system" = credrotd ] && [ -n "${FSYNCS:-}" ]; then
                # Counts the ledger's and the file store's fsyncs (strace slows
                # the run a little: the rates of this mode are not comparable).
                measure "credrotd, round $round" "$n" strace -f --seccomp-bpf -e trace=fsync,fdatasync -c -o "$work/strace" \
                    env RUST_LOG=warn "$BIN" -c "$work/inventory-$n.yaml" rotate --all
                awk -v n="$n" '$NF ~ /^f(data)?sync$/ { s += $4 } END { printf "    fsync + fdatasync: %d, %.2f per rotation\n", s, s / n }' "$work/strace"
            elif [ "$system" = credrotd ]; then
                measure "credrotd, round $round" "$n" env RUST_LOG=warn "$BIN" -c "$work/inventory-$n.yaml" rotate --all
            else
                url_pw=${db_url/@/:$password@}
                measure "floor, round $round" "$n" "$FLOOR" "$url_pw" "$tag" "$n" "$CONCURRENCY" "$round"
            fi
        done
        # Drop what this system made before the next one runs.
        psql_db "$base_url" -c "DROP DATABASE $db WITH (FORCE)"
        PGPASSWORD="$password" psql -X -q -tA "$base_url" \
            -c "SELECT format('DROP ROLE %I;', rolname) FROM pg_roles WHERE rolname LIKE '${tag}\\_%' OR shobj_description(oid, 'pg_authid') LIKE 'credrotd:privileges set=% database=$db' ORDER BY length(rolname) DESC" \
            | PGPASSWORD="$password" psql -X -q "$base_url" >/dev/null
        rm -rf "$work/secrets-$n" "$work/state-$n.db"*
    done
done
echo
awk '{ rate[$1" "$2" "$3" "$4] = $4 / $5 }
     END {
        for (k in rate) {
            split(k, f, " ")
            if (f[1] == "credrotd,") {
                fk = "floor, " f[2] " " f[3] " " f[4]
                if (fk in rate) printf "credrotd / floor, %s %s, N=%s: %.2f\n", f[2], f[3], f[4], rate[k] / rate[fk]
            }
        }
     }' "$work/rates" | sort -t= -k2n
