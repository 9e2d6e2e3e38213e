#!/usr/bin/env python3
"""smarthost benchmark driver (Python 3 standard library only).

Started by bench/run.sh, which builds the binaries first. Measures, in one
run with the paths interleaved over several rounds, throughput and submit
latency of the same SMTP traffic (examples/loadgen.rs) through:

  a        loadgen -> smtp-sink                  (the ceiling of this machine)
  b        loadgen -> smarthost (direct mode, 4 rewrites) -> smtp-sink
  c-proxy  loadgen -> Postfix smtpd, smtpd_proxy_filter = the sink
           (before-queue: 250 only after the sink accepted; envelope
           sender rewritten by smtpd_command_filter, headers cannot be)
  c-queue  loadgen -> Postfix smtpd -> cleanup (same 4 rewrites) -> queue
           (fsync, then 250) -> qmgr -> smtp -> smtp-sink in the background;
           reported as accepted/s and, separately, as drained/s (until the
           sink has every message)
  q        as b with delivery = "queue" (250 after the commit log's sync;
           drained/s as for c-queue); q-tmpfs, the same with the spool on
           /dev/shm, shows what the disk's sync costs (a diagnostic)

and smarthost's peak RSS with 1,000 idle sessions and while relaying one
50 MB message. Loopback only; every process it starts runs under
timeout(1) in its own process group and is stopped at the end.
See bench/README.md.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
LIFETIME = 1800  # seconds: timeout(1) backstop for every process we start

KIB = 1024
PATHS = ["a", "b", "q", "c-proxy", "c-queue"]
EXTRA_PATHS = ["q-tmpfs", "b-quiet", "b-pool4", "b-1worker", "b-limits", "b-redis", "b-redis-cap"]
PATH_TEXT = {
    "a": "loadgen -> smtp-sink (ceiling)",
    "b": "smarthost direct, 4 rewrites, default settings (info logs, pool_size 100)",
    "q": "smarthost queue mode (fsync before 250, group commit), otherwise as b",
    "c-proxy": "Postfix before-queue proxy (smtpd_proxy_filter = sink)",
    "c-queue": "Postfix queue + relayhost = sink",
    "q-tmpfs": "as q, spool on tmpfs (/dev/shm): its syncs cost nothing, so q - q-tmpfs is what the disk's sync costs (diagnostic, not a deployment)",
    "b-quiet": "as b, log level warn (no line per delivery and session)",
    "b-pool4": "as b, upstream pool_size = 4 (the default before the profile)",
    "b-1worker": "as b, one tokio worker thread (TOKIO_WORKER_THREADS=1)",
    "b-limits": "as b, with limit = \"100000000/hour\" on the sink server (local counters; nothing skipped)",
    "b-redis": "as b-limits, counters shared through a private redis-server ([cluster] redis)",
    "b-redis-cap": "as b-redis, plus max_connections = 64 shared through Redis (a lease and a new connection per message)",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def find_binary(name):
    for d in os.environ.get("PATH", "").split(":") + [
        "/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin",
    ]:
        p = os.path.join(d, name)
        if d and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    sys.exit(f"bench: `{name}` not found (apt-get install postfix?)")


_ports = set()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago, never twice."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in _ports:
            _ports.add(p)
            return p


def write_backdated(path, text, mode=None):
    """Writes a file and backdates its mtime by a minute: Postfix waits for
    config and table files whose mtime is not yet in the past."""
    with open(path, "w") as f:
        f.write(text)
    past = time.time() - 60
    os.utime(path, (past, past))
    if mode is not None:
        os.chmod(path, mode)


def fill(template, **values):
    with open(os.path.join(BENCH, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@" + k + "@", str(v))
    body = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    left = re.findall(r"@[A-Z_]+@", body)
    if left:
        sys.exit(f"bench: {template}: unfilled {left}")
    return text


def greets(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(3)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(512)
                if not chunk:
                    return False
                data += chunk
            ok = data.startswith(b"220")
            try:
                s.sendall(b"QUIT\r\n")
                s.recv(512)
            except OSError:
                pass
            return ok
    except OSError:
        return False


def greets_redis(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_greeting(port, what, proc, deadline_s=15, logfile=None):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if greets(port):
            return
        time.sleep(0.02)
    tail = ""
    if logfile and os.path.exists(logfile):
        with open(logfile, errors="replace") as f:
            tail = f.read()[-3000:]
    sys.exit(f"bench: {what} did not greet on port {port}\n{tail}")


_procs = []


def stop_all():
    """Stops every process this script started that is still running."""
    for p in reversed(_procs):
        p.stop()


class Proc:
    """A process tree under timeout(1) as the leader of a new process group."""

    def __init__(self, name, argv, stdout=None, stderr=None, stdin=None, env=None):
        self.name = name
        _procs.append(self)
        self.p = subprocess.Popen(
            ["timeout", "--kill-after=5", str(LIFETIME)] + argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            process_group=0,
            env=dict(os.environ, **(env or {})),
        )
        self.pgid = self.p.pid
        self.stopped = False

    def poll(self):
        return self.p.poll()

    def child_pid(self, exe_name=None, wait_s=5):
        """The pid of the real program (the child of timeout(1))."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.p.pid}/task/{self.p.pid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                kids = []
            for k in kids:
                if exe_name is None:
                    return k
                try:
                    if os.path.basename(os.readlink(f"/proc/{k}/exe")) == exe_name:
                        return k
                except OSError:
                    pass
            time.sleep(0.01)
        sys.exit(f"bench: cannot find the pid of {self.name}")

    def stop(self, grace=5):
        if self.stopped:
            return
        self.stopped = True
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.pgid, signal.SIGKILL)  # stragglers (Postfix daemons)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"bench: {self.name} did not exit")


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "Threads"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def cpu_ticks(pids):
    """utime+stime of the given processes (and their reaped children)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------
# The peers
# ---------------------------------------------------------------------------


class Sink:
    """smtp-sink without dumps, counting messages (-c) into a file."""

    def __init__(self, work):
        self.port = free_port()
        self.counter = os.path.join(work, "sink.counter")
        self.err = os.path.join(work, "sink.stderr")
        argv = [
            find_binary("smtp-sink"),
            "-c",       # running counters ("mesg=N") on stdout
            "-4",
            "-F",       # no XFORWARD: the Postfix proxy would spend round trips on it
            "-u", "nobody",
            "-m", "4096",
            f"127.0.0.1:{self.port}",
            "4096",     # listen backlog
        ]
        self.proc = Proc("smtp-sink", argv, stdout=open(self.counter, "wb"),
                         stderr=open(self.err, "wb"))
        wait_greeting(self.port, "smtp-sink", self.proc, logfile=self.err)
        self.pid = self.proc.child_pid("smtp-sink")

    def messages(self):
        try:
            with open(self.counter, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 200))
                tail = f.read().decode("ascii", "replace")
        except OSError:
            return 0
        m = re.findall(r"mesg=(\d+)", tail)
        return int(m[-1]) if m else 0

    def wait_for(self, n, timeout_s):
        """Waits until the sink has seen `n` messages; returns when (monotonic)
        or None on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            if self.messages() >= n:
                return now
            if now > deadline:
                return None
            time.sleep(0.005)


class Smarthost:
    def __init__(self, binary, work, sink_port, name="smarthost", pool_size=100,
                 log_level="info", max_connections=2000, env=None, delivery="direct",
                 server_extra="", cluster="", spool=None):
        self.port = free_port()
        d = os.path.join(work, name)
        spool = spool or os.path.join(d, "spool")
        os.makedirs(d, exist_ok=True)
        os.makedirs(spool, exist_ok=True)
        self.queue_dir = os.path.join(spool, "queue")
        self.config = os.path.join(d, "smarthost.toml")
        with open(self.config, "w") as f:
            f.write(fill("smarthost.toml.in", SPOOL=spool,
                         PORT=self.port, SINK_PORT=sink_port, POOL_SIZE=pool_size,
                         LOG_LEVEL=log_level, MAX_CONNECTIONS=max_connections,
                         DELIVERY=delivery, SERVER_EXTRA=server_extra, CLUSTER=cluster))
        self.err = os.path.join(d, "stderr")
        self.proc = Proc(name, [binary, "run", "--config", self.config],
                         stderr=open(self.err, "wb"), env=env)
        wait_greeting(self.port, name, self.proc, logfile=self.err)
        self.pid = self.proc.child_pid("smarthost")

    def stop(self):
        self.proc.stop()


class Postfix:
    """A private Postfix instance with the c-proxy and c-queue smtpd services."""

    def __init__(self, work, sink_port, maxproc=200):
        import grp
        import pwd
        self.root = os.path.join(work, "postfix")
        etc = os.path.join(self.root, "etc")
        queue = os.path.join(self.root, "queue")
        uid = pwd.getpwnam("postfix").pw_uid
        gid = grp.getgrnam("postfix").gr_gid
        postdrop = grp.getgrnam("postdrop").gr_gid

        def mkdir(p, mode, owner=None):
            os.makedirs(p, exist_ok=True)
            if owner:
                os.chown(p, *owner)
            os.chmod(p, mode)

        mkdir(self.root, 0o755)
        mkdir(etc, 0o755)
        mkdir(queue, 0o755)
        for sub in ["active", "bounce", "corrupt", "defer", "deferred", "flush", "hold",
                    "incoming", "private", "saved", "trace"]:
            mkdir(os.path.join(queue, sub), 0o700, (uid, gid))
        mkdir(os.path.join(queue, "maildrop"), 0o730, (uid, postdrop))
        mkdir(os.path.join(queue, "public"), 0o710, (uid, postdrop))
        mkdir(os.path.join(queue, "pid"), 0o755)
        mkdir(os.path.join(self.root, "data"), 0o700, (uid, gid))
        self.queue = queue
        self.proxy_port = free_port()
        self.queue_port = free_port()
        vals = dict(ROOT=self.root, ETC=etc, SINK_PORT=sink_port, PROXY_PORT=self.proxy_port,
                    QUEUE_PORT=self.queue_port, MAXPROC=maxproc)
        write_backdated(os.path.join(etc, "main.cf"), fill("postfix/main.cf.in", **vals))
        write_backdated(os.path.join(etc, "master.cf"), fill("postfix/master.cf.in", **vals))
        for table in ("header_checks", "command_filter"):
            with open(os.path.join(BENCH, "postfix", table)) as f:
                write_backdated(os.path.join(etc, table), f.read(), 0o644)
        self.maillog = os.path.join(self.root, "maillog")
        self.err = os.path.join(self.root, "master.stderr")
        out = subprocess.run(["postconf", "-d", "-h", "daemon_directory"],
                             capture_output=True, text=True)
        master = os.path.join(out.stdout.strip() or "/usr/lib/postfix/sbin", "master")
        self.proc = Proc("postfix", [master, "-c", etc, "-d"], stderr=open(self.err, "wb"))
        for port in (self.proxy_port, self.queue_port):
            wait_greeting(port, "postfix", self.proc, logfile=self.maillog)

    def pids(self):
        """Every process of the instance (for CPU accounting)."""
        out = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.getpgid(int(pid)) == self.proc.pgid:
                        out.append(int(pid))
                except OSError:
                    pass
        return out

    def queued(self):
        n = 0
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def stop(self):
        self.proc.stop()


# ---------------------------------------------------------------------------
# Load runs
# ---------------------------------------------------------------------------


def loadgen(binary, port, sessions, size, per_conn, duration, max_time, messages=None):
    argv = [binary, "--addr", f"127.0.0.1:{port}", "--sessions", str(sessions),
            "--size", str(size), "--per-conn", str(per_conn),
            "--max-time", str(max_time)]
    if duration:
        argv += ["--duration", str(duration)]
    if messages:
        argv += ["--messages", str(messages)]
    p = subprocess.run(["timeout", "--kill-after=5", str(int(max_time) + 30)] + argv,
                       capture_output=True, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"messages": 0, "errors": 1, "rate": 0.0, "p50_ms": 0, "p99_ms": 0,
                "elapsed_s": 0, "first_error": f"loadgen failed: {p.stderr.strip()[-300:]}"}


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.sink = Sink(work)
        self.smarthosts = {}
        self.smarthost = Smarthost(args.smarthost, work, self.sink.port,
                                   pool_size=args.pool_size, log_level="info")
        self.smarthosts["b"] = self.smarthost
        if "q" in args.paths:
            self.smarthosts["q"] = Smarthost(args.smarthost, work, self.sink.port,
                                             name="smarthost-queue", pool_size=args.pool_size,
                                             log_level="info", delivery="queue")
        self.tmpfs_spool = None
        if "q-tmpfs" in args.paths:
            self.tmpfs_spool = tempfile.mkdtemp(prefix="smarthost-bench-spool-", dir="/dev/shm")
            self.smarthosts["q-tmpfs"] = Smarthost(args.smarthost, work, self.sink.port,
                                                   name="smarthost-queue-tmpfs",
                                                   pool_size=args.pool_size, log_level="info",
                                                   delivery="queue", spool=self.tmpfs_spool)
        # Variants of (b) for the profile: no per-delivery log lines, the
        # old upstream pool_size of 4, one worker thread.
        if "b-quiet" in args.paths:
            self.smarthosts["b-quiet"] = Smarthost(args.smarthost, work, self.sink.port,
                                                   name="smarthost-quiet", pool_size=args.pool_size,
                                                   log_level="warn")
        if "b-pool4" in args.paths:
            self.smarthosts["b-pool4"] = Smarthost(args.smarthost, work, self.sink.port,
                                                   name="smarthost-pool4", pool_size=4,
                                                   log_level="warn")
        if "b-1worker" in args.paths:
            self.smarthosts["b-1worker"] = Smarthost(args.smarthost, work, self.sink.port,
                                                     name="smarthost-1worker", pool_size=args.pool_size,
                                                     log_level="warn", env={"TOKIO_WORKER_THREADS": "1"})
        # Send limits set high enough that nothing is skipped: the cost of
        # enforcing them (issue 10: <= 5% local, <= 15% with Redis).
        high = 'limit = "100000000/hour"'
        if "b-limits" in args.paths:
            self.smarthosts["b-limits"] = Smarthost(args.smarthost, work, self.sink.port,
                                                    name="smarthost-limits", pool_size=args.pool_size,
                                                    log_level="info", server_extra=high)
        self.redis = None
        if "b-redis" in args.paths or "b-redis-cap" in args.paths:
            rport = free_port()
            self.redis = Proc("redis-server", ["redis-server", "--port", str(rport), "--bind",
                                               "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
            deadline = time.time() + 10
            while not greets_redis(rport):
                if time.time() > deadline:
                    sys.exit("bench: redis-server did not start")
                time.sleep(0.05)
            cluster = f'[cluster]\nredis = "redis://127.0.0.1:{rport}/"'
            if "b-redis" in args.paths:
                self.smarthosts["b-redis"] = Smarthost(args.smarthost, work, self.sink.port,
                                                       name="smarthost-redis", pool_size=args.pool_size,
                                                       log_level="info", server_extra=high,
                                                       cluster=cluster)
            # Connection caps shared through Redis, high enough that nobody
            # waits: the cost of a lease per hop and of closing the
            # connection after each message (no pooling under a shared cap).
            if "b-redis-cap" in args.paths:
                self.smarthosts["b-redis-cap"] = Smarthost(
                    args.smarthost, work, self.sink.port, name="smarthost-redis-cap",
                    pool_size=args.pool_size, log_level="info",
                    server_extra=high + "\nmax_connections = 64", cluster=cluster)
        self.postfix = None
        if any(p.startswith("c-") for p in args.paths):
            self.postfix = Postfix(work, self.sink.port)
        self.port = {"a": self.sink.port}
        for path, sh in self.smarthosts.items():
            self.port[path] = sh.port
        if self.postfix:
            self.port["c-proxy"] = self.postfix.proxy_port
            self.port["c-queue"] = self.postfix.queue_port

    def cpu_pids(self, path):
        """Processes whose CPU time we account to a path's relay."""
        if path in self.smarthosts:
            return [self.smarthosts[path].pid]
        if path in ("c-proxy", "c-queue"):
            return self.postfix.pids()
        return []

    def run(self, path, w, duration):
        """One measured run of workload `w` on `path`."""
        sessions, size, per_conn = w
        before = self.sink.messages()
        sink_cpu0 = cpu_ticks([self.sink.pid])
        relay_cpu0 = cpu_ticks(self.cpu_pids(path))
        client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        r = loadgen(self.args.loadgen, self.port[path], sessions, size, per_conn,
                    duration, max_time=duration + 60)
        t1 = time.monotonic()
        client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r["path"] = path
        n = r["messages"]
        # Every accepted message must reach the sink: at once for the
        # synchronous paths, eventually for the queue.
        queued = path in ("c-queue", "q", "q-tmpfs")
        wait = 120 if queued else 5
        done = self.sink.wait_for(before + n, wait)
        r["sink_ok"] = done is not None
        if done is None:
            r["sink_missing"] = before + n - self.sink.messages()
        if queued and done is not None:
            r["drain_s"] = round(done - t0, 4)
            r["drain_rate"] = round(n / max(done - t0, 1e-9), 1)
        if path == "c-queue":
            # Let the queue settle completely before the next run.
            deadline = time.monotonic() + 60
            while self.postfix.queued() and time.monotonic() < deadline:
                time.sleep(0.02)
        if path in ("q", "q-tmpfs"):
            deadline = time.monotonic() + 60
            qd = self.smarthosts[path].queue_dir
            while os.path.isdir(qd) and os.listdir(qd) and time.monotonic() < deadline:
                time.sleep(0.02)
        # CPU time per message (microseconds), measured after the sink has
        # every message, so c-queue includes its background delivery.
        hz = os.sysconf("SC_CLK_TCK")
        per = 1e6 / max(n, 1)
        r["client_us"] = round((client1.ru_utime + client1.ru_stime
                                - client0.ru_utime - client0.ru_stime) * per, 1)
        r["sink_us"] = round((cpu_ticks([self.sink.pid]) - sink_cpu0) / hz * per, 1)
        if path != "a":
            r["relay_us"] = round((cpu_ticks(self.cpu_pids(path)) - relay_cpu0) / hz * per, 1)
        r["wall_s"] = round(t1 - t0, 3)
        return r

    def stop(self):
        for c in list(self.smarthosts.values()) + [self.postfix]:
            if c:
                c.stop()
        if self.redis:
            self.redis.stop()
        self.sink.proc.stop()
        if self.tmpfs_spool:
            shutil.rmtree(self.tmpfs_spool, ignore_errors=True)


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def memory(args, work, sink_port):
    out = {}
    # 1,000 idle sessions: a fresh relay, so VmHWM is this test's peak.
    sh = Smarthost(args.smarthost, work, sink_port, name="smarthost-idle",
                   max_connections=args.idle + 500)
    base = proc_status(sh.pid)
    p = subprocess.Popen(["timeout", "--kill-after=5", "120", args.loadgen,
                          "--addr", f"127.0.0.1:{sh.port}", "--idle", str(args.idle),
                          "--max-time", "90"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    try:
        opened = json.loads(line)
    except ValueError:
        opened = {"idle_open": 0, "errors": -1, "first_error": line.strip()}
    time.sleep(1.0)
    held = proc_status(sh.pid)
    p.stdin.close()
    p.wait(timeout=30)
    sh.stop()
    out["idle"] = {
        "sessions": opened.get("idle_open", 0),
        "errors": opened.get("errors", 0),
        "first_error": opened.get("first_error", ""),
        "baseline_hwm_kb": base.get("VmHWM", 0),
        "hwm_kb": held.get("VmHWM", 0),
        "rss_kb": held.get("VmRSS", 0),
        "threads": held.get("Threads", 0),
    }
    # One 50 MB message through the relay to the sink, sampling RSS.
    sh = Smarthost(args.smarthost, work, sink_port, name="smarthost-big")
    base = proc_status(sh.pid)
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(proc_status(sh.pid).get("VmRSS", 0))
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    r = loadgen(args.loadgen, sh.port, 1, args.big_mb * 1024 * 1024, 1, None,
                max_time=120, messages=1)
    stop.set()
    t.join()
    st = proc_status(sh.pid)
    sh.stop()
    out["big"] = {
        "size_mb": args.big_mb,
        "ok": r["messages"] == 1 and r["errors"] == 0,
        "first_error": r.get("first_error", ""),
        "seconds": r.get("elapsed_s", 0),
        "baseline_hwm_kb": base.get("VmHWM", 0),
        "hwm_kb": st.get("VmHWM", 0),
        "max_sampled_rss_kb": max(samples or [0]),
    }
    return out


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def wname(w):
    s, size, per = w
    return f"{s:>3} sess {size // KIB:>3} KiB {per:>2}/conn"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def report(args, results, mem, env):
    lines = []
    p = lines.append
    p(f"machine: {env['nproc']} CPUs, {env['cpu']}, kernel {env['kernel']}; smarthost at {env['rev']}")
    if env.get("noise"):
        p(f"noise: {env['noise']}")
    p(f"run: {env['command']}  ({env['rounds']} rounds x {env['duration']} s per run, "
      f"paths interleaved; started {env['started']}, took {env['took']:.0f} s)")
    p("")
    p("Throughput and submit latency (median over rounds; msg/s range = min..max of the rounds)")
    p("")
    p("| workload | path | msg/s | range | p50 ms | p99 ms | errors | client µs/msg | relay µs/msg "
      "| sink µs/msg | cores busy | drained msg/s (queues) |")
    p("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in args.workloads:
        for path in args.paths:
            rs = results.get((w, path), [])
            if not rs:
                continue
            rates = [r["rate"] for r in rs]
            errs = sum(r["errors"] for r in rs) + sum(0 if r["sink_ok"] else 1 for r in rs)
            drain = med([r.get("drain_rate") for r in rs]) if path in ("c-queue", "q", "q-tmpfs") else None
            cu, ru, su = (med([r.get(k) for r in rs]) for k in ("client_us", "relay_us", "sink_us"))
            busy = sum(x or 0 for x in (cu, ru, su)) * med(rates) / 1e6
            p(f"| {wname(w)} | {path} | {fmt(med(rates), 0)} | {min(rates):.0f}..{max(rates):.0f} | "
              f"{fmt(med([r['p50_ms'] for r in rs]), 2)} | {fmt(med([r['p99_ms'] for r in rs]), 2)} | "
              f"{errs} | {fmt(cu, 0)} | {fmt(ru, 0)} | {fmt(su, 0)} | {busy:.2f} | {fmt(drain, 0)} |")
    extras = [x for x in args.paths if x in EXTRA_PATHS]
    if extras and "b" in args.paths:
        p("")
        p("Variants of b (median of the per-round ratios to b)")
        p("")
        p("| workload | " + " | ".join(f"{x}/b msg/s | {x} relay µs/msg" for x in extras) + " |")
        p("|---|" + "---:|---:|" * len(extras))
        for w in args.workloads:
            cells = []
            for x in extras:
                rr = []
                for i in range(args.rounds):
                    try:
                        rr.append(results[(w, x)][i]["rate"] / results[(w, "b")][i]["rate"])
                    except (IndexError, KeyError, ZeroDivisionError):
                        pass
                cells.append(fmt(med(rr), 2))
                cells.append(fmt(med([r.get("relay_us") for r in results.get((w, x), [])]), 0))
            p(f"| {wname(w)} | " + " | ".join(cells) + " |")
    p("")
    p("Ratios (median of the per-round ratios; each round runs the paths back to back)")
    p("")
    p("| workload | b/a | b/c-proxy | b/c-queue accepted | b/c-queue drained | p99(b) - p99(a) ms |")
    p("|---|---:|---:|---:|---:|---:|")
    ratios = {}
    for w in args.workloads:
        def per_round(f):
            out = []
            for i in range(args.rounds):
                try:
                    out.append(f(i))
                except (IndexError, KeyError, ZeroDivisionError, TypeError):
                    pass
            return med(out)

        def R(path, i):
            return results[(w, path)][i]

        ba = per_round(lambda i: R("b", i)["rate"] / R("a", i)["rate"])
        bp = per_round(lambda i: R("b", i)["rate"] / R("c-proxy", i)["rate"])
        bq = per_round(lambda i: R("b", i)["rate"] / R("c-queue", i)["rate"])
        bd = per_round(lambda i: R("b", i)["rate"] / R("c-queue", i)["drain_rate"])
        dp = per_round(lambda i: R("b", i)["p99_ms"] - R("a", i)["p99_ms"])
        qb = per_round(lambda i: R("q", i)["rate"] / R("b", i)["rate"])
        qdb = per_round(lambda i: R("q", i)["drain_rate"] / R("b", i)["rate"])
        qc = per_round(lambda i: R("q", i)["rate"] / R("c-queue", i)["rate"])
        qp99 = per_round(lambda i: R("q", i)["p99_ms"] / R("b", i)["p99_ms"])
        qtdb = per_round(lambda i: R("q-tmpfs", i)["drain_rate"] / R("b", i)["rate"])
        ratios[w] = dict(ba=ba, bp=bp, bq=bq, bd=bd, dp99=dp, qb=qb, qdb=qdb, qc=qc, qp99=qp99,
                         qtdb=qtdb)
        p(f"| {wname(w)} | {fmt(ba, 2)} | {fmt(bp, 2)} | {fmt(bq, 2)} | {fmt(bd, 2)} | {fmt(dp, 2)} |")
    p("")
    if "q" in args.paths:
        p("Queue mode (median of the per-round ratios)")
        p("")
        p("| workload | q/b accepted | q drained/b | q/c-queue accepted | p99(q)/p99(b) |")
        p("|---|---:|---:|---:|---:|")
        for w in args.workloads:
            r = ratios[w]
            p(f"| {wname(w)} | {fmt(r['qb'], 2)} | {fmt(r['qdb'], 2)} | {fmt(r['qc'], 2)} | {fmt(r['qp99'], 2)} |")
        p("")
        if "q-tmpfs" in args.paths:
            p("Queue mode without the disk's sync (diagnostic: q-tmpfs drained / b)")
            p("")
            p("| workload | q-tmpfs drained/b | q drained/b |")
            p("|---|---:|---:|")
            for w in args.workloads:
                r = ratios[w]
                p(f"| {wname(w)} | {fmt(r['qtdb'], 2)} | {fmt(r['qdb'], 2)} |")
            p("")
    # Targets
    p("Targets")
    p("")
    head = (10, 4 * KIB, 1)
    checks = []
    if head in ratios:
        r = ratios[head]
        checks.append(("10 sessions x 4 KiB, 1/conn: b/a >= 0.7", r["ba"], r["ba"] is not None and r["ba"] >= 0.7))
        checks.append(("10 sessions x 4 KiB, 1/conn: b >= 1.5 x c-proxy", r["bp"], r["bp"] is not None and r["bp"] >= 1.5))
        checks.append(("10 sessions x 4 KiB, 1/conn: p99(b) - p99(a) <= 2 ms", r["dp99"], r["dp99"] is not None and r["dp99"] <= 2.0))
        if "q" in args.paths:
            checks.append(("10 sessions x 4 KiB, 1/conn: q accepted >= 0.5 x b", r["qb"], r["qb"] is not None and r["qb"] >= 0.5))
            checks.append(("10 sessions x 4 KiB, 1/conn: q accepted >= 4 x c-queue", r["qc"], r["qc"] is not None and r["qc"] >= 4.0))
            checks.append(("10 sessions x 4 KiB, 1/conn: q drained >= 0.8 x b", r["qdb"], r["qdb"] is not None and r["qdb"] >= 0.8))
            checks.append(("10 sessions x 4 KiB, 1/conn: p99(q) <= 3 x p99(b)", r["qp99"], r["qp99"] is not None and r["qp99"] <= 3.0))
    for w in args.workloads:
        if w[0] == 100 and w in ratios:
            rs = results.get((w, "b"), [])
            errs = sum(x["errors"] for x in rs) + sum(0 if x["sink_ok"] else 1 for x in rs)
            ba = ratios[w]["ba"]
            checks.append((f"{wname(w).strip()}: b without errors", errs, errs == 0))
            checks.append((f"{wname(w).strip()}: b/a >= 0.6", ba, ba is not None and ba >= 0.6))
    if mem:
        i, b = mem["idle"], mem["big"]
        checks.append((f"RSS with {i['sessions']} idle sessions < 100 MB (VmHWM, MB)", i["hwm_kb"] / 1024,
                       i["hwm_kb"] < 100 * 1024 and i["sessions"] == args.idle))
        checks.append((f"RSS while relaying a {b['size_mb']} MB message < 64 MB (VmHWM, MB)", b["hwm_kb"] / 1024,
                       b["hwm_kb"] < 64 * 1024 and b["ok"]))
    p("| target | measured | holds |")
    p("|---|---:|---|")
    for name, val, ok in checks:
        v = "-" if val is None else (f"{val:.2f}" if isinstance(val, float) else str(val))
        verdict = "not measured" if val is None else ("yes" if ok else "**NO**")
        p(f"| {name} | {v} | {verdict} |")
    p("")
    if mem:
        i, b = mem["idle"], mem["big"]
        p("Memory (smarthost, fresh process for each test)")
        p("")
        per = (i["hwm_kb"] - i["baseline_hwm_kb"]) / max(i["sessions"], 1)
        p(f"- {i['sessions']} idle sessions (greeting read, then silent; {i['errors']} errors"
          f"{': ' + i['first_error'] if i['first_error'] else ''}): VmHWM {i['hwm_kb'] / 1024:.1f} MB "
          f"(at start {i['baseline_hwm_kb'] / 1024:.1f} MB; {per:.1f} KiB per session), "
          f"VmRSS {i['rss_kb'] / 1024:.1f} MB, {i['threads']} threads")
        p(f"- one {b['size_mb']} MB message relayed to the sink ({'ok' if b['ok'] else 'FAILED ' + b['first_error']}, "
          f"{b['seconds']:.2f} s): VmHWM {b['hwm_kb'] / 1024:.1f} MB (at start {b['baseline_hwm_kb'] / 1024:.1f} MB), "
          f"max sampled VmRSS {b['max_sampled_rss_kb'] / 1024:.1f} MB")
        p("")
    return "\n".join(lines), checks


def cpu_stat():
    """(busy, steal, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])
    return total - idle - steal, steal, total


def machine(args, started, took, command, stat0=None, load0=None):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    def git(*a):
        r = subprocess.run(["git", "-C", REPO] + list(a), capture_output=True, text=True)
        return r.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock")
    rev = head + (" + uncommitted changes in src/" if dirty else "")
    noise = ""
    if stat0:
        b1, s1, t1 = cpu_stat()
        dt = max(t1 - stat0[2], 1)
        noise = (f"load average before the run {load0}; during the run the machine's CPUs were "
                 f"{100 * (b1 - stat0[0]) / dt:.0f}% busy (everything, the bench included), "
                 f"{100 * (s1 - stat0[1]) / dt:.1f}% stolen by the hypervisor")
    return dict(nproc=os.cpu_count(), cpu=cpu, kernel=os.uname().release, rev=rev, noise=noise,
                command=command, rounds=args.rounds, duration=args.duration,
                started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), took=took)


def parse_workload(s):
    # "SESSIONSxKIBxPER", e.g. 10x4x1
    a, b, c = (int(x) for x in s.lower().split("x"))
    return (a, b * KIB, c)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s runs (about a minute)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=1.5, help="seconds of load per run")
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--workloads", default="10x4x1,10x4x50,10x100x1,10x100x50,"
                    "100x4x1,100x4x50,100x100x1,100x100x50",
                    help="SESSIONSxKIBxPER_CONN,... (e.g. 10x4x1)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--idle", type=int, default=1000, help="idle sessions for the memory test")
    ap.add_argument("--big-mb", type=int, default=50, help="size of the large message in MB")
    ap.add_argument("--pool-size", type=int, default=100, help="smarthost's upstream pool_size (100 is its default)")
    ap.add_argument("--smarthost", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("--command", default="bench/run.sh")
    ap.add_argument("--serve", action="store_true",
                    help="start sink, smarthost and Postfix, print their ports and pids as JSON, "
                         "and keep them until stdin closes (for profiling and experiments)")
    args = ap.parse_args()
    if args.quick:
        args.rounds = 1
        args.duration = 1.0
    args.paths = [p for p in args.paths.split(",") if p]
    for p in args.paths:
        if p not in PATHS + EXTRA_PATHS:
            sys.exit(f"bench: unknown path {p}")
    args.workloads = [parse_workload(w) for w in args.workloads.split(",") if w]
    if os.geteuid() != 0:
        sys.exit("bench: run as root (Postfix's private instance and smtp-sink -u nobody need it)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(args.idle * 2 + 1000, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < args.idle + 100:
        sys.exit(f"bench: the open-files limit is too low for {args.idle} sessions (ulimit -n)")

    def on_signal(signum, _frame):
        raise SystemExit(f"bench: signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.time()
    stat0 = cpu_stat()
    load0 = " ".join(open("/proc/loadavg").read().split()[:3])
    work = tempfile.mkdtemp(prefix="smarthost-bench-")
    os.chmod(work, 0o755)
    log(f"bench: work dir {work}")
    bench = None
    results = {}
    raw = []
    mem = None
    try:
        bench = Bench(args, work)
        if args.serve:
            print(json.dumps({"work": work, "sink": bench.sink.port, "sink_pid": bench.sink.pid,
                              "smarthost": bench.smarthost.port, "smarthost_pid": bench.smarthost.pid,
                              "smarthost_config": bench.smarthost.config,
                              "ports": bench.port,
                              "postfix_root": bench.postfix.root if bench.postfix else None}),
                  flush=True)
            sys.stdin.read()
            stop_all()
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            return
        log("bench: ports " + ", ".join(f"{k} :{v}" for k, v in bench.port.items()))
        # Warm-up: spawn Postfix's smtpd processes, fill smarthost's pool,
        # fault in the code; not measured.
        for path in args.paths:
            for w in ((100, 4 * KIB, 1), (10, 100 * KIB, 50)):
                r = bench.run(path, w, 0.5)
                if r["errors"] or not r["sink_ok"]:
                    log(f"bench: warm-up of {path} had errors: {r}")
        for rnd in range(args.rounds):
            for w in args.workloads:
                for path in args.paths:
                    r = bench.run(path, w, args.duration)
                    r["round"] = rnd + 1
                    r["workload"] = list(w)
                    results.setdefault((w, path), []).append(r)
                    raw.append(r)
                    extra = f" drained {r['drain_rate']}/s" if "drain_rate" in r else ""
                    log(f"round {rnd + 1} {wname(w)} {path:8} {r['rate']:8.1f} msg/s "
                        f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms err {r['errors']}"
                        f"{'' if r['sink_ok'] else ' SINK MISSING ' + str(r.get('sink_missing'))}{extra}"
                        f"{' (' + r['first_error'] + ')' if r.get('first_error') else ''}")
        bench.stop()
        bench = None
        if not args.no_memory:
            log("bench: memory tests")
            sink = Sink(work)
            try:
                mem = memory(args, work, sink.port)
            finally:
                sink.proc.stop()
    finally:
        stop_all()
    took = time.time() - started
    env = machine(args, started, took, args.command, stat0, load0)
    text, checks = report(args, results, mem, env)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    with open(os.path.join(args.out, f"{stamp}.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, f"{stamp}.json"), "w") as f:
        json.dump({"env": env, "runs": raw, "memory": mem,
                   "checks": [{"target": n, "value": v, "holds": ok} for n, v, ok in checks]},
                  f, indent=1)
    log(f"bench: results in {args.out}/{stamp}.md and .json")
    if args.keep:
        log(f"bench: kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
