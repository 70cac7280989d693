"""The on-disk layout: every name it makes, it reads back, and it reads nothing else."""

import pytest

from enhrec_wrap.log import layout

SID = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
SERVER = "5a1f0e2d-1111-4222-8333-444455556666"


def test_paths_under_data_dir():
    assert layout.host_uuid_path("/var/lib/teleport") == "/var/lib/teleport/host_uuid"
    assert layout.log_dir("/var/lib/teleport") == "/var/lib/teleport/log"
    log_dir = "/var/lib/teleport/log"
    assert layout.current_link(log_dir) == f"{log_dir}/events.log"
    assert layout.session_files_dir(log_dir, SERVER) == f"{log_dir}/{SERVER}/sessions/default"
    assert layout.lock_path(log_dir, SERVER, SID) == f"{log_dir}/{SERVER}/open-sessions/{SID}.lock"
    assert layout.hidden_lock_path(log_dir, SERVER, SID) == f"{log_dir}/{SERVER}/open-sessions/.{SID}.lock"


def test_day_file_is_named_after_the_utc_day():
    # 2024-03-05T23:59:59Z, then one second later.
    assert layout.day_file("/l", SERVER, 1709683199) == f"/l/{SERVER}/2024-03-05.00:00:00.log"
    assert layout.day_file("/l", SERVER, 1709683200) == f"/l/{SERVER}/2024-03-06.00:00:00.log"
    assert layout.day_start("2024-03-06") == 1709683200
    assert layout.day_of_file("2024-03-06.00:00:00.log") == "2024-03-06"


@pytest.mark.parametrize("name", ["2024-03-06.log", "2024-03-06.00:00:00.log.gz", "events.log",
                                  "x2024-03-06.00:00:00.log", "2024-03-06.00:00:00.log\n"])
def test_other_names_are_not_day_files(name):
    assert layout.day_of_file(name) is None


@pytest.mark.parametrize("stream, name", [
    ("events", f"{SID}-0.events.gz"),
    ("session.command", f"{SID}-0.session.command-events.gz"),
    ("session.disk", f"{SID}-0.session.disk-events.gz"),
    ("session.network", f"{SID}-0.session.network-events.gz"),
])
def test_stream_file_names_as_the_reference_writes_them(stream, name):
    assert layout.stream_file_name(SID, 0, stream) == name
    assert layout.parse_stream_file(name) == (SID, 0, stream)


def test_part_numbers_of_any_size_are_read_back():
    assert layout.parse_stream_file(layout.stream_file_name(SID, 12, "events")).part == 12


@pytest.mark.parametrize("name", [f"{SID}.index", f"{SID}-0.events", f"{SID}-x.events.gz",
                                  f"{SID}-0.events.gz.tmp", "events.gz", f".{SID}-0.events.gz"])
def test_other_names_are_not_stream_files(name):
    assert layout.parse_stream_file(name) is None


def test_index_and_lock_names_give_back_their_sid():
    assert layout.sid_of_index_file(layout.index_file_name(SID)) == SID
    assert layout.sid_of_index_file("not-a-uuid.index") is None
    assert layout.sid_of_lock_file(f"{SID}.lock") == SID
    assert layout.sid_of_lock_file(f".{SID}.lock") is None
    assert layout.is_hidden_lock_file(f".{SID}.lock")
    assert not layout.is_hidden_lock_file(f"{SID}.lock")


def test_uuids_in_either_case_and_nothing_around_them():
    assert layout.is_uuid(SID) and layout.is_uuid(SID.upper())
    assert not layout.is_uuid(SID + "\n")
    assert not layout.is_uuid(SID[:-1])
