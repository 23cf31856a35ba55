#!/usr/bin/env bash
# Benchmark: `credrotd rotate --all` on an inventory of N accounts (default 1000).
#
#   benches/rotate_many.sh                 # N=1000 against a throwaway scram-sha-256 cluster
#   N=1000 CONCURRENCY=16 benches/rotate_many.sh
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres benches/rotate_many.sh
#                                          # against an existing server (e.g. the local one)
#   ENGINE=mariadb benches/rotate_many.sh  # against a throwaway MariaDB (scripts/lib/mariadb.sh)
#   MAX_CONNECTIONS=8                      # the admin pool (default 8)
#   ENGINE=mariadb BENCH_MYSQL_URL=mysql://dba:PW@127.0.0.1:3306/mysql benches/rotate_many.sh
#                                          # against an existing MariaDB (a user that may create
#                                          # databases and users and grant; PW not %-encoded)
#
# Reports wall time and peak RSS (GNU time) for a first issue of every account
# and for a second rotation (which also keeps the first credentials in overlap),
# then drops everything it created. On MariaDB credrotd connects as a
# least-privilege admin the script creates (docs/mysql.md, "The admin").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pg.sh
. scripts/lib/mariadb.sh

N=${N:-1000}
CONCURRENCY=${CONCURRENCY:-16}
ENGINE=${ENGINE:-postgres}
case "$ENGINE" in
    postgres|mariadb) ;;
    *) echo "ENGINE=$ENGINE: expected postgres or mariadb" >&2; exit 2;;
esac
cargo build --release --locked -q
BIN=target/release/credrotd

tag=b$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')
db=credrotd_bench_$tag
work=$(mktemp -d /tmp/credrotd-bench.XXXXXX)

if [ "$ENGINE" = postgres ]; then
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

    psql_admin() { PGPASSWORD="$password" psql -X -q -v ON_ERROR_STOP=1 "$base_url" "$@"; }
    cleanup() {
        # BENCH_KEEP_LOG=FILE keeps the server log (e.g. with
        # CREDROTD_TEST_PG_OPTS="-c log_min_duration_statement=0" for statement timings).
        if [ -n "${BENCH_KEEP_LOG:-}" ] && [ -n "${CREDROTD_TEST_PG_LOG:-}" ]; then
            cp "$CREDROTD_TEST_PG_LOG" "$BENCH_KEEP_LOG" || true
        fi
        PGPASSWORD="$password" psql -X -q "$base_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
        # The bench's roles, and the privilege roles credrotd made for grants in its database.
        PGPASSWORD="$password" psql -X -q -tA "$base_url" \
            -c "SELECT format('DROP ROLE IF EXISTS %I;', rolname) FROM pg_roles WHERE rolname LIKE '${tag}%' OR shobj_description(oid, 'pg_authid') = 'credrotd:privileges set=' || rolname || ' database=$db' ORDER BY length(rolname) DESC" \
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
    database="{ engine: postgres, url: \"$db_url\", password_file: $work/admin.pw, max_connections: ${MAX_CONNECTIONS:-8} }"
    grants=(
        "{ schema: app, privileges: [USAGE] }"
        "{ schema: app, tables: [items], privileges: [SELECT, INSERT] }"
    )
else
    if [ -z "${BENCH_MYSQL_URL:-}" ]; then
        trap 'rm -rf "$work"; stop_test_mariadb' EXIT
        start_test_mariadb
        started_mariadb=1
        BENCH_MYSQL_URL=$CREDROTD_TEST_MYSQL_URL
        where="a throwaway MariaDB (general and binary logs on)"
    fi
    # mysql://user[:password]@host[:port][/db][?options]
    rest=${BENCH_MYSQL_URL#*://}
    userinfo=${rest%%@*}
    hostport=${rest#*@}; hostport=${hostport%%/*}; hostport=${hostport%%\?*}
    dba_user=${userinfo%%:*}
    dba_pw=""
    case "$userinfo" in *:*) dba_pw=${userinfo#*:};; esac
    my_host=${hostport%%:*}
    my_port=3306
    case "$hostport" in *:*) my_port=${hostport##*:};; esac
    where=${where:-"MariaDB at $my_host:$my_port"}
    my_dba() {
        MYSQL_PWD="$dba_pw" mariadb --no-defaults --protocol=TCP -h "$my_host" -P "$my_port" \
            -u "$dba_user" -N -B "$@"
    }
    admin=${tag}_admin
    cleanup() {
        {
            echo "DROP DATABASE IF EXISTS \`$db\`;"
            my_dba -e "SELECT CONCAT(IF(is_role = 'Y', CONCAT('DROP ROLE IF EXISTS ', QUOTE(User)), CONCAT('DROP USER IF EXISTS ', QUOTE(User), '@', QUOTE(Host))), ';') FROM mysql.user WHERE User LIKE '${tag}\\_%'" 2>/dev/null || true
            my_dba -e "SELECT CONCAT('DROP EVENT IF EXISTS credrotd.\`', EVENT_NAME, '\`;') FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'credrotd' AND DEFINER LIKE '${tag}\\_admin@%'" 2>/dev/null || true
            echo "DELETE FROM credrotd.managed WHERE name LIKE '${tag}\\_%';"
        } | my_dba -f >/dev/null 2>&1 || true
        rm -rf "$work"
        [ -z "${started_mariadb:-}" ] || stop_test_mariadb
    }
    trap cleanup EXIT

    admin_pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # The hash, not the password, goes into SQL (and so into the server's logs).
    admin_hash=$(printf '%s' "$admin_pw" | python3 -c 'import hashlib, sys; print("*" + hashlib.sha1(hashlib.sha1(sys.stdin.buffer.read()).digest()).hexdigest().upper())')
    my_dba -e "CREATE DATABASE \`$db\`;
        CREATE TABLE \`$db\`.items (id int);
        CREATE USER '$admin'@'%' IDENTIFIED BY PASSWORD '$admin_hash';
        GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '$admin'@'%';
        GRANT SELECT ON mysql.* TO '$admin'@'%';
        GRANT ALL ON credrotd.* TO '$admin'@'%';
        GRANT SELECT, INSERT ON \`$db\`.* TO '$admin'@'%' WITH GRANT OPTION;"
    printf '%s' "$admin_pw" > "$work/admin.pw"
    where="$where, $(my_dba -e 'SELECT VERSION()')"
    # One connection more than CONCURRENCY: with a smaller pool the MySQL engine
    # stalls at a cold start (each rotation holds a pooled connection while the
    # first one's server-version query waits for another; 30 s acquire timeout).
    database="{ engine: mariadb, url: \"mysql://$admin@$my_host:$my_port/$db\", password_file: $work/admin.pw, max_connections: ${MAX_CONNECTIONS:-8} }"
    grants=("{ schema: $db, tables: [items], privileges: [SELECT, INSERT] }")
fi

{
    echo "version: 1"
    echo "environment: development"
    echo "state: sqlite://$work/state.db"
    echo "rotation: { concurrency: $CONCURRENCY }"
    echo "defaults: { schedule: \"0 0 3 * * *\", overlap: 1h, store: local }"
    echo "databases:"
    echo "  main: $database"
    echo "stores:"
    echo "  local: { kind: file, dir: $work/secrets, mode: \"0400\" }"
    echo "accounts:"
    for i in $(seq 1 "$N"); do
        echo "  ${tag}_acc$i:"
        echo "    database: main"
        echo "    purpose: benchmark account $i"
        echo "    owner: bench"
        echo "    grants:"
        for g in "${grants[@]}"; do
            echo "      - $g"
        done
    done
} > "$work/inventory.yaml"

$BIN -c "$work/inventory.yaml" check | tail -1
echo "benchmark: rotate --all, $N accounts, concurrency $CONCURRENCY, against $where"
for round in first second; do
    /usr/bin/time -f "%e %M" -o "$work/time" env RUST_LOG=warn $BIN -c "$work/inventory.yaml" rotate --all | tail -1
    read -r wall rss < "$work/time"
    echo "  $round rotation: wall ${wall}s, peak RSS $((rss / 1024)) MiB"
done
if [ "$ENGINE" = postgres ]; then
    # One ACL entry per distinct grant set (privilege roles), not per account.
    acl=$(PGPASSWORD="$password" psql -X -q -tA "$db_url" -c "SELECT cardinality(relacl) FROM pg_class WHERE oid = 'app.items'::regclass")
    echo "  app.items ACL entries after both rounds: $acl"
fi
