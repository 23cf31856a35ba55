#!/usr/bin/env bash
# Soak: the fault-injection suite's kill -9 scenario (tests/faults.rs,
# `kill9_soak_never_locks_a_consumer_out`) with many more kills than CI runs.
# The real `credrotd run` rotates accounts of all three strategies on
# second-level schedules, published to a file, OpenBao and moto, and is killed
# with SIGKILL at a random moment 0.2-3 s after each start, KILLS times; after
# every restart each store's credential must log in to the scram PostgreSQL.
# Starts its own PostgreSQL, OpenBao and moto through ./scripts/test.
#
#   benches/soak.sh                      # KILLS=1000, release build
#   KILLS=200 PROFILE=debug benches/soak.sh
#   KILLS=1000 SEED=42 benches/soak.sh   # repeat one run's random waits
#
# Prints the scenario's summary line at the end
#   faults: kills=N restarts=N pg_restarts=N lockouts=N orphans=N max_live=N leaked=N ...
# and exits non-zero when the scenario found a violation. The whole output is
# kept in $OUT (default /tmp/credrotd-soak.<time>.log). On a 2-core machine about
# 1.7 s per kill (release): KILLS=1000 took 34 min with the build.
# docs/fault-injection.md explains the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

KILLS=${KILLS:-1000}
PROFILE=${PROFILE:-release}
OUT=${OUT:-/tmp/credrotd-soak.$(date +%Y%m%d-%H%M%S).log}
case "$KILLS" in '' | *[!0-9]*) echo "KILLS must be a number, got '$KILLS'" >&2; exit 2;; esac
case "$PROFILE" in
    release) profile_args=(--release);;
    debug) profile_args=();;
    *) echo "PROFILE must be release or debug, got '$PROFILE'" >&2; exit 2;;
esac

export CREDROTD_FAULT_KILLS=$KILLS
if [ -n "${SEED:-}" ]; then export CREDROTD_FAULT_SEED=$SEED; fi

echo "soak: $KILLS kills, $PROFILE build, output in $OUT" >&2
start=$(date +%s)
status=0
./scripts/test "${profile_args[@]}" --test faults kill9_soak_never_locks_a_consumer_out \
    -- --exact --nocapture 2>&1 | tee "$OUT" || status=$?
elapsed=$(( $(date +%s) - start ))
echo
echo "soak: $KILLS kills in ${elapsed}s ($PROFILE), exit status $status"
summary=$(grep '^faults: kills=' "$OUT" | tail -1 || true)
if [ -z "$summary" ]; then
    echo "soak: no summary line (the scenario stopped before its end; see $OUT)" >&2
    exit 1
fi
echo "$summary"
exit "$status"
