"""The operations of a session that need root, behind one thin object that lifecycle.Session
is given (this one unless a test passes its own), as sshuttle keeps its privileged work in one
helper: a unit test hands Session a fake that records the calls, and checks the session's
ordering rules without root, BPF or a cgroup (tests/unit/test_session_order.py).

The fourth root-only part, the watchdog, is made before the session (cli/wrap.py) and handed to
it the same way.
"""

from enhrec_wrap.host.cgroup import SessionCgroup
from enhrec_wrap.session.child import Child


class Privileged:
    def create_cgroup(self, cgroup_path: str, sid: str) -> SessionCgroup:
        """The session's leaf cgroup (host/cgroup.py); its `add` moves a process into it."""
        return SessionCgroup.create(cgroup_path, sid)

    def start_recording(self, config, cgroup_id: int, ledger):
        """The host's programs opened or loaded, the session's rings made and their
        registration begun (session/recording.py)."""
        from enhrec_wrap.session.recording import Recording   # the kernel side, when recording
        return Recording.start(config, cgroup_id, ledger)

    def fork_child(self, plan, session_terminal) -> Child:
        """The session's child, forked and waiting for its go (session/child.py)."""
        return Child.fork(plan, session_terminal)
