"""A session's processes as a tree: who started whom, what each ran (a successful exec starts a
new image of the same process), and the files and connections of each image."""

from enhrec_wrap.events.kinds import COMMAND, DISK, IO_URING, NETWORK, REFUSED, result_of
from enhrec_wrap.events.timestamps import epoch_of


class Process:
    def __init__(self, pid, ppid, first_ei):
        self.pid = pid
        self.ppid = ppid
        self.first_ei = first_ei
        self.program = None
        # [command event or None, [file events, failed execs, refusals, io_uring operations],
        #  [connection events]]
        self.images = []
        self.children = []

    def current(self):
        if not self.images:
            self.images.append([None, [], []])
        return self.images[-1]


def build_tree(events: list[dict]) -> list[Process]:
    """Processes keyed by pid, each with the images it ran (a successful exec starts a new
    one), the files and connections of each image, and its children by ppid."""
    procs = {}
    for e in events:
        kind = e.get("event")
        if kind not in (COMMAND, DISK, NETWORK, REFUSED, IO_URING) or not isinstance(e.get("pid"), int):
            continue
        p = procs.get(e["pid"])
        if p is None:
            p = procs[e["pid"]] = Process(e["pid"], e.get("ppid"), e.get("ei", 0))
        if not p.ppid and e.get("ppid"):
            p.ppid = e["ppid"]
        p.program = p.program or e.get("program")
        if kind == COMMAND:
            rc = result_of(e)
            image = p.current()
            if image[0] is None and not image[1] and not image[2]:
                image[0] = e
            elif rc is None or rc >= 0:
                p.images.append([e, [], []])
            else:
                image[1].append(e)   # a failed exec: the image goes on; listed with its files
        elif kind in (DISK, REFUSED, IO_URING):   # refusals and io_uring: listed with its files
            p.current()[1].append(e)
        else:
            p.current()[2].append(e)
    ordered = sorted(procs.values(), key=lambda p: p.first_ei)
    first = ordered[0] if ordered else None
    # A parent that left no event of its own (a subshell that only forked): every process of
    # the session descends from its first one, so the parent is shown under that one.
    for p in ordered[1:]:
        if p.ppid and p.ppid not in procs and p.ppid != first.ppid:
            procs[p.ppid] = Process(p.ppid, None, p.first_ei)
            procs[p.ppid].ppid = first.pid
    roots = []
    for p in sorted(procs.values(), key=lambda p: p.first_ei):
        parent = procs.get(p.ppid)
        if parent is None or parent is p or _is_descendant(parent, p, procs):
            roots.append(p)
        else:
            parent.children.append(p)
    return roots


def _is_descendant(candidate: Process, ancestor: Process, procs: dict) -> bool:
    """Whether linking ancestor under candidate would make a cycle (pids reused)."""
    seen = set()
    node = candidate
    while node is not None and node.pid not in seen:
        if node is ancestor:
            return True
        seen.add(node.pid)
        node = procs.get(node.ppid)
    return False


# The fields `show --json` gives of each exec, file, connection and refused or io_uring call:
# both schemas' fields.
EXEC_KEYS = ("path", "argv", "return_code", "return_code_unknown", "argv_truncated",
             "path_source", "requested_path", "executable", "interpreter", "escaped_fields")
FILE_KEYS = ("path", "path_source", "requested_path", "path_flags", "abs_path", "flags",
             "return_code", "via", "escaped_fields")
CONNECT_KEYS = ("dst_addr", "dst_port", "src_addr", "src_port", "protocol", "version",
                "operation", "connect_return_code", "return_code")
CALL_KEYS = ("event", "syscall", "syscall_nr", "arch", "refusal", "opcode", "opcode_name")


def tree_as_dict(p: Process, t0: float | None) -> dict:
    def offset(e):
        t = epoch_of(e.get("time"))
        return None if t is None or t0 is None else round(t - t0, 3)

    def brief(e, keys):
        d = {"time": e.get("time"), "offset": offset(e), "ei": e.get("ei")}
        d.update({k: e[k] for k in keys if k in e})
        return d

    execs, files, conns, calls = [], [], [], []
    for command, opened, connected in p.images:
        if command is not None:
            execs.append(brief(command, EXEC_KEYS))
        for e in opened:
            if e.get("event") == COMMAND:
                execs.append(brief(e, EXEC_KEYS))
            elif e.get("event") == DISK:
                files.append(brief(e, FILE_KEYS))
            else:
                calls.append(brief(e, CALL_KEYS))
        conns += [brief(e, CONNECT_KEYS) for e in connected]
    return {"pid": p.pid, "ppid": p.ppid, "program": p.program, "execs": execs, "files": files,
            "connections": conns, "calls": calls,
            "children": [tree_as_dict(c, t0) for c in p.children]}
