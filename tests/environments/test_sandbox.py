"""The sandbox contains hostile programs: each test runs one and checks the host afterwards."""

from __future__ import annotations

import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ponder.environments.sandbox import namespaces_available, run_judged, run_python
from ponder.errors import ConfigError

pytestmark = pytest.mark.sandbox
needs_ns = pytest.mark.skipif(
    not namespaces_available(), reason="the namespace sandbox needs root and unshare"
)


def run(src: str, **kw):
    return run_python(textwrap.dedent(src), **kw)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_runs_code_and_captures_output():
    r = run("import sys\nprint('hi')\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert (r.stdout, r.stderr, r.returncode) == ("hi\n", "oops\n", 3)
    assert not (r.timed_out or r.killed or r.oom or r.output_truncated)
    assert r.isolation in ("namespaces", "rlimits")


@needs_ns
def test_uses_namespaces_isolated_python_and_fresh_workdir():
    r = run(
        """
        import os, sys
        print(sys.flags.isolated, os.getuid() != 0, os.getcwd(), os.listdir("."))
        """
    )
    assert r.isolation == "namespaces"
    assert r.stdout.split(" ", 3) == ["1", "True", "/tmp/sandbox", "['main.py']\n"]


def test_infinite_loop_is_killed_at_the_timeout():
    t = time.monotonic()
    r = run("while True:\n    pass", timeout=1)
    assert r.timed_out and r.killed and not r.ok
    assert time.monotonic() - t < 4


@needs_ns
def test_fork_bomb_is_bounded_and_leaves_no_process(procs_with):
    marker = "0.000" + "".join(secrets.choice("123456789") for _ in range(14))  # `sleep` adds its args
    t = time.monotonic()
    r = run(
        f"""
        import os
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", "300", "{marker}"])
                n += 1
        except OSError as e:
            print("blocked after", n, type(e).__name__, flush=True)
        while True:  # then the classic bomb until the timeout
            try:
                os.fork()
            except OSError:
                pass
        """,
        timeout=2,
        max_procs=16,
    )
    assert r.timed_out and r.killed
    n = int(r.stdout.split()[2])
    assert 0 < n < 16
    assert time.monotonic() - t < 6
    assert procs_with(marker) == []  # every sleeper died with the namespace


def test_memory_bomb_fails_and_the_parent_is_unaffected():
    before = _maxrss_mb()
    r = run("x = bytearray(8 << 30)", memory_mb=256)
    assert r.returncode != 0 and r.oom and "MemoryError" in r.stderr
    r = run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))", memory_mb=256, timeout=5)
    assert r.returncode != 0 and r.oom and not r.timed_out
    assert _maxrss_mb() - before < 50


@needs_ns
def test_writes_outside_the_sandbox_do_not_reach_the_host(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    host_tmp = f"/tmp/ponder-sbx-{secrets.token_hex(6)}"
    r = run(
        f"""
        for path in ({str(outside / "pwned")!r}, {host_tmp!r}, "/etc/ponder-pwned", "/usr/pwned", "/pwned"):
            try:
                open(path, "w").write("x")
                print("wrote", path)
            except OSError as e:
                print("blocked", path, type(e).__name__)
        open("inside.txt", "w").write("fine")
        """
    )
    assert r.returncode == 0, r.stderr
    assert f"blocked {outside / 'pwned'}" in r.stdout and "blocked /etc/ponder-pwned" in r.stdout
    assert os.listdir(outside) == [] and not os.path.exists(host_tmp)  # the private /tmp vanished
    assert not any(os.path.exists(p) for p in ("/etc/ponder-pwned", "/usr/pwned", "/pwned"))


def test_parent_environment_secrets_are_not_passed(monkeypatch):
    secret = secrets.token_hex(16)
    monkeypatch.setenv("PONDER_TEST_SECRET", secret)
    for isolation in ("auto", "rlimits"):
        r = run(
            """
            import os
            print(dict(os.environ))
            for p in ("/proc/self/environ", "/proc/1/environ"):
                try:
                    print(open(p, "rb").read())
                except OSError as e:
                    print(type(e).__name__)
            """,
            isolation=isolation,
        )
        assert r.returncode == 0, r.stderr
        assert secret not in r.stdout + r.stderr and "PONDER_TEST_SECRET" not in r.stdout


@needs_ns
def test_host_files_are_not_readable(tmp_path):
    secret = secrets.token_hex(16)
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_text(secret)
    os.chmod(private / "secret.txt", 0o600)
    r = run(
        f"""
        import os
        for path in ({str(private / "secret.txt")!r}, "/root/.bashrc", "/etc/shadow", {os.path.abspath(__file__)!r}):
            try:
                print("read", path, open(path).read()[:100])
            except OSError as e:
                print("blocked", path, type(e).__name__)
        """
    )
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout
    assert r.stdout.count("blocked") == 4, r.stdout


@needs_ns
def test_network_is_blocked():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        r = run(
            f"""
            import socket
            for host in ("127.0.0.1", "localhost", "1.1.1.1"):
                try:
                    socket.create_connection((host, {port}), timeout=1)
                    print("connected", host)
                except OSError as e:
                    print("blocked", host, type(e).__name__)
            """
        )
        assert r.returncode == 0, r.stderr
        assert "connected" not in r.stdout and r.stdout.count("blocked") == 3
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked
    finally:
        listener.close()


@needs_ns
def test_cannot_kill_the_parent_or_host_processes():
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        r = run(
            f"""
            import os, signal
            for name, kill in (
                ("ppid", lambda: os.kill(os.getppid(), 9)),
                ("host pid", lambda: os.kill({os.getpid()}, 9)),
                ("sentinel", lambda: os.kill({sentinel.pid}, 9)),
                ("parent group", lambda: os.killpg(os.getpgid(os.getppid()), 9)),
                ("all", lambda: os.kill(-1, 9)),
            ):
                try:
                    kill()
                    print("sent", name, flush=True)
                except OSError as e:
                    print("blocked", name, type(e).__name__, flush=True)
            os.killpg(0, 9)
            """
        )
        assert (
            "blocked ppid" in r.stdout and "blocked host pid" in r.stdout and "blocked sentinel" in r.stdout
        )
        assert r.killed  # it could only kill itself
        assert sentinel.poll() is None  # ... and we are evidently alive
    finally:
        sentinel.kill()
        sentinel.wait()


def test_a_gigabyte_of_output_is_truncated_in_bounded_time_and_memory():
    before, t = _maxrss_mb(), time.monotonic()
    r = run(
        """
        import sys
        block = b"x" * (1 << 20)
        for _ in range(1024):
            sys.stdout.buffer.write(block)
        print("never seen")
        """,
        max_output=10_000,
        timeout=30,
    )
    assert r.output_truncated and r.killed and not r.timed_out
    assert len(r.stdout) < 10_200 and "bytes of output cut" in r.stdout
    assert time.monotonic() - t < 10 and _maxrss_mb() - before < 50


def test_long_output_keeps_head_and_tail_with_a_note():
    r = run("print('BEGIN' + 'y' * 100_000 + 'END')", max_output=2000)
    assert r.returncode == 0 and r.output_truncated and not r.killed
    assert r.stdout.startswith("BEGIN") and r.stdout.rstrip().endswith("END")
    assert "bytes of output cut" in r.stdout and len(r.stdout) < 2100


def test_file_size_limit():
    r = run("open('big', 'wb').write(b'x' * (8 << 20))", max_file_mb=1)
    assert r.returncode != 0 and "File too large" in r.stderr


def test_rlimits_fallback_still_times_out_scrubs_env_and_cleans_up(monkeypatch):
    monkeypatch.setenv("PONDER_TEST_SECRET", "s3cret")
    r = run("import os; print(os.getcwd()); print(os.environ.get('PONDER_TEST_SECRET'))", isolation="rlimits")
    assert r.isolation == "rlimits" and r.returncode == 0
    cwd, seen = r.stdout.split()
    assert seen == "None" and not os.path.exists(cwd)
    assert run("while True: pass", timeout=1, isolation="rlimits").timed_out


def test_stdin_is_fed_and_bad_limits_are_refused():
    assert run("import sys; print(sys.stdin.read()[::-1])", stdin="abc").stdout == "cba\n"
    with pytest.raises(ConfigError):
        run_python("", timeout=0)
    with pytest.raises(ConfigError):
        run_python("", isolation="docker")  # type: ignore[arg-type]


def test_interpreter_is_the_parents():
    r = run("import sys; print(sys.version)")
    assert r.stdout.strip() == sys.version


# run_judged: a judge that reports, as its verdict, what the candidate could see.
JUDGE = """
import ctypes, json, os, sys
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
token, _, secret = sys.stdin.read().partition("\\n")
to_c, from_c = os.fdopen(4, "w"), os.fdopen(3)
to_c.write("go\\n")
to_c.flush()
seen = json.loads(from_c.readline() or "{}")
os.write(5, (token + "\\n" + json.dumps({"uid": os.getuid(), "secret": secret, "candidate": seen})).encode())
"""

CANDIDATE = """
import json, os, sys
assert os.read(3, 3) == b"go\\n"
seen = {"uid": os.getuid(), "cwd": os.getcwd(), "files": os.listdir("."), "stdin": sys.stdin.read(),
        "argv": sys.orig_argv, "env": dict(os.environ), "fds": [], "blocked": []}
for fd in range(256):
    try:
        os.fstat(fd)
        seen["fds"].append(fd)
    except OSError:
        pass
for path in ("/tmp/judge", "/tmp/judge/main.py", "/proc/1/fd", "/proc/2/environ"):
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
    except OSError as e:
        seen["blocked"].append(type(e).__name__)
seen["mine"] = open("main.py").read()
os.write(4, json.dumps(seen).encode() + b"\\n")
print("candidate done", flush=True)
"""


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
def test_judged_run_keeps_the_secret_with_the_judge(isolation):
    if isolation == "auto" and not namespaces_available():
        pytest.skip("the namespace sandbox needs root and unshare")
    secret = secrets.token_hex(16)
    r = run_judged(CANDIDATE, JUDGE, f"tests: {secret}", isolation=isolation)
    assert r.isolation == ("namespaces" if isolation == "auto" else "rlimits") and r.verdict, r
    verdict = json.loads(r.verdict)
    seen = verdict["candidate"]
    assert verdict["secret"] == f"tests: {secret}"  # the judge got it ...
    assert secret not in json.dumps(seen) + r.stdout + r.stderr  # ... the candidate nowhere
    assert seen["fds"] == [0, 1, 2, 3, 4] and seen["stdin"] == "" and seen["files"] == ["main.py"]
    if r.isolation == "namespaces":
        assert seen["uid"] != verdict["uid"] and 0 not in (seen["uid"], verdict["uid"])
        assert seen["cwd"] == "/tmp/sandbox" and len(seen["blocked"]) == 4, seen


def test_judged_verdict_needs_the_token_and_the_judge_ends_the_run(procs_with):
    marker = "0.000" + "".join(secrets.choice("123456789") for _ in range(14))
    forger = f"""
        import os
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "300", "{marker}"])
        for fd in range(5, 256):
            try:
                os.write(fd, b"0" * 32 + b"\\npassed")
                print("wrote", fd)
            except OSError:
                pass
        """
    t = time.monotonic()
    r = run_judged(textwrap.dedent(forger), "import os\nos.write(5, b'no token\\nfine')", "s")
    assert r.verdict is None and "wrote" not in r.stdout
    assert time.monotonic() - t < 5 and procs_with(marker) == []  # the judge ended: so did the rest


@needs_ns
def test_site_packages_and_hidden_paths_are_covered():
    import numpy

    d = os.path.dirname(numpy.__file__)
    probe = f"import importlib.util as u, os\nprint(u.find_spec('numpy') is not None, os.path.isdir({d!r}) and os.listdir({d!r}))"
    assert run(probe).stdout.startswith("True ['")
    assert run(probe, site_packages=False).stdout == "False False\n"  # the whole site-packages is empty
    assert run(probe, hide=[d]).stdout.endswith(" []\n")  # an empty dir (a namespace package at most)
