# Shell helpers (sourced): a throwaway PostgreSQL cluster that really checks
# passwords (scram-sha-256, no trust) and logs every statement, for tests and
# benchmarks. The machine's own server trusts loopback, so a login there proves
# nothing.

# The server programs to use: CREDROTD_TEST_PG_VERSION=16 picks
# /usr/lib/postgresql/16/bin (to run the suite against another installed major
# version, e.g. for CREATEROLE's behaviour from 16 on); otherwise initdb on PATH,
# else the newest installed version.
pg_bin_dir() {
    local initdb
    if [ -n "${CREDROTD_TEST_PG_VERSION:-}" ]; then
        initdb=/usr/lib/postgresql/$CREDROTD_TEST_PG_VERSION/bin/initdb
        if [ -x "$initdb" ]; then dirname "$initdb"; return 0; fi
        echo "PostgreSQL $CREDROTD_TEST_PG_VERSION is not installed ($initdb)" >&2
        return 1
    fi
    initdb=$(command -v initdb 2>/dev/null || true)
    if [ -z "$initdb" ]; then
        initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
    fi
    [ -n "$initdb" ] && dirname "$(readlink -f "$initdb")"
}

# Installs the PostgreSQL server programs if they are missing (Debian/Ubuntu).
ensure_pg_server() {
    if [ -n "$(pg_bin_dir)" ]; then return 0; fi
    if [ -n "${CREDROTD_TEST_PG_VERSION:-}" ]; then return 1; fi
    echo "PostgreSQL server programs not found; installing them" >&2
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "install PostgreSQL's server package (initdb, pg_ctl) and retry" >&2
        return 1
    fi
    [ -n "$(pg_bin_dir)" ]
}

_pg_as() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# _pg_init_cluster BIN DIR: initdb of DIR/data with a superuser credrotd_admin
# whose random password (scram-sha-256) it leaves in PG_INIT_PASSWORD; as root,
# the cluster belongs to the postgres user.
_pg_init_cluster() {
    local bin=$1 dir=$2
    PG_INIT_PASSWORD=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s' "$PG_INIT_PASSWORD" > "$dir/pw"
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
        chown -R postgres: "$dir"
    fi
    _pg_as "$bin/initdb" -D "$dir/data" -U credrotd_admin --auth=scram-sha-256 \
        --pwfile="$dir/pw" -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    rm -f "$dir/pw"
}

# _free_port: a TCP port free on 127.0.0.1 right now.
_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# _pg_stop_cluster BIN DIR: stops the cluster in DIR (if any) and removes DIR.
_pg_stop_cluster() {
    local bin=$1 dir=$2
    if [ -n "$dir" ] && [ -d "$dir/data" ]; then
        _pg_as "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$dir"
    fi
}

# start_test_pg: starts the cluster and exports
#   CREDROTD_TEST_PG_URL  admin URL (superuser credrotd_admin, with password;
#                         the tests connect credrotd as a per-test non-superuser
#                         CREATEROLE admin they create with it)
#   CREDROTD_TEST_PG_LOG  the server log, with log_statement=all
#   CREDROTD_TEST_PG_DIR  the cluster's directory
start_test_pg() {
    ensure_pg_server
    local bin dir pw port
    bin=$(pg_bin_dir) || return 1
    dir=$(mktemp -d /tmp/credrotd-pg.XXXXXX)
    chmod 0755 "$dir"
    _pg_init_cluster "$bin" "$dir" || return 1
    pw=$PG_INIT_PASSWORD
    port=$(_free_port)
    _pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c log_statement=all -c max_connections=300 -c fsync=off ${CREDROTD_TEST_PG_OPTS:-}" \
        start >/dev/null || { cat "$dir/postgres.log" >&2; return 1; }
    export CREDROTD_TEST_PG_URL="postgres://credrotd_admin:$pw@127.0.0.1:$port/postgres"
    export CREDROTD_TEST_PG_LOG="$dir/postgres.log"
    export CREDROTD_TEST_PG_DIR="$dir"
    export CREDROTD_TEST_PG_BIN="$bin"
    echo "test PostgreSQL (scram-sha-256, log_statement=all) on 127.0.0.1:$port in $dir" >&2
}

stop_test_pg() {
    _pg_stop_cluster "${CREDROTD_TEST_PG_BIN:-}" "${CREDROTD_TEST_PG_DIR:-}"
}

# Installs openssl (for the TLS cluster's certificates) if it is missing
# (Debian/Ubuntu).
ensure_openssl() {
    command -v openssl >/dev/null && return 0
    echo "openssl not found; installing it" >&2
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    else
        echo "install openssl and retry" >&2
        return 1
    fi
}

# make_test_ca DIR NAME: a self-signed CA, DIR/NAME.pem and DIR/NAME.key
# (P-256, valid 7 days).
make_test_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -subj "/CN=credrotd test CA $2" -keyout "$1/$2.key" -out "$1/$2.pem" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# start_test_pg_tls: a second throwaway cluster that takes only TLS over TCP:
# ssl=on with a server certificate for localhost and 127.0.0.1 signed by a
# self-signed CA made here, scram-sha-256, and `hostssl` as the only TCP lines
# of pg_hba.conf (a login without TLS is refused). It also listens on
# 127.0.0.2, a name its certificate does not hold (for a name-mismatch test),
# and logs connections (with application_name and "SSL enabled"). Exports
#   CREDROTD_TEST_PG_TLS_URL  superuser URL with password, without TLS
#                             options (tests add sslmode=verify-full&sslrootcert=)
#   CREDROTD_TEST_PG_TLS_CA   the CA certificate (PEM) that signed the server's
#   CREDROTD_TEST_PG_TLS_LOG  the server log (log_connections=on)
#   CREDROTD_TEST_PG_TLS_DIR  the cluster's directory
start_test_pg_tls() {
    ensure_pg_server
    ensure_openssl
    local bin dir pw port
    bin=$(pg_bin_dir) || return 1
    dir=$(mktemp -d /tmp/credrotd-pgtls.XXXXXX)
    chmod 0755 "$dir"
    make_test_ca "$dir" ca || { echo "openssl could not make the test CA" >&2; return 1; }
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null \
        && printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$dir/server.ext" \
        && openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -CAcreateserial -days 7 -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null \
        || { echo "openssl could not make the server certificate" >&2; return 1; }
    rm -f "$dir/server.csr" "$dir/ca.key"
    chmod 0600 "$dir/server.key"
    _pg_init_cluster "$bin" "$dir" || return 1
    pw=$PG_INIT_PASSWORD
    # Overwritten in place: the file keeps its owner (postgres when run as root).
    printf '%s\n' 'local all all scram-sha-256' \
        'hostssl all all 127.0.0.0/8 scram-sha-256' \
        'hostssl all all ::1/128 scram-sha-256' > "$dir/data/pg_hba.conf"
    port=$(_free_port)
    _pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1,127.0.0.2 -c max_connections=50 -c fsync=off -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key -c log_connections=on" \
        start >/dev/null || { cat "$dir/postgres.log" >&2; return 1; }
    export CREDROTD_TEST_PG_TLS_URL="postgres://credrotd_admin:$pw@127.0.0.1:$port/postgres"
    export CREDROTD_TEST_PG_TLS_CA="$dir/ca.pem"
    export CREDROTD_TEST_PG_TLS_LOG="$dir/postgres.log"
    export CREDROTD_TEST_PG_TLS_DIR="$dir"
    export CREDROTD_TEST_PG_TLS_BIN="$bin"
    echo "test PostgreSQL with TLS only (hostssl, scram-sha-256, test CA $dir/ca.pem) on 127.0.0.1:$port in $dir" >&2
}

stop_test_pg_tls() {
    _pg_stop_cluster "${CREDROTD_TEST_PG_TLS_BIN:-}" "${CREDROTD_TEST_PG_TLS_DIR:-}"
}

# split_pg_url URL: sets PG_PASSWORD (empty if none) and PG_BASE_URL (the URL
# without its password), for tools that take the password from elsewhere.
split_pg_url() {
    local userinfo=${1#*://}
    userinfo=${userinfo%%@*}
    PG_PASSWORD=""
    case "$userinfo" in *:*) PG_PASSWORD=${userinfo#*:};; esac
    PG_BASE_URL=${1/$userinfo@/${userinfo%%:*}@}
}
