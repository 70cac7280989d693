"""A set of programs made from its compiled-program cache entry (program_cache.py): the maps
created, the programs loaded (the kernel's verifier) and attached through bpf links, and all of
it pinned in one directory of bpffs, which host.py then renames into place. The set's own two
maps beside the programs' are made here too."""

import os
import threading
import time

import orjson

from enhrec_wrap.kernel import program_cache
from enhrec_wrap.kernel.syscalls import (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH_OF_MAPS,
                                         BPF_MAP_TYPE_RINGBUF, BPF_PERF_EVENT,
                                         BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                                         BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_PROG_TYPE_TRACEPOINT,
                                         link_create, map_create, map_update, obj_pin, prog_load,
                                         raise_memlock, raw_tracepoint_open, relocate,
                                         tracepoint_event)

# Two maps of ours beside the programs': what was loaded (the record layouts a session decodes
# with, so that the pinned set describes itself), and the count of sessions registered so far.
META_MAP, GENERATION_MAP = "meta", "generation"
META_BYTES = 64 << 10


def pin_entry(entry: dict, directory: str, cgroup_root: str, cpus: int):
    """Creates the entry's maps, loads and attaches its programs, and pins all of it in
    `directory`. Raises OSError (KeyError/ValueError for an entry that is not one of ours)."""
    raise_memlock()
    os.mkdir(directory, 0o700)
    owned = []
    try:
        new_fd = {}
        # The ring template first: the *_rings maps are made with it as their inner map.
        maps = sorted(entry["maps"], key=lambda m: m["type"] != BPF_MAP_TYPE_RINGBUF)
        template = None
        for m in maps:
            inner = template if m["type"] == BPF_MAP_TYPE_HASH_OF_MAPS else 0
            fd = map_create(m["type"], m["key_size"], m["value_size"], m["max_entries"],
                            m["flags"], m["name"], inner_map_fd=inner or 0)
            owned.append(fd)
            if m["type"] == BPF_MAP_TYPE_RINGBUF:
                template = fd
            new_fd[m["fd"]] = fd
            obj_pin(fd, os.path.join(directory, f"map-{m['name']}"))
        loads = [(p, relocate(bytes.fromhex(p["insns"]), new_fd)) for p in entry["programs"]]
        cgroup_fd = os.open(cgroup_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        owned.append(cgroup_fd)
        for p, prog_fd in _load_all(loads, entry["license"], owned):
            for target in p["targets"]:
                link_fd, pin = _attach(p, target, prog_fd, cgroup_fd, owned)
                owned.append(link_fd)
                obj_pin(link_fd, os.path.join(directory, pin))
        _pin_own_maps(entry, directory, cpus, owned)
    except (KeyError, ValueError, TypeError) as e:
        raise OSError(0, f"the cached programs are not usable ({e})") from None
    finally:
        for fd in owned:
            os.close(fd)


def _pin_own_maps(entry: dict, directory: str, cpus: int, owned: list):
    generation = map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0, GENERATION_MAP)
    owned.append(generation)
    obj_pin(generation, os.path.join(directory, f"map-{GENERATION_MAP}"))
    meta = orjson.dumps({"format": program_cache.CACHE_FORMAT, "fields": entry["fields"],
                         "cpus": cpus, "loaded": time.time(),
                         "programs": [p["name"] for p in entry["programs"]],
                         "links": sum(len(p["targets"]) for p in entry["programs"])})
    if len(meta) > META_BYTES:
        raise ValueError("the record layouts do not fit the meta map")
    fd = map_create(BPF_MAP_TYPE_ARRAY, 4, META_BYTES, 1, 0, META_MAP)
    owned.append(fd)
    map_update(fd, b"\0\0\0\0", meta.ljust(META_BYTES, b"\0"))
    obj_pin(fd, os.path.join(directory, f"map-{META_MAP}"))


# How each kind of program is loaded (compiler.py names the kinds): its program type.
PROGRAM_TYPES = {"tracepoint": BPF_PROG_TYPE_TRACEPOINT,
                 "raw_tracepoint": BPF_PROG_TYPE_RAW_TRACEPOINT,
                 "cgroup_sock_addr": BPF_PROG_TYPE_CGROUP_SOCK_ADDR}


def _attach(program: dict, target, prog_fd: int, cgroup_fd: int, owned: list) -> tuple[int, str]:
    """A link attaching the program to one of its targets, as its kind says; returns it and its
    pin's name. A program of several tracepoints has a link (and a pin) for each."""
    kind = program["kind"]
    if kind == "tracepoint":
        category, event = target.split(":")
        perf_fd = tracepoint_event(category, event)
        owned.append(perf_fd)
        return link_create(prog_fd, perf_fd, BPF_PERF_EVENT), f"link-{category}-{event}"
    if kind == "raw_tracepoint":
        return raw_tracepoint_open(prog_fd, target), f"link-raw-{target}"
    # At the root of the cgroup tree: the hooks run for the cgroup of the socket (its
    # creator's), which need not be the session's; the programs filter on the caller's.
    return link_create(prog_fd, cgroup_fd, target), f"link-cgroup-{program['name']}"


def _load_all(loads, license, owned):
    """Loads the programs, the verifier working on two of them at once: the exec programs'
    argument loop takes it 20 ms each, most of a load (the syscall drops the GIL).
    Returns [(program, fd)] in order; every fd made is in `owned`, also when one fails."""
    results = [None] * len(loads)
    errors = []

    def load(indices):
        for i in indices:
            p, insns = loads[i]
            attach_type = p["targets"][0] if p["kind"] == "cgroup_sock_addr" else 0
            try:
                results[i] = prog_load(PROGRAM_TYPES[p["kind"]], insns, license, p["name"],
                                       attach_type)
            except OSError as e:
                errors.append(e)
                return
    # The longest first, dealt out alternately: the two big ones land on different threads.
    order = sorted(range(len(loads)), key=lambda i: -len(loads[i][1]))
    helper = threading.Thread(target=load, args=(order[1::2],))
    helper.start()
    load(order[0::2])
    helper.join()
    owned.extend(fd for fd in results if fd is not None)
    if errors:
        raise errors[0]
    return [(p, fd) for (p, _), fd in zip(loads, results)]
