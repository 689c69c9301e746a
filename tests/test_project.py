"""The course's plumbing: environment.yml, the Makefile, CI, nbval's sanitizer, `make lab`."""
from __future__ import annotations

import configparser
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="GNU make is not on PATH")


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _environment_yml() -> dict:
    yaml = pytest.importorskip("yaml", reason="pyyaml comes with the course extra: pip install -e '.[course]'")
    with open(ROOT / "environment.yml") as f:
        return yaml.safe_load(f)


def _pip_lines(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one `- pip:` section"
    return sections[0]


def _make_env() -> dict[str, str]:
    """The caller's environment minus what an outer `make test` leaks into a nested make."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTHON", "VENV", "PORT", "LAB_ARGS"}
    return {k: v for k, v in os.environ.items() if k not in drop}


# --- environment.yml ---------------------------------------------------------------------


def test_environment_yml_holds_no_second_list_of_versions() -> None:
    env = _environment_yml()
    assert env["name"] == "attfc-course"
    assert env["channels"] == ["conda-forge"]
    conda_deps = sorted(d for d in env["dependencies"] if isinstance(d, str))
    assert conda_deps == ["pip", "python=3.11"], "conda should supply only python and pip"
    # The only pip line installs this repository with its course extra.
    assert [shlex.split(line) for line in _pip_lines(env)] == [["-e", ".[course]"]]
    project = _pyproject()["project"]
    assert project["name"] == "attfc_lite"
    assert "course" in project["optional-dependencies"]


def test_environment_yml_pip_section_resolves_to_pyproject() -> None:
    """pip, run as conda would run it, must install attfc_lite and need exactly pyproject's
    requirements; --no-index also proves this environment already satisfies all of them."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("pip is not usable in this environment")
    try:
        import setuptools  # noqa: F401  (the build backend, needed without build isolation)
    except ImportError:
        pytest.skip("setuptools is not installed, so pip cannot build metadata offline")
    from packaging.requirements import Requirement

    args = [a for line in _pip_lines(_environment_yml()) for a in shlex.split(line)]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
           "--disable-pip-version-check", "--quiet", "--report", "-", *args]
    # conda runs the pip section from environment.yml's folder
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"pip could not resolve environment.yml's pip section:\n{res.stderr[-3000:]}"
    install = json.loads(res.stdout)["install"]
    assert [(i["metadata"]["name"], i.get("requested_extras")) for i in install] == [("attfc_lite", ["course"])]

    def key(r: Requirement) -> tuple[str, str, str]:
        return r.name.lower().replace("_", "-"), str(r.specifier), str(r.marker or "")

    got = {key(Requirement(r)) for r in install[0]["metadata"]["requires_dist"]}
    project = _pyproject()["project"]
    expected = {key(Requirement(r)) for r in project["dependencies"]}
    expected |= {key(Requirement(f'{r}; extra == "course"')) for r in project["optional-dependencies"]["course"]}
    assert got == expected


# --- CI and README -----------------------------------------------------------------------


def test_ci_script_runs_make_test() -> None:
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    code = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert "make test" in code, ".ci/run must call `make test` on a line of its own"
    assert script.stat().st_mode & stat.S_IXUSR, "chmod +x .ci/run"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_readme_gives_the_two_commands() -> None:
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing: it must tell users to run `make lab` and `make test`"
    text = readme.read_text()
    assert "make lab" in text and "make test" in text


# --- Makefile, driven with stand-in executables --------------------------------------------

_LOGGING_STUB = '#!/bin/sh\necho "{name} MPLBACKEND=${{MPLBACKEND:-}} $*" >> "{log}"\n'
_FAKE_PYTHON = """#!/bin/sh
# stands in for `python3 -m venv DIR`
[ "$1 $2" = "-m venv" ] || exit 2
echo "venv $3" >> "{log}"
mkdir -p "$3/bin" && touch "$3/pyvenv.cfg"
cp "{stubs}/python" "{stubs}/pip" "{stubs}/jupyter" "$3/bin/"
"""


@pytest.fixture()
def fake_repo(tmp_path: Path) -> dict:
    """A copy of the Makefile and pyproject.toml with a PYTHON whose venv only logs calls."""
    repo, stubs, log = tmp_path / "repo", tmp_path / "stubs", tmp_path / "calls.log"
    repo.mkdir()
    stubs.mkdir()
    shutil.copy(ROOT / "Makefile", repo)
    shutil.copy(ROOT / "pyproject.toml", repo)
    for name in ("python", "pip", "jupyter"):
        (stubs / name).write_text(_LOGGING_STUB.format(name=name, log=log))
    (stubs / "fakepython").write_text(_FAKE_PYTHON.format(log=log, stubs=stubs))
    for f in stubs.iterdir():
        f.chmod(0o755)
    log.touch()

    def make(*args: str) -> list[str]:
        """Run make in the copy and return the calls it made."""
        before = len(log.read_text().splitlines())
        cmd = [MAKE, "--no-print-directory", f"PYTHON={stubs / 'fakepython'}", "VENV=v", *args]
        # with a user's MPLBACKEND set, which `make test` must clear for the notebooks
        env = {**_make_env(), "MPLBACKEND": "Agg"}
        res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return log.read_text().splitlines()[before:]

    return {"repo": repo, "make": make}


@needs_make
def test_make_venv_installs_once_and_again_after_pyproject_changes(fake_repo: dict) -> None:
    make, repo = fake_repo["make"], fake_repo["repo"]
    calls = make("venv")
    assert calls[0] == "venv v"
    assert any(c.startswith("python ") and "-m pip install --upgrade pip" in c for c in calls)
    assert calls[-1].startswith("pip ") and calls[-1].endswith(" install -e .[course]")
    assert (repo / "v" / ".installed").exists()

    assert make("venv") == [], "a second `make venv` with nothing changed must do nothing"

    later = (repo / "v" / ".installed").stat().st_mtime + 10
    os.utime(repo / "pyproject.toml", (later, later))
    calls = make("venv")
    assert "venv v" not in calls, "an existing venv is reused"
    assert calls[-1].startswith("pip ") and calls[-1].endswith(" install -e .[course]")


@needs_make
def test_make_test_runs_unit_tests_and_notebooks_with_inline_figures(fake_repo: dict) -> None:
    make = fake_repo["make"]
    make("venv")
    (call,) = make("test")
    name, backend, *argv = call.split()
    # A set MPLBACKEND would turn the kernels' inline figures off and break nbval's comparison.
    assert (name, backend) == ("python", "MPLBACKEND=")
    assert argv[:2] == ["-m", "pytest"]
    assert {"tests", "notebooks", "--nbval"} <= set(argv)
    assert argv[argv.index("--nbval-sanitize-with") + 1] == "notebooks/sanitize.cfg"


@needs_make
def test_make_lab_command_line(fake_repo: dict) -> None:
    make = fake_repo["make"]
    make("venv")
    (call,) = make("lab", "PORT=1234", "LAB_ARGS=--foo=1")
    argv = call.split()[2:]
    assert argv[0] == "lab"
    assert {"--notebook-dir=notebooks", "--ServerApp.ip=127.0.0.1", "--port=1234", "--no-browser",
            "--foo=1"} <= set(argv)
    assert ("--allow-root" in argv) == (os.geteuid() == 0)
    assert not any("token" in a.lower() for a in argv), "keep Jupyter's token auth"


@needs_make
def test_make_clean_removes_the_venv_but_never_a_non_venv(fake_repo: dict) -> None:
    make, repo = fake_repo["make"], fake_repo["repo"]
    make("venv")
    make("clean")
    assert not (repo / "v").exists()

    (repo / "notavenv").mkdir()
    (repo / "notavenv" / "keep.txt").touch()
    (repo / "notavenv" / ".installed").touch()
    make("clean", "VENV=notavenv")
    assert (repo / "notavenv" / "keep.txt").exists()
    assert not (repo / "notavenv" / ".installed").exists()


# --- nbval's sanitizer -----------------------------------------------------------------------


def test_sanitize_cfg_masks_timings_and_keeps_results() -> None:
    plugin = pytest.importorskip("nbval.plugin", reason="nbval comes with the course extra")
    text = (ROOT / "notebooks" / "sanitize.cfg").read_text()
    pairs = plugin.get_sanitize_patterns(text)
    sections = configparser.ConfigParser(interpolation=None)
    sections.read_string(text)
    # a pair nbval's line regex misses (stray space, gap between lines) is silently dropped
    assert len(pairs) == len(sections.sections()) >= 5
    for regex, _ in pairs:
        re.compile(regex)

    def sanitize(s: str) -> str:  # what nbval does to each output before comparing
        for regex, replace in pairs:
            s = re.sub(regex, replace, s)
        return s

    same = [
        ("<Head object at 0x7f3a9c2b1d90>", "<Head object at 0x55d0c8e41a10>"),
        ("100%|██████████| 10/10 [00:01<00:00,  9.12it/s]", "100%|██████████| 10/10 [00:14<00:00,  1.43s/it]"),
        ("train: 100%|███| 5/5 [1:02:03<00:00, 12.1it/s, loss=0.5]", "train: 100%|███| 5/5 [00:09<00:00,  2.0it/s, loss=0.5]"),
        ("CPU times: user 1.23 s, sys: 40 ms, total: 1.27 s\nWall time: 1.3 s", "CPU times: user 80 ms, sys: 0 ns, total: 80 ms\nWall time: 79.6 ms"),
        ("1.23 ms ± 45.6 µs per loop (mean ± std. dev. of 7 runs, 1,000 loops each)",
         "987 µs ± 2.1 µs per loop (mean ± std. dev. of 7 runs, 1 loop each)"),
        ("epoch 1: 12.3 s, 850 img/s, 1.2s/it", "epoch 1: 3 s, 2107 img/s, 9.8 it/s"),
    ]
    for a, b in same:
        assert sanitize(a) == sanitize(b), (a, b)
    for regex, _ in pairs:  # a rule that matches none of these is probably mistyped
        assert any(re.search(regex, a) for a, _ in same), f"sanitize.cfg rule {regex!r} matches no example"
    # the numbers a lesson checks must survive
    for kept in ["accuracy 0.93, loss 1.2500", "num_classes=1000, embedding_dim=512, margin=0.5",
                 "memory ratio 0.125 (10 samples, 3 steps)", "100%|██████████| 10/10"]:
        assert sanitize(kept) == kept


# --- make lab, for real ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _alive(pgid: int) -> list[int]:
    """Processes of the group that are still running (zombies awaiting a reaper do not count)."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    alive = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat_file.parent.name))
    return alive


def _stop(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _alive(proc.pid):
                return
            time.sleep(0.2)


@needs_make
def test_make_lab_serves_the_notebooks_behind_a_token(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    if not stamp.exists():
        pytest.skip(f"{stamp} is missing: run the tests through `make test` so `make lab` reuses this venv")
    up_to_date = subprocess.run([MAKE, "-q", f"VENV={venv}", str(stamp)], cwd=ROOT, env=_make_env(),
                                capture_output=True)
    if up_to_date.returncode != 0:
        pytest.skip(f"{stamp} is older than pyproject.toml: run `make venv VENV={venv}` first")

    port, token = _free_port(), secrets.token_hex(16)
    env = _make_env() | {
        "JUPYTER_TOKEN": token,
        # keep the user's Jupyter config and runtime files out of it
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }
    log = tmp_path / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [MAKE, "--no-print-directory", "lab", f"PORT={port}", f"VENV={venv}",
             "LAB_ARGS=--ServerApp.port_retries=0"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"make lab exited early:\n{log.read_text()[-3000:]}"
            try:
                status, _ = _get(f"{base}/api/status?token={token}")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200, f"JupyterLab did not answer within 90 s:\n{log.read_text()[-3000:]}"

        assert _get(f"{base}/api/contents")[0] in (401, 403), "the server must refuse requests without the token"

        code, body = _get(f"{base}/api/contents?token={token}")
        assert code == 200
        listing = json.loads(body)
        assert listing["type"] == "directory"
        # Jupyter hides some files (__pycache__, dotfiles), so compare both ways separately
        names = {item["name"] for item in listing["content"]}
        notebooks = ROOT / "notebooks"
        assert names <= {p.name for p in notebooks.iterdir()}, "the server's root must be notebooks/"
        assert {p.name for p in notebooks.glob("*.ipynb")} | {"sanitize.cfg"} <= names
    finally:
        _stop(proc)
    assert proc.returncode is not None and not _alive(proc.pid), "make lab left processes running"


def test_seed_everything_makes_torch_and_numpy_repeat():
    import numpy as np
    import torch

    from attfc_lite import seed_everything

    seed_everything(3)
    first = (torch.rand(3), np.random.rand(3))
    seed_everything(3)
    second = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    seed_everything(4)
    assert not torch.equal(torch.rand(3), first[0])
