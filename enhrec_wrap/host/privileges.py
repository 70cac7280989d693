"""Accounts, and the one place where privileges are dropped."""

import collections
import os
import pwd

from enhrec_wrap.errors import EnhrecError


# A tuple, not a dataclass: no module a session imports makes one, so that its start does not
# import dataclasses (with inspect, ast, dis and tokenize: 7 ms and 1.6 MB, docs/PERFORMANCE.md).
class Account(collections.namedtuple("Account", "name uid gid home shell")):
    __slots__ = ()

    @classmethod
    def from_passwd(cls, entry: pwd.struct_passwd) -> "Account":
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir,
                   entry.pw_shell or "/bin/sh")


def account_by_name(name: str) -> Account:
    try:
        return Account.from_passwd(pwd.getpwnam(name))
    except KeyError:
        raise EnhrecError(f"unknown user {name!r}: give an account that exists in passwd") from None


def account_by_uid(uid: int) -> Account:
    try:
        return Account.from_passwd(pwd.getpwuid(uid))
    except KeyError:
        raise EnhrecError(f"uid {uid} has no passwd entry: add the account first") from None


def supplementary_groups(account: Account) -> list[int]:
    """The groups initgroups() would give the account (it reads /etc/group and NSS): looked up
    by the caller beforehand, so that the dropping process opens no file."""
    return os.getgrouplist(account.name, account.gid)


def drop_privileges(account: Account, groups: list[int]) -> None:
    """Becomes `account`: supplementary `groups` (supplementary_groups()), then gid, then uid,
    and checks that there is no way back. Any failure raises: the caller must not exec anything
    then (fail closed)."""
    try:
        os.setgroups(groups)
        os.setresgid(account.gid, account.gid, account.gid)
        os.setresuid(account.uid, account.uid, account.uid)
    except OSError as e:
        raise EnhrecError(f"cannot switch to user {account.name}: {e.strerror}") from None
    if os.getresuid() != (account.uid,) * 3 or os.getresgid() != (account.gid,) * 3:
        raise EnhrecError(f"cannot switch to user {account.name}: ids did not change")
    if account.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise EnhrecError(f"cannot switch to user {account.name}: root could be regained")
