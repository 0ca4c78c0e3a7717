"""The host side of a sandbox run's pipes: bounded capture, the read loop, the kill.

``ponder.environments.sandbox`` starts the run; this module reads its stdout, stderr
and extra pipes (the judge's verdict) without ever holding more than a bounded amount,
kills the process tree on timeout or output flood, and waits until the sandbox's init is
gone, so no program outlives the call.

Example:
    >>> from ponder.environments.sandbox_io import Capture
    >>> c = Capture(16)
    >>> c.add(b"0123456789abcdefXYZ")
    >>> c.cut, c.text().splitlines()[-1]
    (3, 'fXYZ')
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import threading
import time

__all__ = ["Capture", "communicate", "kill_tree", "read_status"]


class Capture:
    """Keep the head and the tail of a stream; count what falls in between.

    Args:
        limit: bytes kept in all; the tail keeps at most 4 KiB (a quarter of ``limit``).
    """

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


def communicate(
    proc: subprocess.Popen,
    stdin: str | bytes | None,
    deadline: float,
    max_output: int,
    base: str,
    extra: dict[int, Capture] | None = None,
) -> tuple[Capture, Capture, bool, bool]:
    """Read stdout, stderr and ``extra`` pipes until EOF or the deadline; kill the tree.

    Returns:
        stdout and stderr captures, whether the deadline hit, whether output flooded
        (stdout plus stderr over ``max(16 * max_output, 1 MiB)``).
    """
    pipe_in, pipe_out, pipe_err = proc.stdin, proc.stdout, proc.stderr
    assert pipe_in is not None and pipe_out is not None and pipe_err is not None, "start it with PIPEs"
    if stdin:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        threading.Thread(target=_feed, args=(pipe_in, data), daemon=True).start()
    else:
        pipe_in.close()
    out, err = Capture(max_output), Capture(max_output)
    caps = {pipe_out.fileno(): out, pipe_err.fileno(): err, **(extra or {})}
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
            flooded = out.total + err.total > flood_limit
            if _exited(proc):  # leftovers (rlimits mode) may hold the pipes open: allow them 1 s
                deadline = min(deadline, time.monotonic() + 1.0)
    kill_tree(proc, base)
    pipe_out.close()
    pipe_err.close()
    return out, err, timed_out, flooded


def _feed(pipe, data: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        pipe.write(data)
        pipe.close()


def kill_tree(proc: subprocess.Popen, base: str) -> None:
    """SIGKILL the process group, reap it, and wait until the namespace init (if any) is gone."""
    init_pid = None if _exited(proc) else read_status(base).get("pid")
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


def read_status(base: str) -> dict:
    """The sandbox init's status file: its host pid, then a JSON line (returncode or setup_error)."""
    try:
        with open(os.path.join(base, "status")) as f:
            first, _, rest = f.read().partition("\n")
    except OSError:
        return {}
    out: dict = {"pid": int(first)} if first.isdigit() else {}
    with contextlib.suppress(ValueError):
        out.update(json.loads(rest))
    return out
