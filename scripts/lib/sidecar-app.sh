#!/bin/bash
# The "application" of scripts/container's sidecar scenario, run in its own
# container under its own uid (10002) with group 10001 added (the pod's
# fsGroup): it reads the credential credrotd publishes into the shared
# in-memory volume, logs in to PostgreSQL with it (from the payload's fields and
# from its url), waits for the file to be replaced by a rotation, and logs in
# with the new credential. It never prints a password. Exit 0 only when both
# credentials logged in.
#   CRED_FILE  the credential file (default /shared/credentials/orders_api.json)
#   DEADLINE   seconds to wait for the first credential, then for a rotation (default 120)
set -euo pipefail
file=${CRED_FILE:-/shared/credentials/orders_api.json}
deadline=${DEADLINE:-120}

say() { printf 'app: %s\n' "$*"; }
fail() { say "FAIL: $*"; exit 1; }

field() { jq -er ".$1" <<<"$2"; }

# login JSON: logs in as the credential's user, first from the separate fields
# (host, port, dbname, username, password), and reads the granted table; then
# from url. (current_user is the account's scoped role: the login sets it.)
login() {
    local json=$1 user out
    user=$(field username "$json") || fail "payload has no username"
    for k in host port dbname password url version; do
        field "$k" "$json" >/dev/null || fail "payload has no $k"
    done
    out=$(PGPASSWORD=$(field password "$json") PGCONNECT_TIMEOUT=5 \
        psql -X -A -t -q -v ON_ERROR_STOP=1 -h "$(field host "$json")" -p "$(field port "$json")" \
            -U "$user" -d "$(field dbname "$json")" \
            -c 'SELECT session_user, count(*) FROM orders' 2>&1 | head -1) || true
    case "$out" in
        "$user|"*) ;;
        *) say "login as $user (fields) failed: $out"; return 1 ;;
    esac
    out=$(PGCONNECT_TIMEOUT=5 psql -X -A -t -q -v ON_ERROR_STOP=1 "$(field url "$json")" \
        -c 'SELECT session_user' 2>&1 | head -1) || true
    [ "$out" = "$user" ] || { say "login as $user (url) failed: $out"; return 1; }
    return 0
}

wait_for() { # wait_for SECONDS COMMAND...: until the command succeeds
    local end=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 1
    done
}

say "uid $(id -u), groups $(id -G)"
wait_for "$deadline" test -s "$file" || fail "no credential in $file after ${deadline}s"
perm=$(stat -c '%a %u' "$file")
[ "$perm" = "440 10001" ] || fail "$file has mode/owner '$perm', expected '440 10001'"
first=$(cat "$file")
v1=$(field version "$first")
login "$first" || fail "could not log in with credential v$v1"
say "v$v1 $(field username "$first"): login ok (fields and url); file mode 0440, owner 10001"

changed() { [ "$(jq -r .version "$file" 2>/dev/null)" != "$v1" ]; }
wait_for "$deadline" changed || fail "credential not rotated within ${deadline}s (still v$v1)"
second=$(cat "$file")
v2=$(field version "$second")
login "$second" || fail "could not log in with the rotated credential v$v2"
say "v$v2 $(field username "$second"): login ok after rotation"
# The previous credential is only reported: whether it still works depends on
# where in its overlap window this runs.
if login "$first" >/dev/null 2>&1; then
    say "previous v$v1: still works (overlap)"
else
    say "previous v$v1: refused (overlap over)"
fi
say "ok"
