"""What the recorded user tries against the recording, from inside a recorded SSH session: signal
the wrapper, leave the session's cgroup, read or write the log, make the wrapper run other code.
Every attempt must fail, and the attempts themselves are in the recording."""

import json
import os
import subprocess

VENV_PYTHON = "/opt/enhrec-wrap/venv/bin/python3"
MARKER = "/tmp/enhrec-e2e-tampered"
# Run as root by the wrapper if it ever imported from the user's directories or environment.
PAYLOAD = f"import os; open({MARKER!r}, 'a').write('%d\\n' % os.getuid())\n"


def run_as_user(host, script):
    """Runs `script` with bash in a recorded session; returns (result, checks) where checks is
    {name: verdict} from its `check NAME ok|FAIL ...` lines."""
    result = host.ssh("bash -s", input=script)
    checks = {}
    for line in result.stdout.splitlines():
        words = line.split(maxsplit=2)
        if len(words) >= 2 and words[0] == "check":
            checks.setdefault(words[1], []).append(line)
    return result, checks


def failures(checks):
    return [line for lines in checks.values() for line in lines if " FAIL" in line]


def test_user_cannot_signal_the_wrapper(host):
    script = r"""
wrapper=$PPID
grep -q enhrec-wrap /proc/$wrapper/cmdline && echo "check is-wrapper ok $wrapper" || echo "check is-wrapper FAIL $wrapper"
# Real uid 0: the wrapper and its helpers. (sudo keeps the user's real uid, so the user may
# signal sudo: see test_killing_sudo_only_ends_the_session.)
for pid in $(pgrep -U 0 -f 'enhrec-wrap|enhrec_wrap'); do
    for sig in TERM KILL STOP HUP; do
        if kill -s $sig $pid 2>/dev/null; then echo "check signal FAIL $sig $pid"; else echo "check signal ok $sig $pid"; fi
    done
    if head -c1 /proc/$pid/mem >/dev/null 2>&1; then echo "check mem FAIL $pid"; else echo "check mem ok $pid"; fi
done
echo "check alive ok"
"""
    mark = host.mark()
    result, checks = run_as_user(host, script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert failures(checks) == [], result.stdout
    assert checks["is-wrapper"] and checks["alive"]
    wrapper_pid = checks["is-wrapper"][0].split()[-1]
    assert any(line.endswith(f" {wrapper_pid}") for line in checks["signal"])
    session = host.session_since(mark)
    assert session.end["exit_status"] == 0   # the wrapper lived on and ended the session itself
    assert session.commands_named("pgrep")


def test_killing_sudo_leaves_the_recording_alone(host):
    """sudo runs with the user's real uid, so the user may kill it; the wrapper (its child, root)
    goes on recording, and only the client's exit status is lost."""
    script = "kill -KILL $(ps -o ppid= -p $PPID); sleep 0.5; id -u; echo after"
    mark = host.mark()
    result = host.ssh(script)
    assert result.stdout == f"{host.user.pw_uid}\nafter\n"
    assert result.returncode == 255, result.stderr     # sshd reports its command as killed
    session = host.session_since(mark)
    assert [e["argv"][:2] for e in session.commands_named("ps")] == [["-o", "ppid="]]
    assert [e["argv"] for e in session.commands_named("id")] == [["-u"]]
    assert session.end["exit_status"] == 0


def test_user_cannot_leave_the_session_cgroup(host):
    script = r"""
mine=$(grep '^0::' /proc/self/cgroup)
for f in $(find /cgroup2 /sys/fs/cgroup -maxdepth 3 -name cgroup.procs 2>/dev/null) $(find /cgroup2 /sys/fs/cgroup -maxdepth 3 -name cgroup.threads 2>/dev/null); do
    if (echo $$ > "$f") 2>/dev/null; then echo "check move FAIL $f"; else echo "check move ok $f"; fi
done
for d in /cgroup2/escape /cgroup2/enhrec/escape /sys/fs/cgroup/unified/escape; do
    if mkdir "$d" 2>/dev/null; then echo "check mkdir FAIL $d"; else echo "check mkdir ok $d"; fi
done
for f in /cgroup2/enhrec/*/cgroup.freeze /cgroup2/enhrec/*/cgroup.kill; do
    if (echo 1 > "$f") 2>/dev/null; then echo "check control FAIL $f"; else echo "check control ok $f"; fi
done
[ "$(grep '^0::' /proc/self/cgroup)" = "$mine" ] && echo "check still-inside ok $mine" || echo "check still-inside FAIL $(grep '^0::' /proc/self/cgroup)"
sleep 0.2 &
wait
"""
    mark = host.mark()
    result, checks = run_as_user(host, script)
    assert result.returncode == 0, result.stderr
    assert failures(checks) == [], "\n".join(failures(checks))
    session = host.session_since(mark)
    assert any(f"/cgroup2/enhrec/{session.sid}/cgroup.procs" in line for line in checks["move"])
    assert checks["still-inside"][0].endswith(f"/enhrec/{session.sid}")
    # Still recorded after all the attempts: the sleep started last.
    assert [e["argv"] for e in session.commands_named("sleep")] == [["0.2"]]


def test_user_cannot_read_or_write_the_log(host):
    log_dir = os.path.join(host.data_dir, "log")
    assert os.listdir(log_dir), "no log yet"
    files = [os.path.join(root, name) for root, _, names in os.walk(log_dir) for name in names]
    script = f"""
log={log_dir}
ls "$log" >/dev/null 2>&1 && echo "check list FAIL" || echo "check list ok"
cat "$log/events.log" >/dev/null 2>&1 && echo "check read FAIL" || echo "check read ok"
(echo '{{"event":"forged"}}' >> "$log/events.log") 2>/dev/null && echo "check append FAIL" || echo "check append ok"
touch "$log/forged" 2>/dev/null && echo "check create FAIL" || echo "check create ok"
rm -rf "$log" 2>/dev/null; [ -e "$log" ] 2>/dev/null || ls -d "$log" >/dev/null 2>&1
for f in {" ".join(files[:50])}; do
    (: < "$f") 2>/dev/null && echo "check read-file FAIL $f" || echo "check read-file ok $f"
    (: >> "$f") 2>/dev/null && echo "check write-file FAIL $f" || echo "check write-file ok $f"
done
"""
    mark = host.mark()
    result, checks = run_as_user(host, script)
    assert result.returncode == 0, result.stderr
    assert failures(checks) == [], "\n".join(failures(checks))
    assert len(checks["read-file"]) == len(files[:50]) > 0
    assert os.path.isdir(log_dir)
    lines = open(os.path.join(log_dir, "events.log"), "rb").read().splitlines()
    assert not any(b"forged" in line and b'"event":"forged"' in line for line in lines)
    assert all(json.loads(line)["event"] != "forged" for line in lines)
    host.session_since(mark)


def test_user_cannot_make_the_wrapper_load_other_code(host):
    """The wrapper starts in the user's home directory (sshd's choice), with whatever the client
    sends; none of the user's files or variables may reach the root process."""
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    # Every directory the wrapper imports from, and its program, config and BPF sources.
    sys_path = json.loads(subprocess.run(
        [VENV_PYTHON, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True, text=True, check=True).stdout)
    trusted = [p for p in sys_path if os.path.isdir(p)] + [
        "/opt/enhrec-wrap", "/usr/local/bin/enhrec-wrap", "/etc/enhrec-wrap"]
    plant = f"""
cd "$HOME"
payload={PAYLOAD!r}
mkdir -p enhrec_wrap bcc click yaml pam
for f in sitecustomize.py usercustomize.py enhrec_wrap/__init__.py bcc/__init__.py click/__init__.py yaml/__init__.py pam/__init__.py; do printf '%s' "$payload" > "$f"; done
printf '#error planted\\n' > enhrec.h; cp enhrec.h recorder.c
mkdir -p .local/lib/python3.11/site-packages && printf '%s' "$payload" > .local/lib/python3.11/site-packages/sitecustomize.py
writable=$(find {" ".join(trusted)} -writable 2>/dev/null | head -5)
[ -z "$writable" ] && echo "check writable ok" || echo "check writable FAIL $writable"
"""
    result, checks = run_as_user(host, plant)
    assert result.returncode == 0, result.stderr
    assert failures(checks) == [], "\n".join(failures(checks))
    # The next login starts in that home directory, and asks for variables through ssh too.
    mark = host.mark()
    argv = host.ssh_argv("echo next-login")
    argv[1:1] = ["-o", "SetEnv=PYTHONPATH=. PYTHONSTARTUP=sitecustomize.py BCC_KERNEL_SOURCE=. "
                       "PYTHONHOME=."]
    login = host.client(argv)
    assert login.returncode == 0, login.stderr
    assert login.stdout == "next-login\n"
    assert not os.path.exists(MARKER), f"the wrapper ran the user's code: {open(MARKER).read()}"
    session = host.session_since(mark)
    assert session.start["enhanced_recording"] is True
    assert session.start["initial_command"] == ["echo next-login"]
