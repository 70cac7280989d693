"""Tests for enhrec_wrap.config: defaults, Teleport files taken as they are, and every refusal."""

import os
import pathlib
import shutil
import socket
import textwrap

import pytest

from enhrec_wrap import config
from enhrec_wrap.config import cache as config_cache
from enhrec_wrap.config import yaml_loader as config_yaml
from enhrec_wrap.config import DEFAULT_CONFIG_PATH, Config, load_config
from enhrec_wrap.errors import EnhrecError

SHIPPED_CONF = pathlib.Path(__file__).resolve().parents[2] / "conf" / "enhrec.yaml"

SEED_TELEPORT_YAML = """\
version: v3
teleport:
  nodename: node-7
  data_dir: /srv/teleport
  auth_token: 0123456789abcdef
  auth_servers:
    - 10.0.0.1:3025
  ca_pin: sha256:abcdef
  log:
    output: stderr
    severity: INFO
ssh_service:
  enabled: "yes"
  listen_addr: 0.0.0.0:3022
  labels:
    env: prod
  commands:
    - name: arch
      command: [uname, -p]
      period: 1h0m0s
  pam:
    enabled: no
  enhanced_recording:
    enabled: true
    command_buffer_size: 16
    disk_buffer_size: 256
    network_buffer_size: 32
    cgroup_path: /sys/fs/cgroup/unified
auth_service:
  enabled: false
  cluster_name: example
proxy_service:
  enabled: false
  web_listen_addr: 0.0.0.0:3080
"""


@pytest.fixture(autouse=True)
def files_owned_by_us_are_trusted(monkeypatch, tmp_path):
    """Unit tests need no root: when not root, trust the files the test user makes. Each test
    has a cache of parsed files of its own (config/cache.py): these test the parse."""
    monkeypatch.setattr(config, "_OWNER_UID", os.geteuid())
    monkeypatch.setattr(config_cache, "CACHE_DIR", str(tmp_path / "cache" / "config"))


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "enhrec.yaml", mode: int = 0o644) -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        path.chmod(mode)
        return str(path)
    return write


def error_of(path: str) -> str:
    with pytest.raises(EnhrecError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- accepted -------------------------------------------------------------------------------

def test_config_fields_match_the_architecture():
    names = list(Config._fields)
    assert names == ["source", "nodename", "cluster_name", "data_dir", "enabled",
                     "command_buffer_size", "disk_buffer_size", "network_buffer_size",
                     "cgroup_path", "background_processes", "on_log_failure",
                     "idle_unload_seconds", "refuse_io_uring", "refuse_32bit",
                     "tty_recording", "record_input", "tty_recording_max_bytes",
                     "key_epoch_seconds"]
    with pytest.raises(AttributeError):
        Config().enabled = False


def test_built_in_defaults_when_the_default_file_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent" / "enhrec.yaml"))
    cfg = load_config(None)
    assert cfg == Config(source="built-in defaults", nodename=socket.gethostname(),
                         data_dir="/var/lib/teleport", enabled=True, command_buffer_size=8,
                         disk_buffer_size=128, network_buffer_size=8, cgroup_path="/cgroup2",
                         background_processes="kill", on_log_failure="close",
                         key_epoch_seconds=3600)
    assert cfg.log_dir == "/var/lib/teleport/log"


def test_default_path_is_read_when_present(monkeypatch, write):
    path = write("teleport: {nodename: from-default}\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    cfg = load_config(None)
    assert (cfg.source, cfg.nodename) == (path, "from-default")


def test_make_install_puts_the_config_where_it_is_read():
    makefile = (pathlib.Path(__file__).resolve().parents[2] / "Makefile").read_text()
    (confdir,) = [line.split(":=")[1].strip() for line in makefile.splitlines()
                  if line.startswith("CONFDIR ")]
    assert DEFAULT_CONFIG_PATH == f"{confdir}/enhrec.yaml"


def test_shipped_conf_is_accepted_unchanged(tmp_path):
    # Copied so a checkout's umask or owner cannot fail the test; the content is the shipped one.
    copy = tmp_path / "enhrec.yaml"
    shutil.copyfile(SHIPPED_CONF, copy)
    copy.chmod(0o644)
    cfg = load_config(str(copy))
    assert cfg == Config(source=str(copy))


def test_seed_teleport_yaml_is_accepted_as_it_is(write):
    cfg = load_config(write(SEED_TELEPORT_YAML))
    assert cfg.nodename == "node-7"
    assert cfg.data_dir == "/srv/teleport"
    assert cfg.log_dir == "/srv/teleport/log"
    assert (cfg.command_buffer_size, cfg.disk_buffer_size, cfg.network_buffer_size) == (16, 256, 32)
    assert cfg.cgroup_path == "/sys/fs/cgroup/unified"
    assert cfg.enabled is True
    assert cfg.cluster_name == cfg.cluster == "example"


def test_cluster_is_the_nodename_without_auth_service_cluster_name(write):
    cfg = load_config(write("teleport: {nodename: web-01}\nauth_service: {enabled: false}\n"))
    assert cfg.cluster_name is None and cfg.cluster == "web-01"
    assert Config(nodename="n").cluster == "n"


def test_auth_service_keys_other_than_cluster_name_are_tolerated(write):
    cfg = load_config(write("auth_service:\n  cluster_name: main\n  tokens: [x]\n  foo: 1\n"))
    assert cfg.cluster == "main"


@pytest.mark.parametrize("text, message", [
    ("auth_service: {cluster_name: ''}\n", "auth_service.cluster_name: must be a non-empty string"),
    ("auth_service: {cluster_name: [a]}\n", "auth_service.cluster_name: must be a non-empty string"),
    ("auth_service: yes\n", "auth_service: must be a mapping of keys"),
])
def test_bad_cluster_name_is_one_clear_error(write, text, message):
    path = write(text)
    with pytest.raises(EnhrecError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: {message}"), error.value


def test_empty_file_means_all_defaults(write):
    path = write("# nothing set\n")
    assert load_config(path) == Config(source=path)


def test_keys_without_values_mean_defaults(write):
    path = write("""\
        teleport:
        ssh_service:
          enhanced_recording:
            cgroup_path:
        enhrec:
          on_log_failure:
        """)
    assert load_config(path) == Config(source=path)


def test_enhrec_section_and_disabling(write):
    cfg = load_config(write("""\
        ssh_service:
          enhanced_recording:
            enabled: false
        enhrec:
          background_processes: record
          on_log_failure: continue
        """))
    assert cfg.enabled is False
    assert (cfg.background_processes, cfg.on_log_failure) == ("record", "continue")


@pytest.mark.parametrize("spelling, expected", [('"yes"', True), ('"off"', False), ("no", False)])
def test_teleport_boolean_spellings(write, spelling, expected):
    cfg = load_config(write(f"ssh_service: {{enhanced_recording: {{enabled: {spelling}}}}}\n"))
    assert cfg.enabled is expected


def test_buffer_size_limits_are_inclusive(write):
    cfg = load_config(write("ssh_service: {enhanced_recording: "
                            "{command_buffer_size: 1, disk_buffer_size: 65536}}\n"))
    assert (cfg.command_buffer_size, cfg.disk_buffer_size) == (1, 65536)


def test_symlink_to_a_trusted_file_is_fine(write, tmp_path):
    target = write("teleport: {nodename: linked}\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert load_config(str(link)).nodename == "linked"


# --- refused: keys and values ---------------------------------------------------------------

def test_unknown_key_with_suggestion(write):
    path = write("ssh_service: {enhanced_recording: {disk_bufer_size: 64}}\n")
    assert error_of(path) == (f"{path}: ssh_service.enhanced_recording.disk_bufer_size: "
                              "unknown key (did you mean disk_buffer_size?)")


def test_unknown_key_without_suggestion_lists_the_allowed_keys(write):
    path = write("enhrec: {zzz: 1}\n")
    assert error_of(path) == (f"{path}: enhrec.zzz: unknown key "
                              "(allowed: background_processes, idle_unload_seconds, "
                              "key_epoch_seconds, on_log_failure, record_input, refuse_32bit, "
                              "refuse_io_uring, tty_recording, tty_recording_max_bytes)")


def test_key_epoch_is_a_number_of_seconds(write):
    assert load_config(write("enhrec: {key_epoch_seconds: 60}\n")).key_epoch_seconds == 60
    for bad in ("0", "true", "1h", str(7 * 86400 + 1)):
        path = write(f"enhrec: {{key_epoch_seconds: {bad}}}\n")
        assert error_of(path).startswith(f"{path}: enhrec.key_epoch_seconds: must be a number of "
                                         "seconds from 1 to 604800, got ")


def test_unknown_key_in_teleport_section(write):
    path = write("teleport: {nodenam: x, auth_token: t}\n")
    assert error_of(path) == f"{path}: teleport.nodenam: unknown key (did you mean nodename?)"


def test_unknown_top_level_key(write):
    path = write("ssh_servce:\n  enhanced_recording:\n    enabled: false\n")
    assert error_of(path) == f"{path}: ssh_servce: unknown key (did you mean ssh_service?)"


def test_wrong_type(write):
    path = write("ssh_service: {enhanced_recording: {command_buffer_size: big}}\n")
    assert error_of(path) == (f"{path}: ssh_service.enhanced_recording.command_buffer_size: "
                              'must be an integer from 1 to 65536, got "big"')


@pytest.mark.parametrize("value, shown", [("true", "true"), ("8.0", "8.0"), ('"8"', '"8"')])
def test_bool_float_or_string_is_not_a_buffer_size(write, value, shown):
    path = write(f"ssh_service: {{enhanced_recording: {{disk_buffer_size: {value}}}}}\n")
    assert error_of(path) == (f"{path}: ssh_service.enhanced_recording.disk_buffer_size: "
                              f"must be an integer from 1 to 65536, got {shown}")


@pytest.mark.parametrize("value", [0, -1, 65537])
def test_buffer_size_out_of_range(write, value):
    path = write(f"ssh_service: {{enhanced_recording: {{network_buffer_size: {value}}}}}\n")
    assert error_of(path) == (f"{path}: ssh_service.enhanced_recording.network_buffer_size: "
                              f"must be an integer from 1 to 65536, got {value}")


def test_enabled_must_be_a_boolean(write):
    path = write("ssh_service: {enhanced_recording: {enabled: 2}}\n")
    assert error_of(path) == (f"{path}: ssh_service.enhanced_recording.enabled: "
                              "must be true or false, got 2")


@pytest.mark.parametrize("key, section", [("data_dir", "teleport"),
                                          ("cgroup_path", "ssh_service.enhanced_recording")])
def test_relative_path(write, key, section):
    body = {"teleport": f"teleport: {{{key}: var/lib/x}}\n",
            "ssh_service.enhanced_recording":
                f"ssh_service: {{enhanced_recording: {{{key}: var/lib/x}}}}\n"}[section]
    path = write(body)
    assert error_of(path) == f'{path}: {section}.{key}: must be an absolute path, got "var/lib/x"'


def test_choice_out_of_set(write):
    path = write("enhrec: {background_processes: Kill, on_log_failure: close}\n")
    assert error_of(path) == (f"{path}: enhrec.background_processes: "
                              'must be one of kill, record, got "Kill"')


def test_empty_nodename(write):
    path = write('teleport: {nodename: ""}\n')
    assert error_of(path) == f'{path}: teleport.nodename: must be a non-empty string, got ""'


def test_section_that_is_not_a_mapping(write):
    path = write("ssh_service:\n  enhanced_recording: [enabled]\n")
    assert error_of(path) == (f"{path}: ssh_service.enhanced_recording: "
                              "must be a mapping of keys, got a list")


def test_top_level_not_a_mapping(write):
    path = write("- teleport\n- ssh_service\n")
    message = error_of(path)
    assert message.startswith(f"{path}: the top level must be a mapping")
    assert message.endswith("got a list")


# --- refused: YAML --------------------------------------------------------------------------

def test_yaml_syntax_error_names_the_line(write):
    path = write("""\
        teleport:
          nodename: a
        ssh_service:
          enhanced_recording: {enabled: true
        enhrec: {}
        """)
    message = error_of(path)
    assert message.startswith(f"{path}: line 5, column ")
    assert "line 4" in message  # where the unclosed flow mapping starts


def test_duplicate_key_is_refused(write):
    path = write("ssh_service:\n  enhanced_recording:\n    enabled: true\n    enabled: false\n")
    assert error_of(path) == f'{path}: line 4, column 5: duplicate key "enabled"'


def test_control_character(write, tmp_path):
    path = tmp_path / "ctl.yaml"
    path.write_bytes(b"teleport:\n  nodename: a\x01b\n")
    path.chmod(0o644)
    assert error_of(str(path)) == f"{path}: line 2: character 0x1 is not allowed in YAML: remove it"


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"teleport:\n  nodename: caf\xe9\n")
    path.chmod(0o644)
    assert error_of(str(path)) == f"{path}: line 2: not UTF-8 text: save the file as UTF-8"


# --- refused: the file itself ---------------------------------------------------------------

def test_missing_explicit_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    message = error_of(path)
    assert message.startswith(f"{path}: config file not found")
    assert DEFAULT_CONFIG_PATH in message


def test_group_writable_file(write):
    path = write("teleport: {}\n", mode=0o664)
    assert error_of(path) == (f"{path}: config file is writable by group or others (mode 0664), "
                              f"so they could switch recording off: "
                              f"run chown root:root {path} && chmod 644 {path}")


def test_world_writable_file(write):
    path = write("teleport: {}\n", mode=0o646)
    assert "writable by group or others (mode 0646)" in error_of(path)


def test_file_not_owned_by_root(write, monkeypatch):
    path = write("teleport: {}\n")
    monkeypatch.setattr(config, "_OWNER_UID", 0)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    owner = os.stat(path).st_uid
    assert error_of(path) == (f"{path}: config file is owned by uid {owner}, not root, "
                              f"so its owner could switch recording off: "
                              f"run chown root:root {path} && chmod 644 {path}")


def test_symlink_to_an_untrusted_file_is_refused(write, tmp_path):
    target = write("teleport: {}\n", mode=0o666)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    assert "writable by group or others" in error_of(str(link))


def test_directory_is_not_a_config(tmp_path):
    assert error_of(str(tmp_path)).startswith(f"{tmp_path}: not a regular file")


def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo, 0o644)
    assert error_of(str(fifo)).startswith(f"{fifo}: not a regular file")


def test_path_with_spaces_is_quoted_in_the_fix(tmp_path):
    path = tmp_path / "my conf.yaml"
    path.write_text("teleport: {}\n")
    path.chmod(0o664)
    assert f"chmod 644 '{path}'" in error_of(str(path))


# --- refused: silly but valid YAML (issue 11) -----------------------------------------------

@pytest.mark.parametrize("opening", ["[", "{a: "])
def test_config_nested_100000_deep_is_one_line(write, opening):
    path = write("teleport:\n  nodename: " + opening * 100_000 + "\n")
    message = error_of(path)
    assert message.startswith(f"{path}: line 2, column ")
    assert f"nested more than {config_yaml.MAX_YAML_DEPTH} levels deep" in message


def test_config_nested_as_deep_as_allowed_loads(write):
    depth = config_yaml.MAX_YAML_DEPTH - 3   # the document, teleport: and the key's mapping
    path = write("teleport:\n  log: " + "[" * depth + "]" * depth + "\n")
    assert load_config(path).source == path


def test_nodename_longer_than_a_hostname_is_refused(write):
    path = write("teleport:\n  nodename: " + "n" * 10_000_000 + "\n")
    message = error_of(path)
    assert message.startswith(f"{path}: teleport.nodename: must be at most 253 bytes (a host "
                              "name), got 10000000")
    assert len(message) < 300
    assert load_config(write("teleport:\n  nodename: " + "n" * 253 + "\n")).nodename == "n" * 253


def test_nodename_with_a_control_character_is_refused(write):
    path = write('teleport:\n  nodename: "vm\\x1b[2J"\n')
    assert error_of(path) == (f"{path}: teleport.nodename: must be printable (no control "
                              'characters), got "vm\\u001b[2J"')


@pytest.mark.parametrize("section, key", [("teleport", "data_dir"),
                                          ("ssh_service.enhanced_recording", "cgroup_path")])
def test_paths_longer_than_the_limit_are_refused(write, section, key):
    long_path = "/" + "d" * config.MAX_PATH_BYTES
    text = (f"teleport:\n  data_dir: {long_path}\n" if key == "data_dir" else
            f"ssh_service:\n  enhanced_recording:\n    cgroup_path: {long_path}\n")
    message = error_of(write(text))
    assert f"{section}.{key}: must be an absolute path of at most {config.MAX_PATH_BYTES} bytes" in message
    assert len(message) < 400


# --- the terminal recording's settings ------------------------------------------------------

def test_terminal_recording_defaults():
    cfg = Config()
    assert (cfg.tty_recording, cfg.record_input, cfg.tty_recording_max_bytes) == \
        ("interactive", False, 256 << 20)


def test_terminal_recording_settings(write):
    cfg = load_config(write("""\
        enhrec:
          tty_recording: off
          record_input: true
          tty_recording_max_bytes: 0
        """))
    assert (cfg.tty_recording, cfg.record_input, cfg.tty_recording_max_bytes) == ("off", True, 0)
    assert load_config(write('enhrec:\n  tty_recording: "off"\n')).tty_recording == "off"
    assert load_config(write("enhrec:\n  tty_recording: all\n")).tty_recording == "all"


@pytest.mark.parametrize("text, expected", [
    ("tty_recording: everything",
     'enhrec.tty_recording: must be one of interactive, all, off, got "everything"'),
    ("tty_recording: true", "enhrec.tty_recording: must be one of interactive, all, off, got true"),
    ("record_input: maybe", 'enhrec.record_input: must be true or false, got "maybe"'),
    ("tty_recording_max_bytes: -1", "enhrec.tty_recording_max_bytes: must be an integer from 0 to"),
    ("tty_recording_max_bytes: 1.5", "enhrec.tty_recording_max_bytes: must be an integer"),
    ("tty_recording_max_bytes: true", "enhrec.tty_recording_max_bytes: must be an integer"),
])
def test_terminal_recording_refusals(write, text, expected):
    assert expected in error_of(write(f"enhrec:\n  {text}\n"))

