# Shell helpers (sourced): a throwaway MariaDB server for tests and benchmarks,
# in its own temporary directory on a free loopback port, with the general query
# log and the binary log on so that tests can search both for passwords. The
# machine's shared server (3306) is never used by the tests.

# Installs the MariaDB server programs if they are missing (Debian/Ubuntu).
ensure_mariadb_server() {
    if command -v mariadb-install-db >/dev/null && [ -x "$(command -v mariadbd || echo /usr/sbin/mariadbd)" ]; then
        return 0
    fi
    echo "MariaDB server programs not found; installing them" >&2
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null
    else
        echo "install MariaDB's server package (mariadb-install-db, mariadbd) and retry" >&2
        return 1
    fi
}

_mariadbd() {
    if command -v mariadbd >/dev/null; then command -v mariadbd; else echo /usr/sbin/mariadbd; fi
}

# start_test_mariadb: starts the server and exports
#   CREDROTD_TEST_MYSQL_URL      mysql://credrotd_dba:PASSWORD@127.0.0.1:PORT/mysql,
#                                a user with every privilege (the DBA of the tests;
#                                credrotd connects as per-test admins it creates)
#   CREDROTD_TEST_MYSQL_GENERAL_LOG  the general query log
#   CREDROTD_TEST_MYSQL_BINLOG   the binary log's base name (files BASE.000001 ...)
#   CREDROTD_TEST_MYSQL_DIR      the server's directory (socket: DIR/sock)
start_test_mariadb() {
    ensure_mariadb_server
    local dir pw port user_opt=()
    dir=$(mktemp -d /tmp/credrotd-mariadb.XXXXXX)
    chmod 0755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then user_opt=(--user=root); fi
    mariadb-install-db --no-defaults --datadir="$dir/data" "${user_opt[@]}" \
        --auth-root-authentication-method=socket --skip-test-db >"$dir/install.log" 2>&1 \
        || { cat "$dir/install.log" >&2; return 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$(_mariadbd)" --no-defaults --datadir="$dir/data" "${user_opt[@]}" --port="$port" \
        --bind-address=127.0.0.1 --socket="$dir/sock" --pid-file="$dir/pid" \
        --log-error="$dir/error.log" --skip-name-resolve \
        --general-log=1 --general-log-file="$dir/general.log" \
        --log-bin="$dir/binlog" --server-id=1 --binlog-format=STATEMENT \
        --event-scheduler=ON --max-connections=500 \
        --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 --sync-binlog=0 \
        ${CREDROTD_TEST_MYSQL_OPTS:-} >/dev/null 2>&1 &
    MARIADB_PID=$!
    local deadline=$((SECONDS + 60))
    until mariadb --no-defaults -S "$dir/sock" -uroot -e 'select 1' >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$MARIADB_PID" 2>/dev/null; then
            cat "$dir/error.log" >&2; echo "MariaDB did not start" >&2; return 1
        fi
        sleep 0.2
    done
    pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    mariadb --no-defaults -S "$dir/sock" -uroot -e \
        "CREATE USER credrotd_dba@'%' IDENTIFIED BY '$pw'; GRANT ALL PRIVILEGES ON *.* TO credrotd_dba@'%' WITH GRANT OPTION;" \
        || { echo "could not create the test DBA in MariaDB" >&2; return 1; }
    export CREDROTD_TEST_MYSQL_URL="mysql://credrotd_dba:$pw@127.0.0.1:$port/mysql"
    export CREDROTD_TEST_MYSQL_GENERAL_LOG="$dir/general.log"
    export CREDROTD_TEST_MYSQL_BINLOG="$dir/binlog"
    export CREDROTD_TEST_MYSQL_DIR="$dir"
    echo "test MariaDB (general log, binary log) on 127.0.0.1:$port in $dir" >&2
}

stop_test_mariadb() {
    if [ -n "${MARIADB_PID:-}" ]; then
        kill "$MARIADB_PID" 2>/dev/null || true
        wait "$MARIADB_PID" 2>/dev/null || true
    fi
    if [ -n "${CREDROTD_TEST_MYSQL_DIR:-}" ] && [ -d "$CREDROTD_TEST_MYSQL_DIR" ]; then
        rm -rf "$CREDROTD_TEST_MYSQL_DIR"
    fi
}
