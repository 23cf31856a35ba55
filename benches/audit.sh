#!/usr/bin/env bash
# Times `credrotd audit` (and `who-can`) on a database with many roles and
# tables, against a throwaway scram-sha-256 PostgreSQL (scripts/lib/pg.sh):
#   benches/audit.sh                       # ROLES=10000 TABLES=1000 ACCOUNTS=20
#   ROLES=20000 TABLES=2000 benches/audit.sh
#
# A fifth of the roles are NOLOGIN groups, each granted SELECT on 5 tables (so
# every table's ACL names about ROLES/1000 groups); the rest are logins, each a
# member of one group. ACCOUNTS credrotd accounts are issued first, so that the
# audit also plans their reconciliation. Reports wall time and peak RSS (GNU
# time) of each command, the findings count, then drops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh

ROLES=${ROLES:-10000}
TABLES=${TABLES:-1000}
ACCOUNTS=${ACCOUNTS:-20}
cargo build --release --locked -q
BIN=target/release/credrotd

trap stop_test_pg EXIT
start_test_pg
split_pg_url "$CREDROTD_TEST_PG_URL"
password=$PG_PASSWORD
base_url=$PG_BASE_URL
work=$(mktemp -d /tmp/credrotd-bench-audit.XXXXXX)
tag=a$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
db=credrotd_bench_$tag
psql_base() { PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$base_url" "$@"; }
db_url=${base_url%/*}/$db
psql_db() { PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$db_url" "$@"; }
cleanup() {
    psql_base -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    PGPASSWORD="$password" psql -X -q -tA "$base_url" \
        -c "SELECT format('DROP ROLE IF EXISTS %I;', rolname) FROM pg_roles WHERE rolname LIKE '${tag}%'" \
        2>/dev/null | PGPASSWORD="$password" psql -X -q "$base_url" >/dev/null 2>&1 || true
    rm -rf "$work"
    stop_test_pg
}
trap cleanup EXIT

groups=$((ROLES / 5))
logins=$((ROLES - groups))
echo "setting up: $TABLES tables, $groups group roles, $logins login roles"
psql_base -c "CREATE DATABASE $db"
psql_db <<SQL
CREATE SCHEMA app;
DO \$\$
BEGIN
  FOR i IN 1..$TABLES LOOP
    EXECUTE format('CREATE TABLE app.t%s (id int, v text)', i);
  END LOOP;
  FOR g IN 1..$groups LOOP
    EXECUTE format('CREATE ROLE ${tag}_g%s NOLOGIN', g);
    EXECUTE format('GRANT USAGE ON SCHEMA app TO ${tag}_g%s', g);
    FOR k IN 0..4 LOOP
      EXECUTE format('GRANT SELECT ON app.t%s TO ${tag}_g%s', ((g * 5 + k) % $TABLES) + 1, g);
    END LOOP;
  END LOOP;
  FOR l IN 1..$logins LOOP
    EXECUTE format('CREATE ROLE ${tag}_l%s LOGIN IN ROLE ${tag}_g%s', l, (l % $groups) + 1);
  END LOOP;
END
\$\$;
SQL
printf '%s' "$password" > "$work/admin.pw"
{
    echo "version: 1"
    echo "environment: development"
    echo "state: sqlite://$work/state.db"
    echo "defaults: { schedule: \"0 0 3 * * *\", overlap: 1h, store: local }"
    echo "databases:"
    echo "  main: { engine: postgres, url: \"$db_url\", password_file: $work/admin.pw }"
    echo "stores:"
    echo "  local: { kind: file, dir: $work/secrets, mode: \"0400\" }"
    echo "accounts:"
    for i in $(seq 1 "$ACCOUNTS"); do
        echo "  ${tag}_acc$i:"
        echo "    database: main"
        echo "    purpose: benchmark account $i"
        echo "    owner: bench"
        echo "    grants:"
        echo "      - { schema: app, privileges: [USAGE] }"
        echo "      - { schema: app, tables: [t$i], privileges: [SELECT] }"
    done
} > "$work/inventory.yaml"
RUST_LOG=warn $BIN -c "$work/inventory.yaml" rotate --all >/dev/null

echo "benchmark: audit of $ROLES roles (+$ACCOUNTS accounts) and $TABLES tables, against a throwaway PostgreSQL"
for round in first second; do
    set +e
    /usr/bin/time -f "%e %M" -o "$work/time" env RUST_LOG=warn $BIN -c "$work/inventory.yaml" audit --format json > "$work/report.json"
    code=$?
    set -e
    read -r wall rss < "$work/time"
    findings=$(grep -c '"kind"' "$work/report.json" || true)
    echo "  audit ($round): wall ${wall}s, peak RSS $((rss / 1024)) MiB, exit $code, $findings findings"
done
/usr/bin/time -f "%e %M" -o "$work/time" env RUST_LOG=warn $BIN -c "$work/inventory.yaml" who-can SELECT app.t1 --format json > "$work/who.json"
read -r wall rss < "$work/time"
holders=$(grep -c '"role"' "$work/who.json" || true)
echo "  who-can SELECT app.t1: wall ${wall}s, peak RSS $((rss / 1024)) MiB, $holders roles"
