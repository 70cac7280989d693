"""Tests for enhrec_wrap.config.cache: a file parsed once is not parsed again, and nothing but
what a parse of the same bytes by the same code made is ever believed."""

import os

import orjson
import pytest

from enhrec_wrap import config
from enhrec_wrap.config import cache as config_cache
from enhrec_wrap.config import load_config
from enhrec_wrap.errors import EnhrecError

TEXT = "teleport:\n  nodename: node-7\nssh_service:\n  enhanced_recording:\n    enabled: 'no'\n"


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "_OWNER_UID", os.geteuid())
    monkeypatch.setattr(config_cache, "CACHE_DIR", str(tmp_path / "cache" / "config"))
    return tmp_path / "cache" / "config"


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "enhrec.yaml"
    path.write_text(TEXT)
    path.chmod(0o644)
    return path


@pytest.fixture
def parses(monkeypatch):
    """How many times a file was parsed (PyYAML run) from now on."""
    count = []
    parse = config._parse

    def counted(path, text):
        count.append(path)
        return parse(path, text)
    monkeypatch.setattr(config, "_parse", counted)
    return count


def entries(directory) -> list:
    return sorted(p for p in os.listdir(directory) if p.endswith(".json"))


def test_a_file_is_parsed_once_and_then_read_from_the_cache(conf, parses, private_cache):
    first = load_config(str(conf))
    second = load_config(str(conf))
    assert first == second
    assert (second.nodename, second.enabled) == ("node-7", False)
    assert len(parses) == 1
    assert len(entries(private_cache)) == 1
    assert oct(os.stat(private_cache).st_mode & 0o777) == "0o700"
    assert oct(os.stat(private_cache.parent).st_mode & 0o777) == "0o700"


def test_the_cached_config_names_the_file_it_was_read_from(conf, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(TEXT)
    other.chmod(0o644)
    load_config(str(conf))
    assert load_config(str(other)).source == str(other)


def test_an_edit_is_parsed_again(conf, parses):
    load_config(str(conf))
    conf.write_text(TEXT.replace("node-7", "node-8"))
    assert load_config(str(conf)).nodename == "node-8"
    assert len(parses) == 2


def test_a_bad_file_is_never_cached(conf, private_cache):
    conf.write_text("teleport:\n  nodename: ''\n")
    for _ in range(2):
        with pytest.raises(EnhrecError, match="must be a non-empty string"):
            load_config(str(conf))
    assert not os.path.exists(private_cache) or entries(private_cache) == []


def test_the_file_is_still_checked_before_its_cache_is_used(conf):
    load_config(str(conf))
    conf.chmod(0o666)
    with pytest.raises(EnhrecError, match="writable by group or others"):
        load_config(str(conf))


@pytest.mark.parametrize("values", [
    {"enabled": "yes"},               # not as the reader returns it
    {"enabled": 1},
    {"command_buffer_size": True},
    {"nodename": ""},
    {"no_such_key": 1},
    ["enabled", False],
])
def test_an_entry_that_a_parse_could_not_have_made_is_not_believed(conf, parses, private_cache,
                                                                    values):
    load_config(str(conf))
    (name,) = entries(private_cache)
    (private_cache / name).write_bytes(orjson.dumps({"format": config_cache.CACHE_FORMAT,
                                                     "values": values}))
    assert load_config(str(conf)).enabled is False
    assert len(parses) == 2


def test_an_entry_others_could_write_is_not_read(conf, parses, private_cache):
    load_config(str(conf))
    (name,) = entries(private_cache)
    (private_cache / name).chmod(0o644)
    load_config(str(conf))
    private_cache.chmod(0o755)
    load_config(str(conf))
    assert len(parses) == 3


def test_a_cache_directory_others_own_is_not_used(conf, parses, private_cache, monkeypatch):
    load_config(str(conf))
    monkeypatch.setattr(config, "_OWNER_UID", os.geteuid() + 1)
    monkeypatch.setattr(config, "_check_trusted", lambda path, st: None)
    load_config(str(conf))
    assert len(parses) == 2


def test_the_newest_entries_are_kept(tmp_path, private_cache, monkeypatch):
    monkeypatch.setattr(config_cache, "CACHE_KEEP", 3)
    path = tmp_path / "enhrec.yaml"
    for n in range(5):
        path.write_text(f"teleport:\n  nodename: node-{n}\n")
        path.chmod(0o644)
        load_config(str(path))
    assert len(entries(private_cache)) == 3


def test_the_key_covers_the_code_and_pyyaml(monkeypatch):
    key = config_cache.cache_key(TEXT.encode())
    assert key == config_cache.cache_key(TEXT.encode())
    code = config_cache._code()
    assert len(code) == 3 and b"__version__" in code[2]   # PyYAML's __init__.py
    monkeypatch.setattr(config_cache, "_code", lambda: code[:2] + [code[2] + b"#"])
    assert config_cache.cache_key(TEXT.encode()) != key


def test_without_the_code_to_key_it_nothing_is_cached(conf, parses, private_cache, monkeypatch):
    monkeypatch.setattr(config_cache, "_code", lambda: None)
    load_config(str(conf))
    load_config(str(conf))
    assert len(parses) == 2
