"""enhrec-wrap's benchmark suite (`make bench`): every figure measured side by side in one run,
the same workload unrecorded and recorded, printed as a table and written into
docs/PERFORMANCE.md between its `bench:begin` and `bench:end` markers.

Run as root with the installed venv's Python: /opt/enhrec-wrap/venv/bin/python3 benchmarks/run.py
Options: --quick (fewer repetitions, for trying it out), --no-doc (print only).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback

import fleet
import harness as h

REPO = os.path.dirname(h.HERE)
DOC = os.path.join(REPO, "docs", "PERFORMANCE.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

OPEN_LOOP = 200_000       # figures 2 and 3: open+close per run
FORK_LOOP = 1_000         # figures 2 and 3: fork+exec per run
EXEC_STORM = 2_000
OPEN_STORM = 100_000
BUILD_FILES = 240
BUILD_HEADERS = 24
CONSUMER_EVENTS = 100_000
IDLE_SESSIONS = 10
FLEET_OPENS = 100_000    # shipping to a collector: the recorded session's opens
FLEET_RATES = (1_000, 5_000, 15_000)   # ... and the steady rates (lines/s)


class Suite:
    def __init__(self, quick):
        self.quick = quick
        self.ws = h.Workspace()
        self.rows = []      # (figure, measured, target, verdict)
        self.notes = []
        self.details = {}

    def reps(self, normal, quick):
        return quick if self.quick else normal

    def row(self, figure, measured, target="", met=None):
        verdict = "" if met is None else ("met" if met else "NOT met")
        self.rows.append((figure, measured, target, verdict))
        print(f"  {figure}: {measured}" + (f"  [{target}: {verdict}]" if target else ""), flush=True)

    # -- 1. start latency ---------------------------------------------------------------------

    def start_latency(self):
        config = self.ws.config()
        runs = self.reps(15, 10)
        cold_runs = self.reps(5, 3)
        cache_entry = h.program_cache_entry(config)
        h.run(config.argv(["/bin/true"]))   # fills the compiled-program cache for this config
        bare, wrapped = [], []
        for _ in range(runs):   # interleaved, so drift hits both alike
            bare.append(h.timed(["/bin/true"]))
            wrapped.append(h.timed(config.argv(["/bin/true"])))
        extra = [w - b for w, b in zip(wrapped, bare)]
        cold = []
        for _ in range(cold_runs):   # the first session after an install or a kernel change
            os.unlink(cache_entry)
            b = h.timed(["/bin/true"])
            cold.append(h.timed(config.argv(["/bin/true"])) - b)
        warm = self._split(config, runs, cache_entry, cold=False)
        compiled = self._split(config, cold_runs, cache_entry, cold=True)
        self.details["start"] = {"bare_ms": h.median(bare) * 1000,
                                 "wrapped_ms": h.median(wrapped) * 1000, "parts_ms": warm,
                                 "cold_parts_ms": compiled}
        ok = h.median(extra) <= 0.300
        self.row("1. start latency, `enhrec-wrap -- /bin/true` minus `/bin/true` "
                 "(programs in the compiled-program cache: every session but the first)",
                 f"median {h.median(extra) * 1000:.0f} ms, p95 {h.p95(extra) * 1000:.0f} ms "
                 f"({runs} runs; bare /bin/true {h.median(bare) * 1000:.1f} ms)",
                 "median ≤ 300 ms", ok)
        self.row("1. start latency split, cached (medians)",
                 f"Python start + imports {warm['import']:.0f} ms, BPF load (verifier) + attach "
                 f"{warm['load']:.0f} ms, rest of recorder set-up {warm['probes_other']:.0f} ms, "
                 f"detach {warm['detach']:.0f} ms, everything else {warm['rest']:.0f} ms "
                 f"(instrumented total {warm['total']:.0f} ms)")
        self.row("1. start latency, first session (cache empty: BCC compiles)",
                 f"median {h.median(cold) * 1000:.0f} ms ({cold_runs} runs); split: Python start + "
                 f"imports {compiled['import']:.0f} ms, BCC compile + load + attach "
                 f"{compiled['load']:.0f} ms, detach {compiled['detach']:.0f} ms, everything else "
                 f"{compiled['rest'] + compiled['probes_other']:.0f} ms")
        self.notes.append("Start latency by step, cached (medians, ms; steps overlap: wait_child "
                          "holds the session's own run): "
                          + ", ".join(f"{k} {v:.0f}" for k, v in sorted(warm["spans"].items())))

    def _split(self, config, runs, cache_entry, cold):
        """Medians (ms) of the wrapper's start split, from its entry point with clocks."""
        parts = {"import": [], "load": [], "probes_other": [], "detach": [], "rest": [],
                 "total": []}
        spans = {}
        times_file = os.path.join(self.ws.dir, "startup-times.json")
        probe = os.path.join(h.HERE, "startup_probe.py")
        for _ in range(runs):
            if cold:
                os.unlink(cache_entry)
            begin = time.monotonic()
            h.run([h.VENV_PYTHON, "-I", probe, times_file, "--", "--config", config.path, "--",
                   "/bin/true"])
            end = time.monotonic()
            with open(times_file) as f:
                t = json.load(f)
            total = end - begin
            imported = t["imported_all"] - begin      # interpreter start + every import
            load = t["load_end"] - t["load_begin"]    # cache load, or BCC compile + load
            probes_other = (t["probes_end"] - t["probes_begin"]) - load
            detach = t["close_end"] - t["close_begin"]
            for key, value in (("import", imported), ("load", load),
                               ("probes_other", probes_other), ("detach", detach),
                               ("rest", total - imported - load - probes_other - detach),
                               ("total", total)):
                parts[key].append(value)
            for label, seconds in t["spans"].items():
                spans.setdefault(label, []).append(seconds)
        med = {k: h.median(v) * 1000 for k, v in parts.items()}
        med["spans"] = {k: h.median(v) * 1000 for k, v in spans.items()}
        return med

    # -- 2. host overhead ---------------------------------------------------------------------

    def _loops(self, reps):
        """Medians of (open loop CPU, fork+exec loop CPU, open loop wall, fork+exec loop wall):
        CPU time is what the recorder's programs cost the workload, and what other load on the
        machine disturbs least."""
        opens = [h.loop_times([self.ws.openloop, str(OPEN_LOOP), self.ws.target])
                 for _ in range(reps)]
        forks = [h.loop_times([self.ws.forkexec, str(FORK_LOOP), "/bin/true"])
                 for _ in range(reps)]
        return (h.median([o[1] for o in opens]), h.median([f[1] for f in forks]),
                h.median([o[0] for o in opens]), h.median([f[0] for f in forks]))

    def host_overhead(self):
        """Rounds of: no session, 1 session, 10 sessions (each round starts and stops them), so
        that drift and other load on the machine hit every level alike; ratios per round, then
        the median over rounds."""
        rounds, reps = self.reps(5, 2), 3
        config = self.ws.config()
        h.run(config.argv(["/bin/true"]))   # the programs in the cache, as for every session
        ratios = {"open1": [], "open10": [], "fork1": [], "fork10": []}
        base_rates = []
        for _ in range(rounds):
            # ... and no session's tracepoints still held after its end (bpf.HOLD_SECONDS)
            time.sleep(h.TRACEPOINT_HOLD_SECONDS + 1)
            base = self._loops(reps)
            one = h.IdleSessions(config, 1)
            try:
                with_one = self._loops(reps)
                more = h.IdleSessions(config, IDLE_SESSIONS - 1)
                try:
                    with_ten = self._loops(reps)
                finally:
                    more.stop()
            finally:
                one.stop()
            for key, level in (("1", with_one), ("10", with_ten)):
                ratios["open" + key].append(level[0] / base[0])
                ratios["fork" + key].append(level[1] / base[1])
                ratios.setdefault("open_wall" + key, []).append(level[2] / base[2])
                ratios.setdefault("fork_wall" + key, []).append(level[3] / base[3])
            base_rates.append((OPEN_LOOP / base[2], FORK_LOOP / base[3]))
        r = {k: h.median(v) for k, v in ratios.items()}
        self.details["host"] = {"ratios": ratios, "base_rates": base_rates}
        self.row("2. host overhead, open/close loop outside any session, 1 session active "
                 "(CPU time of the loop, ratio to no session)",
                 f"{r['open1']:.2f}× (rounds: {', '.join(f'{x:.2f}' for x in ratios['open1'])}; "
                 f"wall time {r['open_wall1']:.2f}×; "
                 f"{h.median([b[0] for b in base_rates]) / 1000:.0f}k open+close/s with none)",
                 "≤ 1.10×", r["open1"] <= 1.10)
        self.row(f"2. host overhead, open/close loop, {IDLE_SESSIONS} sessions active",
                 f"{r['open10']:.2f}× (wall {r['open_wall10']:.2f}×)")
        self.row("2. host overhead, fork+exec loop outside any session, 1 / "
                 f"{IDLE_SESSIONS} sessions active",
                 f"{r['fork1']:.2f}× / {r['fork10']:.2f}× (wall {r['fork_wall1']:.2f}× / "
                 f"{r['fork_wall10']:.2f}×; {h.median([b[1] for b in base_rates]):.0f} fork+exec/s "
                 "with none)")
        self.notes.append(f"Host overhead: {rounds} rounds of no session, 1 and "
                          f"{IDLE_SESSIONS} idle sessions, each loop run {reps} times per level "
                          "and round; ratios per round, the median of the rounds.")

    # -- 3. in-session overhead ---------------------------------------------------------------

    def in_session(self):
        reps = self.reps(3, 2)
        results = {}
        for name, argv, n in (("open", [self.ws.openloop, str(OPEN_LOOP), self.ws.target],
                               OPEN_LOOP),
                              ("fork", [self.ws.forkexec, str(FORK_LOOP), "/bin/true"],
                               FORK_LOOP)):
            plain, recorded, rates, lost = [], [], [], []
            for _ in range(reps):
                plain.append(h.loop_times(argv))
                config = self.ws.config()
                recorded.append(h.loop_times(config.argv(argv)))
                events = config.only_session()
                kernel = [e for e in events if e["event"].startswith("session.")
                          and e["event"] not in ("session.start", "session.end")]
                rates.append(len(kernel) / recorded[-1][0])
                end = h.session_end(events)
                lost.append(sum(end["lost_events"].values()))
            results[name] = (h.median([r[0] for r in recorded]) / h.median([p[0] for p in plain]),
                             h.median(rates), max(lost),
                             h.median([r[1] for r in recorded]) / h.median([p[1] for p in plain]))
        self.details["in_session"] = results
        self.row(f"3. in-session overhead, open/close loop ({OPEN_LOOP:,}; recorded vs "
                 "unrecorded loop time)",
                 f"{results['open'][0]:.2f}× (CPU time {results['open'][3]:.2f}×); events "
                 f"written: {results['open'][1]:,.0f} per second of loop; lost "
                 f"{results['open'][2]:,} (worst of {reps})")
        self.row(f"3. in-session overhead, fork+exec loop ({FORK_LOOP:,})",
                 f"{results['fork'][0]:.2f}× (CPU time {results['fork'][3]:.2f}×); events "
                 f"written: {results['fork'][1]:,.0f} per second of loop; lost "
                 f"{results['fork'][2]:,}")

    # -- consumer throughput -------------------------------------------------------------------

    def consumer(self):
        script = os.path.join(h.HERE, "consumer.py")
        out = {}
        for label, extra in (("full", []), ("events_log_only", ["--no-session-files"])):
            runs = []
            for _ in range(self.reps(3, 1)):
                data_dir = os.path.join(self.ws.dir, f"consumer-{label}-{len(runs)}")
                result = h.run([h.VENV_PYTHON, "-I", script, self.ws.openloop, self.ws.target,
                                str(CONSUMER_EVENTS), data_dir, *extra])
                runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
            out[label] = max(r["events_per_second"] for r in runs)
        self.details["consumer"] = out
        self.row("consumer throughput: open events decoded, built and written per second "
                 "(best of 3, real records drained from a full ring)",
                 f"{out['full']:,.0f} events/s to both sinks (audit log + session files); "
                 f"{out['events_log_only']:,.0f} events/s with the session files' gzip left out",
                 "≥ 200,000 events/s", out["full"] >= 200_000)

    # -- 4. exec storm ------------------------------------------------------------------------

    def exec_storm(self):
        true = os.path.join(self.ws.bin, "storm-true")
        if not os.path.exists(true):
            os.symlink("/bin/true", true)
        script = ('s=$EPOCHREALTIME; for ((i = 0; i < %d; i++)); do %s; done; '
                  'echo "$s $EPOCHREALTIME"' % (EXEC_STORM, true))
        reps = self.reps(3, 1)
        plain, recorded, counts = [], [], []

        def seconds(result):
            start, end = result.stdout.split()[-2:]
            return float(end) - float(start)
        for _ in range(reps):
            plain.append(seconds(h.run(["/bin/bash", "-c", script])))
            config = self.ws.config()
            recorded.append(seconds(h.run(config.argv(["/bin/bash", "-c", script]))))
            events = config.only_session()
            counts.append(sum(1 for e in h.kernel_events(events, "session.command")
                              if e["path"] == true and e["return_code"] == 0))
        ratio = h.median(recorded) / h.median(plain)
        worst = min(counts)
        self.row(f"4. exec storm, {EXEC_STORM:,} × /bin/true in a session",
                 f"{worst:,}/{EXEC_STORM:,} recorded (worst of {reps}), time {ratio:.2f}×",
                 f"{EXEC_STORM:,}/{EXEC_STORM:,}", worst == EXEC_STORM)

    # -- 5. open storm ------------------------------------------------------------------------

    def open_storm(self):
        argv = [self.ws.openloop, str(OPEN_STORM), self.ws.target]
        reps = self.reps(3, 1)
        plain, recorded, results, peaks = [], [], [], []
        for _ in range(reps):
            plain.append(h.loop_seconds(argv))
            config = self.ws.config()
            wall, _, peak = h.loop_times_and_peak(config.argv(argv))
            recorded.append(wall)
            peaks.append(peak)
            events = config.only_session()
            got = sum(1 for e in h.kernel_events(events, "session.disk")
                      if e["path"] == self.ws.target)
            lost = h.session_end(events)["lost_events"]
            results.append((got, lost["disk"], lost))
        exact = all(got + lost == OPEN_STORM for got, lost, _ in results)
        worst = min(results)
        self.details["open_storm"] = results
        self.row(f"5. open storm, {OPEN_STORM:,} open/close in a session (default config)",
                 f"recorded {worst[0]:,}, lost {worst[1]:,} (worst of {reps}: "
                 + ", ".join(f"{g:,}+{lo:,}" for g, lo, _ in results)
                 + f"); recorded + lost = {OPEN_STORM:,} exactly: {'yes' if exact else 'NO'}; "
                 f"loop time {h.median(recorded) / h.median(plain):.2f}×; the recorder's peak "
                 f"RSS {max(peaks) / 1024:.0f} MB",
                 "100% recorded (else exact sum, explained)",
                 worst[0] == OPEN_STORM)

    # -- 6. a parallel build ------------------------------------------------------------------

    def _make_project(self, root):
        os.makedirs(os.path.join(root, "include"))
        for i in range(BUILD_HEADERS):
            with open(os.path.join(root, "include", f"h{i}.h"), "w") as f:
                f.write(f"#ifndef H{i}_H\n#define H{i}_H\n#include <stdio.h>\n#include <string.h>\n"
                        f"struct s{i} {{ int a; double b; char c[{16 + i}]; }};\n"
                        f"static inline int h{i}(int x) {{ return x * {i + 3} + (int)sizeof(struct s{i}); }}\n"
                        "#endif\n")
        objs = []
        for i in range(BUILD_FILES):
            heads = "".join(f'#include "h{(i + k) % BUILD_HEADERS}.h"\n' for k in range(4))
            with open(os.path.join(root, f"f{i}.c"), "w") as f:
                f.write(f"#include <stdlib.h>\n{heads}"
                        f"int f{i}(int x) {{ char buf[64]; snprintf(buf, sizeof buf, \"%d\", x);"
                        f" return h{i % BUILD_HEADERS}(atoi(buf)) + {i}; }}\n")
            objs.append(f"f{i}.o")
        with open(os.path.join(root, "main.c"), "w") as f:
            f.write("".join(f"int f{i}(int);\n" for i in range(BUILD_FILES)))
            f.write("int main(void) { int t = 0;\n")
            f.write("".join(f"  t += f{i}({i});\n" for i in range(BUILD_FILES)))
            f.write("  return t == 0; }\n")
        objs.append("main.o")
        with open(os.path.join(root, "Makefile"), "w") as f:
            f.write("CC = gcc\nCFLAGS = -O1 -Iinclude\n"
                    f"OBJS = {' '.join(objs)}\n"
                    "prog: $(OBJS)\n\t$(CC) -o prog $(OBJS)\n"
                    "%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n"
                    "clean:\n\trm -f prog $(OBJS)\n")

    def build(self):
        root = os.path.join(self.ws.dir, "build")
        self._make_project(root)
        compiles = BUILD_FILES + 1    # main.c too
        reps = self.reps(2, 1)
        plain, recorded, checks = [], [], []
        make = ["make", "-s", "-C", root, "-j2"]
        for _ in range(reps):
            h.run(["make", "-s", "-C", root, "clean"])
            plain.append(h.timed(make))
            h.run(["make", "-s", "-C", root, "clean"])
            config = self.ws.config()
            recorded.append(h.timed(config.argv(make)))
            events = config.only_session()
            ok = [e for e in h.kernel_events(events, "session.command") if e["return_code"] == 0]
            names = {}
            for e in ok:
                name = os.path.basename(e["path"])
                names[name] = names.get(name, 0) + 1
            expected = {"gcc": compiles + 1, "cc1": compiles, "as": compiles, "collect2": 1,
                        "ld": 1}
            seen = {k: names.get(k, 0) for k in expected}
            lost = h.session_end(events)["lost_events"]
            checks.append((seen == expected and sum(lost.values()) == 0, seen, expected, lost))
        ratio = h.median(recorded) / h.median(plain)
        all_ok = all(c[0] for c in checks)
        seen, expected, lost = checks[-1][1:]
        self.details["build"] = {"plain": plain, "recorded": recorded, "checks": checks}
        self.row(f"6. `make -j2` of {compiles} C files ({BUILD_HEADERS} headers)",
                 f"wall {h.median(recorded):.1f} s vs {h.median(plain):.1f} s = {ratio:.2f}×; "
                 "compiler execs recorded (gcc/cc1/as/collect2/ld): "
                 + "/".join(str(seen[k]) for k in expected) + " of "
                 + "/".join(str(expected[k]) for k in expected)
                 + f", lost {sum(lost.values())}",
                 "every compiler exec recorded", all_ok)

    # -- 7. memory ----------------------------------------------------------------------------

    def memory(self):
        config = self.ws.config()
        h.run(config.argv(["/bin/true"]))   # the programs in the cache, as for every session
        one = h.IdleSessions(config, 1)
        try:
            first = h.proc_status(one.pids[0])
            watchdogs = [h.proc_status(c) for c in h.children(one.pids[0])
                         if h.proc_status(c).get("Name") != "sleep"]
            more = h.IdleSessions(config, IDLE_SESSIONS - 1)
            try:
                all_pids = one.pids + more.pids
                statuses = [h.proc_status(p) for p in all_pids]
            finally:
                more.stop()
        finally:
            one.stop()
        # The first session after an install or kernel change compiles with BCC: its peak.
        os.unlink(h.program_cache_entry(config))
        code = ("import resource, subprocess, sys\n"
                "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        cold_peak_kb = int(h.run([sys.executable, "-I", "-c", code,
                                  *config.argv(["/bin/true"])]).stdout.strip())
        pss_one = first["Pss"]
        pss_all = sum(s["Pss"] for s in statuses)
        extra_pss = (pss_all - pss_one) / (IDLE_SESSIONS - 1)
        mean_rss = sum(s["VmRSS"] for s in statuses) / len(statuses)
        mb = 1 / 1024
        wd = (f"; plus its watchdog process, {watchdogs[0]['VmRSS'] * mb:.0f} MB"
              if watchdogs else "")
        self.details["memory"] = {"first": first, "statuses": statuses, "watchdogs": watchdogs,
                                  "cold_peak_kb": cold_peak_kb}
        self.row("7. memory, recorder RSS with 1 session",
                 f"{first['VmRSS'] * mb:.0f} MB while recording, peak {first['VmHWM'] * mb:.0f} MB "
                 f"(programs from the cache){wd}; the first session after an install or kernel "
                 f"change (BCC compiles) peaks at {cold_peak_kb * mb:.0f} MB",
                 "≤ 150 MB", max(first["VmHWM"], cold_peak_kb) * mb <= 150)
        self.row(f"7. memory, each additional concurrent session ({IDLE_SESSIONS} running)",
                 f"{extra_pss * mb:.0f} MB more (PSS: shared library pages counted once; each "
                 f"recorder's own RSS {mean_rss * mb:.0f} MB, of which the rings' mapping is "
                 f"counted twice: the kernel maps their pages twice in a row)")

    # -- the reference's failure -------------------------------------------------------------

    def ls_loop(self):
        config = self.ws.config()
        loop = "i=0; while sleep .05; do ls / >/dev/null; i=$((i+1)); [ $i -lt 30 ] || break; done"
        h.run(config.argv(["/bin/bash", "-c", loop]))
        events = config.only_session()
        ls = [e for e in h.kernel_events(events, "session.command")
              if os.path.basename(e["path"]) == "ls" and e["argv"] == ["/"]]
        self.row("`while sleep .05; do ls; done` × 30", f"{len(ls)}/30 ls recorded",
                 "30/30", len(ls) == 30)

    # -- what a shared, already-loaded recorder would change --------------------------------

    def shared_estimate(self):
        """What a shared, already-loaded recorder would change in figures 1 and 7, from the
        measured parts (it is not built)."""
        start = self.details.get("start")
        if not start:
            return
        warm, cold = start["parts_ms"], start["cold_parts_ms"]
        self.notes.append(
            f"A shared, already-loaded recorder (sessions registering their cgroup with it) is "
            f"not built. Measured here, it would save a session the program load and attach "
            f"({warm['load']:.0f} ms of figure 1 with the compiled-program cache, "
            f"{cold['load']:.0f} ms without it) and, in figure 7, the per-session copy of the "
            f"maps and rings; the session's own process (Python, imports, the watchdog, the "
            f"consumer) stays. Its real gain is figure 2 with many sessions: one set of "
            f"programs instead of one per session (see the 10-session rows).")

    # -- shipping the log to a collector (issue 13) -------------------------------------------

    def fleet(self):
        reps = self.reps(3, 1)
        runs = [fleet.ship(self.ws, FLEET_OPENS) for _ in range(reps)]
        self.details["fleet"] = runs
        med = {k: h.median([r[k] for r in runs]) for k in
               ("lines_per_second", "lag_median_ms", "lag_p99_ms")}
        sizes = ", ".join(f"{r['lines']:,} lines" for r in runs)
        self.row(f"shipping the log over RELP to a collector on loopback, a {FLEET_OPENS:,}-open "
                 f"session (median of {reps}): lines/s shipped; lag from the host's day file to "
                 "the collector's copy",
                 f"{med['lines_per_second']:,.0f} lines/s; lag median {med['lag_median_ms']:,.0f} ms, "
                 f"p99 {med['lag_p99_ms']:,.0f} ms; {sum(r['missing'] for r in runs)} missing, "
                 f"{sum(r['duplicates'] for r in runs)} delivered twice ({sizes})")
        steady = [fleet.paced(self.ws, rate, 8) for rate in FLEET_RATES]
        self.details["fleet_paced"] = steady
        self.row("the same at a steady rate (sealed lines written by the installed AuditLog in "
                 "20 ms batches, 8 s each): lag from the host's day file to the collector's copy",
                 "; ".join(f"{rate:,} lines/s: median {r['lag_median_ms']:.1f} ms, p99 "
                           f"{r['lag_p99_ms']:.0f} ms, {r['missing']} missing"
                           for rate, r in zip(FLEET_RATES, steady)))
        self.row("sealing a line into the chain (seq, prev, HMAC; chain.seal, best of 5, "
                 "100,000 open events of ~500 bytes in batches of 512)",
                 f"{fleet.seal_cost():.2f} µs per line")

    def close(self):
        self.ws.remove()


def render(suite, machine):
    m = machine
    lines = [
        f"Measured {m['date']} on {m['cpus']} CPUs ({m['cpu_model']}), kernel {m['kernel']}, "
        f"{m['memory_gib']} GiB, Python {m['python']}, by `make bench` "
        f"({'--quick' if suite.quick else 'full run'}). Load average (1 min) at the start "
        f"{m['load_start']:.2f} and at the end {m['load_end']:.2f}: other work on the machine "
        "shows in the figures as noise.",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
    ]
    for figure, measured, target, verdict in suite.rows:
        lines.append(f"| {figure} | {measured} | {target} | {verdict} |")
    if suite.notes:
        lines.append("")
        lines.extend(f"- {n}" for n in suite.notes)
    return "\n".join(lines)


def write_doc(table):
    block = f"{BEGIN}\n{table}\n{END}"
    if os.path.exists(DOC):
        with open(DOC) as f:
            text = f.read()
        if BEGIN in text and END in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                          flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = f"# Performance\n\n{block}\n"
    with open(DOC, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--only", help="comma-separated figure methods, e.g. start_latency,memory")
    args = parser.parse_args()
    h.require_root()
    h.ensure_compiler()
    machine = h.machine()
    machine["load_start"] = os.getloadavg()[0]
    print(f"benchmarks: {machine['cpus']} CPUs, {machine['cpu_model']}, kernel {machine['kernel']}",
          flush=True)
    suite = Suite(args.quick)
    figures = ["start_latency", "host_overhead", "in_session", "consumer", "exec_storm",
               "open_storm", "build", "memory", "ls_loop", "shared_estimate", "fleet"]
    if args.only:
        figures = [f for f in figures if f in args.only.split(",")]
    started = time.monotonic()
    try:
        for name in figures:
            print(f"[{time.monotonic() - started:5.0f} s] {name}", flush=True)
            try:
                getattr(suite, name)()
            except Exception as e:   # one broken figure must not hide the others
                traceback.print_exc()
                suite.row(name, f"ERROR: {e}", "", False)
    finally:
        suite.close()
    machine["load_end"] = os.getloadavg()[0]
    table = render(suite, machine)
    print()
    print(table)
    print(f"\nbenchmarks: {time.monotonic() - started:.0f} s")
    if not args.no_doc and not args.only:
        write_doc(table)
        print(f"benchmarks: wrote {DOC}")
    # Unmet targets are results, not failures; a figure that could not be measured is one.
    return 1 if any(r[1].startswith("ERROR") for r in suite.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
