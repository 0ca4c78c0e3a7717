"""Run untrusted Python source in a sandbox and capture what it did.

Two isolation levels, reported in ``SandboxResult.isolation``:

``"namespaces"`` (root and util-linux ``unshare`` available; checked once per process)
    The program runs in fresh PID, mount, network, IPC and UTS namespaces. Its root
    filesystem is a read-only tmpfs holding only read-only, nosuid binds of the system
    dirs (``/usr``, ``/etc``, ...) and of the Python install, a private ``/proc``, a
    minimal ``/dev`` and a private size-limited tmpfs ``/tmp`` whose ``/tmp/sandbox`` is
    the working dir and ``HOME``. It runs as a fresh random unprivileged uid with no
    capabilities and ``no_new_privs``, under rlimits (CPU, address space, processes,
    file size, no core dumps). So it cannot reach the network (only a down loopback),
    write or read host files outside those system dirs (``/root``, ``/home``, the
    project, ``/tmp``), see or signal host processes, or fork without bound; when the
    namespace's init exits or is killed, the kernel kills every process in it (the init
    also enforces the deadline itself, in case the caller dies first).
``"rlimits"`` (fallback, e.g. not root; a warning is logged once)
    Own session and process group, rlimits, a scrubbed environment and a temp working
    dir. Network, host files and signals to same-uid processes are NOT blocked, and a
    grandchild that calls ``setsid`` can outlive the run.

In both levels the interpreter is ``sys.executable -I`` (isolated mode), the
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
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Literal

from ponder.errors import ConfigError, SandboxError

__all__ = ["SandboxResult", "namespaces_available", "run_python"]

log = logging.getLogger(__name__)
Isolation = Literal["namespaces", "rlimits"]
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin", "/etc")
_UNSHARE_FLAGS = ("--pid", "--kill-child", "--mount", "--net", "--ipc", "--uts")

# Runs first inside the sandbox (as root in the new namespaces, or as the caller in the
# fallback): builds the filesystem view, drops privileges, sets rlimits, execs the program.
_BOOT = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
RO, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18

def mount(src, dst, fs=None, flags=0, data=None):
    enc = lambda s: s.encode() if s else None
    if libc.mount(enc(src), enc(dst), enc(fs), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} on {dst}: {os.strerror(e)}")

def build_root(root):
    mount(None, "/", None, REC | PRIVATE)
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=0755")
    os.mkdir(root + "/tmp")  # first, so binds of a Python install under /tmp stay visible
    mount("tmpfs", root + "/tmp", "tmpfs", NOSUID | NODEV, f"size={cfg['disk_mb']}m,mode=1777")
    for p in cfg["binds"]:
        dst = root + p
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(p):
            os.symlink(os.readlink(p), dst)
        elif os.path.isdir(p):
            os.makedirs(dst, exist_ok=True)
            mount(p, dst, None, BIND)
            mount(None, dst, None, REMOUNT | BIND | RO | NOSUID | NODEV)
    os.mkdir(root + "/dev")
    for d in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{d}", "w").close()
        mount("/dev/" + d, f"{root}/dev/{d}", None, BIND)
    for i, d in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{d}")
    os.symlink("/proc/self/fd", root + "/dev/fd")
    os.symlink("/tmp", root + "/dev/shm")
    os.mkdir(root + "/proc")
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC, "hidepid=2")
    work = root + cfg["work"]
    os.mkdir(work, 0o700)
    os.chown(work, cfg["uid"], cfg["uid"])
    with open(cfg["main"], "rb") as f, open(work + "/main.py", "wb") as g:
        g.write(f.read())
    mount(None, root, None, REMOUNT | RO | NOSUID | NODEV)
    os.chroot(root)

def run_program():
    os.chdir(cfg["work"])
    if cfg["uid"] is not None:
        os.setsid()
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot regain root
    for name, soft, hard in cfg["rlimits"]:
        which = getattr(resource, name)
        cap = resource.getrlimit(which)[1]  # an unprivileged caller cannot raise its hard limits
        if cap != resource.RLIM_INFINITY:
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(which, (soft, hard))
    os.execv(sys.executable, [sys.executable, "-I", "-B", "main.py"])

if cfg["uid"] is None:
    run_program()
status = open(cfg["status"], "w")
status.write(os.readlink("/proc/self") + "\n")  # host pid: /proc is still the host's here
status.flush()
try:
    build_root(cfg["root"])
except Exception as e:
    status.write(json.dumps({"setup_error": str(e)}))
    sys.exit(0)
child = os.fork()
if child == 0:
    try:
        run_program()
    except BaseException as e:
        os.write(2, f"sandbox: cannot start the program: {e}\n".encode())
    os._exit(127)
signal.signal(signal.SIGALRM, lambda *_: os._exit(124))  # our own deadline, should the caller die
signal.alarm(cfg["wall"])
while True:  # we are the namespace's init: reap orphans until the program ends
    pid, st = os.waitpid(-1, 0)
    if pid == child:
        break
status.write(json.dumps({"returncode": os.waitstatus_to_exitcode(st)}))
"""


@dataclass
class SandboxResult:
    """What a sandboxed run did.

    Attributes:
        returncode: exit status; negative signal number if killed by a signal.
        stdout: captured stdout (decoded, truncated to ``max_output`` with a note).
        stderr: captured stderr, same rules.
        timed_out: the wall-clock timeout hit and the run was killed.
        killed: the program ended by a signal (timeout, output flood, CPU limit, crash).
        oom: the program ran out of memory (hit the address-space limit).
        output_truncated: stdout or stderr was cut, or the program was killed for flooding.
        duration: wall-clock seconds.
        isolation: ``"namespaces"`` or ``"rlimits"`` (see the module docstring).
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

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class _Capture:
    """Keep the head and the tail of a stream; count what falls in between."""

    def __init__(self, limit: int):
        self.tail_size = min(4096, limit // 4)
        self.head_size = limit - self.tail_size
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_size - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail = (self.tail + chunk)[-self.tail_size :] if self.tail_size else bytearray()

    @property
    def cut(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        head, tail = self.head.decode(errors="replace"), self.tail.decode(errors="replace")
        if not self.cut:
            return head + tail
        return f"{head}\n[... {self.cut} bytes of output cut; {self.total} in all ...]\n{tail}"


def _bind_paths() -> list[str]:
    """System dirs and the Python install, outermost first, without nested duplicates."""
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    out: list[str] = []
    for p in sorted(
        {os.path.abspath(p) for p in (*_SYSTEM_DIRS, sys.base_prefix, sys.prefix, exe_dir)}, key=len
    ):
        if p != "/" and os.path.lexists(p) and not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """True when the namespace sandbox works here (root, ``unshare``, a trial run passes)."""
    why = ""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        why = "it needs Linux and root"
    elif not shutil.which("unshare"):
        why = "util-linux 'unshare' is not on PATH"
    else:
        try:
            r = _run("print('ok')", "namespaces", timeout=20, memory_mb=512, max_procs=8, max_file_mb=1)
            if r.stdout != "ok\n" or r.returncode != 0:
                why = f"a trial run failed (returncode {r.returncode}): {r.stderr.strip()[-300:]}"
        except SandboxError as e:
            why = str(e)
    if why:
        log.warning(
            "namespace sandbox unavailable (%s); using rlimits only: network and host files are NOT blocked",
            why,
        )
    return not why


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
) -> SandboxResult:
    """Run ``source`` as ``main.py`` with ``sys.executable -I`` in a sandbox.

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

    Returns:
        A ``SandboxResult``; a failing or hostile program is a result, not an exception.
    """
    if min(timeout, memory_mb, max_procs, max_file_mb, max_output, disk_mb) <= 0:
        raise ConfigError("sandbox limits must be positive; pass e.g. timeout=10, memory_mb=1024")
    if isolation not in ("auto", "namespaces", "rlimits"):
        raise ConfigError(f"unknown sandbox isolation {isolation!r}; use 'auto', 'namespaces' or 'rlimits'")
    if isolation != "rlimits" and not namespaces_available():
        if isolation == "namespaces":
            raise SandboxError(
                "the namespace sandbox is unavailable here; run as root with util-linux 'unshare'"
            )
        isolation = "rlimits"
    elif isolation == "auto":
        isolation = "namespaces"
    limits = dict(timeout=timeout, memory_mb=memory_mb, max_procs=max_procs, max_file_mb=max_file_mb)
    return _run(source, isolation, **limits, max_output=max_output, env=env, stdin=stdin, disk_mb=disk_mb)


def _run(
    source: str,
    isolation: Isolation,
    *,
    timeout: float,
    memory_mb: int,
    max_procs: int,
    max_file_mb: int,
    max_output: int = 64_000,
    env: dict[str, str] | None = None,
    stdin: str | bytes | None = None,
    disk_mb: int = 64,
) -> SandboxResult:
    ns = isolation == "namespaces"
    mib, cpu = 1 << 20, math.ceil(timeout) + 1
    nproc = max_procs
    if not ns:  # NPROC counts all of this uid's tasks: allow the ones that exist (system-wide bound) + ours
        with open("/proc/loadavg") as f, contextlib.suppress(ValueError, IndexError):
            nproc += int(f.read().split()[3].split("/")[1])
    base = tempfile.mkdtemp(prefix="ponder-sandbox-")  # mode 0700, ours; removed below
    work = "/tmp/sandbox" if ns else os.path.join(base, "work")
    cfg = {
        "uid": 10_000_000 + secrets.randbelow(1 << 30) if ns else None,  # fresh: NPROC counts this run only
        "rlimits": [
            ("RLIMIT_CPU", cpu, cpu + 1),
            ("RLIMIT_AS", memory_mb * mib, memory_mb * mib),
            ("RLIMIT_NPROC", nproc, nproc),
            ("RLIMIT_FSIZE", max_file_mb * mib, max_file_mb * mib),
            ("RLIMIT_CORE", 0, 0),
        ],
        "root": os.path.join(base, "root"),
        "main": os.path.join(base, "main.py"),
        "status": os.path.join(base, "status"),
        "work": work,
        "binds": _bind_paths(),
        "disk_mb": disk_mb,
        "wall": cpu + 5,
    }
    child_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "HOME": work,
    }
    child_env.update(TMPDIR="/tmp" if ns else work, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    cmd = [sys.executable, "-I", "-B", "-c", _BOOT, json.dumps(cfg)]
    if ns:
        cmd = [shutil.which("unshare") or "unshare", *_UNSHARE_FLAGS, "--", *cmd]
    try:
        os.mkdir(cfg["root"] if ns else work)
        with open(cfg["main"] if ns else os.path.join(work, "main.py"), "w", encoding="utf-8") as f:
            f.write(source)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env,
                cwd=base,
                start_new_session=True,
            )
        except OSError as e:
            raise SandboxError(f"cannot start the sandbox ({e}); check that {cmd[0]} is installed") from e
        out, err, timed_out, flooded = _communicate(proc, stdin, start + timeout, max_output, base)
        duration = time.monotonic() - start
        status = _read_status(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
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
    )


def _communicate(proc: subprocess.Popen, stdin, deadline: float, max_output: int, base: str):
    """Read both pipes until EOF or the deadline; kill the tree on timeout or flood."""
    if stdin:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True).start()
    else:
        proc.stdin.close()
    caps = {proc.stdout.fileno(): _Capture(max_output), proc.stderr.fileno(): _Capture(max_output)}
    flood_limit = max(16 * max_output, 1 << 20)
    timed_out = flooded = False
    with selectors.DefaultSelector() as sel:
        for fd in caps:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and not flooded:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(min(left, 0.25)):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    caps[key.fd].add(chunk)
                else:
                    sel.unregister(key.fd)
            flooded = sum(c.total for c in caps.values()) > flood_limit
            if _exited(proc):  # leftovers (rlimits mode) may hold the pipes open: allow them 1 s
                deadline = min(deadline, time.monotonic() + 1.0)
    _kill(proc, base)
    proc.stdout.close()
    proc.stderr.close()
    out, err = caps.values()
    return out, err, timed_out, flooded


def _feed(pipe, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        pipe.write(data)
        pipe.close()


def _kill(proc: subprocess.Popen, base: str) -> None:
    """SIGKILL the process group, reap it, and wait until the namespace init (if any) is gone."""
    init_pid = None if _exited(proc) else _read_status(base).get("pid")
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the unreaped leader keeps the id
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 5
    while init_pid and _alive(init_pid) and time.monotonic() < end:  # the kernel kills the namespace first
        time.sleep(0.005)


def _exited(proc: subprocess.Popen) -> bool:
    """Has ``proc`` ended? Checked without reaping it, so its pid (and group id) stay reserved."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_status(base: str) -> dict:
    """The namespace init's status file: its host pid, then a JSON line (returncode or setup_error)."""
    try:
        with open(os.path.join(base, "status")) as f:
            first, _, rest = f.read().partition("\n")
    except OSError:
        return {}
    out: dict = {"pid": int(first)} if first.isdigit() else {}
    with contextlib.suppress(ValueError):
        out.update(json.loads(rest))
    return out
