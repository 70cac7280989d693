"""The PAM side of a session started by root (`enhrec-wrap --user NAME`), as `runuser -l` does it:
account management, credentials, a PAM session around the recorded one, and PAM's environment.

Service `enhrec-wrap` (/etc/pam.d/enhrec-wrap): its auth stack is `pam_rootok` only, so python-pam's
`authenticate` (which also runs account management) succeeds without a password exactly when root
asks, and nobody else can use the service. Under sshd (`--ssh`) sshd has done all of this already.
"""

import os

from enhrec_wrap.errors import EnhrecError

SERVICE = "enhrec-wrap"
PAM_DIR = "/etc/pam.d"


class PamSession:
    """An open PAM session; `close` ends it (and is safe to call twice). Not a dataclass: that
    would import dataclasses into every start (host/privileges.py)."""

    def __init__(self, handle, environment=None):
        self.handle = handle     # pam.PamAuthenticator holding the live PAM handle
        self.environment = environment if environment is not None else {}

    def close(self) -> None:
        pam = _python_pam()
        handle, self.handle = self.handle, None
        if handle is None:
            return
        try:
            handle.close_session()
            handle.pam_setcred(handle.handle, pam.PAM_DELETE_CRED)
        finally:
            handle.end()


# libpam's sonames: its ABI, unchanged since Linux-PAM 0.75.
SONAMES = {"pam": "libpam.so.0", "pam_misc": "libpam_misc.so.0"}


def _python_pam():
    """python-pam, told libpam's soname. It asks ctypes.util.find_library, which runs
    `ldconfig -p` (and on a miss a compiler) to learn a name the loader resolves by itself, and
    ctypes.util imports subprocess, shutil and locale to do so: 10 to 20 ms and 0.5 MB of
    every local login. And it imports typing for `Any`, which it only writes in annotations:
    1.9 ms and 0.4 MB. So its import sees stand-ins for both (a ctypes.util holding only
    _library, a typing holding only Any), gone again right after: a later import of either gets
    the real module, and so does python-pam if it needs more of them. A soname that does not
    load goes to the real find_library."""
    import sys
    stand_ins = {"ctypes.util": {"find_library": _library}, "typing": {"Any": object}}
    if "pam" not in sys.modules:
        import types
        placed = [name for name in stand_ins if name not in sys.modules]
        for name in placed:
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__dict__.update(stand_ins[name])
        try:
            import pam
        except (ImportError, AttributeError):
            # A release that needs more of them: imported as it is, below, with none of its
            # modules kept from this try (one may hold a stand-in).
            for name in [n for n in sys.modules if n == "pam" or n.startswith("pam.")]:
                del sys.modules[name]
        finally:
            for name in placed:
                del sys.modules[name]
    import pam
    import pam.__internals as internals
    internals.find_library = _library
    return pam


def _library(name: str):
    import ctypes
    soname = SONAMES.get(name)
    if soname is not None:
        try:
            ctypes.CDLL(soname)
            return soname
        except OSError:
            pass
    import ctypes.util
    return ctypes.util.find_library(name)


def open_session(user: str, caller: str, service: str = SERVICE) -> PamSession:
    """Account check, credentials and session for `user`, started by root on behalf of `caller`.
    Raises EnhrecError naming the user and PAM's reason when PAM refuses; then nothing is open."""
    from ctypes import c_char_p
    pam = _python_pam()

    if os.getuid() != 0:
        raise EnhrecError(f"PAM service {service} is for root only: run enhrec-wrap as root")
    if not os.path.exists(os.path.join(PAM_DIR, service)):
        # PAM would fall back to its `other` service, which asks for a password and fails.
        raise EnhrecError(f"{PAM_DIR}/{service} is missing: install it (`make install` does)")
    handle = pam.pam()
    # No password: the service's auth stack admits root alone (pam_rootok). resetcreds=False
    # because credentials are established below, once the account is known to be usable.
    admitted = handle.authenticate(user, "", service=service, call_end=False, resetcreds=False)
    if handle.handle is None:
        raise EnhrecError(f"cannot start PAM for user {user!r}: {handle.reason}: "
                          f"check /etc/pam.d/{service} (make install puts it there)")
    try:
        # An expired password does not matter here: no password is used to start the session.
        if not admitted and handle.code != pam.PAM_NEW_AUTHTOK_REQD:
            raise EnhrecError(_refusal(user, service, handle))
        handle.pam_set_item(handle.handle, pam.PAM_RUSER, c_char_p(caller.encode()))
        _check(handle, handle.pam_setcred(handle.handle, pam.PAM_ESTABLISH_CRED), user, service,
               "credentials")
        _check(handle, handle.open_session(), user, service, "session")
        environment = handle.getenvlist()
    except BaseException:
        handle.end()
        raise
    return PamSession(handle, environment if isinstance(environment, dict) else {})


def _check(handle, code: int, user: str, service: str, what: str) -> None:
    pam = _python_pam()
    if code != pam.PAM_SUCCESS:
        handle.code = code
        handle.reason = handle.pam_strerror(handle.handle, code).decode(errors="replace")
        raise EnhrecError(_refusal(user, service, handle, what))


def _refusal(user: str, service: str, handle, what: str = "account check") -> str:
    """One line: the modules' own words first (pam_unix says why an account is refused, while
    the stack's result may be a bare `Authentication failure` from pam_deny), then PAM's."""
    said = " ".join(m.strip() for m in handle.messages if m and m.strip())
    reason = f"{said} (PAM: {handle.reason})" if said else f"PAM: {handle.reason}"
    if what == "account check":
        fix = f"renew or unlock the account (e.g. chage -E -1 {user}), or pick another user"
    else:
        fix = f"check the {what} modules in /etc/pam.d/{service}"
    return f"PAM {what} refused user {user!r} (service {service}): {reason}: {fix}"
