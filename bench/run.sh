#!/usr/bin/env bash
# smarthost benchmark: builds smarthost and the load generator (release),
# then runs bench/bench.py. Usage: bench/run.sh [--quick] [bench.py options]
# (bench/bench.py --help lists them). Needs root, Postfix (smtp-sink) and
# Python 3. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: run as root" >&2
    exit 1
fi
for bin in smtp-sink postconf; do
    if ! command -v "$bin" >/dev/null && [ ! -x "/usr/sbin/$bin" ]; then
        echo "bench/run.sh: $bin missing; installing postfix" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y postfix >/dev/null
    fi
done
export PATH="$PATH:/usr/sbin:/sbin"
if [ -z "${BENCH_NO_BUILD:-}" ]; then
    cargo build --release --bin smarthost --example loadgen >&2
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py \
    --smarthost "$CARGO_TARGET_DIR/release/smarthost" \
    --loadgen "$CARGO_TARGET_DIR/release/examples/loadgen" \
    --command "bench/run.sh $*" "$@"
