"""A run killed with SIGKILL (mid-epoch, or mid-checkpoint-write) resumes to the very same weights.

Each run is a process of tests/_interrupt_driver.py, on the CPU with one thread. The test
waits for the driver's marker (written at a chosen point), kills it, checks the run folder's
checkpoint, resumes with resume=True in a new process, and compares the final checkpoint
tensor by tensor (torch.equal) with an uninterrupted run in another fresh folder.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "_interrupt_driver.py"
CHECKPOINT = "checkpoint.pt"

# 40 identities x 8 images = 320 images, batch 32: 10 steps per epoch, 30 in all.
CONFIG = dict(num_classes=40, images_per_identity=8, eval_identities=20, eval_images_per_identity=4, num_pairs=100,
              epochs=3, batch_size=32, image_size=16, embedding_dim=16, device="cpu")
# AttFC: a container of 35 entries (at most the 40 identities) wraps around nine times in an epoch
# of 10 batches of 32, and its write pointer ends each epoch somewhere else (5, 10, 15), so a
# pointer not restored shows.
ATT_CONFIG = dict(CONFIG, head="attfc", num_keys=2, container_size=35)
STEPS_PER_EPOCH = CONFIG["num_classes"] * CONFIG["images_per_identity"] // CONFIG["batch_size"]
KILL_STEP = STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2  # half-way through epoch 2
TIMEOUT_S = 120


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _start(spec: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), json.dumps(spec)], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(spec: dict, cwd: Path) -> None:
    proc = _start(spec, cwd)
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{stderr[-3000:]}"


def _run_and_kill(spec: dict, cwd: Path) -> dict:
    """Start a run, wait for its marker, SIGKILL it; the marker's contents."""
    marker = Path(spec["marker"])
    proc = _start(spec, cwd)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended ({proc.returncode}) before its marker:\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no marker after {TIMEOUT_S} s")
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup, no flush
        proc.communicate()
    assert proc.returncode == -9, proc.returncode
    return json.loads(marker.read_text())


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_identical(a, b, where: str) -> None:
    """Same structure, and every tensor equal bit for bit (torch.equal, same dtype)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else "n/a"
            pytest.fail(f"{where}: tensors differ (max abs difference {diff})")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# What a checkpoint holds of the training state; 'seconds' (wall time) and 'config' are left out.
STATE_KEYS = ("backbone", "head", "encoder_k", "optimizer", "epoch", "step", "history")


def _assert_same_state(got: dict, expected: dict) -> None:
    for key in STATE_KEYS + tuple(k for k in ("images",) if k in expected):  # images seen: newer checkpoints
        _assert_identical(got[key], expected[key], key)


def _assert_moved(before: dict, after: dict, part: str) -> None:
    """Guards the comparisons: every floating tensor of `part` changed between the two checkpoints."""
    for name, t in before[part].items():
        if t.is_floating_point():
            assert not torch.equal(t, after[part][name]), f"{part}.{name} did not change after epoch 1"


def _reference(config: dict, folder: Path) -> tuple[dict, dict]:
    """An uninterrupted run in a fresh folder: its epoch-1 and final checkpoints."""
    snapshot = folder.parent / (folder.name + "_epoch1.pt")
    _run({"config": config, "out": str(folder), "snapshot_after_step": STEPS_PER_EPOCH + 1,
          "snapshot": str(snapshot)}, folder.parent)
    epoch1, final = _load(snapshot), _load(folder / CHECKPOINT)
    assert (epoch1["epoch"], epoch1["step"]) == (1, STEPS_PER_EPOCH)
    assert (final["epoch"], final["step"]) == (CONFIG["epochs"], CONFIG["epochs"] * STEPS_PER_EPOCH)
    return epoch1, final


@pytest.fixture(scope="module")
def fc_reference(tmp_path_factory):
    return _reference(CONFIG, tmp_path_factory.mktemp("fc_ref") / "run")


def _kill_mid_epoch_then_resume(config: dict, tmp_path: Path, reference: tuple[dict, dict]) -> tuple[dict, dict]:
    """Kill during epoch 2, check the folder's checkpoint, resume; (checkpoint after the kill, final)."""
    epoch1_ref, _ = reference
    run = tmp_path / "run"
    info = _run_and_kill({"config": config, "out": str(run), "pause_at_step": KILL_STEP,
                          "marker": str(tmp_path / "paused.json")}, tmp_path)
    assert info == {"step": KILL_STEP, "epoch": 1}  # 0-based epoch 1: the second, half done
    after_kill = _load(run / CHECKPOINT)  # loads: not corrupt
    assert (after_kill["epoch"], after_kill["step"]) == (1, STEPS_PER_EPOCH)
    _assert_same_state(after_kill, epoch1_ref)  # the epoch-1 checkpoint, not something in between
    _run({"config": config, "out": str(run), "resume": True}, tmp_path)
    return after_kill, _load(run / CHECKPOINT)


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path, fc_reference):
    after_kill, final = _kill_mid_epoch_then_resume(CONFIG, tmp_path, fc_reference)
    _assert_moved(after_kill, final, "backbone")  # else equality with the reference would prove little
    _assert_same_state(final, fc_reference[1])


def test_attfc_sigkill_mid_epoch_then_resume_gives_identical_key_encoder_and_container(tmp_path):
    epoch1_ref, final_ref = _reference(ATT_CONFIG, tmp_path / "ref")
    (tmp_path / "killed").mkdir()
    after_kill, final = _kill_mid_epoch_then_resume(ATT_CONFIG, tmp_path / "killed", (epoch1_ref, final_ref))
    # The container's buffers travel in the head's state_dict; after epoch 1 it is full.
    assert {"container.centres", "container.labels", "container.pointer"} <= set(final["head"])
    assert bool((after_kill["head"]["container.labels"] >= 0).all())
    images_per_epoch = STEPS_PER_EPOCH * CONFIG["batch_size"]
    assert int(after_kill["head"]["container.pointer"]) == images_per_epoch % ATT_CONFIG["container_size"]
    assert int(final["head"]["container.pointer"]) == 3 * images_per_epoch % ATT_CONFIG["container_size"]
    assert final["encoder_k"] is not None
    for part in ("backbone", "encoder_k", "head"):
        _assert_moved(after_kill, final, part)
    _assert_same_state(final, final_ref)  # backbone, head (container), encoder_k, optimizer


def test_sigkill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, fc_reference):
    epoch1_ref, final_ref = fc_reference
    run = tmp_path / "run"
    # torch.save call 2 is the epoch-2 checkpoint: half of it is written, then the kill.
    info = _run_and_kill({"config": CONFIG, "out": str(run), "tear_save": 2,
                          "marker": str(tmp_path / "torn.json")}, tmp_path)
    torn = Path(info["path"])
    assert torn.parent == run.resolve() and torn.name != CHECKPOINT  # written beside it, not over it
    assert 0 < torn.stat().st_size == info["written"] < info["size"]
    with pytest.raises(Exception):  # guards the test: the kill did leave a broken file
        _load(torn)
    latest = _load(run / CHECKPOINT)
    assert (latest["epoch"], latest["step"]) == (1, STEPS_PER_EPOCH)
    _assert_same_state(latest, epoch1_ref)
    # The leftover partial file does not stop a resume, which ends where the reference does.
    _run({"config": CONFIG, "out": str(run), "resume": True}, tmp_path)
    _assert_same_state(_load(run / CHECKPOINT), final_ref)


def _cli_interrupted(tmp_path: Path, pause_at: int, sig=signal.SIGINT) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m attfc_lite train` paused after step `pause_at`, then sent `sig` (SIGINT: Ctrl-C)."""
    out, marker = tmp_path / "run", tmp_path / "marker.json"
    argv = ["train", "--classes", "40", "--images-per-identity", "8", "--eval-identities", "20",
            "--eval-images-per-identity", "4", "--num-pairs", "100", "--epochs", "3", "--batch-size", "32",
            "--image-size", "16", "--embedding-dim", "16", "--device", "cpu", "--profile", "cpu", "--quiet",
            "--out", str(out)]
    proc = _start({"cli": argv, "pause_at_step": pause_at, "marker": str(marker)}, tmp_path)
    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the command ended ({proc.returncode}) before its marker:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no marker after {TIMEOUT_S} s")
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out


def test_sigint_before_the_first_checkpoint_says_nothing_is_kept(tmp_path):
    result, out = _cli_interrupted(tmp_path, pause_at=3)  # in epoch 1, before any checkpoint
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert "nothing of it is saved" in result.stderr and "epoch 1/3" in result.stderr, result.stderr
    assert not (out / CHECKPOINT).exists()  # what it said is true


def test_sigint_after_a_checkpoint_names_it_and_it_resumes(tmp_path):
    result, out = _cli_interrupted(tmp_path, pause_at=KILL_STEP)  # half-way through epoch 2
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert f"checkpoint of epoch 1/3 is kept in {out / CHECKPOINT}" in result.stderr, result.stderr
    assert _load(out / CHECKPOINT)["epoch"] == 1  # what it said is true


def test_sigterm_is_handled_as_ctrl_c_and_names_the_checkpoint_kept(tmp_path):
    result, out = _cli_interrupted(tmp_path, pause_at=KILL_STEP, sig=signal.SIGTERM)  # what schedulers send
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    assert "stopped by SIGTERM" in result.stderr, result.stderr
    assert f"checkpoint of epoch 1/3 is kept in {out / CHECKPOINT}" in result.stderr, result.stderr
    assert _load(out / CHECKPOINT)["epoch"] == 1  # what it said is true
