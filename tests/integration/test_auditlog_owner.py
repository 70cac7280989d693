"""The audit log takes back a day file someone else owns (root only: tests/integration)."""

import calendar
import os

from enhrec_wrap.log.auditlog import AuditLog

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
NOON = calendar.timegm((2024, 3, 5, 12, 0, 0))
DAY_NAME = "2024-03-05.00:00:00.log"


def fixed(t):
    return lambda: t


def test_foreign_owned_day_file_is_taken_back_by_root(tmp_path):
    log_dir = str(tmp_path / "log")
    server_dir = os.path.join(log_dir, SID)
    day_file = os.path.join(server_dir, DAY_NAME)
    os.makedirs(server_dir)
    open(day_file, "wb").close()
    os.chown(day_file, 65534, 65534)

    AuditLog(log_dir, SID, clock=fixed(NOON)).close()

    st = os.stat(day_file)
    assert (st.st_uid, st.st_gid) == (0, 0)
