#!/usr/bin/env python3
"""Sorts the samples of `perf script` (cpu-clock, with call chains) of one
smarthost process into the stages of relaying a message, and prints CPU
microseconds per message for each stage, split into kernel and user time.

usage: perf script -i perf.data | perf_buckets.py --freq HZ --messages N

A sample goes to the first bucket (in the order below) that one of its
frames matches (a substring, or the whole symbol for patterns starting with "="), so e.g. the kernel's TCP send path under
upstream::client::Session::command counts as "upstream commands".
"""

import argparse
import re
import sys

# (bucket, substrings of frame symbols); first match wins.
BUCKETS = [
    ("logging (tracing)", ["tracing_subscriber::", "tracing_core::"]),
    ("metrics", ["prometheus_client::", "smarthost::metrics::"]),
    ("upstream RSET (pooled session check)", ["upstream::client::Session::reset"]),
    ("upstream DATA content + final reply", ["upstream::client::Session::transfer",
                                             "upstream::client::Session::write_content",
                                             "upstream::client::Session::finish_data",
                                             "upstream::stuffing::"]),
    ("upstream MAIL/RCPT/DATA commands", ["upstream::client::Session::command",
                                          "upstream::client::Session::recipients",
                                          "SmtpClient<T>>::cmd"]),
    ("upstream connect/EHLO/QUIT", ["upstream::client::connect", "Upstreams::open",
                                    "upstream::client::Session::quit", "close_all"]),
    ("pool key (SHA-256 per delivery)", ["upstream::pool::Key::new"]),
    ("pool checkout/checkin", ["Upstreams::checkout", "Upstreams::checkin", "pool::Pools"]),
    ("rewrite", ["smarthost::rewrite::"]),
    ("Received header + date", ["received_header", "util::rfc5322_date"]),
    ("policy (resolve/plan)", ["smarthost::policy::"]),
    # Session::deliver's own frames: what the compiler inlined into it
    # (mostly the DATA content write and the final reply).
    ("upstream transaction (other, inlined)", ["upstream::client::Session::deliver",
                                               "SmtpClient<T>>::read"]),
    ("delivery (other)", ["smarthost::delivery::", "smarthost::upstream::"]),
    ("client replies (write)", ["driver::write_out"]),
    ("DATA decoding", ["DataDecoder::feed"]),
    ("SMTP state machine (commands, replies)", ["state::Session::feed", "state::Session::",
                                                "smarthost::session::reply::"]),
    ("client connection close", ["poll_shutdown", "drop_in_place<tokio::net::tcp::stream::TcpStream>",
                                 "drop_in_place<smarthost::session::driver::Conn"]),
    ("client reads", ["poll_read", "__libc_recv", "recvfrom"]),
    # The accept loop itself (not the session tasks it spawns, whose
    # symbols are closures nested in it): exact names.
    ("accept + task spawn", ["accept4", "tokio::task::spawn", "=smarthost::server::Relay::accept_loop::{{closure}}",
                             "=smarthost::server::Relay::start_loop::{{closure}}", "=smarthost::server::Relay::accepted"]),
    ("session driver (other: buffers...)", ["smarthost::session::driver::", "Relay::session",
                                            "smarthost::server::Relay::"]),
    ("tokio runtime (park, wake, timers)", ["tokio::runtime::", "epoll_wait", "futex", "syscall"]),
]

HEADER = re.compile(r"^\S.*?\s+\d+(/\d+)?\s+.*:\s*$|^\S.*\s\d+\.\d+:\s+\d+\s+\S+:")


def parse(stream):
    """Yields each sample as a list of (symbol, dso), leaf first."""
    frames = []
    in_sample = False
    for line in stream:
        if not line.strip():
            if in_sample:
                yield frames
            frames, in_sample = [], False
            continue
        if not line.startswith((" ", "\t")):
            if in_sample:
                yield frames
            frames, in_sample = [], True
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        dso = ""
        m = re.search(r"\(([^()]*)\)\s*$", rest)
        if m:
            dso = m.group(1)
            rest = rest[: m.start()].strip()
        sym = re.sub(r"\+0x[0-9a-f]+$", "", rest)
        frames.append((sym, dso))
    if in_sample:
        yield frames


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--freq", type=float, required=True, help="perf record -F")
    ap.add_argument("--messages", type=int, required=True)
    args = ap.parse_args()
    counts = {}
    total = 0
    kernel_total = 0
    for frames in parse(sys.stdin):
        if not frames:
            continue
        total += 1
        leaf_kernel = "kernel" in frames[0][1] or frames[0][1].startswith("[k")
        kernel_total += leaf_kernel
        bucket = "other"
        for name, pats in BUCKETS:
            if any(sym == p[1:] if p.startswith("=") else p in sym
                   for sym, _ in frames for p in pats):
                bucket = name
                break
        k, u = counts.get(bucket, (0, 0))
        counts[bucket] = (k + leaf_kernel, u + (not leaf_kernel))
    if not total:
        sys.exit("perf_buckets: no samples")
    per = 1e6 / args.freq / max(args.messages, 1)
    print(f"{total} samples at {args.freq:.0f} Hz over {args.messages} messages: "
          f"{total * per:.1f} CPU µs per message ({100 * kernel_total / total:.0f}% in the kernel)")
    print()
    print("| stage | share | CPU µs/msg | of which kernel |")
    print("|---|---:|---:|---:|")
    for name, (k, u) in sorted(counts.items(), key=lambda kv: -sum(kv[1])):
        n = k + u
        print(f"| {name} | {100 * n / total:.1f}% | {n * per:.1f} | {k * per:.1f} |")


if __name__ == "__main__":
    main()
