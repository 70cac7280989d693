"""Events, sessions and process trees as lines for a terminal, coloured with click.style (which
drops the colours when the output is not a terminal). Every value from the log passes through
text.safe() on its way here.

A new view (a new command's output) gets its function here, beside these.
"""

import errno
import re
import shlex
import time

import click

from enhrec_wrap.events.kinds import (COMMAND, DISK, END, IO_URING, NETWORK, OPERATION_SEND,
                                      REFUSED, START, result_of)
from enhrec_wrap.events.timestamps import epoch_of, seconds_between
from enhrec_wrap.inspect.text import (KIND_WORDS, O_ACCMODE, command_line, counted, disk_action,
                                      duration_text, endpoint, host_of, human_time,
                                      opened_path_field, result_text, safe, shown)
from enhrec_wrap.inspect.tree import Process
from enhrec_wrap.log import chain

# /etc/locale.alias: what /usr/share/locale/locale.alias, read by every program setting its
# locale, resolves to on Debian.
_ROUTINE_RE = re.compile(r"^/etc/ld\.so\.cache$|^/(usr/)?lib(32|64|x32)?/.*\.so(\.[0-9.]+)?$"
                         r"|^/usr/(lib|share)/locale/|^/etc/locale\.alias$|/gconv/gconv-modules")
_STATE_COLOURS = {"complete": "green", "live": "yellow", "open": "yellow", "incomplete": "red"}
_CHECK_COLOURS = {"ok": "green", "warn": "yellow", "FAIL": "red"}


# --- events ---------------------------------------------------------------------------------

def describe(e: dict) -> tuple[str, str, bool]:
    """(kind word, detail, failed) for one event, as one line of text."""
    kind = e.get("event", "?")
    word = KIND_WORDS.get(kind, safe(kind))
    rc = result_of(e)
    failed = isinstance(rc, int) and rc < 0
    proc = f"[{e.get('pid', '?')}<{e.get('ppid', '?')}]"
    if kind == COMMAND:
        detail = f"{proc} {command_line(e)}"
    elif kind == DISK:
        verb, mode, path = disk_action(e)
        detail = " ".join(x for x in (proc, shown(e, "program"), "" if verb == "open" else verb,
                                      mode, path) if x)
    elif kind == NETWORK:
        detail = (f"{proc} {shown(e, 'program')} -> "
                  f"{endpoint(e.get('dst_addr', '?'), e.get('dst_port', '?'))} {network_kind(e)}")
    elif kind in (REFUSED, IO_URING):
        detail = f"{proc} {shown(e, 'program')} {special_call(e)}"
    elif kind == START:
        cmd = e.get("initial_command") or []
        detail = f"user {shown(e, 'user')} from {_remote(e)}" + (
            f": {shlex.join([safe(a) for a in cmd])}" if cmd else ": login shell")
    elif kind == END:
        parts = []
        if "exit_status" in e:
            parts.append(f"exit {e['exit_status']}")
        parts.append(duration_text(seconds_between(e.get("session_start"), e.get("session_stop"))))
        if e.get("incomplete"):
            parts.append("incomplete")
        detail = ", ".join(parts)
    else:
        detail = ""
    if failed or rc is None and kind == COMMAND:
        detail += f" -> {result_text(rc)}"
    return word, detail, failed


def _remote(e: dict) -> str:
    remote = e.get("addr.remote")
    return safe(remote) if remote else "local"


_KIND_COLOURS = {"exec": "green", "open": "blue", "connect": "magenta", "start": "cyan", "end": "cyan"}


def event_line(e: dict, remote: str | None = None, with_host: bool = False) -> str:
    """One event as a line; `remote`, where known, is the address its session came from;
    with_host (a collector's log of many hosts): the host it was recorded on, too."""
    word, detail, failed = describe(e)
    stamp = click.style(safe(e.get("time", "?")), dim=True)
    host = f"{click.style(safe(e.get('server_hostname', '?')), fg='cyan')} " if with_host else ""
    sid = click.style(safe(str(e.get("sid", "?"))[:8]), fg="yellow")
    kind = click.style(f"{word:<7}", fg="red" if failed else _KIND_COLOURS.get(word), bold=word == "exec")
    who = safe(e.get("login", "?")) + (f"@{safe(host_of(remote))}" if remote else "")
    return f"{stamp} {host}{sid} {who:<8} {kind} {detail}"


# --- sessions -------------------------------------------------------------------------------

def session_table(found, log_dir: str, with_host: bool = False) -> list[str]:
    """`enhrec sessions`: a header row, then one row per session; with_host (a collector's log
    of many hosts): each row starts with the host it was recorded on."""
    host = ("HOST",) if with_host else ()
    rows = [host + ("SID", "LOGIN", "FROM", "START (UTC)", "DURATION", "CMDS", "FILES", "CONNS",
                    "EXIT", "STATE")]
    for s in found:
        d = s.as_dict(log_dir)
        rows.append((safe(d["server_hostname"] or "?"),)[:len(host)] + (
            s.sid[:8], safe(d["login"] or "?"), safe(d["remote"] or "local"),
            d["start"][:19].replace("T", " "), duration_text(d["duration_seconds"]),
            str(s.commands), str(s.files), str(s.connections),
            "-" if d["exit_status"] is None else str(d["exit_status"]),
            d["state"] + (f", {d['missing_events']} missing" if d["missing_events"] else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {i + len(host) for i in (4, 5, 6, 7, 8)}
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if i in numeric and n else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        cells[-1] = row[-1]
        if n == 0:
            lines.append(click.style("  ".join(cells).rstrip(), bold=True))
        else:
            colour = "red" if "missing" in row[-1] else _STATE_COLOURS.get(row[-1])
            cells[-1] = click.style(cells[-1], fg=colour)
            cells[len(host)] = click.style(cells[len(host)], fg="yellow")
            lines.append("  ".join(cells).rstrip())
    return lines


# --- one session ----------------------------------------------------------------------------

def render_header(head: dict) -> list[str]:
    state_colour = _STATE_COLOURS[head["state"]]
    lines = [click.style("session ", bold=True) + click.style(head["sid"], fg="yellow", bold=True)
             + "  " + click.style(head["state"], fg=state_colour, bold=True)]
    who = f"{safe(head['login'])} (logged in as {safe(head['user'])}) on {safe(head['server_hostname'])}"
    lines.append(f"  who    {who}")
    where = safe(head["remote"]) if head["remote"] else "local (no remote address)"
    if head.get("local"):
        where += f" -> {safe(head['local'])}"
    lines.append(f"  from   {where}")
    stop = human_time(head["stop"]) if head["stop"] else "?"
    lines.append(f"  when   {human_time(head['start'])} UTC, {duration_text(head['duration_seconds'])} "
                 f"(until {stop})")
    cmd = head.get("initial_command")
    if head.get("start_missing"):
        ran = click.style("unknown (session.start is missing)", fg="red")
    else:
        ran = shlex.join([safe(a) for a in cmd]) if cmd else "login shell"
    lines.append("  ran    " + ran + ("  (interactive)" if head.get("interactive") else ""))
    status = f"exit {head['exit_status']}" if head["exit_status"] is not None else "exit status unknown"
    lines.append(f"  result {status}; {counted(head['commands'], 'command')}, "
                 f"{counted(head['files'], 'file open')}, {counted(head['connections'], 'connection')}")
    lines.append("  screen " + screen_text(head.get("terminal_recording"), head["sid"][:8]))
    lines.append("  lost   " + _lost_text(head))
    problems = []
    if head.get("unwritten_events"):
        problems.append("not written: " + _per_sink(head["unwritten_events"]))
    if head.get("removed_events"):
        problems.append("removed while recording (a file the recorder wrote was deleted or "
                        "replaced): " + _per_sink(head["removed_events"]))
    if head.get("killed_processes"):
        problems.append(f"{head['killed_processes']} background process(es) killed at the end")
    if head.get("incomplete_reason"):
        problems.append(safe(head["incomplete_reason"]))
    for p in problems:
        lines.append("  note   " + click.style(p, fg="red"))
    return lines


def network_kind(e: dict) -> str:
    """`tcp`, `udp`: a connect; `udp send`: an unconnected send (operation 1)."""
    protocol = shown(e, "protocol", "")
    return f"{protocol} send".strip() if e.get("operation") == OPERATION_SEND else protocol


def special_call(e: dict) -> str:
    """A refused call (the session's seccomp filter) or an io_uring operation, in a few words."""
    if e.get("event") == REFUSED:
        outcome = "process killed" if e.get("refusal") == "killed" else "failed with EPERM"
        return click.style(f"refused {shown(e, 'syscall')} ({shown(e, 'arch')}): {outcome}",
                           fg="red")
    return click.style(f"io_uring {shown(e, 'opcode_name')}", fg="yellow")


def _lost_text(head: dict) -> str:
    """What is missing: events whose numbers are not in the log (never "none" then), and what
    the kernel side dropped, as session.end counts it."""
    parts = []
    if head.get("missing_events"):
        parts.append(f"{head['missing_events']} event(s) missing from the log ({head['missing']})")
    lost = head.get("lost_events") or {}
    lost_total = sum(v for v in lost.values() if isinstance(v, int)) + (head.get("lost_return_codes") or 0)
    if head.get("enhanced_recording") is False:
        parts.append("everything: recording was disabled")
    elif head["state"] != "complete":
        parts.append("unknown (the session has no regular end)" if not parts else
                     "maybe more (the session has no regular end)")
    elif lost_total:
        text = ", ".join(f"{k} {v}" for k, v in lost.items() if v)
        if head.get("lost_return_codes"):
            text += f", return codes {head['lost_return_codes']}"
        text = text.lstrip(", ")
        parts.append(f"kernel side: {text}" if parts else text)
    if not parts:
        return "none"
    return click.style("; ".join(parts), fg="red")


def _per_sink(counts: dict) -> str:
    return ", ".join(f"{safe(str(k))} {v}" for k, v in counts.items())


def screen_text(summary: dict | None, short_sid: str) -> str:
    """The header's line on the session's terminal recording."""
    if summary is None:
        return "not recorded (no terminal, or tty_recording: off)"
    where = (f"at {summary['width']}x{summary['height']}" if summary["width"]
             else "without a terminal (tty_recording: all)")
    text = (f"recorded, {duration_text(summary['duration_seconds'])}, "
            f"{summary['output_bytes']:,} bytes of output {where}")
    if summary["truncated"]:
        text += click.style(" (truncated at the size bound)", fg="red")
    return text + f": `enhrec play {short_sid}`"


def is_routine(e: dict) -> bool:
    """A read-only open every program makes (the loader, shared libraries, locale data): noise
    in a session's story, hidden unless asked for. Writes, and anything else, always show. The
    decision is on the file the kernel opened: `/usr/share/locale/../../../tmp/x` resolves to
    /tmp/x and shows; a path that is the caller's word (a failed open, schema 1) is routine only
    when it is already normal (absolute, no `.`, `..` or empty component)."""
    flags, path = e.get("flags"), e.get(opened_path_field(e))
    if e.get("via") in ("unix_connect", "ptrace_attach", "pidfd_getfd"):
        return False   # not a program's reading of its own files
    if not isinstance(flags, int) or flags & O_ACCMODE or not isinstance(path, str):
        return False
    if e.get("path_source") != "kernel" and not _normal(path):
        return False
    if e.get("path_flags"):   # deleted, outside the root, uncertain ...: worth a look
        return False
    return bool(_ROUTINE_RE.search(path))


def _normal(path: str) -> bool:
    parts = path.split("/")
    return path.startswith("/") and all(p not in ("", ".", "..") for p in parts[1:])


def render_tree(roots: list[Process], t0: float | None, all_files: bool = False) -> list[str]:
    lines = []

    def offset(e) -> str:
        t = epoch_of(e.get("time"))
        return f"+{t - t0:.3f}s" if t is not None and t0 is not None else "?"

    def walk(p: Process, depth: int):
        images = p.images or [[None, [], []]]
        children = sorted(p.children, key=lambda c: c.first_ei)
        for n, image in enumerate(images):
            show_image(p, n, image, "  " * depth)
            # Children started before the process's next exec come under this image.
            until = images[n + 1][0].get("ei", 0) if n + 1 < len(images) else None
            while children and (until is None or children[0].first_ei < until):
                walk(children.pop(0), depth + 1)

    def show_image(p: Process, n: int, image, pad: str):
        command, opened, connected = image
        if command is not None:
            rc = result_of(command)
            tail = f"  {click.style(result_text(rc), fg='red')}" if rc is None or rc < 0 else ""
            arrow = "" if n == 0 else click.style("exec ", dim=True)
            lines.append(f"{pad}{click.style(offset(command), dim=True)} {arrow}"
                         f"{click.style(command_line(command), bold=True)}"
                         f"  {click.style(f'pid {p.pid}', dim=True)}{tail}")
        elif not opened and not connected:
            lines.append(f"{pad}{click.style('(no events)', dim=True)}"
                         f"  {click.style(f'pid {p.pid}', dim=True)}")
        else:
            first = (opened + connected)[0]
            lines.append(f"{pad}{click.style(offset(first), dim=True)} "
                         f"{click.style('(fork of ' + safe(p.program or '?') + ')', dim=True)}"
                         f"  {click.style(f'pid {p.pid}', dim=True)}")
        seen = {}
        hidden = 0
        for e in opened:
            if e.get("event") == COMMAND:   # failed exec: the image goes on
                lines.append(f"{pad}    {click.style(offset(e), dim=True)} "
                             f"{click.style('exec failed', fg='red')} {command_line(e)}  "
                             f"{click.style(result_text(result_of(e)), fg='red')}")
                continue
            if e.get("event") in (REFUSED, IO_URING):
                lines.append(f"{pad}    {click.style(offset(e), dim=True)} {special_call(e)}")
                continue
            if not all_files and is_routine(e):
                hidden += 1
                continue
            rc = result_of(e)
            key = (*disk_action(e), isinstance(rc, int) and rc < 0)
            if key in seen:
                seen[key][1] += 1
                continue
            seen[key] = [e, 1]
        for (verb, mode, path, failed), (e, count) in seen.items():
            times = f" (x{count})" if count > 1 else ""
            err = f"  {click.style(result_text(result_of(e)), fg='red')}" if failed else ""
            colour = "blue" if verb == "open" else "magenta"
            what = f"{mode:<5} {path}" if mode else path
            lines.append(f"{pad}    {click.style(verb, fg=colour)} {what}{times}{err}")
        if hidden:
            note_text = f"({hidden} library and locale reads; --all-files shows them)"
            lines.append(f"{pad}    {click.style(note_text, dim=True)}")
        for e in connected:
            rc = result_of(e)
            err = ""
            if rc is None or rc < 0:
                err = f"  {click.style(result_text(rc), fg=None if rc == -errno.EINPROGRESS else 'red')}"
            lines.append(f"{pad}    {click.style('connect', fg='magenta')} "
                         f"{endpoint(e.get('dst_addr', '?'), e.get('dst_port', '?'))} "
                         f"{network_kind(e)}{err}  {click.style(f'({offset(e)})', dim=True)}")

    for root in roots:
        walk(root, 0)
    return lines


# --- doctor ---------------------------------------------------------------------------------

def check_line(r) -> str:
    """One check of `enhrec doctor`: its status, what it found, and the fix when there is one."""
    return (f"{click.style(f'{r.status:<5}', fg=_CHECK_COLOURS[r.status], bold=r.status == 'FAIL')} "
            f"{r.name}: {r.detail}" + (f": {r.fix}" if r.fix else ""))


# --- verify ---------------------------------------------------------------------------------

def utc_text(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def verify_report(host) -> list[str]:
    """What `enhrec verify` found for one host (verify.Host), the verdict first."""
    name = f"host {host.server_id}" + (f" ({host.hostname})" if host.hostname else "")
    if host.lines:
        span = (f"seq {host.first_seq}..{host.last_seq}, {host.lines} line(s) in "
                f"{len(host.files)} file(s) ({host.files[0][:10]} .. {host.files[-1][:10]})")
    else:
        span = "no chained lines"
    first = host.first_problem()
    if first is None:
        out = [f"{name}: intact: {span}"]
    else:
        out = [f"{name}: NOT INTACT: first bad seq {first.seq}: {first.kind}: {first.detail}",
               f"  {span}"]
        rest = sorted(host.problems, key=lambda p: p.seq)[1:]
        more = host.problem_count - 1
        if more:
            shown = "; ".join(p.text() for p in rest[:3])
            out.append(f"  and {more} more problem(s): {shown}{' ...' if more > 3 else ''}")
    out.append(f"  MACs {_macs_text(host)}")
    if host.duplicates:
        out.append(f"  {host.duplicates} exact duplicate line(s) dropped (delivered twice)")
    for low, high in host.skips[:3]:
        out.append(f"  seq {low}..{high} skipped by the writer after a machine restart "
                   "(the prev chain goes on across them)")
    if host.reordered:
        out.append(f"  {host.reordered} line(s) stored out of seq order (a copy: the order "
                   "they were delivered in)")
    if host.own:
        out.append("  this host's own log: the order in the files and its end (the chain "
                   "state) checked too")
    if host.unchained_before:
        out.append(f"  {host.unchained_before} line(s) from before the chain began, not "
                   "protected")
    for file_name in host.incomplete:
        out.append(f"  the last line of {file_name} is still being written (not read)")
    return out


def _macs_text(host) -> str:
    if host.macs != "checked":
        if host.macs == "not checked":
            return ("not checked (no --key): a chain rewritten from some line to the end "
                    "would not show")
        return host.macs
    if host.key is None:
        return "checked"
    text = f"checked with the key made {utc_text(host.key.start)}"
    if host.epochs:
        text += f", epochs {host.epochs[0]}..{host.epochs[1]}"
    for seq, key in host.key_changes:
        text += f"; from seq {seq} on the key made {utc_text(key.start)}"
    if host.unsealed:
        start, end = chain.epoch_window(host.unsealed_epoch, host.key.start,
                                        host.key.epoch_seconds)
        text += (f"; the last {host.unsealed} line(s) (epoch {host.unsealed_epoch}, from "
                 f"{utc_text(start)}) can still be rewritten on the host until its key moves on "
                 f"(at its first write after {utc_text(end)}, or `enhrec seal`)")
    return text
