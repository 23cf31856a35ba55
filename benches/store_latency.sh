#!/usr/bin/env bash
# Benchmark: the median time one rotation spends in each secret store (file,
# Vault/OpenBao KV v2, AWS Secrets Manager) over N rotations (default 100), against
# the same OpenBao dev server and moto that ./scripts/test uses (installed into
# .venv when missing), on loopback. Release build.
#
#   benches/store_latency.sh
#   N=500 benches/store_latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

trap stop_store_servers EXIT
start_store_servers
N=${N:-100} cargo run --release --locked -q --example store_latency
