#!/usr/bin/env bash
# Profiles smarthost (path b of bench/run.sh) under the headline load:
# 10 sessions, 4 KiB messages, one message per connection.
#
#   bench/profile.sh [OUTDIR]        (default bench/results/profile-STAMP)
#   PROFILE_STAGES="callgrind" bench/profile.sh DIR    (only some stages)
#
# 1. counters: CPU time, context switches and (strace -c) syscalls per message
# 2. perf record (cpu-clock, DWARF call chains) -> CPU µs per message by
#    stage (bench/perf_buckets.py), top symbols
#    (1 and 2 also for 100 sessions x 50 messages per connection)
# 3. valgrind --tool=callgrind on a second smarthost instance: user-space
#    instructions per message, inclusive and self, callers/callees
# 4. variants, interleaved with b: info-level logging, pool_size = 4, one
#    tokio worker thread
# Needs root, perf (linux-perf), strace, valgrind; installs the missing ones
# with apt-get. Takes about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
export PATH="$PATH:/usr/sbin:/sbin"
[ "$(id -u)" = 0 ] || { echo "bench/profile.sh: run as root" >&2; exit 1; }
need() { command -v "$1" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null; }
need perf linux-perf
need strace strace
need valgrind valgrind
need jq jq
if [ -z "${BENCH_NO_BUILD:-}" ]; then
    cargo build --release --bin smarthost --example loadgen >&2
fi
SH="$CARGO_TARGET_DIR/release/smarthost"
LG="$CARGO_TARGET_DIR/release/examples/loadgen"
OUT="${1:-bench/results/profile-$(date +%Y%m%d-%H%M%S)}"
STAGES="${PROFILE_STAGES:-perf callgrind variants}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ulimit -n 20000 2>/dev/null || true
LOAD=(--sessions 10 --size 4096 --per-conn 1)

# The environment (sink + smarthost as in bench/run.sh) until we close its stdin.
fifo="$OUT/.serve.in"
rm -f "$fifo"; mkfifo "$fifo"
python3 bench/bench.py --serve --paths a,b --smarthost "$SH" --loadgen "$LG" \
    <"$fifo" >"$OUT/serve.json" 2>"$OUT/serve.stderr" &
SERVE=$!
exec 3>"$fifo"
CG=""
cleanup() {
    [ -n "$CG" ] && kill "$CG" 2>/dev/null || true
    exec 3>&- || true
    wait "$SERVE" 2>/dev/null || true
    rm -f "$fifo"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$OUT/serve.json" ] && break; sleep 0.1; done
PORT=$(jq .smarthost "$OUT/serve.json")
PID=$(jq .smarthost_pid "$OUT/serve.json")
SINK=$(jq .sink "$OUT/serve.json")
CONFIG=$(jq -r .smarthost_config "$OUT/serve.json")
echo "profile: smarthost pid $PID port $PORT, sink port $SINK; results in $OUT" >&2
# callgrind_annotate lines -> "instructions-per-message  function"; with a
# second argument, drops lines at or above that percentage (thread roots).
per_msg() {
    awk -v n="$1" -v max="${2:-101}" '/^ *[0-9,]+ \( *[0-9.]+%\)/ {
        line = $0; match(line, /^ *[0-9,]+/); c = substr(line, RSTART, RLENGTH); gsub(/[ ,]/, "", c);
        match(line, /\( *[0-9.]+%\)/); pct = substr(line, RSTART + 1, RLENGTH - 3) + 0;
        sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", line); sub(/ \[.*$/, "", line);
        if (pct < max) printf "%9.0f  %s\n", c / n, line }'
}
ticks() { awk '{print $14+$15}' "/proc/$PID/stat"; }
ctxsw() { cat /proc/"$PID"/task/*/status | awk '/ctxt_switches/ {s+=$2} END {print s}'; }

# 1. and 2. for two loads: the headline one, and 100 sessions sending 50
# messages per connection (no connect/accept/close per message).
profile_load() {  # NAME SESSIONS PER_CONN
    local name=$1 sessions=$2 per=$3
    local load=(--sessions "$sessions" --size 4096 --per-conn "$per")
    local title="$sessions sessions x 4 KiB, $per message(s) per connection"
    "$LG" --addr "127.0.0.1:$PORT" "${load[@]}" --duration 1 >/dev/null   # warm-up

    # 1. Counters (no tracing), then syscalls under strace.
    local t0 c0 t1 c1 r n
    t0=$(ticks); c0=$(ctxsw)
    r=$("$LG" --addr "127.0.0.1:$PORT" "${load[@]}" --duration 5)
    t1=$(ticks); c1=$(ctxsw)
    n=$(jq .messages <<<"$r")
    {
        echo "## Counters: $title (5 s, no tracing)"
        echo
        echo "loadgen: $r"
        echo
        awk -v t="$((t1 - t0))" -v c="$((c1 - c0))" -v n="$n" -v hz="$hz" 'BEGIN {
            printf "- smarthost CPU: %.1f µs per message\n", t / hz / n * 1e6;
            printf "- context switches (all threads, voluntary + involuntary): %.2f per message\n", c / n }'
    } >"$OUT/counters-$name.md"

    strace -c -f -p "$PID" -o "$OUT/strace-$name.txt" &
    local st=$!
    sleep 1
    r=$("$LG" --addr "127.0.0.1:$PORT" "${load[@]}" --messages 3000)
    kill -INT "$st"; wait "$st" 2>/dev/null || true
    n=$(jq .messages <<<"$r")
    {
        echo
        echo "### Syscalls per message (strace -c -f, $n messages; strace slows the relay, counts are exact)"
        echo
        echo "| syscall | calls per message | errors per message |"
        echo "|---|---:|---:|"
        awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $1 ~ /^[0-9.]+$/ && $NF != "total" {
            calls = $4; err = (NF == 6 ? $5 : 0);
            if (calls / n >= 0.01) printf "| %s | %.2f | %.2f |\n", $NF, calls / n, err / n }' "$OUT/strace-$name.txt"
        awk -v n="$n" '$NF == "total" { printf "| **total** | %.2f | %.2f |\n", $4 / n, (NF == 6 ? $5 : 0) / n }' "$OUT/strace-$name.txt"
        echo
    } >>"$OUT/counters-$name.md"

    # 2. perf: CPU per stage.
    perf record -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$PID" -o "$OUT/perf-$name.data" \
        2>"$OUT/perf-record-$name.stderr" &
    local pr=$!
    sleep 0.5
    r=$("$LG" --addr "127.0.0.1:$PORT" "${load[@]}" --duration 6)
    sleep 0.3
    kill -INT "$pr"; wait "$pr" 2>/dev/null || true
    n=$(jq .messages <<<"$r")
    {
        echo "## perf: $title (cpu-clock -F $FREQ, DWARF call chains, 6 s; perf slows the relay)"
        echo
        echo "loadgen: $r"
        echo
        perf script -i "$OUT/perf-$name.data" 2>/dev/null | python3 bench/perf_buckets.py --freq "$FREQ" --messages "$n"
        echo
        echo "### Where the samples are (by object)"
        echo '```'
        { perf report -i "$OUT/perf-$name.data" --no-children --sort dso -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8; } || true
        echo '```'
        echo "### Top symbols (self)"
        echo '```'
        { perf report -i "$OUT/perf-$name.data" --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40; } || true
        echo '```'
        echo
    } >"$OUT/perf-$name.md"
}
FREQ=1999
hz=$(getconf CLK_TCK)
if [[ " $STAGES " == *" perf "* ]]; then
    profile_load headline 10 1
    profile_load persistent 100 50
fi

if [[ " $STAGES " == *" callgrind "* ]]; then
# 3. callgrind: a second instance under valgrind, same config on another port.
CGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s/^address = .*/address = \"127.0.0.1:$CGPORT\"/" "$CONFIG" >"$OUT/callgrind.toml"
timeout 900 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
    "$SH" run --config "$OUT/callgrind.toml" 2>"$OUT/callgrind.stderr" &
CG=$!
CGPID=""
for _ in $(seq 100); do CGPID=$(pgrep -P "$CG" | head -1) && [ -n "$CGPID" ] && break; sleep 0.05; done
for _ in $(seq 300); do
    r=$("$LG" --addr "127.0.0.1:$CGPORT" --sessions 1 --messages 1 --max-time 20 2>/dev/null) || true
    [ "$(jq .messages <<<"$r" 2>/dev/null)" = 1 ] && break
    sleep 0.2
done
"$LG" --addr "127.0.0.1:$CGPORT" "${LOAD[@]}" --messages 300 >/dev/null
callgrind_control -z "$CGPID" >/dev/null
r=$("$LG" --addr "127.0.0.1:$CGPORT" "${LOAD[@]}" --messages 2000 --max-time 300)
callgrind_control -d "$CGPID" >/dev/null
sleep 1
kill "$CG" 2>/dev/null || true
wait "$CG" 2>/dev/null || true
CG=""
dump=$(ls -t "$OUT"/callgrind.out.* 2>/dev/null | head -1)
n=$(jq .messages <<<"$r")
{
    echo "## callgrind: user-space instructions ($n messages; rep-prefixed string instructions count per iteration)"
    echo
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    awk -v t="$total" -v n="$n" 'BEGIN { printf "%.0f instructions per message\n\n", t / n }'
    echo "### Inclusive (instructions per message, top 45)"
    echo '```'
    { callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null || true; } | per_msg "$n" |
        { grep -v 'clone.S\|pthread_create\|thread_start\|call_once\|rust_begin_short\|blocking::pool\|PROGRAM TOTALS' | head -45; } || true
    echo '```'
    echo "### Self (instructions per message, top 30)"
    echo '```'
    { callgrind_annotate --threshold=100 "$dump" 2>/dev/null || true; } | per_msg "$n" 99 |
        { grep -v 'PROGRAM TOTALS' | head -30; } || true
    echo '```'
} >"$OUT/callgrind.md"
callgrind_annotate --tree=calling --inclusive=yes --threshold=100 "$dump" >"$OUT/callgrind-tree.txt" 2>/dev/null || true
fi

# 4. Variants of b, interleaved with it.
[[ " $STAGES " == *" variants "* ]] && python3 bench/bench.py --smarthost "$SH" --loadgen "$LG" --paths b,b-quiet,b-pool4,b-1worker \
    --workloads 10x4x1,100x4x1 --rounds 3 --duration 2 --no-memory --out "$OUT" \
    --command "bench/profile.sh (variants)" >"$OUT/variants.md" 2>"$OUT/variants.stderr"

for f in counters-headline perf-headline counters-persistent perf-persistent callgrind variants; do
    [ -f "$OUT/$f.md" ] && cat "$OUT/$f.md"
done >"$OUT/summary.md"
echo "profile: summary in $OUT/summary.md" >&2
