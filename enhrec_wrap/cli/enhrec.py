"""`enhrec`: find and read what recorded sessions did (docs/inspecting.md).

    enhrec sessions                 one row per session, newest first
    enhrec show SID                 one session as a process tree, with its files and connections
    enhrec search [filters]         matching events across all sessions
    enhrec tail [-f] [filters]      the newest events, and then the new ones as they come
    enhrec play SID                 the session's terminal replayed, with its events (--events)
    enhrec export SID               the session's terminal as asciicast v2
    enhrec verify [--key FILE]      is each host's log intact? (the chain of its daily files)
    enhrec keygen / seal            a new chain key for this host / move its key on now
    enhrec doctor [--repair]        can this host record? (and end sessions left open)

The commands and their errors live here; what they find and how it is shown, in enhrec_wrap.inspect
(query, sessions, tree, lookup, render). A new command is a function here that asks those.
Every command streams through the files, so logs of any size work; a long read shows progress
on stderr when that is a terminal. Errors are one line, `enhrec: <what>: <how to fix it>`, and a
non-zero exit; this module is the only place that prints them.
"""

import os
import sys

import click

from enhrec_wrap import __version__
from enhrec_wrap.config import load_config
from enhrec_wrap.errors import EnhrecError, Failure
from enhrec_wrap.events.timestamps import epoch_of
from enhrec_wrap.inspect import (lookup, query, render, replay, sessions as summaries, tree,
                                 verify as chain_check)
from enhrec_wrap.inspect.output import (PROG, MissingReport, Progress, SkipReport, json_line, note,
                                        report_skipped, write_json_line)
from enhrec_wrap.log import chain, chainstate, layout, reader
from enhrec_wrap.log.server_id import load_or_create_server_id

EXIT_NO_MATCH = 1
EXIT_CANNOT_RECORD = 1
EXIT_ERROR = 2
EXIT_NOT_INTACT = 1
EXIT_STATUS = {Failure.NO_MATCH: EXIT_NO_MATCH, Failure.CANNOT_RECORD: EXIT_CANNOT_RECORD,
               Failure.NOT_INTACT: EXIT_NOT_INTACT}


class Context:
    def __init__(self, config_path):
        self.config_path = config_path

    def log(self, config_path) -> tuple[reader.LogDir, object]:
        """The audit log of the config given to the command, else to `enhrec`, else the default."""
        config = load_config(config_path or self.config_path)
        return lookup.open_log(config), config


def config_option(f):
    return click.option("--config", "config_path", metavar="FILE",
                        help="The wrapper's config (default /etc/enhrec-wrap/enhrec.yaml).")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="JSON, one object per line (for jq).")(f)


def filter_options(f):
    options = [
        click.option("--login", metavar="U", help="Sessions of the OS account U."),
        click.option("--program", metavar="P", help="Events of program P (its name, a glob)."),
        click.option("--path", metavar="GLOB", help="Files opened or executed matching GLOB (the resolved path or the one asked for)."),
        click.option("--dst", metavar="ADDR[:PORT]", help="Connections to ADDR[:PORT], :PORT or a network."),
        click.option("--event", multiple=True, metavar="TYPE",
                     help="start, end, exec, open, connect, refused or io_uring (repeatable)."),
        click.option("--since", metavar="T", help="At or after T: 30m, 1h, 2d, today, yesterday, ISO."),
        click.option("--until", metavar="T", help="At or before T (same forms)."),
        click.option("--sid", metavar="S", help="Session S (or a prefix of its id)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _filters(login, program, path, dst, event, since, until, sid) -> query.Filters:
    return query.Filters(login=login, program=program, path=path, dst=dst, event=event, since=since,
                   until=until, sid=sid)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(__version__, prog_name=PROG)
@click.pass_context
def enhrec(ctx, config_path):
    """Find and read recorded sessions (the audit log enhrec-wrap writes).

    \b
    Who ran curl yesterday, from where, and what else did that session do?
      enhrec search --program curl --since yesterday
      enhrec show 3f2a            (a session id, or a unique prefix of one)
    """
    ctx.obj = Context(config_path)


@enhrec.command()
@config_option
@json_option
@click.option("--login", metavar="U", help="Only sessions of the OS account U.")
@click.option("--since", metavar="T", help="Only sessions started at or after T.")
@click.option("--until", metavar="T", help="Only sessions started at or before T.")
@click.pass_obj
def sessions(obj, config_path, as_json, login, since, until):
    """One row per session, newest first."""
    log, config = obj.log(config_path)
    stats = reader.Stats()
    found = summaries.summarize(log, query.Filters(login=login, since=since, until=until), stats)
    if as_json:
        for s in found:
            write_json_line(json_line(s.as_dict(config.log_dir)))
    else:
        # A collector's log holds many hosts: then each row says which.
        for line in render.session_table(found, config.log_dir, with_host=len(log.server_ids()) > 1):
            click.echo(line)
    report_skipped(stats)
    if not found:
        note(f"no sessions in {config.log_dir}")


@enhrec.command()
@config_option
@json_option
@click.option("--all-files", is_flag=True, help="Also list the shared library and locale reads.")
@click.argument("sid")
@click.pass_obj
def show(obj, config_path, as_json, all_files, sid):
    """One session: a header, then the process tree with each command's time offset, argv and
    return code, and the files and connections of each process under it. SID may be a unique
    prefix."""
    log, config = obj.log(config_path)
    stats = reader.Stats()
    events = lookup.session(log, sid, stats)
    head = summaries.session_header(events, config.log_dir)
    head["terminal_recording"] = replay.summary_of(config.log_dir, events)
    t0 = epoch_of(head["start"])
    roots = tree.build_tree(events)
    if as_json:
        write_json_line(json_line({"session": head, "processes": [tree.tree_as_dict(r, t0) for r in roots]}))
    else:
        for line in render.render_header(head):
            click.echo(line)
        click.echo()
        for line in render.render_tree(roots, t0, all_files):
            click.echo(line)
    report_skipped(stats)


@enhrec.command()
@config_option
@json_option
@filter_options
@click.pass_obj
def search(obj, config_path, as_json, login, program, path, dst, event, since, until, sid):
    """Matching events across all sessions, oldest first. Every filter given must match;
    PROGRAM and PATH are globs (* matches across /). Exit status 1 when nothing matches."""
    filters = _filters(login, program, path, dst, event, since, until, sid)
    log, _ = obj.log(config_path)
    stats = reader.Stats()
    count, sids, missing = 0, {}, {}
    many = len(log.server_ids()) > 1
    for e, line, remote in query.search(log, filters, stats, Progress(), missing):
        count += 1
        sids.setdefault(e.get("sid"), None)
        if as_json:
            write_json_line(line)
        else:
            click.echo(render.event_line(e, remote, with_host=many))
    report_skipped(stats)
    MissingReport()(missing)
    if not count:
        raise EnhrecError("no matching events", Failure.NO_MATCH)
    if sys.stderr.isatty() and not as_json:
        first = next(iter(sids))
        note(f"{count} event(s) in {len(sids)} session(s); read one with `enhrec show "
             f"{str(first)[:8]}`")


@enhrec.command()
@config_option
@json_option
@click.option("-f", "--follow", is_flag=True, help="Go on printing new events as they are logged.")
@click.option("-n", "--lines", "count", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many of the newest matching events to print first.")
@filter_options
@click.pass_obj
def tail(obj, config_path, as_json, follow, count, login, program, path, dst, event, since, until, sid):
    """The newest events of today's file (of each host, on a collector), and with -f the new
    ones as they come, following each host to the next day's file at midnight."""
    filters = _filters(login, program, path, dst, event, since, until, sid)
    log, _ = obj.log(config_path)
    many = len(log.server_ids()) > 1

    def emit(e, line):
        if as_json:
            write_json_line(line)
        else:
            click.echo(render.event_line(e, with_host=many))

    stats = reader.Stats()
    skipped, holes = SkipReport(), MissingReport()
    missing, last = {}, {}
    follower = reader.Follower(log, stats=stats)
    duplicates = reader.Duplicates(stats)
    backlog = []
    for server_id in log.server_ids():
        current = reader.newest_day_file(layout.server_dir(log.path, server_id))
        if current is None:
            continue
        end = os.path.getsize(current)
        found, ends = query.newest(current, end, filters, count, stats, missing, duplicates)
        backlog += found
        last.update(ends)
        follower.position(server_id, current, end)
    if not follower.tails and not follow:
        raise EnhrecError(f"no day file in {log.path} yet: nothing was recorded there "
                          "(or give --config with the wrapper's config)")
    # Of all hosts together, the newest `count`.
    backlog.sort(key=lambda item: str(item[0].get("time", "")))
    for e, line in backlog[max(0, len(backlog) - count):]:
        emit(e, line)
    skipped(stats)
    holes(missing)
    if not follow:
        return
    sys.stdout.flush()
    for matches in query.follow(follower, filters, last, missing, duplicates):
        for e, line in matches:
            emit(e, line)
        sys.stdout.flush()
        skipped(stats)
        holes(missing)


@enhrec.command()
@config_option
@click.option("--format", "fmt", type=click.Choice(["asciicast"]), default="asciicast",
              show_default=True, help="asciicast v2, as asciinema reads it.")
@click.argument("sid")
@click.pass_obj
def export(obj, config_path, fmt, sid):
    """The session's terminal recording on stdout, with a marker for each exec (asciicast v2:
    `asciinema play FILE`)."""
    events, paths = _recorded_session(obj, config_path, sid)
    start = next((e for e in events if e.get("event") == "session.start"), None)
    out = sys.stdout
    for line in replay.asciicast_lines(replay.frames_of(paths), start, events):
        out.write(line + "\n")
    out.flush()


@enhrec.command()
@config_option
@click.option("--speed", type=click.FloatRange(min=0.01, max=1000), default=1.0,
              show_default=True, help="Replay N times as fast.")
@click.option("--idle-limit", type=click.FloatRange(min=0), metavar="S",
              help="No pause longer than S seconds (asciinema's -i).")
@click.option("--events", "show_events", is_flag=True,
              help="Show the session's execs, connects and file writes as they happen.")
@click.argument("sid")
@click.pass_obj
def play(obj, config_path, speed, idle_limit, show_events, sid):
    """Replays the session's terminal in this terminal, with its real timing."""
    events, paths = _recorded_session(obj, config_path, sid)
    sys.stdout.flush()
    with replay.answerbacks_discarded(sys.stdin.fileno()):
        replay.play(replay.frames_of(paths), events, sys.stdout.fileno(), speed=speed,
                    idle_limit=idle_limit, show_events=show_events)


def _recorded_session(obj, config_path, sid):
    """(events, recording parts) of a session that has a terminal recording."""
    log, config = obj.log(config_path)
    stats = reader.Stats()
    events = lookup.session(log, sid, stats)
    paths = replay.recording_paths(config.log_dir, events)
    if not paths:
        raise EnhrecError(f"session {events[0].get('sid')} has no terminal recording (it had no "
                          "terminal, or tty_recording was off): `enhrec show` has its events")
    report_skipped(stats)
    return events, paths


@enhrec.command()
@config_option
@click.option("--repair", is_flag=True,
              help="End sessions left without session.end and remove their cgroups (root).")
@click.option("--unload", is_flag=True,
              help="Unload the kernel programs now where no session uses them (root).")
@click.pass_obj
def doctor(obj, config_path, repair, unload):
    """Can this host record sessions? One line per check, with the fix when one fails; exit
    status 1 when recording cannot work."""
    from enhrec_wrap.inspect import doctor as checks

    results = checks.run(config_path or obj.config_path, repair=repair, unload=unload)
    for r in results:
        click.echo(render.check_line(r))
    failed = [r for r in results if r.status == "FAIL"]
    if failed:
        raise EnhrecError(f"recording cannot work on this host: {len(failed)} check(s) failed "
                          f"({', '.join(r.name for r in failed)})", Failure.CANNOT_RECORD)
    click.echo("recording works on this host")


@enhrec.command()
@config_option
@json_option
@click.option("--key", "key_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Verification keys (as `enhrec keygen` prints them): check every MAC too.")
@click.option("--host", metavar="SERVER_ID", help="Only this host (a server id, or a prefix).")
@click.pass_obj
def verify(obj, config_path, as_json, key_file, host):
    """Check each host's chain in the audit log: seq continuity across files and days, the prev
    chain, and with --key every line's MAC. Exit status 0 when every host is intact, 1 when one
    is not (the message names the host, the first bad seq and what is wrong)."""
    log, config = obj.log(config_path)
    keys = chain_check.load_keys(key_file) if key_file else None
    dirs = chain_check.server_dirs(log, host)
    if not dirs:
        raise EnhrecError(f"no host {host!r} in {log.path}: the hosts are the server ids there"
                          if host else f"no host logs in {log.path}")
    bad = []
    for directory in dirs:
        server_id = os.path.basename(directory).lower()
        mine = None if keys is None else [k for k in keys if k.server_id == server_id]
        report = chain_check.verify_host(directory, mine, config.data_dir)
        if as_json:
            write_json_line(json_line(report.as_json()))
        else:
            for n, line in enumerate(render.verify_report(report)):
                colour = None if n else ("green" if report.intact else "red")
                click.echo(click.style(line, fg=colour, bold=not n))
        if not report.intact:
            bad.append(report)
    if bad:
        first = bad[0].first_problem()
        raise EnhrecError(f"{len(bad)} of {len(dirs)} host(s) not intact; first: host "
                          f"{bad[0].server_id}, seq {first.seq}: {first.kind}", Failure.NOT_INTACT)


@enhrec.command()
@config_option
@click.option("--force", is_flag=True, help="Replace a key that `enhrec keygen` made before.")
@click.option("--if-missing", is_flag=True,
              help="Make a key only if keygen made none yet (make install uses this).")
@click.pass_obj
def keygen(obj, config_path, force, if_missing):
    """A new chain key for this host (root). Prints its verification key once, on stdout: keep
    it off the host (`enhrec verify --key FILE` needs it). The host keeps only the current epoch's
    key, in <data_dir>/enhrec_chain; seq and the chain go on across a new key."""
    config = load_config(config_path or obj.config_path)
    server_id = load_or_create_server_id(config.data_dir)
    state_path = layout.chain_state_path(config.data_dir)
    current = chainstate.key_or_none(config.data_dir, server_id)
    if current is not None and current.made_by == "keygen" and not force:
        if if_missing:
            note(f"kept the chain key made {render.utc_text(current.start)} (its verification key "
                 "was printed then); `enhrec keygen --force` makes a new one")
            return
        raise EnhrecError(f"this host already has a chain key, made {render.utc_text(current.start)}: "
                          "give --force to replace it (the lines written from then on verify "
                          "with the new key only; keep the old one for the lines before)")
    try:
        block, k0, old = chainstate.replace_key(config.data_dir, server_id,
                                                layout.server_dir(config.log_dir, server_id),
                                                config.key_epoch_seconds, "keygen")
    except OSError as err:
        raise EnhrecError(f"cannot write {state_path}: {err.strerror}: run as root") from None
    key = chain.VerificationKey(server_id, k0, block.start, block.epoch_seconds)
    click.echo(f"# enhrec verification key of {config.nodename} ({server_id}), made "
               f"{render.utc_text(block.start)}, epochs of {block.epoch_seconds} s")
    click.echo(key.line())
    note("keep the verification key above off this host (it is not stored here): "
         "`enhrec verify --key FILE` checks every line's MAC with it")
    if old is not None and old.made_by == "recorder":
        note(f"it replaces the key the recorder made on its first write "
             f"({render.utc_text(old.start)}), which nobody holds: the MACs of the lines before "
             "now cannot be checked")


@enhrec.command()
@config_option
@click.pass_obj
def seal(obj, config_path):
    """Move this host's chain key on to the current epoch now (root), so that the last epoch's
    lines cannot be rewritten here even if nothing is written for a while. Run it from cron."""
    config = load_config(config_path or obj.config_path)
    server_id = load_or_create_server_id(config.data_dir)
    try:
        key = chainstate.move_on(config.data_dir, server_id)
    except OSError as err:
        raise EnhrecError(f"cannot update {layout.chain_state_path(config.data_dir)}: "
                          f"{err.strerror}: run as root") from None
    if key is None:
        raise EnhrecError(f"no chain key in {config.data_dir} yet: run `enhrec keygen`")
    start, _ = chain.epoch_window(key.epoch, key.start, key.epoch_seconds)
    click.echo(f"chain key at epoch {key.epoch} (since {render.utc_text(start)}); the lines of "
               "earlier epochs are sealed")


def _fail(message: str, code: int):
    sys.stderr.write(f"\r\x1b[K{PROG}: {message}\n" if sys.stderr.isatty() else f"{PROG}: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv=None):
    try:
        enhrec.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.UsageError as e:
        _fail(f"{e.format_message()}: see `{e.ctx.command_path if e.ctx else PROG} --help`", EXIT_ERROR)
    except EnhrecError as e:
        _fail(str(e), EXIT_STATUS.get(e.failure, EXIT_ERROR))
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write("\n" if sys.stderr.isatty() else "")
        sys.exit(130)
    except BrokenPipeError:
        # The reader (head, less) is gone: stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except PermissionError as e:
        _fail(f"cannot read {e.filename}: permission denied: run as root (sudo {PROG} ...)", EXIT_ERROR)
    except OSError as e:
        _fail(f"cannot read {e.filename or 'the audit log'}: {e.strerror or e}: check the file and "
              "the disk", EXIT_ERROR)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        _fail(f"internal error: {type(e).__name__}: {e}: please report this", EXIT_ERROR)
    sys.exit(0)


if __name__ == "__main__":
    main()
