"""The first process of a sandbox run: it builds the filesystem, starts the programs, reports.

``ponder.environments.sandbox`` runs this file as a script, ``python -I -B sandbox_init.py
CONFIG``: as root inside fresh namespaces (``"namespaces"``, where it is the PID
namespace's init) or as the caller (``"rlimits"``). Importing it runs nothing; the host
imports ``bind_paths`` and ``hidden_paths`` from here, so that what the sandbox shows and
hides is chosen and built in one file.

What it does, in order:

1. (namespaces) Build the root: a read-only tmpfs with read-only binds of the system
   dirs and the Python install, empty read-only tmpfs mounts over the hidden paths
   (site-packages, data files), a private ``/proc`` with ``hidepid=2`` (a process sees
   only its own uid's processes), a minimal ``/dev`` and a private ``/tmp``; each
   program gets its own ``0700`` dir there, owned by its own fresh uid; then chroot.
2. Start each program: fork, wire exactly the file descriptors its config names (all
   others are closed, so nothing else crosses ``exec``), drop to its uid (namespaces),
   set rlimits, and exec a fresh ``python -I -B main.py`` in its dir.
3. Wait for the first program (the main one). Then report its exit status in the status
   file and end every process that is left: as the namespace's init, by exiting (the
   kernel kills the whole PID namespace); under rlimits, by killing the process group.

Config keys: ``isolation``, ``status`` (host path of the status file), ``root``,
``binds``, ``hide``, ``disk_mb`` (namespaces), ``rlimits``, ``wall`` (seconds before it
gives up on its own), ``pipes`` (names of pipes to create: ``NAME.r``/``NAME.w``),
``programs`` (each: ``dir``, ``uid``, ``source`` (host path to copy as ``main.py``),
``env``, ``fds``: ``[target, source]`` pairs, source an inherited fd number, a pipe end
or ``"null"``; targets must be ``0..n-1``).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import glob
import json
import os
import resource
import signal
import sys
from collections.abc import Sequence

RO, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
_FD_FLOOR = 64  # sources are first moved above every target, so no dup2 clobbers another source
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin", "/etc")


# Chosen on the host (``sandbox`` imports these), so the whole view is reviewed in one file.
def bind_paths() -> list[str]:
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
def _site_dirs() -> tuple[str, ...]:
    """Every site-packages and dist-packages dir of this interpreter, its base and the system."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "/usr", "/usr/local"}
    found = {p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")}
    for prefix in prefixes:
        for kind in ("site-packages", "dist-packages"):
            found.update(glob.glob(os.path.join(prefix, "lib*", "python*", kind)))
    return tuple(sorted({os.path.realpath(p) for p in found}))


def hidden_paths(site_packages: bool, hide: Sequence[str]) -> list[str]:
    """Paths to cover: those visible through the binds (realpaths, as seen in the sandbox)."""
    binds = [os.path.realpath(b) for b in bind_paths()]
    paths = {os.path.realpath(p) for p in (*hide, *(() if site_packages else _site_dirs()))}
    return sorted(p for p in paths if any(p == b or p.startswith(b + "/") for b in binds))


def _mount(libc, src, dst, fs=None, flags=0, data=None) -> None:
    def enc(s):
        return s.encode() if s else None

    if libc.mount(enc(src), enc(dst), enc(fs), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} on {dst}: {os.strerror(e)}")


def build_root(cfg: dict, libc) -> None:
    """Make the sandbox's filesystem under ``cfg["root"]`` and chroot into it."""
    root = cfg["root"]
    _mount(libc, None, "/", None, REC | PRIVATE)
    _mount(libc, "tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=0755")
    os.mkdir(root + "/tmp")  # first, so binds of a Python install under /tmp stay visible
    _mount(libc, "tmpfs", root + "/tmp", "tmpfs", NOSUID | NODEV, f"size={cfg['disk_mb']}m,mode=1777")
    for p in cfg["binds"]:
        dst = root + p
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(p):
            os.symlink(os.readlink(p), dst)
        elif os.path.isdir(p):
            os.makedirs(dst, exist_ok=True)
            _mount(libc, p, dst, None, BIND)
            _mount(libc, None, dst, None, REMOUNT | BIND | RO | NOSUID | NODEV)
    os.mkdir(root + "/dev")
    for d in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{d}", "w").close()
        _mount(libc, "/dev/" + d, f"{root}/dev/{d}", None, BIND)
    for i, d in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{d}")
    os.symlink("/proc/self/fd", root + "/dev/fd")
    os.symlink("/tmp", root + "/dev/shm")
    os.mkdir(root + "/proc")
    _mount(libc, "proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC, "hidepid=2")
    for prog in cfg["programs"]:
        home = root + prog["dir"]
        os.mkdir(home, 0o700)
        with open(prog["source"], "rb") as f, open(home + "/main.py", "wb") as g:
            g.write(f.read())
        os.chown(home + "/main.py", prog["uid"], prog["uid"])
        os.chown(home, prog["uid"], prog["uid"])
    _mount(libc, None, root, None, REMOUNT | RO | NOSUID | NODEV)
    os.chroot(root)
    os.chdir("/")
    # After the chroot, so that paths resolve (symlinks included) as the programs will see them.
    for p in sorted(cfg["hide"], key=len):
        if os.path.isdir(p):
            _mount(libc, "tmpfs", p, "tmpfs", RO | NOSUID | NODEV | NOEXEC, "size=4k,mode=0555")
        elif os.path.isfile(p):
            _mount(libc, "/dev/null", p, None, BIND)
            _mount(libc, None, p, None, REMOUNT | BIND | RO | NOSUID | NODEV | NOEXEC)


def _wire(fds: list, pipes: dict[str, int]) -> None:
    """Give the process exactly the fds ``fds`` names; close every other one."""
    moved = []
    for target, src in fds:
        fd = src if isinstance(src, int) else os.open(os.devnull, os.O_RDWR) if src == "null" else pipes[src]
        moved.append((target, fcntl.fcntl(fd, fcntl.F_DUPFD, _FD_FLOOR)))
    targets = sorted(t for t, _ in moved)
    if targets != list(range(len(targets))):
        raise ValueError(f"fd targets must be 0..n-1, got {targets}")
    for target, fd in moved:
        os.dup2(fd, target)  # the copy is inheritable; the originals are closed just below
    os.closerange(len(targets), resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def start(cfg: dict, prog: dict, pipes: dict[str, int], libc) -> int:
    """Fork and exec one program as its own uid (namespaces); return its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:
        _wire(prog["fds"], pipes)
        os.chdir(prog["dir"])
        if cfg["isolation"] == "namespaces":
            uid = prog["uid"]
            os.setsid()
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries cannot regain root
        for name, soft, hard in cfg["rlimits"]:
            which = getattr(resource, name)
            cap = resource.getrlimit(which)[1]  # an unprivileged caller cannot raise its hard limits
            if cap != resource.RLIM_INFINITY:
                soft, hard = min(soft, cap), min(hard, cap)
            resource.setrlimit(which, (soft, hard))
        os.execve(sys.executable, [sys.executable, "-I", "-B", "main.py"], prog["env"])
    except BaseException as e:
        os.write(2, f"sandbox: cannot start the program: {e}\n".encode())
    os._exit(127)


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[1])
    ns = cfg["isolation"] == "namespaces"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # same-uid programs (rlimits) cannot read our memory or fds
    with open(cfg["status"], "w") as status:
        status.write(os.readlink("/proc/self") + "\n")  # host pid: /proc is still the host's here
        status.flush()
        if ns:
            try:
                build_root(cfg, libc)
            except Exception as e:
                status.write(json.dumps({"setup_error": str(e)}))
                return
        pipes: dict[str, int] = {}
        for name in cfg["pipes"]:
            pipes[name + ".r"], pipes[name + ".w"] = os.pipe()
        signal.signal(signal.SIGALRM, lambda *_: os._exit(124) if ns else os.killpg(0, signal.SIGKILL))
        signal.alarm(cfg["wall"])  # our own deadline, should the caller die
        pids = [start(cfg, prog, pipes, libc) for prog in cfg["programs"]]
        # Only the programs hold the pipes, stdin and passed fds (the judge's verdict fd) now.
        inherited = {src for prog in cfg["programs"] for _, src in prog["fds"] if isinstance(src, int)}
        for fd in {*pipes.values(), *(inherited - {1, 2})}:
            os.close(fd)
        while True:  # as the namespace's init, reap orphans too, until the main program ends
            pid, st = os.waitpid(-1 if ns else pids[0], 0)
            if pid == pids[0]:
                break
        status.write(json.dumps({"returncode": os.waitstatus_to_exitcode(st)}))
    if not ns:
        os.killpg(0, signal.SIGKILL)  # the programs are in our process group; the caller made it
    # As init, returning (exiting) makes the kernel kill every process left in the namespace.


if __name__ == "__main__":
    main(sys.argv)
