#!/usr/bin/env python3
"""Helpers for benches/load/run.sh. Standard library only; every loop is bounded in time.

Subcommands:
  filler FILE N            append N random keys (hashes only) to a keygate key file
  sse URL KEY N OUT        measure N SSE streams (time to first event, gaps) as JSON lines
  idle HOST PORT N SECS    open N keep-alive connections, one request each, hold SECS
  reload-stage CLI CONFIG STAGE [one_key|replace]
                           copy the key file to STAGE and add a key there with the CLI
                           (replace: then give every other key but the first a new hash)
  reload STAGE CONFIG URL OUT     swap the staged file in by rename; time until the key works
  reload-control STAGE URL SECONDS OUT   the same poller with a never-live key, no swap
  wrk FILE                 parse wrk --latency output to JSON
  cpu PID...               utime+stime (seconds) of the processes and their children
  rss PID                  VmRSS and VmHWM in KiB
  free-ports N             N loopback TCP ports that are free now
  metrics URL NAME...      the named Prometheus series (summed over labels) as JSON; null if absent
  delta A B                B - A of two `metrics` outputs' single values (null if either is)
  settle FILE              wait (at most 5 s) until FILE stops growing
  access-lines FILE        count keygate's JSON access lines in FILE, then empty it
  report RESULTS.jsonl META.json OUT.md
"""
import json
import math
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import time

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def rand62(n):
    return "".join(secrets.choice(BASE62) for _ in range(n))


def filler(path, n):
    """Appends n keys with random hashes; ids and hashes are unique with overwhelming odds."""
    with open(path) as f:
        kf = json.load(f)
    template = kf["keys"][0]
    scopes = template["scopes"]
    created = template["created_at"]
    raw = os.urandom(n * 48)
    keys = kf["keys"]
    for i in range(n):
        chunk = raw[i * 48:(i + 1) * 48]
        # Base62-ish id from random bytes (16 chars), hex hash from 32 random bytes.
        ident = "key_" + "".join(BASE62[b % 62] for b in chunk[32:48])
        keys.append({
            "id": ident,
            "name": f"filler-{i}",
            "sha256": chunk[:32].hex(),
            "last4": "".join(BASE62[b % 62] for b in chunk[32:36]),
            "scopes": scopes,
            "created_at": created,
        })
    tmp = path + ".tmp"
    write_keyfile(tmp, kf)
    os.replace(tmp, path)


def write_keyfile(path, kf):
    """Writes a key file in the layout keygate's own writer uses (one record a line), which the
    gateway reads a line at a time: the layout of every file the CLI or the API has written."""
    with open(path, "w") as f:
        f.write('{"version": %d, "keys": [' % kf["version"])
        for i, rec in enumerate(kf["keys"]):
            f.write(",\n" if i else "\n")
            f.write(json.dumps(rec, separators=(",", ":")))
        f.write("\n]}\n")


# ---------------------------------------------------------------------------- HTTP helpers

def connect(url):
    m = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3) or "/"
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, host, port, path


def request_bytes(host, port, path, key, body, extra=()):
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if key:
        head.append(f"Authorization: Bearer {key}")
    head.extend(extra)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def sse(url, key, n, out, tags="{}"):
    """One stream per connection: time from the request's last byte to the first `data:`
    event, and the gaps between events as they arrive (20 ms spacing at the mock)."""
    words = " ".join(f"w{i}" for i in range(24))
    body = json.dumps({"model": "llama-3.1-8b-instruct", "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": words}]}).encode()
    deadline = time.monotonic() + 60
    with open(out, "a") as fo:
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            s, host, port, path = connect(url)
            req = request_bytes(host, port, path, key, body, ["x-mock-interval-ms: 20"])
            t0 = time.perf_counter()
            s.sendall(req)
            events, status, buf = [], None, b""
            while time.perf_counter() - t0 < 10:
                chunk = s.recv(65536)
                t = time.perf_counter()
                if not chunk:
                    break
                buf += chunk
                if status is None and b"\r\n" in buf:
                    status = int(buf.split(b" ", 2)[1])
                events.extend([t] * chunk.count(b"data: "))
                if b"[DONE]" in chunk or b"\r\n0\r\n\r\n" in buf[-16:]:
                    break
            s.close()
            if status != 200 or not events:
                fo.write(json.dumps({**json.loads(tags), "error": f"status {status}, {len(events)} events"}) + "\n")
                continue
            gaps = [(b - a) * 1e3 for a, b in zip(events, events[1:])]
            fo.write(json.dumps({**json.loads(tags), "ttfe_ms": (events[0] - t0) * 1e3, "gaps_ms": gaps,
                                 "events": len(events)}) + "\n")


def idle(host, port, n, hold):
    """Opens n connections, sends one GET /healthz on each (so the server has set the
    connection up fully), keeps them open `hold` seconds, prints how many succeeded."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    socks, ok = [], 0
    deadline = time.monotonic() + 30
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = s.recv(4096)
        ok += data.startswith(b"HTTP/1.1 200")
        socks.append(s)
    print(ok, flush=True)
    time.sleep(float(hold))
    for s in socks:
        s.close()


def live_keys_path(config):
    import tomllib
    with open(config, "rb") as f:
        name = tomllib.load(f)["keys"]["file"]
    return os.path.join(os.path.dirname(os.path.abspath(config)), name)


def reload_stage(cli, config, stage, mode="one_key"):
    """Before the measured window: copies gateway.toml and its key file to STAGE and creates a
    key there with `keygate keys create` (lock, read, validate, write, fsync, rename). The
    writer's ~1 s of CPU is thus spent outside the window, so the window measures the
    gateway's reload, not the CLI competing with the load generator for its core.

    mode "replace": afterwards every key but the first (the bench key the load uses) and the
    new one is replaced by one with a new id and hash, so the reload sees the whole set change (a full rebuild),
    not one added key."""
    import shutil
    os.makedirs(stage, exist_ok=True)
    staged_cfg = os.path.join(stage, os.path.basename(config))
    shutil.copy2(config, staged_cfg)
    shutil.copy2(live_keys_path(config), live_keys_path(staged_cfg))
    if mode == "replace":
        with open(live_keys_path(staged_cfg)) as f:
            keys = json.load(f)["keys"]
        bench_id, before = keys[0]["id"], {k["id"] for k in keys}
    elif mode != "one_key":
        sys.exit(f"unknown reload mode {mode}")
    # The control window's key: well-formed and created the same way, but in a copy that never
    # goes live, so the gateway refuses it exactly as it refuses the new key before the reload.
    side = os.path.join(stage, "decoy")
    os.makedirs(side, exist_ok=True)
    side_cfg = os.path.join(side, os.path.basename(config))
    shutil.copy2(config, side_cfg)
    shutil.copy2(live_keys_path(config), live_keys_path(side_cfg))
    d = subprocess.run([cli, "--config", side_cfg, "keys", "create", "--name", "decoy", "--json"],
                       capture_output=True, text=True, timeout=60)
    decoy = json.loads(d.stdout)["key"]
    t0 = time.perf_counter()
    p = subprocess.run([cli, "--config", staged_cfg, "keys", "create", "--name",
                        f"reload-{int(time.time() * 1000)}", "--rpm", "100000000", "--json"],
                       capture_output=True, text=True, timeout=60)
    cli_s = time.perf_counter() - t0
    if mode == "replace":
        path = live_keys_path(staged_cfg)
        with open(path) as f:
            kf = json.load(f)
        keep = [k for k in kf["keys"] if k["id"] == bench_id or k["id"] not in before]
        replaced = len(kf["keys"]) - len(keep)
        kf["keys"] = keep
        write_keyfile(path, kf)
        filler(path, replaced)
    with open(os.path.join(stage, "staged.json"), "w") as f:
        json.dump({"key": json.loads(p.stdout)["key"], "cli_s": cli_s,
                   "file": live_keys_path(staged_cfg), "decoy": decoy}, f)


POLL_BODY = b'{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}]}'


def poll(url, key, limit_s):
    """Asks with `key` on a new connection every ~2 ms until it is accepted or `limit_s` has
    passed: (seconds until accepted or None, tries)."""
    t1 = time.perf_counter()
    tries = 0
    while time.perf_counter() - t1 < limit_s:
        tries += 1
        try:
            s, host, port, path = connect(url)
            s.sendall(request_bytes(host, port, path, key, POLL_BODY, ["Connection: close"]))
            head = s.recv(64)
            s.close()
            if head.startswith(b"HTTP/1.1 200"):
                return time.perf_counter() - t1, tries
        except OSError:
            pass
        time.sleep(0.002)
    return None, tries


def reload(stage, config, url, out):
    """In the window: renames the staged key file over the live one (what the CLI's last step
    does) and polls with the new key every 2 ms until it is accepted, at most 15 s."""
    with open(os.path.join(stage, "staged.json")) as f:
        staged = json.load(f)
    os.replace(staged["file"], live_keys_path(config))
    works, tries = poll(url, staged["key"], 15)
    with open(out, "w") as f:
        json.dump({"cli_s": staged["cli_s"], "tries": tries, "works_after_swap_s": works}, f)


def reload_control(stage, url, seconds, out):
    """The control window: the same poller, with a key the gateway never accepts, for as long
    as the reload's poll took, and no file change. The poller runs on the load generator's
    core, where it slows wrk and the mock by itself (a 0.3 s busy loop there, tried outside
    the harness, doubled the p99 of a 5 s wrk run with no reload); this window measures that
    share."""
    with open(os.path.join(stage, "staged.json")) as f:
        staged = json.load(f)
    works, tries = poll(url, staged["decoy"], float(seconds))
    with open(out, "w") as f:
        json.dump({"seconds": float(seconds), "tries": tries, "accepted": works is not None}, f)


def free_ports(n):
    """Binds n sockets to 127.0.0.1:0 at once (so the ports differ), reports and frees them."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def metrics(url, names):
    """Sums each named series over its label sets; null for a name the endpoint lacks (or when
    the endpoint does not answer), so a counter another build adds is read when it is there."""
    import urllib.request
    out = {n: None for n in names}
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) in out:
            out[m.group(1)] = (out[m.group(1)] or 0) + float(m.group(3))
    return out


def settle(path, quiet=0.3, limit=5.0):
    end = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < end:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


ACCESS_MARK = b'"target":"keygate::access"'


def access_lines(path):
    n, tail = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            buf = tail + chunk
            n += buf.count(ACCESS_MARK)
            tail = buf[1 - len(ACCESS_MARK):]  # too short to hold a whole mark: none counted twice
    with open(path, "r+b") as f:
        f.truncate(0)
    return n


# ---------------------------------------------------------------------------- wrk, /proc

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(text):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    r["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    r["socket_errors"] = m.group(1).strip() if m else ""
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        r[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    return r


def tree(pid):
    pids = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                              text=True).stdout.split()
    except OSError:
        kids = []
    for k in kids:
        pids.extend(tree(int(k)))
    return pids


def core_busy(before, after):
    """The share of the time a CPU was busy between two "busy,total" readings of its clock ticks
    in /proc/stat (run.sh's `core_ticks`; None when either is missing or no tick passed)."""
    try:
        b0, t0 = map(int, before.split(","))
        b1, t1 = map(int, after.split(","))
    except ValueError:
        return None
    return (b1 - b0) / (t1 - t0) if t1 > t0 else None


def cpu(pids):
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for root in pids:
        for p in tree(int(root)):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
    return total / tck


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


# ---------------------------------------------------------------------------- report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def mmm(xs, digits=2):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(med(xs), digits)} ({fmt(min(xs), digits)}–{fmt(max(xs), digits)})"


def pctl(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def median_interval(xs, level=0.90):
    """The median of xs and an interval that holds the true median with probability at least
    `level`, whatever the noise's distribution: the k-th smallest and k-th largest values, k
    the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2. Returns (median, low, high,
    coverage); low and high are None when n is too small for any such k."""
    xs = sorted(x for x in xs if x is not None)
    n = len(xs)
    if not n:
        return None, None, None, None
    k, tail = 0, 0.0
    for j in range(n):
        tail += math.comb(n, j) / 2**n  # P(Binomial(n, 1/2) <= j)
        if tail > (1 - level) / 2:
            break
        k = j + 1
    if k == 0:
        return statistics.median(xs), None, None, None
    coverage = 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n
    return statistics.median(xs), xs[k - 1], xs[n - k], coverage


UNDECIDED = "undecided"


def decide(low, high, bound, higher_is_better):
    """met when the whole interval meets the bound, missed when none of it does, else
    UNDECIDED: the run cannot tell which side of the bound the contenders are on."""
    if low is None or high is None:
        return None
    good = (lambda x: x >= bound) if higher_is_better else (lambda x: x <= bound)
    if good(low) and good(high):
        return True
    if not good(low) and not good(high):
        return False
    return UNDECIDED


def verdict(ok):
    if ok == UNDECIDED:
        return "**undecided** (the interval spans the bound)"
    return "**met**" if ok else "**missed**"


def report(results_path, meta_path, out):
    rows = [json.loads(l) for l in open(results_path) if l.strip()]
    meta = json.load(open(meta_path))
    by = lambda kind: [r for r in rows if r["kind"] == kind]
    L = []
    w = L.append
    w("# keygate load and micro-benchmark results\n")
    w(f"Generated by `{meta['command']}` on {meta['date']} in {meta['elapsed_s']:.0f} s.\n")
    w("All traffic on 127.0.0.1. Proxy under test pinned to CPU 0 with one worker "
      "(keygate `TOKIO_WORKER_THREADS=1`, HAProxy `nbthread 1`, nginx `worker_processes 1`); "
      "the load generator and the mock upstream (also `TOKIO_WORKER_THREADS=1`) on CPU 1. "
      f"{meta['rounds']} interleaved rounds; each cell is the median over rounds with min–max "
      "in parentheses. Absolute numbers drift on this shared machine: read the ratios, "
      "which come from the same round.\n")
    w("## Machine and versions\n")
    for k in ("keygate build", "nproc", "cpu", "kernel", "rustc", "haproxy", "nginx", "wrk", "oha", "python",
              "load average (1/5/15 min) at start", "load average at end"):
        w(f"- {k}: `{meta.get(k, 'n/a')}`")
    w("")
    w(f"Each contender does the same per-key check on a set of {meta['keys_main']} keys: "
      "keygate (its own key file, SHA-256 + index + GCRA per key), HAProxy (`sha2(256)` of "
      "the bearer token checked with `-m str -f` against a hash list, plus a per-key "
      "stick-table `http_req_rate` deny over 100M/min), nginx (`map` of the Authorization "
      "header + `limit_req_zone $http_authorization` at 1M r/s). Configs: see "
      "`benches/load/run.sh` (written to the work directory at run time).\n")
    w("Two contenders differ from their minimal rows only in what an operator turns on in "
      "production:\n")
    w("- **keygate-prod**: the same keys and limits as `keygate`, plus `[metrics] listen` on a "
      "loopback port and `[log] format = \"json\"`, `level = \"info\"` (one JSON access line per "
      "request on stderr, redirected to a file on disk, as a service manager would); one "
      "upstream. `keygate` (minimal) has no metrics listener and logs at `warn`.")
    w("- **nginx-log**: the `nginx` configuration plus a buffered JSON access log on disk "
      "(`access_log FILE main buffer=64k flush=1s`).\n")
    if meta.get("prod_toml"):
        w("<details><summary>keygate-prod's gateway.toml and one of its access lines; nginx-log's "
          "log format</summary>\n")
        w("```toml\n" + meta["prod_toml"].strip() + "\n```\n")
        if meta.get("prod_sample"):
            w("```json\n" + meta["prod_sample"].strip() + "\n```\n")
        if meta.get("nginx_log_conf"):
            w("```nginx\n" + meta["nginx_log_conf"].strip() + "\n```\n")
        w("</details>\n")
    w(f"For the rows with many connections: HAProxy `maxconn {meta.get('ha_maxconn', '–')}`, nginx "
      f"`worker_connections {meta.get('ng_conns', '–')}`, `keepalive {meta.get('ng_keepalive', '–')}` "
      "(idle upstream connections kept) and `listen … backlog=4096`; keygate's own defaults. "
      "The harness raises `ulimit -n` to the hard limit for everything it starts."
      + (f" {meta['conns_note']}" if meta.get("conns_note") else "") + "\n")

    targets = []  # other targets
    goals = []  # the performance targets, in the order they are stated
    found = {}  # what the data says, for the notes on missed targets

    # Throughput
    tp_all = by("throughput")
    for r in tp_all:
        r.setdefault("conns", 32)
    conns_list = sorted({r["conns"] for r in tp_all})
    cbase = conns_list[0] if conns_list else 32
    tp = [r for r in tp_all if r["conns"] == cbase]
    names = ["direct", "keygate", "keygate-prod", "haproxy", "haproxy-wire", "nginx", "nginx-log"]
    present = [n for n in names if any(r["target"] == n for r in tp_all)]
    rounds = sorted({r["round"] for r in tp_all})
    dur = meta.get("dur", 5)

    def pair(a, b, conns, f, records=None, keys=None):
        """f(a's record, b's record) for each round (or each key of `keys`) at `conns` among
        `records` (default: the rounds' throughput runs), where both ran and f is defined."""
        records = tp_all if records is None else records
        out = []
        for rd in rounds if keys is None else keys:
            x = [r for r in records if r["round"] == rd and r["target"] == a and r["conns"] == conns]
            y = [r for r in records if r["round"] == rd and r["target"] == b and r["conns"] == conns]
            if x and y:
                try:
                    v = f(x[0], y[0])
                except (TypeError, ZeroDivisionError, KeyError):
                    v = None
                if v is not None:
                    out.append(v)
        return out

    rps_r = lambda x, y: x["rps"] / y["rps"]
    cpu_r = lambda x, y: x["cpu_ms_per_1k"] / y["cpu_ms_per_1k"]
    p99_r = lambda x, y: x["p99_ms"] / y["p99_ms"]
    cpu_d = lambda x, y: x["cpu_ms_per_1k"] - y["cpu_ms_per_1k"]
    # The load generator's CPU per request behind x over behind y (its busy share over the rate).
    lg_r = lambda x, y: (x["load_core_busy"] / x["rps"]) / (y["load_core_busy"] / y["rps"])

    def ratio(a, b, conns=None):
        return pair(a, b, cbase if conns is None else conns, rps_r)

    def col(n, conns, field):
        return [r.get(field) for r in tp_all if r["target"] == n and r["conns"] == conns]

    def busy(n, conns):
        """The load generator's core busy, % (runs that recorded it)."""
        return [b * 100 for b in col(n, conns, "load_core_busy") if b is not None]

    def busy_med(n, conns):
        return fmt(med(busy(n, conns)), 1) if busy(n, conns) else "–"

    def lg_us(rs):
        """The load generator's CPU per request, µs: its core's busy share over the request rate."""
        return [r["load_core_busy"] / r["rps"] * 1e6 if r.get("load_core_busy") is not None and r.get("rps") else None
                for r in rs]

    def lg_med(n, conns):
        v = [x for x in lg_us([r for r in tp_all if r["target"] == n and r["conns"] == conns]) if x is not None]
        return fmt(med(v), 1) if v else "–"

    w(f"## Max throughput (`wrk -t1 -cN -d{dur}s --latency`, N = {', '.join(map(str, conns_list))}; "
      "POST 130 B chat body, ~400 B JSON reply)\n")
    w("| conns | contender | req/s | p50 ms | p99 ms | ratio to direct | ratio to keygate | CPU ms per 1k req | CPU, % of a core | "
      "load generator's CPU µs per request | load generator's core busy, % |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in conns_list:
        for n in present:
            rs = [r for r in tp_all if r["target"] == n and r["conns"] == c]
            if not rs:
                continue
            w(f"| {c} | {n} | {mmm([r['rps'] for r in rs])} | {mmm([r['p50_ms'] for r in rs], 3)} | "
              f"{mmm([r['p99_ms'] for r in rs], 3)} | {mmm(ratio(n, 'direct', c), 3)} | "
              f"{mmm(ratio(n, 'keygate', c), 3)} | {mmm([r.get('cpu_ms_per_1k') for r in rs], 1)} | "
              f"{mmm([r['cpu_s'] * r['rps'] / r['requests'] * 100 if r.get('requests') and r.get('rps') and r.get('cpu_s') is not None else None for r in rs], 0)} | "
              f"{mmm(lg_us(rs), 1)} | {mmm(busy(n, c), 1)} |")
    fl = [r for r in tp_all + by("reject") if r.get("state_flush")]
    if fl:
        w("\nRuns during which a keygate instance rewrote its usage state file (every 10 s when counters moved, keys that were used, on a "
          "blocking thread of the same pinned core): " + ", ".join(
              f"{r.get('case', r['target'])}{'' if 'case' in r else ' c' + str(r['conns'])} r{r['round']}" for r in fl) + ".")
    bad = [r for r in tp_all if r.get("non2xx") or r.get("socket_errors")]
    if bad:
        w("\nRuns with non-2xx answers or socket errors: " + "; ".join(
            f"{r['target']} c{r['conns']} r{r['round']}: non2xx={r.get('non2xx')} {r.get('socket_errors')}" for r in bad))
    prod = [r for r in tp_all if r["target"] == "keygate-prod" and r.get("requests")]
    if prod:
        per = [r["access_lines"] / r["requests"] for r in prod if r.get("access_lines") is not None]
        dropped = [r.get("dropped") for r in prod if r.get("dropped") is not None]
        found["access_lines_per_req"] = med(per)
        found["dropped"] = sum(dropped) if dropped else None
        w(f"\nkeygate-prod's access log: {mmm(per, 3)} lines per request wrk counted (all runs; "
          "wrk does not count requests still in flight when it stops, so slightly above 1 is "
          "expected), `keygate_log_lines_dropped_total` grew by "
          f"{'(not exported)' if not dropped else fmt(sum(dropped), 0)} over these runs." +
          (" **Some access lines were dropped: keygate-prod's rows did less work than they claim.**"
           if dropped and sum(dropped) > 0 else ""))
    w("\nCPU ms per 1k requests = (utime+stime of the proxy's processes after − before the "
      "wrk run) / requests × 1000, from /proc/PID/stat (10 ms tick resolution). For keygate-prod "
      "the 'after' is read once its access log has stopped growing (its writer thread's work is "
      "part of the requests' cost). CPU, % of a core = that CPU time over the run's length (for "
      "direct: the mock's, on the load generator's core): a proxy well under 100% was not the "
      "bottleneck, or did not get all of CPU 0 (other work on the machine). The load "
      "generator's core busy = the share of the run CPU 1 (wrk and the mock) was busy, from "
      "/proc/stat: where it nears 100% (as going direct), the load generator and not the proxy "
      "set the pace, and its own queue, two processes taking turns on one core, spreads the "
      "latency: a proxy that outruns another pushes it there and has its p99 widened by it. "
      "The load generator's CPU µs per request = that busy share ÷ req/s: what one request "
      "through that contender cost wrk and the mock. "
      "A proxy's answers with more headers cost wrk more to read, and its forwarded requests "
      "cost the mock more to parse (keygate adds the forwarding and rate-limit headers its "
      "contract names; the HAProxy and nginx configurations add none). haproxy-wire is the "
      "HAProxy configuration made to add the same ones, both ways, so that behind it the load "
      "generator does the same work per request as behind keygate.\n")

    cr = {n: pair(n, "keygate", cbase, cpu_r) for n in ("haproxy", "haproxy-wire", "nginx") if n in present}
    if any(cr.values()):
        w(f"At -c{cbase}, keygate's requests per CPU-second as a multiple of each other proxy's (= that proxy's "
          "CPU per request ÷ keygate's; above 1 means keygate needs less CPU per request). This ratio does not "
          "depend on how much of CPU 0 the proxy got, so it holds up when other work shares "
          "the machine: " + ", ".join(f"{n} {mmm(v, 2)}" for n, v in cr.items() if v) + ".\n")

    # Derived ratios, every connection count
    derived = [
        ("keygate-prod ÷ keygate, req/s", "keygate-prod", "keygate", rps_r, 3, "≥ 0.9"),
        ("keygate-prod ÷ nginx-log, CPU per request", "keygate-prod", "nginx-log", cpu_r, 2, "≤ 1.0"),
        ("keygate ÷ HAProxy, CPU per request", "keygate", "haproxy", cpu_r, 2, "≤ 1.0 (ambition 0.9)"),
        ("keygate ÷ HAProxy, req/s", "keygate", "haproxy", rps_r, 3, "≥ 1.0 at 256 and 1024"),
        ("keygate ÷ HAProxy, p99", "keygate", "haproxy", p99_r, 2, "≤ 1.0 at 256 and 1024"),
        ("keygate ÷ haproxy-wire, CPU per request", "keygate", "haproxy-wire", cpu_r, 2, ""),
        ("keygate ÷ haproxy-wire, req/s", "keygate", "haproxy-wire", rps_r, 3, ""),
        ("keygate ÷ haproxy-wire, p99", "keygate", "haproxy-wire", p99_r, 2, ""),
        ("keygate-prod ÷ HAProxy, req/s", "keygate-prod", "haproxy", rps_r, 3, ""),
        ("nginx-log ÷ nginx, req/s", "nginx-log", "nginx", rps_r, 3, ""),
        ("keygate-prod − keygate, CPU ms per 1k req", "keygate-prod", "keygate", cpu_d, 1, ""),
        ("nginx-log − nginx, CPU ms per 1k req", "nginx-log", "nginx", cpu_d, 1, ""),
    ]
    drows = []
    for label, a, b, f, dg, tgt in derived:
        cells = [pair(a, b, c, f) for c in conns_list]
        if any(cells):
            drows.append(f"| {label} | " + " | ".join(mmm(x, dg) for x in cells) + f" | {tgt} |")
    if drows:
        w("## Derived ratios (per round, same connection count; median (min–max) over rounds)\n")
        w("| ratio | " + " | ".join(f"-c{c}" for c in conns_list) + " | target |")
        w("|---|" + "---|" * len(conns_list) + "---|")
        for x in drows:
            w(x)
        w("\nThe keygate-prod − keygate and nginx-log − nginx rows are what the production "
          "settings (metrics and JSON access log; a buffered access log) cost each proxy per "
          "1k requests.\n")

    def cpu_med(n, c):
        return med(col(n, c, "cpu_ms_per_1k"))

    # Paired runs: the same ratios from many short back-to-back runs of two contenders.
    pr_all = by("paired")
    pair_n = sorted({r["round"] for r in pr_all})

    def paired(a, b, conns, f):
        """f(a's record, b's record) for each pair of the paired runs of a and b at `conns`."""
        mine = [r for r in pr_all if r.get("set") in (f"{a}/{b}", f"{b}/{a}")]
        return pair(a, b, conns, f, mine, pair_n)

    if pr_all:
        sets = []
        for r in pr_all:
            key = (r.get("set"), r["conns"])
            if key not in sets:
                sets.append(key)
        w(f"## Paired runs (`wrk -t1 -cN -d{meta.get('pair_dur', 2)}s --latency`, the order swapped every pair)\n")
        w("One run's ratio between two contenders moves by ±15–25% on this machine from one run to the "
          "next, even between two back-to-back runs, so a few rounds cannot tell 0.95× from 1.05×. Each "
          "row here is many short runs of two contenders back to back (A B, then B A, ...). A ratio cell "
          "is the median of the per-pair ratios, A ÷ B, and, in parentheses, an interval that holds the "
          "true median with at least the stated probability whatever the noise's shape (the k-th "
          "smallest and k-th largest of the ratios). The two-contender targets are decided on these "
          "rows: met or missed only when the whole interval is on one side of the bound, undecided "
          "otherwise.\n")
        w("| A / B | conns | pairs | interval holds the median with | req/s A / B | CPU ms per 1k A / B | "
          "req/s ratio | CPU per request ratio | p99 ratio | load generator's CPU per request ratio |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for st, c in sets:
            a, b = st.split("/")
            cells = []
            cov = None
            for f, d in ((rps_r, 3), (cpu_r, 3), (p99_r, 2), (lg_r, 2)):
                m, lo, hi, cv = median_interval(paired(a, b, c, f))
                cov = cov or cv
                cells.append("–" if m is None else f"{m:.{d}f}× ({fmt(lo, d)}–{fmt(hi, d)})")
            mine = lambda n, field: med([r.get(field) for r in pr_all if r["target"] == n and r["conns"] == c and r.get("set") == st])
            w(f"| {a} / {b} | {c} | {len(paired(a, b, c, rps_r))} | {fmt(cov * 100 if cov else None, 0)}% | "
              f"{fmt(mine(a, 'rps'))} / {fmt(mine(b, 'rps'))} | {fmt(mine(a, 'cpu_ms_per_1k'), 1)} / "
              f"{fmt(mine(b, 'cpu_ms_per_1k'), 1)} | " + " | ".join(cells) + " |")
        w("")

    def ratio_goal(name, a, b, conns, f, bound, higher_is_better, digits, detail=""):
        """A two-contender target: decided on the paired runs when there are any (median and
        interval, see `median_interval`), else on the rounds' median. `detail` follows the value."""
        rounds_r = pair(a, b, conns, f)
        pr = paired(a, b, conns, f)
        m, lo, hi, cov = median_interval(pr)
        rtext = f"rounds {med(rounds_r):.{digits}f}× ({min(rounds_r):.{digits}f}–{max(rounds_r):.{digits}f})" if rounds_r else ""
        if m is not None and lo is not None:
            ok = decide(lo, hi, bound, higher_is_better)
            val = (f"{m:.{digits}f}×, {cov * 100:.0f}% interval {lo:.{digits}f}–{hi:.{digits}f} ({len(pr)} pairs)"
                   + (f"; {rtext}" if rtext else "") + (f"; {detail}" if detail else ""))
            side = (lambda x: x - bound) if higher_is_better else (lambda x: bound - x)
            if ok is True:
                note = f"the interval's worst end is {abs(side(lo if higher_is_better else hi)):.{digits}f} inside the bound"
            elif ok is False:
                note = f"the interval's best end is {abs(side(hi if higher_is_better else lo)):.{digits}f} outside the bound"
            else:
                note = f"median {'inside' if side(m) >= 0 else 'outside'} the bound by {abs(side(m)):.{digits}f}; the interval spans it"
            goals.append((name, val, ok, note))
        elif rounds_r:
            x = med(rounds_r)
            ok = x >= bound if higher_is_better else x <= bound
            goals.append((name, rtext.replace("rounds ", "") + (f"; {detail}" if detail else "") + ("; too few paired runs for an interval" if pr else "; no paired runs"), ok,
                          f"{abs(x - bound):.{digits}f} {'inside' if ok else 'outside'} the bound (rounds' median only)"))
        else:
            goals.append((name, "not measured", None, ""))

    # The performance targets.
    ratio_goal(f"Production config (metrics, JSON access log at info) ≥ 0.9× the minimal config's req/s (-c{cbase})",
               "keygate-prod", "keygate", cbase, rps_r, 0.9, True, 3)
    if "nginx-log" in present:
        ratio_goal(f"Production config CPU per request ≤ nginx's with a buffered access log (-c{cbase})",
                   "keygate-prod", "nginx-log", cbase, cpu_r, 1.0, False, 2,
                   f"{fmt(cpu_med('keygate-prod', cbase), 1)} vs {fmt(cpu_med('nginx-log', cbase), 1)} ms per 1k in the rounds")
    else:
        goals.append(("Production config CPU per request ≤ nginx-log's", "not measured", None, "nginx is not installed"))
    if "haproxy" in present:
        ratio_goal(f"Minimal config CPU per request ≤ 1.0× HAProxy's (-c{cbase})", "keygate", "haproxy", cbase, cpu_r, 1.0, False, 2,
                   f"{fmt(cpu_med('keygate', cbase), 1)} vs {fmt(cpu_med('haproxy', cbase), 1)} ms per 1k in the rounds")
        ratio_goal(f"(ambition) Minimal config CPU per request ≤ 0.9× HAProxy's (-c{cbase})", "keygate", "haproxy", cbase,
                   cpu_r, 0.9, False, 2)
    else:
        goals.append(("Minimal config CPU per request ≤ 1.0× HAProxy's", "not measured", None, "HAProxy is not installed"))
    for c in (256, 1024):
        if c not in conns_list or "haproxy" not in present:
            goals.append((f"-c{c}: keygate req/s ≥ HAProxy's and p99 ≤ HAProxy's", "not measured", None,
                          "not in CONNS" if c not in conns_list else "HAProxy is not installed"))
            continue
        ratio_goal(f"-c{c}: keygate req/s ≥ HAProxy's", "keygate", "haproxy", c, rps_r, 1.0, True, 3,
                   f"{fmt(med(col('keygate', c, 'rps')))} vs {fmt(med(col('haproxy', c, 'rps')))} req/s in the rounds")
        ratio_goal(f"-c{c}: keygate p99 ≤ HAProxy's", "keygate", "haproxy", c, p99_r, 1.0, False, 2,
                   f"{fmt(med(col('keygate', c, 'p99_ms')), 2)} vs {fmt(med(col('haproxy', c, 'p99_ms')), 2)} ms in the rounds")
        if "haproxy-wire" in present:
            # The same targets against HAProxy putting keygate's headers on the wire: the load
            # generator's work per request is then the same behind either.
            ratio_goal(f"(same wire) -c{c}: keygate req/s ≥ haproxy-wire's", "keygate", "haproxy-wire", c, rps_r, 1.0, True, 3,
                       f"{fmt(med(col('keygate', c, 'rps')))} vs {fmt(med(col('haproxy-wire', c, 'rps')))} req/s in the rounds")
            ratio_goal(f"(same wire) -c{c}: keygate p99 ≤ haproxy-wire's", "keygate", "haproxy-wire", c, p99_r, 1.0, False, 2,
                       f"{fmt(med(col('keygate', c, 'p99_ms')), 2)} vs {fmt(med(col('haproxy-wire', c, 'p99_ms')), 2)} ms in the rounds")
        measured_lg = any(r.get("load_core_busy") is not None for r in tp_all)
        wire = (f"; with keygate's headers on the wire HAProxy (haproxy-wire) has the load generator's core "
                f"{busy_med('haproxy-wire', c)}% busy and a p99 of {fmt(med(col('haproxy-wire', c, 'p99_ms')), 2)} ms"
                if "haproxy-wire" in present and measured_lg else "")
        spent = (f"; the load generator spent {lg_med('keygate', c)} µs of CPU per request behind keygate, "
                 f"{lg_med('haproxy', c)} behind HAProxy" + (f", {lg_med('haproxy-wire', c)} behind haproxy-wire"
                                                            if "haproxy-wire" in present else "")
                 if measured_lg else "")
        found[f"c{c}"] = (f"keygate {fmt(med(col('keygate', c, 'rps')))} vs HAProxy "
                          f"{fmt(med(col('haproxy', c, 'rps')))} req/s, p99 {fmt(med(col('keygate', c, 'p99_ms')), 2)} vs "
                          f"{fmt(med(col('haproxy', c, 'p99_ms')), 2)} ms, CPU per 1k {fmt(cpu_med('keygate', c), 1)} vs "
                          f"{fmt(cpu_med('haproxy', c), 1)} ms (at -c{cbase}: {fmt(cpu_med('keygate', cbase), 1)} vs "
                          f"{fmt(cpu_med('haproxy', cbase), 1)}); direct to the mock reaches "
                          f"{fmt(med(col('direct', c, 'rps')))} req/s, the most this load generator drives"
                          + (f"; the load generator's core was {busy_med('keygate', c)}% "
                             f"busy with keygate, {busy_med('haproxy', c)}% with HAProxy and "
                             f"{busy_med('direct', c)}% going direct, whose p99 is "
                             f"{fmt(med(col('direct', c, 'p99_ms')), 2)} ms (keygate {fmt(med(col('keygate', c, 'p99_ms')), 2)}, "
                             f"HAProxy {fmt(med(col('haproxy', c, 'p99_ms')), 2)})"
                             if measured_lg else "") + wire + spent + ".")
    ka, kb = cpu_med("keygate-prod", cbase), cpu_med("keygate", cbase)
    na, nb = cpu_med("nginx-log", cbase), cpu_med("nginx", cbase)
    if ka and kb:
        found["prod"] = (f"at -c{cbase} the production settings cost keygate {ka - kb:.1f} ms CPU per 1k requests "
                         f"({ka:.1f} vs {kb:.1f})" + (f", the buffered access log costs nginx {na - nb:.1f} ms ({na:.1f} vs {nb:.1f})"
                                                        if na and nb else ""))
    found["cpu_base"] = (kb, cpu_med("haproxy", cbase))

    kh = ratio("keygate", "haproxy")
    if kh:
        m = med(kh)
        targets.append((f"keygate throughput ≥ 1.2× HAProxy's (-c{cbase})", f"{m:.2f}× (rounds {min(kh):.2f}–{max(kh):.2f})",
                        m >= 1.2, f"needs {1.2 / m:.2f}× more throughput" if m < 1.2 else ""))
        hd = ratio("haproxy", "direct")
        if hd and m < 1.2:
            # The load generator and the mock share one core; direct-to-mock is the most that
            # core can drive, so no proxy can exceed it here.
            ceiling = 1.0 / med(hd)
            meta.setdefault("miss_facts", {})["throughput"] = (
                f"On this harness 1.2× HAProxy's rate is {1.2 * med(hd):.2f}× the direct-to-mock "
                f"rate; the most any proxy can reach is the direct rate, {ceiling:.2f}× HAProxy's, "
                f"because wrk and the mock share one core and going direct is all that core can "
                f"drive.")
    if cr.get("haproxy"):
        m = med(cr["haproxy"])
        targets.append(("(same target, by CPU per request) keygate requests per CPU-second ≥ 1.2× HAProxy's",
                        f"{m:.2f}× (rounds {min(cr['haproxy']):.2f}–{max(cr['haproxy']):.2f})", m >= 1.2,
                        f"keygate needs {1.2 / m:.2f}× less CPU per request" if m < 1.2 else ""))

    # Fixed-rate latency
    fr = by("fixed_rate")
    w("## Latency at fixed request rates (open loop)\n")
    if fr:
        w(f"Tool: `{meta.get('fixed_rate_tool')}`. Latency is measured from each request's "
          "scheduled send time (oha `--latency-correction`), so a stall counts against every "
          "request it delayed.\n")
        w("| rate | contender | p50 ms | p99 ms | max ms | added p50 µs vs direct | added p99 µs vs direct | requests |")
        w("|---|---|---|---|---|---|---|---|")
        for rate in sorted({r["rate"] for r in fr}, reverse=True):
            added99 = {}
            for n in names:
                rs = [r for r in fr if r["rate"] == rate and r["target"] == n]
                if not rs:
                    continue
                add50, add99 = [], []
                for r in rs:
                    d = [x for x in fr if x["rate"] == rate and x["target"] == "direct" and x["round"] == r["round"]]
                    if d and n != "direct" and r["p50_ms"] is not None and d[0]["p50_ms"] is not None:
                        add50.append((r["p50_ms"] - d[0]["p50_ms"]) * 1e3)
                        add99.append((r["p99_ms"] - d[0]["p99_ms"]) * 1e3)
                if add99:
                    added99[n] = add99
                w(f"| {rate}/s | {n} | {mmm([r['p50_ms'] for r in rs], 3)} | {mmm([r['p99_ms'] for r in rs], 3)} | "
                  f"{mmm([r['max_ms'] for r in rs], 3)} | {mmm(add50, 0) if add50 else '–'} | "
                  f"{mmm(add99, 0) if add99 else '–'} | {sum(r['n'] for r in rs)} ({sum(r['ok'] for r in rs)} × 200) |")
            if "keygate" in added99:
                targets.append(added_latency_target(rate, added99))
        if any(r["rate"] <= 1 for r in fr):
            w("\nAt 1 req/s each run has only a few samples per round, so its p99 is close to "
              "its maximum: treat that row as indicative.\n")
    else:
        w(f"**Not measured.** {meta.get('fixed_rate_note', '')}\n")
        targets.append(("added p99 vs direct at 1k req/s ≤ 150 µs", "not measured", None, meta.get('fixed_rate_note', '')))
        targets.append(("added p99 vs direct at 1 req/s ≤ 100 µs", "not measured", None, meta.get('fixed_rate_note', '')))

    # SSE
    ss = by("sse")
    if ss:
        w("## SSE streaming (`x-mock-interval-ms: 20`, ~30 events per stream)\n")
        w("Measured by `benches/load/tools.py sse`: one stream per fresh connection; time from "
          "the request's last byte to the first `data:` event, and the gap between consecutive "
          "events as the client receives them.\n")
        w("| path | streams | TTFE p50 ms | TTFE p99 ms | gap mean ms | gap p50 ms | gap p99 ms |")
        w("|---|---|---|---|---|---|---|")
        agg = {}
        for n in ("direct", "keygate"):
            streams = [r for r in ss if r["target"] == n and "ttfe_ms" in r]
            if not streams:
                continue
            tt = [r["ttfe_ms"] for r in streams]
            gaps = [g for r in streams for g in r["gaps_ms"]]
            agg[n] = (tt, gaps)
            w(f"| {n} | {len(streams)} | {fmt(pctl(tt, 50), 3)} | {fmt(pctl(tt, 99), 3)} | "
              f"{fmt(statistics.mean(gaps), 3)} | {fmt(pctl(gaps, 50), 3)} | {fmt(pctl(gaps, 99), 3)} |")
        errs = [r for r in ss if "error" in r]
        if errs:
            w(f"\n{len(errs)} stream(s) failed: {errs[0]['error']}")
        if "direct" in agg and "keygate" in agg:
            add_tt = pctl(agg["keygate"][0], 50) - pctl(agg["direct"][0], 50)
            add_tt99 = pctl(agg["keygate"][0], 99) - pctl(agg["direct"][0], 99)
            add_gap = statistics.mean(agg["keygate"][1]) - statistics.mean(agg["direct"][1])
            add_gap99 = pctl(agg["keygate"][1], 99) - pctl(agg["direct"][1], 99)
            w(f"\nAdded by keygate: time to first event p50 {add_tt * 1e3:.0f} µs, p99 {add_tt99 * 1e3:.0f} µs; "
              f"mean per-event gap {add_gap * 1e3:.0f} µs, p99 gap {add_gap99 * 1e3:.0f} µs.\n")
            worst = max(add_tt, add_gap)
            targets.append(("SSE added time to first event ≤ 1 ms", f"{add_tt * 1e3:.0f} µs (p50), {add_tt99 * 1e3:.0f} µs (p99)",
                            add_tt <= 1.0, f"over by {(add_tt - 1) * 1e3:.0f} µs" if add_tt > 1 else ""))
            targets.append(("SSE added per-event gap ≤ 1 ms", f"{add_gap * 1e3:.0f} µs (mean), {add_gap99 * 1e3:.0f} µs (p99)",
                            add_gap <= 1.0, f"over by {(add_gap - 1) * 1e3:.0f} µs" if add_gap > 1 else ""))
            _ = worst

    # Rejections
    rj = by("reject")
    if rj:
        w(f"## Rejection throughput (keygate, `wrk -t1 -c{cbase} -d{dur}s`)\n")
        w("| case | answer | req/s | p99 ms | ratio to keygate proxied (same round) | CPU ms per 1k req | CPU per request vs proxied |")
        w("|---|---|---|---|---|---|---|")
        for case, answer in (("no_key", "401 missing_key"), ("invalid_key", "401 invalid_api_key (well-formed, unknown)"),
                             ("rate_limited", "429 (key with --rpm 1)")):
            rs = [r for r in rj if r["case"] == case]
            if not rs:
                continue
            ratios, cpu_ratios = [], []
            for r in rs:
                k = [x for x in tp if x["target"] == "keygate" and x["round"] == r["round"]]
                if k:
                    ratios.append(r["rps"] / k[0]["rps"])
                    if r.get("cpu_ms_per_1k") and k[0].get("cpu_ms_per_1k"):
                        cpu_ratios.append(r["cpu_ms_per_1k"] / k[0]["cpu_ms_per_1k"])
            # The 429 key has a burst of 1 and refills one request a minute.
            okall = all(r["requests"] - r["non2xx"] <= 2 for r in rs)
            w(f"| {case} | {answer}{'' if okall else ' (some answers were 2xx!)'} | {mmm([r['rps'] for r in rs])} | "
              f"{mmm([r['p99_ms'] for r in rs], 3)} | {mmm(ratios, 2)} | "
              f"{mmm([r.get('cpu_ms_per_1k') for r in rs], 1)} | {mmm(cpu_ratios, 2)} |")
            # The refusal target is the 429; the 401 targets are other ones.
            dest = goals if case == "rate_limited" else targets
            flushed = [r for r in rs if r.get("state_flush")]
            pairs_429 = case == "rate_limited" and paired("keygate-429", "keygate", cbase, rps_r)
            if pairs_429:
                rtext = lambda xs: f"rounds {med(xs):.2f}× ({min(xs):.2f}–{max(xs):.2f})" if xs else ""
                ratio_goal(f"{case} answered at ≥ 2× proxied throughput", "keygate-429", "keygate", cbase, rps_r,
                           2.0, True, 2, rtext(ratios))
                ratio_goal(f"(same, by CPU per request) {case} answers per CPU-second ≥ 2× proxied", "keygate-429",
                           "keygate", cbase, lambda x, y: y["cpu_ms_per_1k"] / x["cpu_ms_per_1k"], 2.0, True, 2,
                           rtext([1 / x for x in cpu_ratios]))
            elif ratios:
                m = med(ratios)
                dest.append((f"{case} answered at ≥ 2× proxied throughput", f"{m:.2f}× (rounds {min(ratios):.2f}–{max(ratios):.2f})",
                             m >= 2.0, f"{m - 2:.2f}× above" if m >= 2 else f"reaches {m / 2 * 100:.0f}% of the target"))
            if cpu_ratios and not pairs_429:
                m = 1 / med(cpu_ratios)
                dest.append((f"(same, by CPU per request) {case} answers per CPU-second ≥ 2× proxied",
                             f"{m:.2f}×", m >= 2.0,
                             f"{m - 2:.2f}× above" if m >= 2 else f"reaches {m / 2 * 100:.0f}% of the target"))
            if case == "rate_limited":
                clean = [r["p99_ms"] for r in rs if not r.get("state_flush") and r.get("p99_ms") is not None]
                dirty = [r["p99_ms"] for r in flushed if r.get("p99_ms") is not None]
                kc = med([x.get("cpu_ms_per_1k") for x in tp if x["target"] == "keygate"])
                found["429"] = (f"a 429 costs {fmt(med([r.get('cpu_ms_per_1k') for r in rs]), 1)} ms CPU per 1k vs "
                                f"{fmt(kc, 1)} ms for a proxied request; "
                                f"{len(flushed)} of {len(rs)} 429 runs overlapped a usage-state rewrite"
                                + (f" (p99 {fmt(med(dirty), 3)} ms in those vs {fmt(med(clean), 3)} ms in the others)"
                                   if dirty and clean else "") + ".")
        w("\n`[limits] failed_auth_per_minute` is set to 1e9 in the benchmark config so the "
          "invalid-key path stays a 401 (at the default of 30 the client address is blocked "
          "and answered 429 before its credential is parsed).\n")

    # Memory
    mem = by("memory")
    if mem:
        w("## Memory and idle CPU (keygate, VmRSS from /proc)\n")
        w("| key set | VmRSS idle MB | VmHWM (peak) MB | load to ready s | idle CPU ms over window |")
        w("|---|---|---|---|---|")
        count = lambda r: 1 if r["label"] == "1 key" else (1_000_000 if r["label"] == "1M keys" else int(r["label"].split()[0].replace("k", "000")))
        mem = sorted(mem, key=count)
        for r in mem:
            w(f"| {r['label']} | {r['rss_kb'] / 1024:.1f} | {r['hwm_kb'] / 1024:.1f} | "
              f"{fmt(r.get('ready_s'), 2)} | {fmt(r.get('idle_cpu_ms'), 0)} over {r.get('idle_window_s', '–')} s |")
            if r["label"] == "1 key":
                targets.append(("RSS idle ≤ 20 MB", f"{r['rss_kb'] / 1024:.1f} MB", r["rss_kb"] <= 20 * 1024,
                                f"over by {r['rss_kb'] / 1024 - 20:.1f} MB" if r['rss_kb'] > 20 * 1024 else ""))
            if r["label"] == "1M keys":
                targets.append(("RSS at 1M keys ≤ 256 MB", f"{r['rss_kb'] / 1024:.0f} MB (peak {r['hwm_kb'] / 1024:.0f} MB)",
                                r["rss_kb"] <= 256 * 1024,
                                f"over by {r['rss_kb'] / 1024 - 256:.0f} MB" if r['rss_kb'] > 256 * 1024 else ""))
        if len(mem) >= 2:
            a, b = mem[0], mem[-1]
            per = (b["rss_kb"] - a["rss_kb"]) * 1024 / (count(b) - count(a))
            w(f"\nPer key: ({b['label']} − {a['label']}) RSS ÷ keys = **{per:,.0f} bytes per key** "
              "(the key file is read a line at a time, each record parsed and indexed as it is read; "
              "the idle figure is after the load, the peak is VmHWM). Idle CPU over the window includes the "
              "usage-state rewrite (every 10 s when counters moved).")
        conns = by("conns")
        for r in conns:
            w(f"\nIdle keep-alive connections: {r['n']} open ({r['ok']} answered) added "
              f"{r['delta_kb'] / 1024:.2f} MB → **{r['delta_kb'] / r['n'] * 1000 / 1024:.2f} MB per 1k connections** "
              f"(RSS {r['before_kb'] / 1024:.1f} → {r['after_kb'] / 1024:.1f} MB).")
        w("")
        kf = by("keyfile")
        for r in kf:
            w(f"- key file with {r['label']}: {r['bytes'] / 1e6:.1f} MB on disk.")
        w("")

    # Reload
    rl = by("reload")
    for r in rl:
        r.setdefault("mode", "one_key")
    if rl:
        w("## Reloads of a 100k-key file under load\n")
        w("Before each measured window, `keygate keys create` adds a key to a staged copy of the "
          "100k-key file (its lock, read, validate, write, fsync and rename take the time in the "
          "first row, on the load generator's core); for *every key replaced*, the staged file's "
          "other keys (all but the bench key the load uses) then get new ids and hashes. In the "
          f"window, while `wrk -t1 -c{cbase} -d{dur}s` runs against the gateway, the staged file is "
          "renamed over the live one (the CLI's own last step) and a client polls with the new key "
          "every ~2 ms until it is accepted: the window holds the gateway's reload, not the writer. "
          "A control window follows each: the same wrk, and the same poller for as long with a "
          "well-formed key that never goes live, and no file change. The poller shares the load "
          "generator's core with wrk and the mock and slows them by itself (the control window's p99 "
          "against the idle baseline's, in the table, is that share; a 0.3 s busy loop there, tried "
          "outside the harness, doubled the p99 of a 5 s wrk run with no reload), so the target compares the reload "
          "window with the control window; the idle baseline is shown too. "
          "This instance runs with a metrics listener, whose key-index counters say whether the "
          "reload rebuilt the index.\n")
        modes = [(m, lab) for m, lab in (("one_key", "one key added"), ("replace", "every key replaced"))
                 if any(r["mode"] == m for r in rl)]
        w("| measure | " + " | ".join(lab for _, lab in modes) + " |")
        w("|---|" + "---|" * len(modes))
        sel = {m: [r for r in rl if r["mode"] == m] for m, _ in modes}

        def row(label, f, digits, unit=""):
            w(f"| {label} | " + " | ".join(f"{mmm([f(r) for r in sel[m]], digits)}{unit}" for m, _ in modes) + " |")

        def cnt(r, k):
            return (r.get("counters") or {}).get(k)

        row("`keys create` CLI on the 100k file (before the window)", lambda r: r.get("cli_s"), 3, " s")
        row("new key works, after the file is replaced", lambda r: r.get("works_after_swap_s"), 3, " s")
        row("wrk p99 baseline (100k keys loaded)", lambda r: r.get("base_p99_ms"), 3, " ms")
        row("wrk p99, control window (same poller, no reload)", lambda r: r.get("control_p99_ms"), 3, " ms")
        row("wrk p99 during the reload", lambda r: r.get("during_p99_ms"), 3, " ms")
        row("wrk max, control window", lambda r: r.get("control_max_ms"), 1, " ms")
        row("wrk max during the reload", lambda r: r.get("during_max_ms"), 1, " ms")
        row("req/s baseline", lambda r: r.get("base_rps"), 0)
        row("req/s, control window", lambda r: r.get("control_rps"), 0)
        row("req/s during", lambda r: r.get("during_rps"), 0)
        row("p99 during / control window", lambda r: r["during_p99_ms"] / r["control_p99_ms"] if r.get("control_p99_ms") and r.get("during_p99_ms") else None, 2)
        row("p99 during / idle baseline", lambda r: r["during_p99_ms"] / r["base_p99_ms"] if r.get("base_p99_ms") and r.get("during_p99_ms") else None, 2)
        for k, label in (("reloads", "`keygate_key_reloads_total` increase"),
                         ("index_rebuilds", "`keygate_key_index_rebuilds_total` increase"),
                         ("index_changes_applied", "`keygate_key_index_changes_applied_total` increase")):
            vals = {m: [cnt(r, k) for r in sel[m]] for m, _ in modes}
            if any(v is not None for vs in vals.values() for v in vs):
                w(f"| {label} | " + " | ".join(mmm(vals[m], 0) for m, _ in modes) + " |")
            else:
                w(f"| {label} | " + " | ".join("not exported by this build" for _ in modes) + " |")
        w("")
        one = sel.get("one_key", [])
        t = [r["works_after_swap_s"] for r in one if r.get("works_after_swap_s") is not None]
        if t:
            targets.append(("reload of 100k keys ≤ 1 s (new key works after the file is replaced)",
                            f"{med(t):.3f} s", med(t) <= 1.0, f"over by {med(t) - 1:.3f} s" if med(t) > 1 else ""))
        for m, lab in modes:
            ctl = [r["during_p99_ms"] / r["control_p99_ms"] for r in sel[m] if r.get("control_p99_ms") and r.get("during_p99_ms")]
            idle = [r["during_p99_ms"] / r["base_p99_ms"] for r in sel[m] if r.get("base_p99_ms") and r.get("during_p99_ms")]
            if ctl:
                x = med(ctl)
                goals.append((f"traffic p99 during a 100k-key reload ({lab}) ≤ 2× baseline (the control window)",
                              f"{x:.2f}× ({fmt(med([r['during_p99_ms'] for r in sel[m]]), 3)} vs {fmt(med([r['control_p99_ms'] for r in sel[m]]), 3)} ms; "
                              f"{med(idle):.2f}× the idle baseline's {fmt(med([r['base_p99_ms'] for r in sel[m]]), 3)} ms)",
                              x <= 2.0, f"{2 - x:.2f}× below" if x <= 2 else f"over by {x - 2:.2f}×"))
            elif idle:
                x = med(idle)
                goals.append((f"traffic p99 during a 100k-key reload ({lab}) ≤ 2× baseline",
                              f"{x:.2f}× ({fmt(med([r['during_p99_ms'] for r in sel[m]]), 3)} vs {fmt(med([r['base_p99_ms'] for r in sel[m]]), 3)} ms; no control window)",
                              x <= 2.0, f"{2 - x:.2f}× below" if x <= 2 else f"over by {x - 2:.2f}×"))
        if one:
            rb = [cnt(r, "index_rebuilds") for r in one]
            p99 = fmt(med([r.get("during_p99_ms") for r in one]), 3)
            full = [cnt(r, "index_rebuilds") for r in sel.get("replace", [])]
            check = (f"; the every-key reload counted {fmt(sum(x for x in full if x is not None), 0)} rebuild(s) in {len(full)} round(s)"
                     if any(x is not None for x in full) else "")
            if all(x is None for x in rb):
                goals.append(("a reload that changes one key among 100k does not rebuild the index",
                              f"not measured (p99 during it {p99} ms)", None,
                              "this build does not export keygate_key_index_rebuilds_total"))
            else:
                n = sum(1 for x in rb if x)
                ch = [cnt(r, "index_changes_applied") for r in one]
                goals.append(("a reload that changes one key among 100k does not rebuild the index",
                              f"rebuilt in {n} of {len(rb)} round(s); changes applied {mmm(ch, 0)}; p99 during it {p99} ms",
                              n == 0, ("no rebuild" if n == 0 else f"rebuilt in {n} of {len(rb)} rounds") + check))

    # Micro-benchmarks
    mb = meta.get("micro")
    w("## Micro-benchmarks (criterion, `cargo bench --bench keycheck`)\n")
    if mb:
        w("| benchmark | time (median estimate) |")
        w("|---|---|")
        for name, ns in mb:
            if ns < 10_000:
                w(f"| {name} | {ns:.1f} ns |")
            elif ns < 10_000_000:
                w(f"| {name} | {ns / 1000:.2f} µs |")
            else:
                w(f"| {name} | {ns / 1e6:.1f} ms |")
        d = dict(mb)
        a, b = d.get("keycheck/full/1k"), d.get("keycheck/full/1M")
        if a and b:
            targets.append(("full key check ≤ 250 ns", f"{a:.0f} ns at 1k, {d.get('keycheck/full/100k', 0):.0f} ns at 100k, {b:.0f} ns at 1M",
                            max(a, b) <= 250, f"over by {max(a, b) - 250:.0f} ns at the worst size" if max(a, b) > 250 else ""))
            targets.append(("full key check at 1M ≤ 1.5× the 1k time", f"{b / a:.2f}×", b / a <= 1.5,
                            f"over by {b / a - 1.5:.2f}×" if b / a > 1.5 else ""))
        w("\n`full` = `Token::parse` (prefix, alphabet, CRC32) + SHA-256 + `KeyIndex::lookup` + "
          "the key's GCRA cell (`RateCell::check`), presenting 1024 different keys spread over "
          "the index. `rate_check/refused` is the same call on a key over its limit (the 429 "
          "path); `index_build` is `KeyIndex::build` for 10k already-parsed keys (runtime "
          "state is created on a key's first use, not here).\n")
    else:
        w("Not run in this harness invocation (run `cargo bench --bench keycheck`; set "
          "`MICRO=1` to include it here).\n")

    # Where keygate-prod's extra CPU goes: both instances' perf samples, scaled to their CPU
    # per request at the base connection count.
    perf_lines = perf_side_by_side(meta.get("perf_reports") or {}, cpu_med("keygate", cbase),
                                   cpu_med("keygate-prod", cbase), cbase, found)
    sc = {(r["target"], r["case"]): r for r in by("syscalls")}
    if ("keygate", "key") in sc and ("haproxy", "key") in sc:
        found["syscalls"] = (f"{sc[('keygate', 'key')]['per_request']:.2f} syscalls per request for keygate vs "
                             f"{sc[('haproxy', 'key')]['per_request']:.2f} for HAProxy")
    cg = {r["target"]: r for r in by("instructions") if r.get("conns", 8) == 8}
    cg256 = {r["target"]: r for r in by("instructions") if r.get("conns") == 256}
    if "keygate" in cg256 and "haproxy" in cg256:
        k, h = cg256["keygate"], cg256["haproxy"]
        found["instructions256"] = (
            f"At 256 connections under callgrind keygate {k['per_request']:,.0f} instructions per request vs HAProxy "
            f"{h['per_request']:,.0f}" + (f", simulated last-level misses {k['ll_misses']:,.0f} vs {h['ll_misses']:,.0f}"
                                           if k.get("ll_misses") is not None and h.get("ll_misses") is not None else ""))
    ins = {t: r["per_request"] for t, r in cg.items()}
    if "keygate" in ins and "haproxy" in ins:
        text = (f"user-space instructions per request (callgrind) keygate {ins['keygate']:,.0f} vs "
                f"HAProxy {ins['haproxy']:,.0f} ({ins['keygate'] / ins['haproxy']:.2f}×)")
        bare = {t: r.get("without_sha256") for t, r in cg.items() if r.get("without_sha256")}
        if "keygate" in bare and "haproxy" in bare:
            text += (f", {bare['keygate']:,.0f} vs {bare['haproxy']:,.0f} ({bare['keygate'] / bare['haproxy']:.2f}×) "
                     f"without the SHA-256 valgrind runs in software")
        i1 = {t: r.get("i1_misses") for t, r in cg.items() if r.get("i1_misses") is not None}
        if "keygate" in i1 and "haproxy" in i1:
            text += f"; simulated L1 instruction misses {i1['keygate']:,.0f} vs {i1['haproxy']:,.0f}"
        if "keygate-plain" in ins:
            text += f"; the plain release build {ins['keygate-plain']:,.0f} instructions"
            if "keygate-plain" in i1:
                text += f", {i1['keygate-plain']:,.0f} L1 instruction misses"
        if "hyper-floor" in ins:
            text += (f"; hyper's server and client alone (examples/hyper_floor.rs, plain build) "
                     f"{ins['hyper-floor']:,.0f}")
        if "keygate-pgo-only" in ins:
            text += f"; before BOLT's layout {ins['keygate-pgo-only']:,.0f} instructions"
            if "keygate-pgo-only" in i1:
                text += f", {i1['keygate-pgo-only']:,.0f} L1 instruction misses"
        found["instructions"] = text
    if ("keygate-prod", "key") in sc and ("keygate", "key") in sc:
        found["prod_syscalls"] = (f"{sc[('keygate-prod', 'key')]['per_request']:.2f} syscalls per request for keygate-prod "
                                  f"vs {sc[('keygate', 'key')]['per_request']:.2f} for keygate")

    def table(items):
        w("| target | measured | verdict | by how much |")
        w("|---|---|---|---|")
        for name, val, ok, note in items:
            v = "not measured" if ok is None else verdict(ok)
            w(f"| {name} | {val} | {v} | {note} |")
        w("")

    w("\n## Performance targets\n")
    table(goals)
    missed = [name for name, _, ok, _ in goals if ok is False or ok == UNDECIDED]
    if missed:
        w("What the measurements and the profile say about the targets missed or undecided:\n")
        for key, text in goal_notes(found, missed):
            w(f"- {key}: {text}")
        w("")
    w("## Other targets\n")
    table(targets)
    missed = [name for name, _, ok, _ in targets if ok is False]
    if missed:
        w("What the measurements and the profile below say about the misses:\n")
        facts = meta.get("miss_facts", {})
        for note in MISS_NOTES:
            if any(name.startswith(note[0]) or note[0] in name for name in missed):
                extra = facts.get("throughput", "") if note[0].startswith("throughput") else ""
                w(f"- {note[1]}" + (f" {extra}" if extra else ""))
        w("")
    prof = meta.get("profile")
    w("## Profile of keygate under the throughput load\n")
    if prof:
        w(prof)
    else:
        w(meta.get("profile_note", "No profile was taken."))
    w("")
    if perf_lines:
        w("## keygate-prod vs keygate: where the production settings' CPU goes (perf)\n")
        L.extend(perf_lines)
        w("")
    w("## How to reproduce\n")
    w("```\n" + meta["command"] + "\n```\n")
    w("Raw per-run records: `" + meta.get("raw", "results.jsonl") + "` (kept in the work directory).")
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")

# `perf report -g none` ends a row with two "-" columns (no call-graph data), padded.
PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[(.)\]\s+(.*?)(?:\s+-\s+-)?\s*$")
PERF_COMM = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(.*?)(?:\s+-\s+-)?\s*$")


def perf_samples(path):
    """{(dso, symbol): samples} from `perf report -n --no-children --sort dso,symbol`."""
    out = {}
    try:
        for line in open(path, errors="replace"):
            m = PERF_LINE.match(line)
            if m and not line.startswith("#"):
                k = (m.group(3), m.group(5))
                out[k] = out.get(k, 0) + int(m.group(2))
    except OSError:
        pass
    return out


CG_NAME = re.compile(r"^(c?(?:ob|fn))=\((\d+)\)(?: (.*))?$")


def callgrind_self(path, fn_re=None, ob_re=None):
    """Instructions (the first event) a callgrind dump counts in functions whose name matches
    `fn_re`, or in objects whose path matches `ob_re`: their own cost, not their callees'.
    Used to set aside SHA-256, which valgrind runs in software (it hides SHA-NI), so the
    instruction counts can be compared with and without it."""
    fn_re = re.compile(fn_re) if fn_re else None
    ob_re = re.compile(ob_re) if ob_re else None
    names = {"ob": {}, "fn": {}}
    ob = fn = ""
    after_call = False
    total = 0
    try:
        lines = open(path, errors="replace")
    except OSError:
        return 0
    with lines:
        for line in lines:
            if line[:1].isdigit() or line[:1] in "+-*":
                # The line after `calls=` is the callee's inclusive cost, not this function's.
                hit = not after_call and ((fn_re and fn_re.search(fn)) or (ob_re and ob_re.search(ob)))
                after_call = False
                parts = line.split()
                if hit and len(parts) > 1 and parts[1].isdigit():
                    total += int(parts[1])
            elif line.startswith("calls="):
                after_call = True
            elif m := CG_NAME.match(line.rstrip("\n")):
                table = names[m.group(1).lstrip("c")]
                if m.group(3) is not None:
                    table[m.group(2)] = m.group(3)
                if m.group(1) == "ob":
                    ob = table.get(m.group(2), "")
                elif m.group(1) == "fn":
                    fn = table.get(m.group(2), "")
    return total


def perf_comm(path):
    """{thread name: samples} from `perf report -n --sort comm`."""
    out = {}
    try:
        for line in open(path, errors="replace"):
            m = PERF_COMM.match(line)
            if m and not line.startswith("#"):
                out[m.group(3)] = out.get(m.group(3), 0) + int(m.group(2))
    except OSError:
        pass
    return out


def perf_side_by_side(reports, cpu_min, cpu_prod, conns, found):
    """Self time per request by shared object, by thread and by symbol for keygate and
    keygate-prod: each instance's sample shares times its CPU per request (ms per 1k requests
    = µs per request) at `conns`. Returns report lines; puts the largest increases in found."""
    a, b = reports.get("keygate"), reports.get("keygate-prod")
    if not (a and b and cpu_min and cpu_prod):
        return []
    sa, sb = perf_samples(a), perf_samples(b)
    ta, tb = sum(sa.values()), sum(sb.values())
    if not (ta and tb):
        return []
    ua = lambda n: n / ta * cpu_min  # µs per request
    ub = lambda n: n / tb * cpu_prod
    L = [f"Self time per request, µs: each instance's perf samples ({ta} and {tb}) as shares of its "
         f"CPU per request at -c{conns} ({cpu_min:.1f} and {cpu_prod:.1f} µs, from the throughput table). "
         "The difference is what metrics and the JSON access log add, and where.\n"]
    L.append("| shared object | keygate | keygate-prod | difference |")
    L.append("|---|---|---|---|")
    da, db = {}, {}
    for (dso, _), n in sa.items():
        da[dso] = da.get(dso, 0) + n
    for (dso, _), n in sb.items():
        db[dso] = db.get(dso, 0) + n
    for dso in sorted(set(da) | set(db), key=lambda d: -(ub(db.get(d, 0)) - ua(da.get(d, 0))))[:6]:
        x, y = ua(da.get(dso, 0)), ub(db.get(dso, 0))
        L.append(f"| {dso} | {x:.2f} | {y:.2f} | {y - x:+.2f} |")
    kern = da.get("[kernel.kallsyms]", 0) / ta
    found["kernel_share"] = f"{kern * 100:.0f}% of keygate's samples are in the kernel"
    ca, cb = perf_comm(reports.get("keygate-comm", "")), perf_comm(reports.get("keygate-prod-comm", ""))
    if ca and cb:
        tca, tcb = sum(ca.values()), sum(cb.values())
        L.append("\n| thread | keygate | keygate-prod | difference |")
        L.append("|---|---|---|---|")
        for t in sorted(set(ca) | set(cb), key=lambda t: -cb.get(t, 0)):
            x, y = ca.get(t, 0) / tca * cpu_min, cb.get(t, 0) / tcb * cpu_prod
            L.append(f"| {t} | {x:.2f} | {y:.2f} | {y - x:+.2f} |")
        log_t = [t for t in cb if "log" in t]
        if log_t:
            found["log_thread"] = (f"keygate-prod's log writer thread ({', '.join(log_t)}) takes "
                                   f"{sum(cb[t] for t in log_t) / tcb * cpu_prod:.2f} µs per request")
    diff = {k: ub(sb.get(k, 0)) - ua(sa.get(k, 0)) for k in set(sa) | set(sb)}
    top = sorted(diff.items(), key=lambda kv: -kv[1])[:15]
    L.append("\nLargest increases by symbol (self time, µs per request):\n")
    L.append("| symbol | shared object | keygate | keygate-prod | difference |")
    L.append("|---|---|---|---|---|")
    for (dso, sym), d in top:
        short = sym if len(sym) <= 110 else sym[:107] + "…"
        L.append(f"| `{short}` | {dso} | {ua(sa.get((dso, sym), 0)):.2f} | {ub(sb.get((dso, sym), 0)):.2f} | {d:+.2f} |")
    found["perf_top"] = ", ".join(f"`{sym if len(sym) <= 60 else sym[:57] + '…'}` {d:+.2f} µs" for (dso, sym), d in top[:5])
    L.append("\nSampling error: a symbol with n samples is ±√n samples; rows of a few samples are noise.")
    return L


def goal_notes(found, missed):
    """Data behind each missed performance target (measured in this run, no guesses)."""
    out = []

    def hit(prefix):
        return any(prefix in name for name in missed)

    if hit("Production config"):
        parts = [found.get("prod"), found.get("prod_syscalls"), found.get("log_thread")]
        if found.get("access_lines_per_req") is not None:
            parts.append(f"{found['access_lines_per_req']:.3f} access lines per request reached the file"
                         + (f", {found['dropped']:.0f} dropped" if found.get("dropped") else ""))
        if found.get("perf_top"):
            parts.append("perf, largest self-time increases per request over the minimal config: " + found["perf_top"])
        out.append(("production config", "; ".join(p for p in parts if p) + "." if any(parts) else "no data"))
    if hit("Minimal config CPU"):
        k, h = found.get("cpu_base", (None, None))
        parts = [f"CPU per 1k requests keygate {fmt(k, 1)} ms vs HAProxy {fmt(h, 1)} ms" if k and h else None,
                 found.get("syscalls"), found.get("instructions"), found.get("kernel_share")]
        out.append(("minimal config vs HAProxy", "; ".join(p for p in parts if p) +
                    " (the syscall table and the perf profile below show where keygate's time goes)."))
    for c in (256, 1024):
        if hit(f"-c{c}:") and found.get(f"c{c}"):
            out.append((f"{c} connections", found[f"c{c}"] + (f" {found['instructions256']}." if c == 256 and found.get("instructions256") else "")))
    if hit("rate_limited") and found.get("429"):
        out.append(("429", found["429"]))
    if hit("traffic p99 during a 100k-key reload"):
        out.append(("reload", "the gateway is pinned to one core, so requests arriving while the "
                    "100k-key file is read, parsed, validated and (for a rebuild) indexed wait behind "
                    "that work; the reload table gives the time until the new key works and the max latency."))
    if hit("does not rebuild the index"):
        out.append(("one-key reload", "`keygate_key_index_rebuilds_total` grew during a reload that "
                    "added one key (see the reload table)."))
    return out


def added_latency_target(rate, added99):
    """The open-loop target for one rate: keygate's added p99 over going direct (the median of
    the rounds), beside the other proxies' in the same runs, which say whether the bound is one
    a proxy on this machine can meet at all (each hop pays the VM's wake-up from idle)."""
    lim = 150 if rate >= 1000 else 100
    add99 = added99["keygate"]
    m = med(add99)
    others = [(label, med(added99[n])) for n, label in (("haproxy", "HAProxy"), ("nginx", "nginx"))
              if n in added99]
    beside = ""
    if others:
        beside = "; in the same runs " + ", ".join(f"{label} {v:.0f} µs" for label, v in others)
        if m > lim and all(v > lim for _, v in others):
            beside += " (every proxy over the bound)"
    return (f"added p99 vs direct at {rate} req/s ≤ {lim} µs",
            f"{m:.0f} µs (rounds {min(add99):.0f}–{max(add99):.0f}){beside}", m <= lim,
            f"over by {m - lim:.0f} µs" if m > lim else "")


# Why a target can be missed, as the tables and the profile of this harness show it. Each is
# printed only when a target whose name contains the first string was missed in the run.
MISS_NOTES = [
    ("throughput ≥ 1.2× HAProxy",
     "Throughput: keygate makes the same system calls per request as HAProxy (the syscall "
     "table: 2 `recvfrom` + 2 `sendto`), and most of its CPU is the kernel's loopback TCP work "
     "(the shared-object split in the profile). The gap is user-space: hyper's HTTP/1 parsing "
     "and encoding on both sides, tokio's readiness and timer bookkeeping, and allocation, "
     "against HAProxy's hand-tuned C. Compare the CPU per 1k requests column."),
    ("added p99 vs direct at 1000",
     "Added latency at 1000 req/s: the proxies add p50s of the same order (the latency "
     "table), the cost on this VM of waking an idle process for each extra hop; the target's "
     "row gives HAProxy's and nginx's added p99 in the same runs."),
    ("added p99 vs direct at 1 req/s",
     "Added latency at 1 req/s: with a request a second every process sleeps in between, so "
     "each hop pays the VM's idle wake-up (a proxy adds two: its own, on the request and on "
     "the answer); HAProxy and nginx run side by side with keygate and direct, and the "
     "target's row gives their added p99; a handful of samples per round makes the p99 close "
     "to the maximum."),
    ("traffic p99 during reload",
     "Traffic p99 during a reload: the gateway is pinned to one core, and reading, validating "
     "and applying the 100k-key file on a blocking thread shares that core with the worker, "
     "so requests in that window can wait behind it; the thread steps aside every 256 records. "
     "The writer (the CLI) runs before the window. With a spare core the reload runs beside "
     "the traffic."),
    ("rate_limited answered",
     "429 throughput: the refusal costs about half of a proxied request's CPU; the runs "
     "marked above as overlapping the 10 s usage-state rewrite carry that rewrite on the "
     "same pinned core."),
    ("no_key answered",
     "401 throughput: see the CPU per request column; runs that overlapped the usage-state "
     "rewrite are marked above."),
    ("invalid_key answered",
     "401 (unknown key) throughput: see the CPU per request column; runs that overlapped the "
     "usage-state rewrite are marked above."),
]


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "filler":
        filler(args[0], int(args[1]))
    elif cmd == "sse":
        sse(args[0], args[1], int(args[2]), args[3], *args[4:])
    elif cmd == "idle":
        idle(args[0], args[1], int(args[2]), args[3])
    elif cmd == "reload-stage":
        reload_stage(*args)
    elif cmd == "reload":
        reload(*args)
    elif cmd == "reload-control":
        reload_control(*args)
    elif cmd == "wrk":
        print(json.dumps(parse_wrk(open(args[0]).read())))
    elif cmd == "throughput":
        f, name, rnd, c0, c1 = args
        d = parse_wrk(open(f).read())
        d.update({"kind": "throughput", "target": name, "round": int(rnd),
                  "cpu_s": float(c1) - float(c0)})
        if d.get("requests"):
            d["cpu_ms_per_1k"] = d["cpu_s"] * 1e6 / d["requests"]
        print(json.dumps(d))
    elif cmd == "oha":
        try:
            d = json.load(open(args[0]))
            pc = d["latencyPercentiles"]
            codes = d.get("statusCodeDistribution") or {}
            print(json.dumps({"p50_ms": pc["p50"] * 1e3, "p99_ms": pc["p99"] * 1e3,
                              "max_ms": d["summary"]["slowest"] * 1e3,
                              "n": sum(codes.values()), "ok": codes.get("200", 0),
                              "errors": d.get("errorDistribution") or {}}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(json.dumps({"p50_ms": None, "p99_ms": None, "max_ms": None, "n": 0,
                              "ok": 0, "error": str(e)}))
    elif cmd == "cpu":
        print(f"{cpu(args):.3f}")
    elif cmd == "core-busy":
        print(json.dumps(core_busy(args[0], args[1])))
    elif cmd == "free-ports":
        free_ports(int(args[0]))
    elif cmd == "metrics":
        print(json.dumps(metrics(args[0], args[1:])))
    elif cmd == "delta":
        a, b = (next(iter(json.loads(x).values())) for x in args)
        print(json.dumps(None if a is None or b is None else b - a))
    elif cmd == "settle":
        settle(args[0])
    elif cmd == "access-lines":
        print(access_lines(args[0]))
    elif cmd == "rss":
        print(json.dumps(rss(int(args[0]))))
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
