#!/usr/bin/env python3
"""Helpers of bench/run (python3 standard library only).

bench/run starts the processes (fake vault, runner, baselines) and drives
hyperfine and wrk; this file does what is awkward in bash: a timing loop
for when hyperfine is missing, peak RSS of a command, /proc sampling of a
running `serve`, a reference ticker for the fire-latency baseline, and
turning the raw files of each scenario into rows of the results table.

Subcommands (all paths absolute or relative to the current directory):

  timeit --runs N --warmup W [--prepare CMD] --export-json FILE (--name N CMD)...
      hyperfine's fallback: same JSON shape ({"results":[{command,times}]}).
  rss --runs N [--prepare CMD] --out FILE CMD
      peak RSS (KiB) of each run, measured by /usr/bin/time.
  pages URL N          print the list URLs `once` fetches for N job notes.
  free-port            print a free TCP port on 127.0.0.1.
  wait-healthz PORT JOBS TIMEOUT
      wait until serve's /healthz answers with scheduledJobs == JOBS.
  proc-snap PID OUT    CPU time, memory and context switches of a process.
  sample-rss PID SECONDS OUT
      VmRSS once a second for SECONDS seconds.
  ticks FIRST_SLOT N OUT
      reference scheduler: sleep to each whole second FIRST_SLOT.. and note
      how late it woke up.
  report SCENARIO SDIR DIR
      read the raw files in SDIR, append rows to DIR/results.jsonl.
  table DIR            print DIR/results.jsonl as a Markdown table.
  gen-stream FILE MIB  write ~MIB MiB of claude's stream-json lines to FILE.

Scenario 9 has its own driver, bench/hub_bench.py (a fake hub that hangs).
"""

import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime

PAGE = 500  # src/vault/rest.rs: PAGE
RSS_BUDGET_KIB = 16 * 1024


# --------------------------------------------------------------------------
# Measuring


def run_quiet(argv):
    """Runs argv with stdout/stderr discarded; returns (seconds, status, maxrss KiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, proc.returncode, usage.ru_maxrss


def prepare(cmd):
    if cmd:
        subprocess.run(shlex.split(cmd), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cmd_timeit(args):
    runs, warmup, prep, out, commands = 10, 0, None, None, []
    name = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--runs":
            runs = int(args[i + 1]); i += 2
        elif a == "--warmup":
            warmup = int(args[i + 1]); i += 2
        elif a == "--prepare":
            prep = args[i + 1]; i += 2
        elif a == "--export-json":
            out = args[i + 1]; i += 2
        elif a == "--name":
            name = args[i + 1]; i += 2
        else:
            commands.append((name or a, a)); name = None; i += 1
    results = []
    for cname, cmd in commands:
        argv = shlex.split(cmd)
        for _ in range(warmup):
            prepare(prep)
            run_quiet(argv)
        times, codes = [], []
        for _ in range(runs):
            prepare(prep)
            t, code, _ = run_quiet(argv)
            if code != 0:
                sys.exit(f"timeit: {cname!r} exited with {code}")
            times.append(t)
            codes.append(code)
        results.append({"command": cname, "times": times, "exit_codes": codes,
                        "median": statistics.median(times)})
        print(f"  {cname}: median {statistics.median(times) * 1000:.1f} ms "
              f"over {runs} runs", file=sys.stderr)
    with open(out, "w") as f:
        json.dump({"results": results, "tool": "bench/lib.py timeit"}, f)


TIME = "/usr/bin/time"


def cmd_rss(args):
    """Peak RSS through /usr/bin/time: a child's ru_maxrss also counts the
    memory of the process it was forked from up to its exec, so measured from
    here (python, ~14 MiB) every command would weigh at least that much;
    GNU time is small (under 1 MiB, see the floor it reports for /bin/true)."""
    runs, prep, out = 5, None, None
    while args and args[0].startswith("--"):
        flag, value, args = args[0], args[1], args[2:]
        if flag == "--runs":
            runs = int(value)
        elif flag == "--prepare":
            prep = value
        elif flag == "--out":
            out = value
    if not os.access(TIME, os.X_OK):
        print("rss: /usr/bin/time not found: apt-get install -y time (peak RSS not measured)",
              file=sys.stderr)
        with open(out, "w") as f:
            json.dump({"max_rss_kib": None}, f)
        return
    argv = shlex.split(args[0])
    kib_runs = []
    tmp = out + ".time"
    for _ in range(runs):
        prepare(prep)
        _, code, _ = run_quiet([TIME, "-f", "%M", "-o", tmp] + argv)
        if code != 0:
            sys.exit(f"rss: {args[0]!r} exited with {code}")
        with open(tmp) as f:
            kib_runs.append(int(f.read().split()[-1]))
    os.unlink(tmp)
    _, _, floor = run_quiet([TIME, "-f", "%M", "-o", tmp, "/bin/true"])
    with open(tmp) as f:
        floor = int(f.read().split()[-1])
    os.unlink(tmp)
    with open(out, "w") as f:
        json.dump({"max_rss_kib": kib_runs, "floor_kib": floor}, f)


def cmd_pages(url, n):
    # `once` asks for pages of PAGE until one comes back short, so N notes
    # take N // PAGE + 1 requests (the last one short or empty).
    for offset in range(0, (int(n) // PAGE + 1) * PAGE, PAGE):
        print(f"{url}/vault/default/api/notes?tag=job&include_content=true"
              f"&limit={PAGE}&offset={offset}")


def cmd_free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def cmd_wait_healthz(port, jobs, timeout):
    deadline = time.time() + float(timeout)
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                last = json.load(r)
                if last.get("scheduledJobs") == int(jobs):
                    print(json.dumps(last))
                    return
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    sys.exit(f"serve on port {port} not ready with {jobs} jobs after {timeout}s: {last}")


def read_status(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
    except OSError:
        pass
    return out


def kib(value):
    return int(value.split()[0]) if value else None


def proc_snap(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    utime, stime = int(fields[11]) / tick, int(fields[12]) / tick
    status = read_status(f"/proc/{pid}/status")
    tasks = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        st = read_status(f"/proc/{pid}/task/{tid}/status")
        if not st:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip() or "running"
        except OSError:
            wchan = "?"
        tasks[tid] = {
            "name": st.get("Name", "?"),
            "wchan": wchan,
            "voluntary": int(st.get("voluntary_ctxt_switches", 0)),
            "nonvoluntary": int(st.get("nonvoluntary_ctxt_switches", 0)),
        }
    return {
        "time": time.time(),
        "cpu_s": utime + stime,
        "utime_s": utime,
        "stime_s": stime,
        "rss_kib": kib(status.get("VmRSS")),
        "hwm_kib": kib(status.get("VmHWM")),
        "threads": int(status.get("Threads", 0)),
        "tasks": tasks,
    }


def cmd_proc_snap(pid, out):
    with open(out, "w") as f:
        json.dump(proc_snap(pid), f)


def cmd_sample_rss(pid, seconds, out):
    samples = []
    end = time.time() + float(seconds)
    while True:
        st = read_status(f"/proc/{pid}/status")
        if st.get("VmRSS"):
            samples.append(kib(st["VmRSS"]))
        left = end - time.time()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
    with open(out, "w") as f:
        json.dump({"rss_kib": samples}, f)


def cmd_ticks(first_slot, n, out):
    """The floor for fire latency: a process that only sleeps to each slot."""
    late_ms = []
    for k in range(int(n)):
        slot = int(first_slot) + k
        left = slot - time.time()
        if left > 0:
            time.sleep(left)
        late_ms.append((time.time() - slot) * 1000)
    with open(out, "w") as f:
        json.dump({"late_ms": late_ms}, f)


# --------------------------------------------------------------------------
# Reports


def load(path):
    with open(path) as f:
        return json.load(f)


def hf_times(paths, command):
    """Times (seconds) of `command` merged over hyperfine JSON files (rounds)."""
    times = []
    for p in paths:
        for r in load(p)["results"]:
            if r["command"] == command:
                times.extend(r["times"])
    if not times:
        raise SystemExit(f"no times for {command!r} in {paths}")
    return times


def rounds(d, prefix):
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.startswith(prefix) and f.endswith(".json"))


def ms(x):
    return f"{x * 1000:.1f} ms"


def mib(k):
    return f"{k / 1024:.1f} MiB"


def verdict(ok):
    return "PASS" if ok else "FAIL"


class Rows:
    def __init__(self, d):
        self.path = os.path.join(d, "results.jsonl")

    def add(self, scenario, metric, median, lo="–", hi="–", baseline="–",
            ratio="–", target="–", result="info", note=""):
        with open(self.path, "a") as f:
            f.write(json.dumps({
                "scenario": scenario, "metric": metric, "median": median,
                "min": lo, "max": hi, "baseline": baseline, "ratio": ratio,
                "target": target, "result": result, "note": note}) + "\n")


def triple(times, fmt=ms):
    return fmt(statistics.median(times)), fmt(min(times)), fmt(max(times))


def report_wall_vs(rows, d, scenario, metric, runner, base, base_label, limit):
    rt = hf_times(rounds(d, "round"), runner)
    bt = hf_times(rounds(d, "round"), base)
    ratio = statistics.median(rt) / statistics.median(bt)
    med, lo, hi = triple(rt)
    rows.add(scenario, metric, med, lo, hi,
             f"{ms(statistics.median(bt))} ({base_label})", f"{ratio:.2f}×",
             f"≤ {limit}×", verdict(ratio <= limit),
             f"{len(rt)} runs each, baseline min {ms(min(bt))} max {ms(max(bt))}")
    return rt, bt


def report_rss(rows, d, scenario, name, base_name, base_label, budget=True, extra=""):
    r = load(os.path.join(d, f"rss-{name}.json"))["max_rss_kib"]
    b = load(os.path.join(d, f"rss-{base_name}.json"))["max_rss_kib"]
    if r is None or b is None:
        rows.add(scenario, "peak RSS", "n/a", result="skipped",
                 note="apt-get install -y time (GNU time measures peak RSS)")
        return
    worst = max(r)
    rows.add(scenario, "peak RSS", mib(statistics.median(r)), mib(min(r)), mib(worst),
             f"{mib(statistics.median(b))} ({base_label})",
             f"{statistics.median(r) / statistics.median(b):.2f}×",
             "≤ 16 MiB (max)" if budget else "–",
             verdict(worst <= RSS_BUDGET_KIB) if budget else "info",
             f"max RSS of {len(r)} runs by /usr/bin/time (floor: /bin/true shows "
             f"{mib(load(os.path.join(d, f'rss-{name}.json'))['floor_kib'])})" + extra)


def report1(d, rows):
    report_wall_vs(rows, d, "1 once, 1k jobs, none due", "wall", "runner", "curl",
                   "curl, same pages", 1.5)
    hwm = os.path.join(d, "vmhwm.txt")
    log = open(hwm).read().strip().split("DEBUG ")[-1] if os.path.exists(hwm) else ""
    report_rss(rows, d, "1 once, 1k jobs, none due", "runner", "curl", "curl",
               extra=f"; the runner's own log says {log!r}" if log else "")


def report2(d, rows):
    s = "2 once, 10k jobs, none due"
    paths = rounds(d, "round")
    r1, r10 = hf_times(paths, "runner-1k"), hf_times(paths, "runner-10k")
    c1, c10 = hf_times(paths, "curl-1k"), hf_times(paths, "curl-10k")
    med, lo, hi = triple(r10)
    rows.add(s, "wall 10k", med, lo, hi, f"{ms(statistics.median(c10))} (curl)",
             f"{statistics.median(r10) / statistics.median(c10):.2f}×", "–", "info",
             f"{len(r10)} runs each")
    growth = statistics.median(r10) / statistics.median(r1)
    cgrowth = statistics.median(c10) / statistics.median(c1)
    # Marginal cost per 1k jobs beyond the first thousand, next to the cost of
    # the first thousand (which includes process start): linear means the
    # marginal cost is no more than the average.
    marginal = (statistics.median(r10) - statistics.median(r1)) / 9
    rows.add(s, "growth 10k/1k", f"{growth:.2f}×", "–", "–", f"{cgrowth:.2f}× (curl)",
             "–", "≤ 10× (linear)", verdict(growth <= 10),
             f"1k median {ms(statistics.median(r1))}; each further 1k jobs "
             f"{ms(marginal)}; curl 1k {ms(statistics.median(c1))}")
    r = load(os.path.join(d, "rss-runner-10k.json"))["max_rss_kib"]
    r1k = load(os.path.join(d, "rss-runner-1k.json"))["max_rss_kib"]
    b = load(os.path.join(d, "rss-curl-10k.json"))["max_rss_kib"]
    if r is None or r1k is None or b is None:
        rows.add(s, "peak RSS 10k", "n/a", result="skipped", note="apt-get install -y time")
        return
    rows.add(s, "peak RSS 10k", mib(statistics.median(r)), mib(min(r)), mib(max(r)),
             f"{mib(statistics.median(b))} (curl)",
             f"{statistics.median(r) / statistics.median(b):.2f}×", "–", "info",
             f"1k: {mib(statistics.median(r1k))}; growth "
             f"{statistics.median(r) / statistics.median(r1k):.2f}×")


def report3(d, rows):
    s = "3 once, 200 due, 4 at a time"
    _, bt = report_wall_vs(rows, d, s, "wall", "runner", "xargs", "xargs -P 4", 1.5)
    tmpfs = rounds(d, "tmpfs")
    if tmpfs:
        tt = hf_times(tmpfs, "runner-tmpfs")
        med, lo, hi = triple(tt)
        rows.add(s, "wall, state on tmpfs (diagnostic)", med, lo, hi,
                 f"{ms(statistics.median(bt))} (xargs -P 4)",
                 f"{statistics.median(tt) / statistics.median(bt):.2f}×", "–", "info",
                 "PARACHUTE_HOME on /dev/shm, where fsync is free: the gap to the "
                 "row above is what the runner's fsyncs cost on this disk")
    report_rss(rows, d, s, "runner", "xargs", "xargs", budget=False)


def ctxt_delta(a, b):
    """Context switches per task between two snapshots (tasks in b)."""
    per = {}
    for tid, t in b["tasks"].items():
        t0 = a["tasks"].get(tid, {"voluntary": 0, "nonvoluntary": 0})
        per[tid] = (f'{t["name"]}/{t.get("wchan", "?")}', t["voluntary"] - t0["voluntary"],
                    t["nonvoluntary"] - t0["nonvoluntary"])
    return per


def report4(d, rows):
    s = "4 serve, 1k jobs, idle"
    a, b = load(os.path.join(d, "snap-start.json")), load(os.path.join(d, "snap-end.json"))
    secs = b["time"] - a["time"]
    cpu = b["cpu_s"] - a["cpu_s"]
    rows.add(s, f"CPU time in {secs:.0f} s", f"{cpu:.2f} s", "–", "–", "–", "–",
             "≤ 0.1 s", verdict(cpu <= 0.1),
             f"utime {b['utime_s'] - a['utime_s']:.2f} s, stime {b['stime_s'] - a['stime_s']:.2f} s "
             f"(/proc/PID/stat, {1 / os.sysconf('SC_CLK_TCK') * 1000:.0f} ms ticks)")
    rss = load(os.path.join(d, "rss.json"))["rss_kib"]
    rows.add(s, "RSS (1 s samples)", mib(statistics.median(rss)), mib(min(rss)), mib(max(rss)),
             "–", "–", "≤ 16 MiB", verdict(max(rss) <= RSS_BUDGET_KIB and b["hwm_kib"] <= RSS_BUDGET_KIB),
             f"VmHWM {mib(b['hwm_kib'])} (includes start-up and the first poll)")
    per = ctxt_delta(a, b)
    total = sum(v + n for _, v, n in per.values())
    busy = {f"{name}[{tid}]": v + n for tid, (name, v, n) in per.items() if v + n}
    rows.add(s, f"wake-ups in {secs:.0f} s", str(total), "–", "–", "–", "–",
             f"≤ {secs:.0f} (< 1/s)", verdict(total <= secs),
             f"ctxt switches summed over {b['threads']} threads (start {a['threads']}): "
             + (", ".join(f"{k} {v}" for k, v in busy.items()) or "none"))


def parse_ts(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def report5(d, rows):
    s = "5 serve, fire latency"
    meta = load(os.path.join(d, "window.json"))
    first, n = meta["first_slot"], meta["slots"]
    wanted = set(range(first, first + n))
    notes = load(os.path.join(d, "runs.json"))
    runner = {}
    failed = 0
    for note in notes:
        m = note.get("metadata") or {}
        if "run_scheduled_for" not in m:
            continue
        slot = round(parse_ts(m["run_scheduled_for"]))
        if slot in wanted:
            runner[slot] = (parse_ts(m["run_started_at"]) - slot) * 1000
            if "job-run-failed" in note.get("tags", []):
                failed += 1
    agent = {}
    with open(os.path.join(d, "stamps.txt")) as f:
        for line in f:
            stamp, _, prompt = line.strip().partition(" ")
            m = re.search(r"\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d)", prompt)
            if m:
                slot = round(parse_ts(m.group(0)))
                if slot in wanted:
                    agent[slot] = (float(stamp) - slot) * 1000
    ticks = load(os.path.join(d, "ticks.json"))["late_ms"]
    fired = len(runner)
    lat = list(runner.values()) or [float("inf")]
    tick_p50 = statistics.median(ticks)
    p50 = statistics.median(lat)
    note = (f"{fired}/{n} slots fired, {failed} failed; run_started_at − run_scheduled_for "
            f"(ms precision)")
    rows.add(s, "p50 (runner stamp)", f"{p50:.1f} ms", f"{min(lat):.1f} ms", f"{max(lat):.1f} ms",
             f"{tick_p50:.2f} ms (sleeper)", f"{p50 / tick_p50:.1f}×" if tick_p50 > 0 else "–",
             "≤ 10 ms", verdict(p50 <= 10 and fired == n and failed == 0), note)
    rows.add(s, "max (runner stamp)", f"{max(lat):.1f} ms", "–", "–",
             f"{max(ticks):.2f} ms (sleeper)", "–", "≤ 100 ms",
             verdict(max(lat) <= 100 and fired == n and failed == 0),
             f"p90 {sorted(lat)[int(0.9 * (len(lat) - 1))]:.1f} ms")
    al = list(agent.values()) or [float("nan")]
    rows.add(s, "agent started (info)", f"{statistics.median(al):.1f} ms", f"{min(al):.1f} ms",
             f"{max(al):.1f} ms", "–", "–", "–", "info",
             f"{len(agent)}/{n} stamps; the agent's own clock at its start, "
             f"includes spawn, sh start and one exec of date")


def parse_wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    p99 = float(m.group(1)) * scale
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = []
    for pat in (r"Socket errors: [^\n]+", r"Non-2xx or 3xx responses: \d+"):
        e = re.search(pat, text)
        if e:
            errors.append(e.group(0))
    return {"rps": rps, "p99_ms": p99, "requests": total, "errors": errors}


def report6(d, rows):
    s = "6 serve /healthz, wrk 16 conns"
    runs = [parse_wrk(p) for p in sorted(rounds_txt(d, "wrk-runner"))]
    base = [parse_wrk(p) for p in sorted(rounds_txt(d, "wrk-vault"))]
    rps = [r["rps"] for r in runs]
    brps = statistics.median(r["rps"] for r in base)
    errs = "; ".join(e for r in runs for e in r["errors"]) or "no errors"
    rows.add(s, "requests/s", f"{statistics.median(rps):.0f}", f"{min(rps):.0f}", f"{max(rps):.0f}",
             f"{brps:.0f} (fake vault /health)", f"{statistics.median(rps) / brps:.2f}×",
             "report", "info", f"{len(runs)} rounds of {load(os.path.join(d, 'meta.json'))['duration']}; {errs}")
    p99 = [r["p99_ms"] for r in runs]
    bp99 = statistics.median(r["p99_ms"] for r in base)
    rows.add(s, "p99 latency", f"{statistics.median(p99):.2f} ms", f"{min(p99):.2f} ms",
             f"{max(p99):.2f} ms", f"{bp99:.2f} ms (fake vault)",
             f"{statistics.median(p99) / bp99:.2f}×", "report", "info")
    snaps = [load(p) for p in sorted(rounds(d, "snap-"), key=lambda p: int(os.path.basename(p).split("-")[1]))]
    rss = [s_["rss_kib"] for s_ in snaps]
    hwm = snaps[-1]["hwm_kib"]
    # Bounded: the second half of the rounds grows no higher than the first
    # half's peak plus 1 MiB (the first rounds warm up the allocator and
    # tiny_http's connection pool), and the peak stays within the budget.
    after = rss[1:]
    half = max(1, len(after) // 2)
    growth = max(after[half:] or after) - max(after[:half])
    rows.add(s, "VmRSS after each round", mib(rss[-1]), mib(min(rss)), mib(max(rss)),
             "–", "–", "VmHWM ≤ 16 MiB; 2nd half ≤ 1st half + 1 MiB",
             verdict(growth <= 1024 and hwm <= RSS_BUDGET_KIB),
             "VmRSS before, then after each round: " + " → ".join(mib(x) for x in rss)
             + f"; VmHWM {mib(hwm)}; threads {snaps[0]['threads']} → {snaps[-1]['threads']}")


def rounds_txt(d, prefix):
    return [os.path.join(d, f) for f in os.listdir(d) if f.startswith(prefix) and f.endswith(".txt")]


def report7(d, rows):
    s = "7 release binary"
    size = int(open(os.path.join(d, "size.txt")).read())
    path = os.path.join(d, "stripped.txt")
    stripped = open(path).read().strip() if os.path.exists(path) else "unknown (no readelf)"
    version = open(os.path.join(d, "version.txt")).read().strip()
    rows.add(s, "size", f"{size / 1024 / 1024:.2f} MiB", note=f"{size} bytes, stripped: {stripped}; {version}")
    rt = hf_times(rounds(d, "round"), "runner")
    bt = hf_times(rounds(d, "round"), "true")
    med, lo, hi = triple(rt)
    rows.add(s, "--version wall", med, lo, hi, f"{ms(statistics.median(bt))} (/bin/true)",
             f"{statistics.median(rt) / statistics.median(bt):.2f}×", "report", "info",
             f"{len(rt)} runs each, baseline min {ms(min(bt))} max {ms(max(bt))}")



def cmd_gen_stream(path, mib_total):
    """~MIB_TOTAL MiB of stream-json as claude -p --verbose prints it: an
    init line, turns of assistant tool calls and text, user tool results
    (some of 100 KiB), and a result line."""
    total = int(mib_total) << 20
    sid = "bench-0000-0000-0000-000000000000"
    init = {"type": "system", "subtype": "init", "cwd": "/srv/vault", "session_id": sid,
            "tools": ["Read", "Grep", "Bash"], "mcp_servers": [], "model": "claude-sonnet-4-5",
            "permissionMode": "dontAsk", "claude_code_version": "2.1.197"}
    filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40
    big = "x" * (100 << 10)
    written = 0
    with open(path, "w") as f:
        def put(obj):
            nonlocal written
            line = json.dumps(obj, separators=(",", ":")) + "\n"
            f.write(line)
            written += len(line)
        put(init)
        i = 0
        while written < total:
            i += 1
            tid = f"toolu_{i:020d}"
            put({"type": "assistant", "message": {"id": f"msg_{i}", "type": "message", "role": "assistant",
                 "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": filler},
                 {"type": "tool_use", "id": tid, "name": "Read", "input": {"file_path": f"/srv/vault/n{i}.md"}}],
                 "usage": {"input_tokens": 1000, "output_tokens": 50}}, "session_id": sid})
            content = big if i % 20 == 0 else filler
            put({"type": "user", "message": {"role": "user", "content": [{"tool_use_id": tid,
                 "type": "tool_result", "content": content}]}, "session_id": sid})
        put({"type": "result", "subtype": "success", "is_error": False, "num_turns": i, "result": "done",
             "session_id": sid, "total_cost_usd": 1.5, "usage": {"input_tokens": 1000 * i,
             "output_tokens": 50 * i, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
             "permission_denials": []})


def report8(d, rows):
    s = "8 stream-json flood, 100 MiB"
    def times(name):
        out = []
        for f in sorted(os.listdir(d)):
            if f.startswith(f"time-{name}") and f.endswith(".txt"):
                u, sy, m = open(os.path.join(d, f)).read().split()[-3:]
                out.append((float(u) + float(sy), int(m)))
        return out
    rt, jt = times("runner"), times("jq")
    cpu_r = statistics.median(t for t, _ in rt)
    cpu_j = statistics.median(t for t, _ in jt)
    ratio = cpu_r / cpu_j if cpu_j else float("inf")
    rows.add(s, "CPU (user+sys)", f"{cpu_r:.2f} s", f"{min(t for t, _ in rt):.2f} s",
             f"{max(t for t, _ in rt):.2f} s", f"{cpu_j:.2f} s (cat | jq -c .)", f"{ratio:.2f}×",
             "≤ 1×", verdict(ratio <= 1.0),
             f"{len(rt)} runs each; both include the cat that writes the bytes")
    hwm = []
    for f in sorted(os.listdir(d)):
        if f.startswith("vmhwm") and f.endswith(".txt"):
            m = re.search(r"peak memory: (\d+) KiB", open(os.path.join(d, f)).read())
            if m:
                hwm.append(int(m.group(1)))
    if hwm:
        worst = max(hwm)
        rows.add(s, "runner peak RSS", mib(statistics.median(hwm)), mib(min(hwm)), mib(worst),
                 f"{mib(statistics.median(m for _, m in jt))} (cat | jq, GNU time)", "–",
                 "≤ 32 MiB (max)", verdict(worst <= 32 * 1024),
                 "the runner's own VmHWM, from its debug log")
    ok = all("ok: jobs/flood" in open(os.path.join(d, f)).read()
             for f in os.listdir(d) if f.startswith("once") and f.endswith(".txt"))
    rows.add(s, "run result", "ok" if ok else "not ok", result=verdict(ok),
             note="the flood ends with a success result line; the note must be a success")


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def report9(d, rows):
    s = "9 serve while the hub hangs"
    phases = {n: load(os.path.join(d, f"phase-{n}.json"))
              for n in ("baseline", "hung", "hung-late", "bad-kid")}
    base = phases["baseline"]
    secs = base["seconds"]

    def statuses(entry):
        return ", ".join(f"{k}: {v}" for k, v in sorted(entry["status"].items()))

    for route, label in (("healthz", "/healthz"), ("auth", "/runner/jobs")):
        b = base[route]["ms"]
        bp50 = statistics.median(b)
        rows.add(s, f"{label}, hub answers", f"{bp50:.1f} ms", f"{min(b):.1f} ms", f"{max(b):.1f} ms",
                 note=f"p99 {percentile(b, 99):.1f} ms over {len(b)} requests in {secs:.0f} s; {statuses(base[route])}")
        for phase, what in (("hung", "hub hangs from the start"), ("hung-late", "hub hangs after loading"),
                            ("bad-kid", "unknown-kid storm, reload hangs")):
            e = phases[phase][route]
            x = e["ms"]
            p50 = statistics.median(x)
            worst = max(x)
            if route == "auth" and phase == "hung":
                # Every answer is a 503; none waits longer than one fetch
                # deadline (4 s) plus a margin.
                want = {"503"}
                ok = set(e["status"]) == want and worst <= 5500
                target = "all 503, max ≤ 5.5 s"
            elif route == "auth":
                ok = set(e["status"]) == {"200"} and p50 <= 2 * bp50 + 5
                target = "all 200, p50 ≤ 2× + 5 ms"
            else:
                ok = set(e["status"]) == {"200"} and p50 <= 2 * bp50 + 5
                target = "all 200, p50 ≤ 2× + 5 ms"
            rows.add(s, f"{label}, {what}", f"{p50:.1f} ms", f"{min(x):.1f} ms", f"{worst:.1f} ms",
                     f"{bp50:.1f} ms (hub answers)", f"{p50 / bp50:.2f}×" if bp50 else "–", target,
                     verdict(ok),
                     f"p99 {percentile(x, 99):.1f} ms over {len(x)} requests; {statuses(e)}; "
                     f"hub fetches {phases[phase]['fetches']}")
    bad = phases["bad-kid"].get("bad-kid")
    if bad:
        x = bad["ms"]
        rows.add(s, "unknown kid (its own answers)", f"{statistics.median(x):.1f} ms", f"{min(x):.1f} ms",
                 f"{max(x):.1f} ms", note=f"{len(x)} requests; {statuses(bad)}")


def cmd_table(d):
    path = os.path.join(d, "results.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    cols = ["scenario", "metric", "median", "min", "max", "baseline", "ratio", "target", "result"]
    head = ["scenario", "metric", "median", "min", "max", "baseline median", "ratio",
            "target", "result"]
    table = [head] + [[str(r[c]) for c in cols] for r in rows]
    width = [max(len(row[i]) for row in table) for i in range(len(cols))]
    def line(row):
        return "| " + " | ".join(v.ljust(width[i]) for i, v in enumerate(row)) + " |"
    print(line(table[0]))
    print("|" + "|".join("-" * (w + 2) for w in width) + "|")
    for row in table[1:]:
        print(line(row))
    notes = [(r["scenario"].split()[0], r["metric"], r["note"]) for r in rows if r.get("note")]
    if notes:
        print()
        for s, m, n in notes:
            print(f"- {s} {m}: {n}")


def report10(d, rows):
    s = "10 coordination vault"
    paths = rounds(os.path.join(d, "idle"), "round")
    vt, lt = hf_times(paths, "vault"), hf_times(paths, "local")
    ratio = statistics.median(vt) / statistics.median(lt)
    med, lo, hi = triple(vt)
    rows.add(s, "1k jobs none due: wall", med, lo, hi,
             f"{ms(statistics.median(lt))} (local, same jobs)", f"{ratio:.2f}×",
             "≤ 2.5×", verdict(ratio <= 2.5),
             f"{len(vt)} runs each; the extra is one more listing: the 1,000 state notes")

    def delta(kind, mode):
        a = load(os.path.join(d, kind, f"before-{mode}.json"))
        b = load(os.path.join(d, kind, f"after-{mode}.json"))
        return {m: b.get(m, 0) - a.get(m, 0) for m in sorted(set(a) | set(b))
                if b.get(m, 0) != a.get(m, 0)}

    def total(c):
        return sum(c.values())

    il, iv = delta("idle", "local"), delta("idle", "vault")
    rows.add(s, "1k jobs none due: requests", str(total(iv)), baseline=f"{total(il)} (local)",
             ratio=f"+{total(iv) - total(il)}", note=f"vault {iv}, local {il}")
    dl, dv = delta("due", "local"), delta("due", "vault")
    extra = (total(dv) - total(dl)) / 50
    rows.add(s, "50 due: requests per run", f"{total(dv) / 50:.1f}",
             baseline=f"{total(dl) / 50:.1f} (local)", ratio=f"+{extra:.1f}",
             target="≤ +5 per run", result=verdict(extra <= 5),
             note=f"whole pass: vault {dv}, local {dl}")


REPORTS = {"10": report10, "1": report1, "2": report2, "3": report3, "4": report4, "5": report5, "6": report6,
           "7": report7, "8": report8, "9": report9}


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "timeit":
        cmd_timeit(args)
    elif cmd == "rss":
        cmd_rss(args)
    elif cmd == "pages":
        cmd_pages(*args)
    elif cmd == "free-port":
        cmd_free_port()
    elif cmd == "wait-healthz":
        cmd_wait_healthz(*args)
    elif cmd == "proc-snap":
        cmd_proc_snap(*args)
    elif cmd == "sample-rss":
        cmd_sample_rss(*args)
    elif cmd == "ticks":
        cmd_ticks(*args)
    elif cmd == "gen-stream":
        cmd_gen_stream(*args)
    elif cmd == "report":
        REPORTS[args[0]](args[1], Rows(args[2]))
    elif cmd == "table":
        cmd_table(args[0])
    else:
        sys.exit(f"unknown subcommand {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
