"""Tests for enhrec_wrap.login.pam that need neither root nor a PAM stack: who may use it, and the one
line a refused account gets. The real PAM conversation is tested end to end (tests/e2e)."""

import subprocess
import sys
import textwrap
import types

import pam as python_pam
import pytest

from enhrec_wrap.login import pam
from enhrec_wrap.errors import EnhrecError, Failure


def test_only_root_opens_pam_sessions(monkeypatch):
    monkeypatch.setattr(pam.os, "getuid", lambda: 1000)
    with pytest.raises(EnhrecError, match="for root only") as caught:
        pam.open_session("bob", "alice")
    assert caught.value.failure is Failure.FAILED   # enhrec-wrap exits 125: nothing was run


def test_missing_service_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(pam.os, "getuid", lambda: 0)
    monkeypatch.setattr(pam, "PAM_DIR", str(tmp_path))
    with pytest.raises(EnhrecError, match=f"{tmp_path}/enhrec-wrap is missing: .*make install"):
        pam.open_session("bob", "root")


def fake_handle(code, reason, messages):
    return types.SimpleNamespace(code=code, reason=reason, messages=messages)


def test_refusal_names_the_user_and_the_modules_reason():
    handle = fake_handle(python_pam.PAM_AUTH_ERR, "Authentication failure",
                         ["Your account has expired; please contact your system administrator."])
    line = pam._refusal("bob", "enhrec-wrap", handle)
    assert line == ("PAM account check refused user 'bob' (service enhrec-wrap): Your account has "
                    "expired; please contact your system administrator. (PAM: Authentication "
                    "failure): renew or unlock the account (e.g. chage -E -1 bob), or pick "
                    "another user")
    assert "\n" not in line


def test_refusal_without_module_messages_gives_pams_reason():
    handle = fake_handle(python_pam.PAM_ACCT_EXPIRED, "User account has expired", [])
    line = pam._refusal("bob", "enhrec-wrap", handle)
    assert "refused user 'bob'" in line and "(service enhrec-wrap): PAM: User account has expired:" in line


def test_session_refusal_points_at_the_session_modules():
    handle = fake_handle(python_pam.PAM_SESSION_ERR, "Cannot make/remove an entry", ["  "])
    line = pam._refusal("bob", "enhrec-wrap", handle, "session")
    assert line.startswith("PAM session refused user 'bob'")
    assert line.endswith("check the session modules in /etc/pam.d/enhrec-wrap")


def test_close_is_safe_twice():
    calls = []
    handle = types.SimpleNamespace(
        handle=object(),
        close_session=lambda: calls.append("close"),
        pam_setcred=lambda h, flag: calls.append(("setcred", flag)),
        end=lambda: calls.append("end"))
    session = pam.PamSession(handle)
    session.close()
    session.close()
    assert calls == ["close", ("setcred", python_pam.PAM_DELETE_CRED), "end"]


def test_python_pam_is_imported_without_ctypes_util_and_typing():
    """Its import costs a local login neither ctypes.util's find_library (ldconfig -p) nor
    typing, and leaves no stand-in behind: a later import gets the real modules."""
    code = textwrap.dedent("""
        import sys
        from enhrec_wrap.login import pam
        module = pam._python_pam()
        print(sorted(m for m in ("typing", "ctypes.util") if m in sys.modules))
        assert module.pam().handle is None   # usable: a PamAuthenticator, not yet started
        import typing, ctypes.util
        print(hasattr(typing, "TypeVar"), hasattr(ctypes.util, "__file__"))
    """)
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    assert out.split("\n")[:2] == ["[]", "True True"]


def test_a_python_pam_that_needs_more_of_typing_is_imported_as_it_is(tmp_path):
    """A later release may import more of typing than Any: then it gets the real one."""
    (tmp_path / "pam").mkdir()
    (tmp_path / "pam" / "__init__.py").write_text("from typing import Any, Optional\n")
    (tmp_path / "pam" / "__internals.py").write_text("")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from enhrec_wrap.login import pam
        module = pam._python_pam()
        import typing
        print(module.__file__.startswith({str(tmp_path)!r}), module.Optional is typing.Optional)
    """)
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    assert out.split() == ["True", "True"]


def test_a_python_pam_whose_submodule_needs_more_of_typing_is_imported_as_it_is(tmp_path):
    """The stand-in's missing name may show as an AttributeError after a submodule was imported
    with the stand-in: that submodule is imported again too, with the real typing."""
    (tmp_path / "pam").mkdir()
    (tmp_path / "pam" / "__init__.py").write_text(
        "from pam import helper\nimport typing\nOPTIONAL = typing.Optional\n")
    (tmp_path / "pam" / "helper.py").write_text("import typing\nTYPING = typing\n")
    (tmp_path / "pam" / "__internals.py").write_text("")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from enhrec_wrap.login import pam
        module = pam._python_pam()
        import typing
        print(module.OPTIONAL is typing.Optional, module.helper.TYPING is typing)
    """)
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    assert out.split() == ["True", "True"]
