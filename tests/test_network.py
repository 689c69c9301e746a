"""The CLI's `train` and `memory` never reach out to the network.

Two ways: (a) a sitecustomize.py first on PYTHONPATH replaces the socket functions that open
a connection or resolve a name with ones that record the attempt and raise OSError; (b) the
commands run in a new network namespace (`unshare`) that has no interface but a downed
loopback, where anything, Python or not, that needed the network would fail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240

TRAIN = ["train", "--classes", "20", "--images-per-identity", "4", "--eval-identities", "10",
         "--eval-images-per-identity", "4", "--num-pairs", "40", "--epochs", "1", "--batch-size", "16",
         "--image-size", "16", "--embedding-dim", "16", "--device", "cpu", "--quiet",
         "--profile", "cpu"]  # the cpu profile: auto picks the gpu one (amp) where CUDA is present
MEMORY = ["memory", "--classes", "1000", "--device", "cpu"]

GUARD = textwrap.dedent('''
    """Test guard: record and refuse every attempt to reach the network (see tests/test_network.py)."""
    import os
    import socket
    import traceback

    _LOG = os.environ["NETGUARD_LOG"]
    _NET = (socket.AF_INET, socket.AF_INET6)  # AF_UNIX pairs (interpreter internals) are local

    with open(os.environ["NETGUARD_LOADED"], "a") as _f:  # proves the guard ran in each process
        _f.write(f"{os.getpid()}\\n")


    def _refuse(what, detail):
        stack = " <- ".join(f"{fr.filename}:{fr.lineno}" for fr in reversed(traceback.extract_stack()[:-2]))
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {what} {detail!r} at {stack}\\n")
        raise OSError(f"netguard: {what}{detail!r} refused (no network in this test)")


    def _on_sockets(name):
        real = getattr(socket.socket, name)

        def guarded(self, *args, **kwargs):
            if self.family in _NET:
                _refuse(f"socket.{name}", args)
            return real(self, *args, **kwargs)
        setattr(socket.socket, name, guarded)


    def _on_module(name):
        def guarded(*args, **kwargs):
            _refuse(f"socket.{name}", args)
        setattr(socket, name, guarded)


    for _name in ("connect", "connect_ex", "sendto", "sendmsg"):
        _on_sockets(_name)
    for _name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        _on_module(_name)
''')

# The control: a connection the guard must refuse and record (so a passing test is not vacuous).
CONTROL = textwrap.dedent('''
    import socket
    import urllib.request
    for attempt in (lambda: socket.create_connection(("127.0.0.1", 9), timeout=2),
                    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9)),
                    lambda: socket.getaddrinfo("example.invalid", 80),
                    lambda: urllib.request.urlopen("http://example.invalid/", timeout=2)):
        try:
            attempt()
        except OSError as exc:
            print("refused:", exc)
    a, b = socket.socketpair()  # local: allowed
    a.sendall(b"x"); assert b.recv(1) == b"x"
''')


def _env(extra_path: Path | None = None, **more) -> dict:
    paths = [str(extra_path)] if extra_path else []
    paths += [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", **more)


def _cli(args: list[str], cwd: Path, env: dict, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "attfc_lite", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=TIMEOUT_S)


def _check_outputs(train: subprocess.CompletedProcess, memory: subprocess.CompletedProcess, run: Path) -> None:
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 20 * 4 // 16 and "verification" in metrics
    assert memory.returncode == 0, memory.stderr[-3000:]
    report = json.loads(memory.stdout)
    assert report["num_classes"] == 1000 and report["measured_peak_bytes"] > 0


@pytest.fixture
def guard(tmp_path):
    """(environment with the guard on, attempts log, loaded log)."""
    site = tmp_path / "guard"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD)
    log, loaded = tmp_path / "attempts.log", tmp_path / "loaded.log"
    return _env(site, NETGUARD_LOG=str(log), NETGUARD_LOADED=str(loaded)), log, loaded


def test_guard_refuses_and_records_a_connection(tmp_path, guard):
    env, log, loaded = guard
    proc = subprocess.run([sys.executable, "-c", CONTROL], cwd=tmp_path, env=env, text=True, capture_output=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("netguard") == 4, proc.stdout  # urlopen wraps it in a URLError
    attempts = log.read_text().splitlines()
    assert len(attempts) == 4, attempts  # the socketpair was not counted
    assert "create_connection" in attempts[0] and "('127.0.0.1', 9)" in attempts[0]
    assert "socket.connect" in attempts[1]
    assert "getaddrinfo" in attempts[2] and "example.invalid" in attempts[2]
    assert "create_connection" in attempts[3] and "example.invalid" in attempts[3]  # http.client's way


def test_train_and_memory_make_no_network_attempt(tmp_path, guard):
    env, log, loaded = guard
    run = tmp_path / "run"  # fresh: does not exist yet
    train = _cli([*TRAIN, "--out", str(run)], tmp_path, env)
    assert loaded.read_text().split(), "the guard did not load in train"  # else the log proves nothing
    loaded.unlink()
    memory = _cli(MEMORY, tmp_path, env)
    assert loaded.read_text().split(), "the guard did not load in memory"
    assert not log.exists(), f"network attempts:\n{log.read_text()}"
    _check_outputs(train, memory, run)


def _netns_prefix() -> list[str]:
    """The unshare command that creates a network namespace here, or skip saying why not."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    tries = [["unshare", "-rn"]] + ([["unshare", "-n"]] if os.geteuid() == 0 else [])
    errors = []
    for prefix in tries:
        proc = subprocess.run([*prefix, "true"], capture_output=True, text=True)
        if proc.returncode == 0:
            return prefix
        errors.append(f"{' '.join(prefix)}: {proc.stderr.strip() or proc.returncode}")
    pytest.skip("cannot create a network namespace: " + "; ".join(errors))


# Inside: which network namespace, and its interfaces (/proc/self/net follows the namespace).
PROBE = ("import os; print(os.readlink('/proc/self/ns/net')); "
         "print(' '.join(l.split(':')[0].strip() for l in open('/proc/self/net/dev').read().splitlines()[2:]))")


def test_train_and_memory_succeed_without_any_network(tmp_path):
    prefix = _netns_prefix()
    env = _env()
    inside = subprocess.run([*prefix, sys.executable, "-c", PROBE], env=env, text=True, capture_output=True,
                            timeout=TIMEOUT_S)
    assert inside.returncode == 0, inside.stderr
    namespace, interfaces = inside.stdout.splitlines()
    # Guards the test: a namespace of its own, with only the loopback (which starts down).
    assert namespace != os.readlink("/proc/self/ns/net")
    assert interfaces.split() == ["lo"]
    run = tmp_path / "run"
    train = _cli([*TRAIN, "--out", str(run)], tmp_path, env, prefix)
    memory = _cli(MEMORY, tmp_path, env, prefix)
    _check_outputs(train, memory, run)
