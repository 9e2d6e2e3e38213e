#!/usr/bin/env python3
"""Queue backlog benchmark (issue: 100,000 messages queued while the
upstream is down).

1. Direct-mode baseline: loadgen -> smarthost (direct) -> smtp-sink, N
   messages, 10 sessions x 4 KiB, one message per connection.
2. Queue mode with the upstream down (nothing listens on the sink's port):
   N messages are accepted into the spool. Accepted msg/s is reported.
3. SIGTERM, restart on the same spool: time until the first delivery
   attempt is logged, and RSS (VmRSS/VmHWM) with the whole backlog indexed.
4. The sink comes up: time until it has every message; drained msg/s,
   compared with the direct-mode rate measured in step 1.
5. Idle latency: one message into an idle queue-mode relay; time from the
   client's 250 to the sink having it (smtp-sink counter), 20 times.

Loopback only; bounded in count and time. Run through bench/run-backlog.sh
(builds the release binaries) or directly with --smarthost/--loadgen.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import bench as B  # noqa: E402  (the same helpers as the main benchmark)


def status(pid):
    return B.proc_status(pid)


TOKEN = "backlog-bench-token"


def retry_all(admin_port):
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/api/v1/queue/retry-all", data=b"",
                                 method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status


def start_relay(binary, work, name, sink_port, delivery, spool):
    port = B.free_port()
    admin_port = B.free_port()
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "smarthost.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[system]
hostname = "smarthost.bench.test"
delivery = "{delivery}"
spool = "{spool}"
default_server = "sink"

[queue]
min_backoff = "30s"
max_backoff = "5m"
concurrency = 100

[health]
cooldown = "2s"

[admin]
address = "127.0.0.1:{admin_port}"
token = "{TOKEN}"

[reload]
watch = false

[[listener]]
name = "bench"
address = "127.0.0.1:{port}"
auth = "none"

[limits]
max_connections = 2000

[log]
level = "info"

[server.sink]
host = "127.0.0.1"
port = {sink_port}
security = "none"
connect_timeout = "1s"

[tenant.bench]
sender = "tenant@bench.example"

[application.bench]
tenant = "bench"
client_ips = ["127.0.0.0/8"]
sender = "relay@bench.example"
display_name = "Bench App"
reply_to = "replies@bench.example"
""")
    err = os.path.join(d, "stderr")
    p = B.Proc(name, [binary, "run", "--config", cfg], stderr=open(err, "ab"))
    B.wait_greeting(port, name, p, deadline_s=120, logfile=err)
    return p, port, err, admin_port


def first_attempt_after(err, offset, started, timeout_s=120):
    """Seconds from `started` until a 'delivery attempt' line appears after byte `offset`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(err, "rb") as f:
            f.seek(offset)
            if b"delivery attempt" in f.read():
                return time.monotonic() - started
        time.sleep(0.01)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smarthost", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="smarthost-backlog-")
    out = {"messages": a.messages}
    try:
        sink = B.Sink(work)
        # 1. direct baseline
        p, port, _, _ = start_relay(a.smarthost, work, "direct", sink.port, "direct", os.path.join(work, "spool-direct"))
        before = sink.messages()
        r = B.loadgen(a.loadgen, port, a.sessions, a.size, 1, None, max_time=600, messages=min(a.messages, 30_000))
        out["direct_rate"] = r["rate"]
        out["direct_errors"] = r["errors"]
        sink.wait_for(before + r["messages"], 30)
        p.stop()
        # 2. queue mode, upstream down (a port nothing listens on)
        down_port = B.free_port()
        spool = os.path.join(work, "spool-queue")
        p, port, err, _ = start_relay(a.smarthost, work, "queue", down_port, "queue", spool)
        r = B.loadgen(a.loadgen, port, a.sessions, a.size, 1, None, max_time=900, messages=a.messages)
        out["accepted"] = r["messages"]
        out["accept_errors"] = r["errors"]
        out["accept_rate"] = r["rate"]
        out["accept_p99_ms"] = r["p99_ms"]
        time.sleep(1)
        out["rss_before_restart_kb"] = status(p.child_pid("smarthost")).get("VmRSS", 0)
        p.stop(grace=30)
        files = len([n for n in os.listdir(os.path.join(spool, "queue")) if n.endswith(".msg")])
        out["queued_files"] = files
        # 3. restart on the same spool
        offset = os.path.getsize(err)
        t0 = time.monotonic()
        p, port, err, admin_port = start_relay(a.smarthost, work, "queue", down_port, "queue", spool)
        out["restart_listening_s"] = round(time.monotonic() - t0, 2)
        out["restart_first_attempt_s"] = first_attempt_after(err, offset, t0)
        time.sleep(2)
        st = status(p.child_pid("smarthost"))
        out["rss_after_restart_kb"] = st.get("VmRSS", 0)
        out["hwm_after_restart_kb"] = st.get("VmHWM", 0)
        # 4. the upstream comes back on that port
        sink.proc.stop()
        sink2 = B.Sink.__new__(B.Sink)
        sink2.port = down_port
        sink2.counter = os.path.join(work, "sink2.counter")
        sink2.err = os.path.join(work, "sink2.stderr")
        argv = [B.find_binary("smtp-sink"), "-c", "-4", "-F", "-u", "nobody", "-m", "4096",
                f"127.0.0.1:{down_port}", "4096"]
        t0 = time.monotonic()
        sink2.proc = B.Proc("smtp-sink-2", argv, stdout=open(sink2.counter, "wb"), stderr=open(sink2.err, "wb"))
        # An operator's `smarthost queue retry --all` rather than waiting
        # for each message's backoff.
        B.wait_greeting(down_port, "smtp-sink-2", sink2.proc, logfile=sink2.err)
        # After the health cool-down the first attempt probes the server; its
        # success makes every message that waited for it due at once.
        time.sleep(2.5)
        t0 = time.monotonic()
        retry_all(admin_port)
        done = sink2.wait_for(out["accepted"], 900)
        out["drain_s"] = round(done - t0, 2) if done else None
        out["drain_rate"] = round(out["accepted"] / (done - t0), 1) if done else None
        out["drain_vs_direct"] = round(out["drain_rate"] / out["direct_rate"], 2) if done else None
        st = status(p.child_pid("smarthost"))
        out["hwm_end_kb"] = st.get("VmHWM", 0)
        # 5. idle latency: queue mode, sink up
        lat = []
        for _ in range(20):
            n0 = sink2.messages()
            t = time.monotonic()
            r = B.loadgen(a.loadgen, port, 1, a.size, 1, None, max_time=30, messages=1)
            t_ack = t + r.get("elapsed_s", 0)
            got = sink2.wait_for(n0 + 1, 10)
            if got:
                lat.append(max(0.0, got - t_ack) * 1000)
            time.sleep(0.1)
        lat.sort()
        out["idle_250_to_sink_ms_p50"] = round(lat[len(lat) // 2], 2) if lat else None
        out["idle_250_to_sink_ms_max"] = round(lat[-1], 2) if lat else None
        p.stop()
        sink2.proc.stop()
    finally:
        B.stop_all()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
