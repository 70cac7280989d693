"""A session's kernel side: its own ring buffers, registered under its cgroup id with the host's
one set of programs (kernel/host.py), read into Teleport events.

    Recording.start()  the programs opened (or loaded, for the host's first session), the
                       session's rings created, and their registration begun
    wait_registered()  from its return on, every exec, open and connect of the cgroup's tasks
                       lands in the rings: before the session's child may run
    poll() / drain()   batches of decoded records; events() turns them into events
    close()            the rings taken out of the programs' maps; the last session to leave
                       starts the idle timer that unloads the programs (kernel/idle.py)

Registering, and taking the rings out again, each cost an RCU grace period in the kernel (13 ms
here, see host.py): the registration runs in a thread while the rest of the session is set up,
and at a normal end the watchdog takes them out (kernel/idle.py release_session) while the
wrapper exits.

A session of a bastion host is idle most of the time, and its recorder must then cost next to
nothing: a ring wakes the recorder only once it is an eighth full, so the recorder looks at its
rings on a timer, and the timer's period grows while the looks find nothing (poll()). At one
look every 50 ms, 200 idle sessions took 0.36 of this 2-CPU machine's CPU time (3.55 s in 10 s,
90 us a look); at IDLE_POLL_SECONDS they take a tenth of that.
"""

import threading

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.events.kernel import KernelEvents
from enhrec_wrap.kernel import abi, idle
from enhrec_wrap.kernel.decode import Decoder
from enhrec_wrap.kernel.host import HostLock, HostPrograms
from enhrec_wrap.kernel.rings import RECORD_TYPES, RingReader, SessionRings, ring_bytes
from enhrec_wrap.session import ledger as ledger_module

# The longest wait between two looks at the rings of a session that has been idle: how late its
# first record after a quiet time is written at most (a busy ring wakes the recorder at once),
# and how late the recorder notices a client gone without a signal (lifecycle._check_client).
IDLE_POLL_SECONDS = 0.5


class Recording:
    def __init__(self, host: HostPrograms, rings: SessionRings, ledger):
        self.host = host
        self.rings = rings
        self.decoder = Decoder(fields=host.fields)
        self.reader = RingReader(rings, self.decoder, ledger)
        self.kernel = KernelEvents(self.decoder)
        self._registration = None
        self._registration_failure = None
        self._wait = 0.0        # the next poll's timeout, grown while the rings stay quiet
        self._seen = 0          # records taken from the rings, at the last poll

    @classmethod
    def start(cls, config, cgroup_id: int, ledger) -> "Recording":
        """Opens (or loads) the host's set and registers the session's rings with it, under one
        hold of the HostLock: a set with no session registered is one that any other start
        (of another version) or idle timer may unload, so the gap between opening it and
        registering must not exist. The registration (an RCU grace period, 13 ms here) runs in
        a thread, which lets the lock go when it is done; the hold is a shared one when the
        set is there to be used (HostPrograms.hold_for_session)."""
        lock, host = HostPrograms.hold_for_session(config.cgroup_path)
        try:
            try:
                rings = SessionRings.create(host, cgroup_id, ring_bytes(config, host.cpus))
                recording = cls(host, rings, ledger)
                recording._registration = threading.Thread(
                    target=recording._register, args=(lock,), name="register")
                recording._registration.start()
            except BaseException:
                host.close()
                raise
        except BaseException:
            lock.__exit__()
            raise
        return recording

    def _register(self, lock: HostLock):
        try:
            self.rings.register()
        except Exception as e:  # noqa: BLE001 - raised again in the main thread
            self._registration_failure = self._full() or e
        finally:
            lock.__exit__()

    def _full(self) -> EnhrecError | None:
        """The failure of a registration the set had no place for (the kernel only says
        E2BIG), named as the limit it is; None when there was room."""
        try:
            if self.host.places_taken() < abi.MAX_SESSIONS:
                return None
        except OSError:
            return None
        return EnhrecError(f"cannot record the session: the host's BPF programs serve at most "
                           f"{abi.MAX_SESSIONS} sessions at once (MAX_SESSIONS in "
                           f"bpf_programs/enhrec.h), and that many are running: try again once "
                           f"one has ended (`enhrec doctor` lists them)")

    def wait_registered(self):
        self._registration.join()
        if self._registration_failure is not None:
            raise self._registration_failure

    @property
    def version(self) -> str:
        return self.host.version

    def wake_on(self, fd: int):
        self.reader.wake_on(fd)

    def poll(self, timeout: float, flush: bool) -> list:
        """A batch of records (RingReader.poll), after a wait of `timeout`, or up to twice the
        last wait while the rings give nothing (up to IDLE_POLL_SECONDS): an idle session's
        recorder sleeps. Any record, the backlog or a `flush` brings it back to `timeout`."""
        records = self.reader.poll(timeout if flush else max(timeout, self._wait), flush)
        seen = sum(self.reader.taken)
        if flush or seen != self._seen or self.reader.backlog():
            self._wait = 0.0
        else:
            self._wait = min(max(timeout, self._wait) * 2, IDLE_POLL_SECONDS)
        self._seen = seen
        return records

    def drain(self) -> list:
        return self.reader.drain()

    def events(self, records: list, factory, between=None) -> list:
        """The events of a batch of records, numbered by the factory, in time order; `between`
        runs every so many records (KernelEvents.events)."""
        return self.kernel.events(records, factory, between)

    def refill(self):
        """Copies what the rings hold now into the backlog (RingReader: a copy is cheap)."""
        self.reader.refill()

    def settled(self) -> list:
        """Records accounted for by the events made so far, by type: every record handed on
        is one event, and a dropped one is counted lost (ledger.py)."""
        reader = self.reader
        return [reader.handed[t] + reader.dropped[t] for t in range(RECORD_TYPES)]

    def undecodable(self) -> dict:
        return dict(self.reader.undecodable)

    def lost(self) -> dict:
        """session.end's lost counts, at a normal end (everything taken was written)."""
        return ledger_module.lost_fields(self.rings.kernel_lost(), self.reader.undecodable,
                                         [0] * RECORD_TYPES)

    def release_order(self, idle_unload_seconds: float) -> dict:
        """What the watchdog needs to take the rings out after the wrapper has gone (release())."""
        return {"version": self.host.version, "cgroup_id": self.rings.cgroup_id,
                "idle_unload_seconds": idle_unload_seconds}

    def close(self, idle_unload_seconds: float | None):
        """Takes the rings out of the programs' maps, unless the watchdog is to (None)."""
        if self._registration is not None:
            self._registration.join()
        try:
            if idle_unload_seconds is not None and self.rings.registered:
                with HostLock(shared=True):
                    self.rings.unregister()
                    idle.start_if_last(self.host, idle_unload_seconds)
        finally:
            self.reader.close()
            self.rings.close()
            self.host.close()

