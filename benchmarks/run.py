"""enhrec-wrap's benchmark suite (`make bench`): every figure measured side by side in one run,
the same workload unrecorded and recorded, printed as a table and written into
docs/PERFORMANCE.md between its `bench:begin` and `bench:end` markers.

Run as root with the installed venv's Python: /opt/enhrec-wrap/venv/bin/python3 benchmarks/run.py
Options: --quick (fewer repetitions, for trying it out), --no-doc (print only), --only (some
figures, by method name; prints only), --details FILE (every raw figure as JSON).
ENHREC_WRAP=/opt/enhrec-NAME/bin/enhrec-wrap measures a private install instead (harness.py).
Figures that unload the host's programs or empty their cache (start_first, host_overhead,
memory) change what other sessions on the machine use: run them under the make lock.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
import traceback

import fleet
import harness as h
import terminal

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
FULL_SPEED_OPENS = 1_000_000   # the open loop at full speed, over all the loops
IDLE_MAX = 60              # issue 8: a bastion host with 60 people logged in
# The steps of a wrapper's run that follow one another in its main thread (startup_probe.py):
# what they leave of the total is the interpreter's exit and the rest.
TOP_LEVEL_STEPS = ("Watchdog.__init__", "load_config", "open_session", "repair_at_start",
                   "Session.__init__", "Session.start_recording", "Session.write_start",
                   "Session.fork_child", "Session.start_child", "Session.wait_child", "Session.finish_lingering",
                   "Session.write_end", "Session.close")
# Steps each kind of start must have run (else the probe measured something else).
CACHED_STEPS = ("Watchdog.arm", "_spawn", "os.fork", "HostPrograms.hold_for_session", "program_version",
                "HostPrograms.open", "SessionRings.create", "SessionRings.register",
                "Recording.wait_registered", "Session.fork_child", "Session.start_child",
                "Session.close")
LOADED_STEPS = CACHED_STEPS + ("HostPrograms.open_or_load", "HostPrograms._load", "read_cache",
                               "pin_entry")
COMPILED_STEPS = LOADED_STEPS + ("compile_entry",)
# Runs redone because another session on the machine loaded the set first, before a figure fails.
MAX_REDONE = 20
TRACING_PROGRAM_TYPES = {"tracepoint", "raw_tracepoint", "raw_tracepoint_writable", "kprobe",
                         "tracing", "perf_event", "lsm"}
SIZING_CODE = """
import json
from enhrec_wrap.config import Config
from enhrec_wrap.kernel import abi, rings
from enhrec_wrap.kernel.host import possible_cpus
cpus = possible_cpus()
print(json.dumps({"cpus": cpus, "backlog_pause": rings.BACKLOG_PAUSE,
                  "backlog_resume": rings.BACKLOG_RESUME,
                  "disk_ring_bytes": rings.ring_bytes(Config(), cpus)[abi.STREAM_DISK]}))
"""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def each(texts: list) -> str:
    """Per-run texts, once when every run said the same."""
    if len(set(texts)) == 1 and len(texts) > 1:
        return f"{texts[0]} (each of {len(texts)} runs)"
    return "; ".join(texts)
TTY_CAT_MB = 20
TTY_KEYS = 200
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

    def invalidate(self, figure, first_row, unloads, holds_links):
        """A figure during which something outside the benchmark unloaded the host's set
        (harness.SetWatch). With no session registered it only costs the next session a load.
        With sessions registered: if they hold the set's links (main since 946a1bb) they stay
        recorded, but a new session loads a second set, attached beside theirs, which the host
        figure would measure too; if they do not, they went on unrecorded without a lost count.
        Such rows are kept, marked, and explained in a note."""
        when = ", ".join(time.strftime("%H:%M:%S", time.gmtime(t)) + f" ({n} registered)"
                         for t, n in unloads)
        spoiled = any(n for _, n in unloads) and (not holds_links or figure == "host_overhead")
        if not spoiled:
            self.notes.append(f"During {figure}, something outside the benchmark unloaded the "
                              f"host's set ({when} UTC): sessions registered with it keep its "
                              "links, and the next session loaded it again.")
            return
        for i in range(first_row, len(self.rows)):
            name, measured, target, _ = self.rows[i]
            self.rows[i] = (name, measured, target, "NOT VALID (see the notes)")
        why = ("a second set was loaded beside the one the idle sessions hold, so the host "
               "loop ran both" if holds_links else "a session registered with it then goes on "
               "unrecorded, without a lost count")
        self.notes.append(
            f"NOT VALID: during {figure}, something outside the benchmark (another checkout's "
            f"code or tests) unloaded the host's set of programs with sessions registered, at "
            f"{when} UTC; {why}, so this figure's rows may not measure the code. Run the "
            "benchmark again when no other checkout's sessions or tests run.")

    def row(self, figure, measured, target="", met=None):
        verdict = "" if met is None else ("met" if met else "NOT met")
        self.rows.append((figure, measured, target, verdict))
        print(f"  {figure}: {measured}" + (f"  [{target}: {verdict}]" if target else ""), flush=True)

    # -- 1. start latency ---------------------------------------------------------------------

    def _start_runs(self, config, runs) -> dict:
        """`enhrec-wrap -- /bin/true` and a bare `/bin/true`, interleaved so that drift hits
        both alike: the wrapper's extra time until it exits, and until its stderr closes. A run
        that loaded the set (something else had unloaded it) is not a cached start: redone."""
        bare, wrapped, redone = [], [], 0
        while len(wrapped) < runs:
            plain = h.timed_exit(["/bin/true"])
            begin = time.time()
            timed = h.timed_exit(config.argv(["/bin/true"]))
            loaded = h.kernel_state().get("loaded_at")
            if loaded is not None and begin <= loaded <= time.time():
                redone += 1
                if redone > MAX_REDONE:
                    raise RuntimeError(f"{redone} cached starts found the set unloaded")
                continue
            bare.append(plain)
            wrapped.append(timed)
        return {"exit": [w[0] - b[0] for w, b in zip(wrapped, bare)],
                "closed": [w[1] - b[1] for w, b in zip(wrapped, bare)],
                "bare": [b[0] for b in bare], "redone": redone}

    def start_latency(self):
        """Cached start (the host's set pinned, as for every session but the first after an
        unload), with no other session and with IDLE_MAX idle ones."""
        config = self.ws.config()
        runs = self.reps(15, 7)
        h.run(config.argv(["/bin/true"]))   # the set pinned, if it was not
        alone = self._start_runs(config, runs)
        idle = h.IdleSessions(self.ws.config(), IDLE_MAX)
        try:
            crowded = self._start_runs(config, runs)
        finally:
            idle.stop()
        self.details["start"] = {"alone": alone, "crowded": crowded}
        for label, result, target in (("no other session", alone, 0.100),
                                      (f"{IDLE_MAX} idle sessions running", crowded, 0.150)):
            extra, closed = result["exit"], result["closed"]
            self.row(f"1. start latency, cached (programs pinned), {label}: "
                     "`enhrec-wrap -- /bin/true` minus `/bin/true`",
                     f"median {ms(h.median(extra))}, p95 {ms(h.p95(extra))} ({runs} runs"
                     + (f", {result['redone']} more redone: the set had been unloaded by "
                        "something else" if result["redone"] else "") + "; bare "
                     f"/bin/true {h.median(result['bare']) * 1000:.1f} ms); until its stderr "
                     f"closes (its watchdog takes the rings out after the wrapper's exit: what "
                     f"sshd without a terminal waits for) median {ms(h.median(closed))}",
                     f"median ≤ {target * 1000:.0f} ms", h.median(extra) <= target)

    def _probe(self, config, runs, before=None, needed=(), redone=None) -> list:
        """Runs of the wrapper's entry point with clocks (startup_probe.py): per run, the
        seconds from before fork to the probe's imports, to its end and to its exit, and the
        steps' spans. A run that did not run every `needed` step (another session on the
        machine loaded the set between `before` and the run) is redone, and counted in
        redone[0]; after MAX_REDONE of them it fails."""
        times_file = os.path.join(self.ws.dir, "startup-times.json")
        errors_file = os.path.join(self.ws.dir, "startup-probe.err")
        probe = os.path.join(h.HERE, "startup_probe.py")
        out = []
        redone = redone if redone is not None else [0]
        while len(out) < runs:
            if before:
                before()
            with open(errors_file, "w+") as errors:
                # Its exit, not its stderr's end: the watchdog keeps stderr a while longer.
                begin = time.monotonic()
                proc = subprocess.Popen([h.VENV_PYTHON, "-I", probe, times_file, "--",
                                         "--config", config.path, "--", "/bin/true"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=errors, env=h.environment())
                status = proc.wait()
                exited = time.monotonic()
                errors.seek(0)
                message = errors.read().strip()
            if status != 0:
                raise RuntimeError(f"startup_probe.py exited {status}: {message}")
            with open(times_file) as f:
                t = json.load(f)
            missing = [step for step in needed if not t["spans"].get(step, [0, 0])[1]]
            if not before and t["spans"].get("HostPrograms._load", [0, 0])[1]:
                missing = ["no load (it loaded the set: something else had unloaded it)"]
            if missing:
                redone[0] += 1
                if redone[0] > MAX_REDONE:
                    raise RuntimeError(f"startup_probe.py saw no call of {', '.join(missing)} "
                                       f"in {redone[0]} runs (is another session loading the "
                                       "set each time?)")
                continue
            out.append({"imported": t["imported"] - begin, "total": exited - begin,
                        "instrumented": t["imported_all"] - t["imported"],
                        "started": t["script"] - begin, "imports": t["imports"],
                        "exit": exited - t["end"],
                        "spans": {k: v[0] for k, v in t["spans"].items()},
                        "calls": {k: v[1] for k, v in t["spans"].items()}})
        return out

    @staticmethod
    def _split(probes, needed) -> dict:
        """Medians (ms) of the split; fails when a step that must run did not (the probe or the
        wrapper changed under it)."""
        for p in probes:
            missing = [step for step in needed if not p["calls"].get(step)]
            if missing:
                raise RuntimeError(f"startup_probe.py saw no call of {', '.join(missing)}")

        def med(step):
            return h.median([p["spans"].get(step, 0.0) for p in probes]) * 1000
        # A step that did not run in these starts (BCC's compile when cached) counts 0.
        split = collections.defaultdict(float, {step: med(step) for step in
                                                sorted({s for p in probes for s in p["spans"]})})
        split["import"] = h.median([p["imported"] for p in probes]) * 1000
        split["interpreter"] = h.median([p["started"] for p in probes]) * 1000
        split["imports"] = {m: h.median([p["imports"][m] for p in probes]) * 1000
                            for m in probes[0]["imports"]}
        split["total"] = h.median([p["total"] for p in probes]) * 1000
        split["exit"] = h.median([p["exit"] for p in probes]) * 1000
        split["instrumentation"] = h.median([p["instrumented"] for p in probes]) * 1000
        split["other"] = h.median([p["total"] - p["imported"] - p["instrumented"] - p["exit"]
                                   - sum(p["spans"].get(s, 0.0) for s in TOP_LEVEL_STEPS)
                                   for p in probes]) * 1000
        return split

    def _split_text(self, s) -> str:
        set_up = s["Session.start_recording"] - s["SessionCgroup.create"] - s["Recording.start"]
        rest_of_open = (s["Recording.start"] - s["HostPrograms.hold_for_session"]
                        - s["SessionRings.create"])
        return (f"Python start + imports {s['import']:.0f} ms (the interpreter until the "
                f"first line {s['interpreter']:.0f} ms); the host's set opened "
                f"(HostPrograms.hold_for_session) {s['HostPrograms.hold_for_session']:.0f} ms, of which "
                f"the program version (cache key) {s['program_version']:.0f} ms, opening the pins "
                f"{s['HostPrograms.open']:.0f} ms, loading {s['HostPrograms._load']:.0f} ms; "
                f"the session's rings created {s['SessionRings.create']:.0f} ms, registered "
                f"{s['SessionRings.register']:.0f} ms (in a thread: the session waited "
                f"{s['Recording.wait_registered']:.0f} ms for it); HostLock and the rest of "
                f"Recording.start {rest_of_open:.0f} ms; by step: the watchdog's ledger "
                f"{s['Watchdog.__init__']:.0f} and its shell's spawn {s['_spawn']:.0f}, config {s['load_config']:.0f}, PAM "
                f"{s['open_session']:.0f}, recovery {s['repair_at_start']:.0f}, Session.__init__ "
                f"{s['Session.__init__']:.0f}, cgroup {s['SessionCgroup.create']:.0f}, arming the "
                f"watchdog and the rest {set_up:.0f}, session.start "
                f"{s['Session.write_start']:.0f}, the child's fork "
                f"{s['Session.fork_child']:.0f} (os.fork {s['os.fork']:.0f}), its start "
                f"{s['Session.start_child']:.0f} (into the cgroup {s['SessionCgroup.add']:.0f}, "
                f"the wait for the registration "
                f"{s['Recording.wait_registered']:.0f}; the child's set-up and exec until it "
                f"succeeded {s['_read_all']:.0f}), the child's run "
                f"{s['Session.wait_child']:.0f}, session.end "
                f"{s['Session.write_end']:.0f}, close {s['Session.close']:.0f} ms; the rest of "
                f"the wrapper's main {s['other']:.0f} ms; the interpreter's exit after it "
                f"{s['exit']:.0f} ms (instrumented total {s['total']:.0f} ms, of which the "
                f"probe's own instrumenting {s['instrumentation']:.0f} ms)")

    def start_split(self):
        """Where a cached start's time goes, by step of the current code."""
        config = self.ws.config()
        h.run(config.argv(["/bin/true"]))
        redone = [0]
        split = self._split(self._probe(config, self.reps(15, 5), None, CACHED_STEPS, redone),
                            CACHED_STEPS)
        if redone[0]:
            self.notes.append(f"Start latency split: {redone[0]} run(s) redone, in which the "
                              "set had been unloaded by something else.")
        self.details["start_split"] = split
        self.row("1. start latency split, cached (medians)", self._split_text(split))
        imports = split.pop("imports")
        self.notes.append("Start latency by step, cached (medians, ms; steps nest: "
                          "Recording.start holds the set's opening and the rings' creation, "
                          "Session.start_child the waits for the migration and the registration): "
                          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(split.items())))
        self.notes.append("Imports of a cached start (medians, ms, in this order: each module "
                          "pays for the modules it is first to import): "
                          + ", ".join(f"{m} {v:.1f}" for m, v in imports.items()))

    def start_first(self):
        """The first session after the set was unloaded (an idle host): the programs come from
        the compiled-program cache; and after the cache was emptied (an install, a kernel or a
        BCC change): BCC compiles them."""
        config = self.ws.config()
        for label, runs, before, needed in (
                ("after the set was unloaded (programs from the compiled-program cache)",
                 self.reps(5, 2), h.unload_set, LOADED_STEPS),
                ("after the cache was emptied (BCC compiles)", self.reps(3, 1),
                 lambda: (h.unload_set(), h.empty_program_cache()), COMPILED_STEPS)):
            redone = [0]
            extra = [self._first_start(config, before, redone) for _ in range(runs)]
            s = self._split(self._probe(config, runs, before, needed, redone), needed)
            load = s["HostPrograms._load"]
            compiled = s["compile_entry"]
            self.details[f"start_first {label}"] = {"extra": extra, "split": s,
                                                    "redone": redone[0]}
            again = (f"; {redone[0]} more run(s) redone: another session on the machine loaded "
                     "the set first" if redone[0] else "")
            self.row(f"1. start latency, first session {label}",
                     f"median {ms(h.median(extra))} ({runs} runs{again}); split: Python start + "
                     f"imports {s['import']:.0f} ms, the set loaded {load:.0f} ms (reading the "
                     f"cache {s['read_cache']:.0f} ms, BCC compile {compiled:.0f} ms, maps "
                     f"created, programs verified, attached and pinned {s['pin_entry']:.0f} ms: "
                     f"map_create {s['map_create']:.0f}, prog_load (the verifier, two threads "
                     f"summed) {s['prog_load']:.0f}, the tracepoints' perf events "
                     f"{s['tracepoint_event']:.0f}, link_create and raw_tracepoint_open "
                     f"{s['link_create'] + s['raw_tracepoint_open']:.0f}, obj_pin "
                     f"{s['obj_pin']:.0f} ms), "
                     f"rings registered {s['SessionRings.register']:.0f} ms, everything else "
                     f"{s['total'] - s['import'] - load - s['Recording.wait_registered']:.0f} ms")

    @staticmethod
    def _first_start(config, before, redone) -> float:
        """One first session's extra time over /bin/true, from a run that loaded the set itself
        (the set's load time is in its run): else it is redone, counted in redone[0]."""
        while True:
            before()
            bare = h.timed_exit(["/bin/true"])[0]
            begin = time.time()
            wrapped = h.timed_exit(config.argv(["/bin/true"]))[0]
            end = time.time()
            loaded = h.kernel_state().get("loaded_at")
            if loaded is not None and begin <= loaded <= end:
                return wrapped - bare
            redone[0] += 1
            if redone[0] > MAX_REDONE:
                raise RuntimeError(f"{redone[0]} first sessions found the set loaded by "
                                   "another session on the machine")

    # -- 2. host overhead ---------------------------------------------------------------------

    def _loops(self, reps):
        """Medians of (open loop CPU, fork+exec loop CPU, open loop wall, fork+exec loop wall):
        CPU time is what the programs cost the workload, and what other load on the machine
        disturbs least."""
        opens = [h.loop_times([self.ws.openloop, str(OPEN_LOOP), self.ws.target])
                 for _ in range(reps)]
        forks = [h.loop_times([self.ws.forkexec, str(FORK_LOOP), "/bin/true"])
                 for _ in range(reps)]
        return (h.median([o[1] for o in opens]), h.median([f[1] for f in forks]),
                h.median([o[0] for o in opens]), h.median([f[0] for f in forks]))

    def host_overhead(self):
        """Rounds of: no programs loaded, then 1, 10 and 60 idle sessions (started one after
        another, the first loading the host's set), then none again with the set still loaded
        (until its idle unload). Each round starts and stops its sessions, so drift and other
        load hit every level alike; ratios per round to no programs, the median of the rounds."""
        rounds, reps = self.reps(5, 2), 3
        config = self.ws.config()
        levels = ("1", "10", str(IDLE_MAX), "0")
        ratios = {k: {level: [] for level in levels} for k in ("open", "fork", "open_wall",
                                                               "fork_wall")}
        base_rates, foreign = [], set()
        redone = 0
        for _ in range(rounds):
            while True:   # a baseline during which nobody loaded the set
                h.unload_set()
                foreign.update(self._foreign_programs())
                base = self._loops(reps)
                state = h.kernel_state()
                if state["version"] not in state["pinned"]:
                    break
                redone += 1
                if redone > MAX_REDONE:
                    raise RuntimeError("other sessions on the machine load the set during "
                                       "every baseline")
            measured = {}
            sessions = []
            try:
                for level in levels[:-1]:
                    sessions.append(h.IdleSessions(config, int(level) - sum(
                        len(s.procs) for s in sessions)))
                    measured[level] = self._loops(reps)
            finally:
                for s in reversed(sessions):
                    s.stop()
            h.wait_unregistered()
            measured["0"] = self._loops(reps)
            for level, m in measured.items():
                for i, key in enumerate(("open", "fork", "open_wall", "fork_wall")):
                    ratios[key][level].append(m[i] / base[i])
            base_rates.append((OPEN_LOOP / base[2], FORK_LOOP / base[3]))
        r = {key: {level: h.median(v) for level, v in by.items()} for key, by in ratios.items()}
        self.details["host"] = {"ratios": ratios, "base_rates": base_rates, "redone": redone}
        open_rate = h.median([b[0] for b in base_rates])
        for level, label in (("0", "0 sessions (the set still loaded, before its idle unload)"),
                             ("1", "1 idle session"), ("10", "10 idle sessions"),
                             (str(IDLE_MAX), f"{IDLE_MAX} idle sessions")):
            target, met = "", None
            if level == "1":
                target, met = "≤ 1.10×", r["open"]["1"] <= 1.10
            elif level == str(IDLE_MAX):
                target = "no growth: ≤ the 1-session ratio + 0.05 (the rounds' spread here)"
                met = r["open"][level] <= r["open"]["1"] + 0.05
            self.row(f"2. host open loop ({OPEN_LOOP:,} open+close, static, outside any "
                     f"session), {label}: CPU time of the loop, ratio to no programs loaded",
                     f"{r['open'][level]:.2f}× (rounds: "
                     + ", ".join(f"{x:.2f}" for x in ratios["open"][level])
                     + f"; wall {r['open_wall'][level]:.2f}×"
                     + (f"; {open_rate / 1000:,.0f}k open+close/s with no programs"
                        if level == "0" else "") + ")", target, met)
        self.row(f"2. host fork+exec loop ({FORK_LOOP:,} × /bin/true) outside any session, "
                 f"0 / 1 / 10 / {IDLE_MAX} idle sessions",
                 " / ".join(f"{r['fork'][lv]:.2f}×" for lv in ("0", "1", "10", str(IDLE_MAX)))
                 + " (wall " + " / ".join(f"{r['fork_wall'][lv]:.2f}×"
                                          for lv in ("0", "1", "10", str(IDLE_MAX)))
                 + f"; {h.median([b[1] for b in base_rates]):,.0f} fork+exec/s with none)")
        self.notes.append(
            f"Host overhead: {rounds} rounds of no programs loaded (the set unloaded and its "
            f"programs released by the kernel), 1, 10 and {IDLE_MAX} idle sessions "
            f"(`enhrec-wrap -- sleep 900`) and 0 again with the set still loaded; each loop run "
            f"{reps} times per level and round; ratios per round, the median of the rounds"
            + (f" ({redone} baseline(s) redone: another session on the machine loaded the set "
               "during it)" if redone else "") + ". "
            "Tracing programs of others (not the installed code's set: other checkouts' "
            "sessions and tools) loaded on the host at the start of the rounds, and so in every "
            "level alike, the baseline too: " + self._describe_foreign(foreign) + ".")

    def _foreign_programs(self) -> set:
        """(id, name) of the tracing programs loaded on the host that are not the installed
        code's set."""
        state = h.kernel_state()
        ours = h.set_program_ids(state["version"]) if state["version"] in state["pinned"] else set()
        return {(pid, name) for pid, kind, name in h.loaded_programs()
                if pid not in ours and kind in TRACING_PROGRAM_TYPES}

    @staticmethod
    def _describe_foreign(foreign) -> str:
        if not foreign:
            return "none"
        names = collections.Counter(name for _, name in foreign)
        return f"{len(foreign)} (" + ", ".join(f"{name} ×{n}" if n > 1 else name
                                               for name, n in sorted(names.items())) + ")"

    # -- 3. in-session overhead ---------------------------------------------------------------

    def in_session(self):
        reps = self.reps(3, 2)
        results = {}
        for name, argv, n in (("open", [self.ws.openloop, str(OPEN_LOOP), self.ws.target],
                               OPEN_LOOP),
                              ("fork", [self.ws.forkexec, str(FORK_LOOP), "/bin/true"],
                               FORK_LOOP)):
            plain, recorded, rates, lost, counts, pauses = [], [], [], [], [], []
            for _ in range(reps):
                plain.append(h.loop_times(argv))
                config = self.ws.config()
                recorded.append(h.loop_times(config.argv(argv)))
                events = config.only_session()
                kernel = [e for e in events if e["event"].startswith("session.")
                          and e["event"] not in ("session.start", "session.end")]
                rates.append(len(kernel) / recorded[-1][0])
                end = h.session_end(events)
                lost.append(end["lost_events"])
                pauses.append(h.paused(end))
                if name == "open":
                    counts.append(sum(1 for e in h.kernel_events(events, "session.disk")
                                      if e["path"] == self.ws.target))
                else:
                    counts.append(sum(1 for e in h.kernel_events(events, "session.command")
                                      if e["path"] == "/bin/true"))
            stream = "disk" if name == "open" else "command"
            sums = [c + lo[stream] for c, lo in zip(counts, lost)]
            results[name] = {"time": h.median([r[0] for r in recorded])
                             / h.median([p[0] for p in plain]),
                             "cpu": h.median([r[1] for r in recorded])
                             / h.median([p[1] for p in plain]),
                             "rate": h.median(rates), "recorded": counts,
                             "lost": [sum(lo.values()) for lo in lost],
                             "exact": all(x == n for x in sums), "pauses": pauses,
                             "loop_rate": n / h.median([r[0] for r in recorded])}
        self.details["in_session"] = results
        o, f = results["open"], results["fork"]
        self.row(f"3. in-session overhead, open/close loop ({OPEN_LOOP:,}; recorded vs "
                 "unrecorded loop time)",
                 f"{o['time']:.2f}× (CPU time {o['cpu']:.2f}×; {o['loop_rate']:,.0f} opens/s in "
                 f"the session); events written: {o['rate']:,.0f} per second of loop; recorded "
                 + ", ".join(f"{c:,}" for c in o["recorded"]) + f", lost worst {max(o['lost']):,} "
                 f"(of {reps}); recorded + lost = {OPEN_LOOP:,} exactly: "
                 f"{'yes' if o['exact'] else 'NO'}; the session " + each(o["pauses"]),
                 "nothing lost (else exact sum)", max(o["lost"]) == 0 and o["exact"])
        self.row(f"3. in-session overhead, fork+exec loop ({FORK_LOOP:,})",
                 f"{f['time']:.2f}× (CPU time {f['cpu']:.2f}×); events written: {f['rate']:,.0f} "
                 f"per second of loop; /bin/true recorded "
                 + ", ".join(f"{c:,}" for c in f["recorded"]) + f", lost worst {max(f['lost']):,}",
                 "every exec recorded (else exact sum)", f["exact"])

    # -- consumer throughput -------------------------------------------------------------------

    def _consumer_run(self, label, extra) -> list:
        script = os.path.join(h.HERE, "consumer.py")
        data_dir = os.path.join(self.ws.dir, f"consumer-{label}-{time.monotonic_ns()}")
        result = h.run([h.VENV_PYTHON, "-I", script, self.ws.openloop, self.ws.target,
                        str(CONSUMER_EVENTS), data_dir, *extra])
        return [json.loads(line) for line in result.stdout.strip().splitlines()]

    def consumer(self):
        out = {}
        for label, extra in (("full", []), ("events_log_only", ["--no-session-files"])):
            runs = [self._consumer_run(label, extra)[0] for _ in range(self.reps(3, 1))]
            out[label] = max(runs, key=lambda r: r["events_per_second"])
        full, alone = out["full"], out["events_log_only"]
        _, profile = self._consumer_run("profile", ["--profile"])
        self.details["consumer"] = {"runs": out, "profile": profile}
        self.row(f"consumer throughput: open events decoded, built and written per second "
                 f"(best of {self.reps(3, 1)}; {CONSUMER_EVENTS:,} real records drained from a "
                 "full ring through Session.poll, the wrapper's own loop)",
                 f"{full['events_per_second']:,.0f} events/s to both sinks (audit log + session "
                 f"files; main thread {full['main_thread_cpu'] * 1000:.0f} ms CPU, the session "
                 f"files' thread {full['other_threads_cpu'] * 1000:.0f} ms, for "
                 f"{full['seconds'] * 1000:.0f} ms wall); {alone['events_per_second']:,.0f} "
                 f"events/s with the session files left out",
                 "≥ 200,000 events/s", full["events_per_second"] >= 200_000)
        total = profile["seconds"]
        self.notes.append(
            "Consumer profile (cProfile of the main thread over the same drain, "
            f"{total * 1000:.0f} ms with the profiler's overhead; share of that time by module): "
            + ", ".join(f"{m} {100 * t / total:.0f}%" for m, t in profile["by_module"].items())
            + ". Top functions (own time): "
            + ", ".join(f"{name} {100 * t / total:.0f}% ({calls:,} calls)"
                        for name, calls, t in profile["functions"][:8]) + ".")

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
            end = h.session_end(events)
            results.append((got, end["lost_events"]["disk"], h.paused(end)))
        exact = all(got + lost == OPEN_STORM for got, lost, _ in results)
        worst = min(results)
        self.details["open_storm"] = results
        self.row(f"5. open storm, {OPEN_STORM:,} open/close in a session (default config)",
                 f"recorded {worst[0]:,}, lost {worst[1]:,} (worst of {reps}: "
                 + ", ".join(f"{g:,}+{lo:,}" for g, lo, _ in results)
                 + f"); recorded + lost = {OPEN_STORM:,} exactly: {'yes' if exact else 'NO'}; "
                 f"loop time {h.median(recorded) / h.median(plain):.2f}× (the session "
                 + each([p for _, _, p in results]) + f"); the recorder's peak RSS "
                 f"{max(peaks) / 1024:.0f} MB",
                 "100% recorded (else exact sum, explained)",
                 worst[0] == OPEN_STORM)

    # -- 5b. the open loop at full speed ------------------------------------------------------

    def open_full_speed(self):
        """One static open loop per CPU at once in one session (default config): the most
        opens per second this machine can make a session produce. Recorded + lost must equal
        the opens made; how long the wrapper drains after the loops end is the backlog's."""
        cpus = os.cpu_count()
        per_loop = FULL_SPEED_OPENS // cpus
        total = per_loop * cpus
        loops = " ".join(f"{self.ws.openloop} {per_loop} {self.ws.target} &" for _ in range(cpus))
        argv = ["/bin/bash", "-c", f"{loops} wait"]
        reps = self.reps(2, 1)
        plain, results = [], []
        for _ in range(reps):
            lines = h.run_with_peak(argv)[0]
            plain.append(total / max(float(line.split()[0]) for line in lines))
            config = self.ws.config()
            lines, wall, peak, cpu = h.run_with_peak(config.argv(argv))
            loop_wall = max(float(line.split()[0]) for line in lines)
            # What the session's processes used besides the loops: the recorder (and bash).
            recorder_cpu = cpu - sum(float(line.split()[1]) for line in lines)
            events = config.only_session()
            got = sum(1 for e in h.kernel_events(events, "session.disk")
                      if e["path"] == self.ws.target)
            end = h.session_end(events)
            lost = end["lost_events"]["disk"]
            results.append({"rate": total / loop_wall, "recorded": got, "lost": lost,
                            "paused": h.paused(end),
                            "loop_wall": loop_wall, "wall": wall, "peak_kb": peak,
                            "recorder_cpu": recorder_cpu})
        self.details["open_full_speed"] = {"plain_rates": plain, "results": results}
        exact = all(r["recorded"] + r["lost"] == total for r in results)
        worst = min(results, key=lambda r: r["recorded"])
        self.row(f"5. open loop at full speed: {cpus} static loops of {per_loop:,} at once in a "
                 f"session ({total:,} opens, default config)",
                 f"{h.median([r['rate'] for r in results]):,.0f} opens/s reached in the session "
                 f"({h.median(plain):,.0f}/s unrecorded); recorded {worst['recorded']:,}, lost "
                 f"{worst['lost']:,} (worst of {reps}: "
                 + ", ".join(f"{r['recorded']:,}+{r['lost']:,}" for r in results)
                 + f"); recorded + lost = {total:,} exactly: {'yes' if exact else 'NO'}; the "
                 "session " + each([r["paused"] for r in results]) + "; the loops took "
                 f"{h.median([r['loop_wall'] for r in results]):.2f} s, the session "
                 f"{h.median([r['wall'] for r in results]):.2f} s (the rest is the drain), "
                 "the recorder's CPU time " + ", ".join(f"{r['recorder_cpu']:.1f} s"
                                                        for r in results)
                 + f"; its peak RSS {max(r['peak_kb'] for r in results) / 1024:,.0f} MB",
                 "100% recorded (else exact sum, explained)",
                 worst["recorded"] == total and exact)
        self.notes.append(self._sizing_note(h.median(plain)))

    def _sizing_note(self, free_rate) -> str:
        """What rate the design is sized for, from the installed code's constants and this
        run's figures (the consumer's record size and rate, the loops' unrecorded rate)."""
        consts = json.loads(h.run([h.VENV_PYTHON, "-I", "-c", SIZING_CODE]).stdout)
        consumer = self.details.get("consumer", {}).get("runs", {}).get("full")
        if not consumer:
            return "What the open path is sized for: not computed (no consumer figure)."
        record, rate = consumer["record_bytes"], consumer["events_per_second"]
        ring_records = int(consts["disk_ring_bytes"] // record)
        quarter = ring_records // 4
        return (f"What the open path is sized for: an open record of this benchmark's path takes "
                f"{record:.0f} bytes in the ring (measured in the consumer figure), so the default "
                f"disk ring ({consts['disk_ring_bytes'] / 2**20:g} MiB on {consts['cpus']} CPUs) "
                f"holds {ring_records:,}. A ring wakes the recorder once it is a quarter full "
                f"({quarter:,} records), and the recorder pauses the session (freezes its cgroup) "
                f"while {consts['backlog_pause']:,} records wait in user space or a ring is a "
                f"quarter full, until they are down to {consts['backlog_resume']:,} and every "
                f"ring below a sixteenth. So the sustained rate is the consumer's "
                f"({rate:,.0f} events/s measured above): a faster session is slowed to it, not "
                f"dropped. What the ring itself must absorb is what comes between the "
                f"quarter-full wake-up and the freeze, three quarters of it, {3 * quarter:,} "
                f"records: {3 * quarter / free_rate * 1000:,.1f} ms at the {free_rate:,.0f} "
                f"opens/s the loops make unrecorded (the most they make between two pauses). "
                f"That is how long the recorder may take to be scheduled, read and freeze; a "
                f"longer delay costs records, counted lost.")

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

    @staticmethod
    def _session_memory(processes) -> dict:
        """PSS (kB) of one session's own processes (its recorder and its watchdog; not its
        command), split by kind of mapping, and its rings' kernel memory."""
        recorder, watchdogs = processes
        split = h.pss_split(recorder)
        watchdog = sum(h.pss_split(w)["total"] for w in watchdogs)
        return {"total": split["total"] + watchdog, "rings": split["rings"],
                "anon": split["anon"], "file": split["file"], "watchdog": watchdog,
                "watchdogs": len(watchdogs), "kernel_rings": h.ring_kernel_bytes(recorder)}

    def memory(self):
        """One idle session's recorder (RSS, peak) and watchdog; then what each additional
        concurrent session costs with IDLE_MAX running: the PSS of the benchmark's own sessions'
        processes only (other checkouts may run sessions here), so shared pages count once."""
        config = self.ws.config()
        h.run(config.argv(["/bin/true"]))   # the set pinned, as for every session but the first
        one = h.IdleSessions(config, 1)
        try:
            first_status = h.proc_status(one.pids[0])
            first = [self._session_memory(p) for p in one.processes()]
            watchdog_rss = [h.proc_status(w)["VmRSS"] for w in one.processes()[0][1]]
            more = h.IdleSessions(config, IDLE_MAX - 1)
            try:
                crowd = [self._session_memory(p) for p in one.processes() + more.processes()]
            finally:
                more.stop()
        finally:
            one.stop()
        if any(m["watchdogs"] != 1 for m in first + crowd):
            raise RuntimeError("a session without exactly one watchdog process")
        # The first session after an install or kernel change compiles with BCC: its peak.
        cold_peak_kb = self._compiling_peak(config)
        n = len(crowd)
        total_one, total_all = first[0]["total"], sum(m["total"] for m in crowd)
        extra = (total_all - total_one) / (n - 1)

        def mean(key):
            return sum(m[key] for m in crowd) / n
        mb = 1 / 1024
        self.details["memory"] = {"first": first, "crowd": crowd, "first_status": first_status,
                                  "cold_peak_kb": cold_peak_kb}
        self.row("7. memory, one idle session",
                 f"recorder RSS {first_status['VmRSS'] * mb:.0f} MB, peak "
                 f"{first_status['VmHWM'] * mb:.0f} MB (set pinned); its watchdog RSS "
                 f"{sum(watchdog_rss) * mb:.0f} MB; PSS of both {total_one * mb:.1f} MB; the "
                 f"first session after an install or kernel change (BCC compiles) peaks at "
                 f"{cold_peak_kb * mb:.0f} MB", "≤ 150 MB",
                 max(first_status["VmHWM"], cold_peak_kb) * mb <= 150)
        self.row(f"7. memory, each additional concurrent session ({n} running): PSS of its "
                 "recorder and watchdog",
                 f"{extra * mb:.1f} MB more per session (all {n}: {total_all * mb:,.0f} MB; one "
                 f"alone {total_one * mb:.1f} MB); per session at {n}: the rings' mappings "
                 f"{mean('rings') * mb:.1f} MB, the recorder's heap and other anonymous memory "
                 f"{mean('anon') * mb:.1f} MB, its share of files (interpreter, libraries) "
                 f"{mean('file') * mb:.1f} MB, the watchdog {mean('watchdog') * mb:.1f} MB (the "
                 f"rings' mappings are the kernel's ring pages themselves, "
                 f"{mean('kernel_rings') / 2**20:.1f} MB of memlock: counted once)",
                 "≤ 12 MB", extra * mb <= 12)

    @staticmethod
    def _compiling_peak(config) -> int:
        """Peak RSS (kB) of a session that compiles the programs with BCC: one that loaded the
        set itself (else another session on the machine did first, and it is redone)."""
        code = ("import resource, subprocess, sys\n"
                "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        for _ in range(MAX_REDONE):
            h.unload_set()
            h.empty_program_cache()
            begin = time.time()
            peak = int(h.run([sys.executable, "-I", "-c", code,
                              *config.argv(["/bin/true"])]).stdout.strip())
            loaded = h.kernel_state().get("loaded_at")
            if loaded is not None and begin <= loaded <= time.time():
                return peak
        raise RuntimeError(f"{MAX_REDONE} compiling sessions found the set loaded by another "
                           "session on the machine")

    # -- 8. recorder death --------------------------------------------------------------------

    def recorder_kill(self):
        """SIGKILL of a recorder whose session runs `while :; do /bin/echo x >> f; done`: the
        time until its cgroup is empty (the watchdog kills it), and every exec that ran (a line
        in f) is in the log or counted in session.end's lost_events.command (the watchdog
        writes it)."""
        trials = self.reps(10, 3)
        times, results = [], []
        for i in range(trials):
            config = self.ws.config()
            lines_file = os.path.join(self.ws.dir, f"echo-{i}")
            loop = f"while :; do /bin/echo x >> {lines_file}; done"
            proc = subprocess.Popen(config.argv(["/bin/bash", "-c", loop]), env=h.environment(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                cgroup = self._running_cgroup(config, proc, lines_file)
                times.append(h.kill_and_wait_empty(proc, cgroup))
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            end = config.wait_for_end()
            events = config.only_session()
            with open(lines_file) as f:
                lines = sum(1 for _ in f)
            logged = sum(1 for e in h.kernel_events(events, "session.command")
                         if e["path"] == "/bin/echo")
            lost = end["lost_events"]["command"]
            results.append({"lines": lines, "logged": logged, "lost": lost,
                            "unrecorded": max(0, lines - logged - lost),
                            "end_reason": end.get("end_reason"),
                            "incomplete": end.get("incomplete")})
        self.details["recorder_kill"] = {"times": times, "results": results}
        bad_ends = [r for r in results if r["end_reason"] != "recorder_died" or not r["incomplete"]]
        self.row(f"8. recorder SIGKILL: time to an empty session cgroup ({trials} trials, tight "
                 "exec loop running)",
                 f"median {ms(h.median(times))}, max {ms(max(times))}",
                 "≤ 50 ms (every trial)", max(times) <= 0.050)
        unrecorded = [r["unrecorded"] for r in results]
        self.row("8. recorder SIGKILL: execs that ran (lines in f of `while :; do /bin/echo x >> "
                 "f; done`) neither in the log nor in lost_events.command",
                 f"{sum(1 for u in unrecorded if u == 0)}/{trials} trials with 0 unrecorded "
                 f"(worst {max(unrecorded)}); per trial, lines in f: /bin/echo execs logged "
                 "+ lost: " + ", ".join(f"{r['lines']}: {r['logged']}+{r['lost']}"
                                        for r in results)
                 + f"; session.end incomplete with end_reason recorder_died: "
                 f"{trials - len(bad_ends)}/{trials}",
                 f"0 unrecorded, {trials}/{trials}",
                 max(unrecorded) == 0 and not bad_ends)

    @staticmethod
    def _running_cgroup(config, proc, lines_file) -> str:
        """The session's cgroup, once its loop has run a while (its file has lines)."""
        deadline = time.monotonic() + h.SESSION_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the session ended by itself (status {proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError("the exec loop's session did not start")
            sessions = config.sessions()
            if sessions and os.path.exists(lines_file) and os.path.getsize(lines_file) > 400:
                break
            time.sleep(0.05)
        time.sleep(0.3)   # the loop in full swing
        (events,) = sessions.values()
        start = events[0]
        if start["event"] != "session.start":
            raise RuntimeError("the session's first event is not session.start")
        return h.session_cgroup_dir(start["sid"])

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

    # -- 8. the terminal recording ----------------------------------------------------------

    def terminal(self):
        rounds = self.reps(5, 2)
        cat = terminal.cat_figures(self.ws, TTY_CAT_MB, rounds)
        sec = cat["seconds"]
        ratio = sec["recorded"] / sec["bare"]
        self.details["terminal_cat"] = cat
        self.row(f"8. terminal: `cat` of a {TTY_CAT_MB} MB text file through the recorded "
                 f"terminal, ratio to the same `cat` on an unrecorded pty (medians of {rounds} "
                 "interleaved rounds)",
                 f"{ratio:.2f}× ({sec['recorded']:.2f} s vs {sec['bare']:.2f} s; with "
                 f"`tty_recording: off` {sec['off']:.2f} s = {sec['off'] / sec['bare']:.2f}×; "
                 f"util-linux `script` (a relay in C) {sec['script']:.2f} s = "
                 f"{sec['script'] / sec['bare']:.2f}×); arrived intact: "
                 f"{'yes' if cat['intact'] else 'NO'}",
                 "≤ 1.5×, intact", ratio <= 1.5 and cat["intact"])
        self.row("8. terminal: the relay's CPU time per MB of output (the same `cat`)",
                 f"{cat['relay_cpu_ms_per_mb']:.1f} ms/MB")
        busy = (f"while :; do {self.ws.openloop} 2000 {self.ws.target}; sleep 0.05; done")
        echo = terminal.echo_figures(self.ws, TTY_KEYS, self.reps(2, 1), busy)
        self.details["terminal_echo"] = echo
        idle, loaded = echo["idle"], echo["busy"]
        added = idle["recorded_p50"] - idle["bare_p50"]
        self.row(f"8. terminal: keystroke to echo, added by the relay (median, p99 of "
                 f"{TTY_KEYS * self.reps(2, 1)} keys to `cat` in raw mode)",
                 f"idle session: +{added:.2f} ms (p99 +{idle['recorded_p99'] - idle['bare_p99']:.2f}"
                 f" ms; bare median {idle['bare_p50']:.2f} ms); busy session (2,000 opens every "
                 f"50 ms in its background): +{loaded['recorded_p50'] - loaded['bare_p50']:.2f} ms "
                 f"(p99 +{loaded['recorded_p99'] - loaded['bare_p99']:.2f} ms)",
                 "≤ 1 ms added", added <= 1.0)
        memory = terminal.relay_memory(self.ws)
        self.details["terminal_memory"] = memory
        self.row("8. terminal: the relay process's memory, one idle session on a terminal",
                 f"RSS {memory['rss_kb'] / 1024:.1f} MB, PSS {memory['pss_kb'] / 1024:.1f} MB, "
                 f"its own pages {memory['private_kb'] / 1024:.1f} MB (the rest shared with "
                 f"its wrapper, of which it is a fork; the wrapper's PSS "
                 f"{memory['wrapper_pss_kb'] / 1024:.1f} MB)")

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
    parser.add_argument("--details", metavar="FILE", help="write every raw figure here (JSON)")
    args = parser.parse_args()
    h.require_root()
    h.ensure_compiler()
    machine = h.machine()
    machine["load_start"] = os.getloadavg()[0]
    print(f"benchmarks: {machine['cpus']} CPUs, {machine['cpu_model']}, kernel {machine['kernel']}",
          flush=True)
    suite = Suite(args.quick)
    figures = ["start_latency", "start_split", "start_first", "host_overhead", "in_session",
               "consumer", "exec_storm", "open_storm", "open_full_speed", "build", "memory",
               "ls_loop", "recorder_kill", "terminal", "fleet"]
    if args.only:
        figures = [f for f in figures if f in args.only.split(",")]
    started = time.monotonic()
    # The whole run holds the machine's lock for runs that unload the host's programs: the
    # figures unload the set themselves, and depend on nobody else doing it meanwhile.
    print("benchmarks: waiting for " + h.KERNEL_TESTS_LOCK, flush=True)
    lock = h.kernel_to_ourselves()
    lock.__enter__()
    state = h.kernel_state()
    watch = h.SetWatch(state["version"])
    watch.start()
    try:
        for name in figures:
            print(f"[{time.monotonic() - started:5.0f} s] {name}", flush=True)
            first_row, unloads = len(suite.rows), len(watch.external)
            try:
                getattr(suite, name)()
            except Exception as e:   # one broken figure must not hide the others
                traceback.print_exc()
                suite.row(name, f"ERROR: {e}", "", False)
            if len(watch.external) > unloads:
                suite.invalidate(name, first_row, watch.external[unloads:],
                                 state["holds_links"])
    finally:
        try:
            watch.stop()
            lock.__exit__(None, None, None)
        finally:
            suite.close()   # its temporary directory: gigabytes of logs
    machine["load_end"] = os.getloadavg()[0]
    table = render(suite, machine)
    print()
    print(table)
    print(f"\nbenchmarks: {time.monotonic() - started:.0f} s")
    if not args.no_doc and not args.only:
        write_doc(table)
        print(f"benchmarks: wrote {DOC}")
    if args.details:
        with open(args.details, "w") as f:
            json.dump({"machine": machine, "details": suite.details}, f, indent=1, default=str)
    # Unmet targets are results, not failures; a figure that could not be measured is one.
    return 1 if any(r[1].startswith("ERROR") or r[3].startswith("NOT VALID")
                    for r in suite.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
