"""What a run keeps when it fails: out of memory, weights that become nan, an evaluation that
fails, a metric that is not a number; and honest counts. Files already written are compared by
hash before and after."""
from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attfc_lite.__main__ import main
from attfc_lite.heads import FullFC
from attfc_lite.train import CHECKPOINT, METRICS, TrainConfig, TrainingOutOfMemory, load_checkpoint, train

TINY = TrainConfig(num_classes=8, images_per_identity=4, eval_identities=6, eval_images_per_identity=3, epochs=2,
                   batch_size=8, embedding_dim=16, num_pairs=30, device="cpu", image_size=16)
ROOT = Path(__file__).resolve().parents[1]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def finished(tmp_path) -> Path:
    """A folder holding a finished run."""
    train(TINY, tmp_path / "run", progress=False)
    return tmp_path / "run"


def _fail_at_step(monkeypatch, step: int, exc: BaseException) -> None:
    real = FullFC.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise exc
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FullFC, "forward", forward)


def test_out_of_memory_in_a_step_explains_the_head_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    # Step 6 is in epoch 2 (4 steps an epoch), after the epoch-1 checkpoint.
    _fail_at_step(monkeypatch, 6, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    with pytest.raises(TrainingOutOfMemory) as info:
        train(TINY, tmp_path / "run", progress=False)
    text = str(info.value)
    assert "Tried to allocate 20.00 GiB" in text and "epoch 2" in text
    # W of this head, N x D x 4 bytes, computed by hand, and the ways out
    assert f"{8 * 16 * 4:,} bytes" in text
    assert "--head attfc" in text and "--head partial_fc" in text and "--batch-size" in text
    assert f"checkpoint of epoch 1/2 is kept in {tmp_path / 'run' / CHECKPOINT}" in text
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"] == 1


def test_cpu_allocator_failure_counts_as_out_of_memory(tmp_path, monkeypatch):
    _fail_at_step(monkeypatch, 1, RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                               "can't allocate memory: you tried to allocate 1099511627776 bytes."))
    with pytest.raises(TrainingOutOfMemory, match="nothing of it is saved"):
        train(TINY, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # said and true: nothing written


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, monkeypatch):
    _fail_at_step(monkeypatch, 1, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes") as info:
        train(TINY, None, progress=False)
    assert not isinstance(info.value, TrainingOutOfMemory)


def test_out_of_memory_on_the_command_line_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    _fail_at_step(monkeypatch, 1, torch.OutOfMemoryError("CUDA out of memory."))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--classes", "8", "--images-per-identity", "4", "--eval-identities", "6",
              "--eval-images-per-identity", "3", "--batch-size", "8", "--embedding-dim", "16", "--device", "cpu",
              "--image-size", "16", "--profile", "cpu", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "out of memory in training step 0" in err and "--head attfc" in err


def test_weights_that_become_nan_are_never_checkpointed(finished, monkeypatch):
    before = _hashes(finished)
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):  # the loss stays finite; a weight does not
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the last step of epoch 1
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with pytest.raises(FloatingPointError, match="were not saved") as info:
        train(TINY, finished, progress=False, overwrite=True)
    assert "nothing of it is saved" in str(info.value) and "earlier run" in str(info.value)
    assert _hashes(finished) == before


def test_a_run_that_fails_after_training_leaves_the_earlier_run(finished, monkeypatch):
    before = _hashes(finished)
    import attfc_lite.train as train_module

    def failing_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(train_module, "evaluate_run", failing_evaluation)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(replace(TINY, lr=0.05), finished, progress=False, overwrite=True)
    assert _hashes(finished) == before
    # The new run's last checkpoint is beside it, whole, and can be resumed.
    staged = load_checkpoint(finished.with_name(finished.name + ".new") / CHECKPOINT)
    assert staged["epoch"] == 2 and staged["config"]["lr"] == 0.05


def test_a_metric_that_is_not_a_number_is_refused_and_nothing_replaced(finished, monkeypatch):
    before = _hashes(finished)
    import attfc_lite.train as train_module

    monkeypatch.setattr(train_module, "evaluate_run", lambda *a, **k: {"auc": float("nan")})
    with pytest.raises(ValueError, match=r"metrics.json would hold nan at verification.auc"):
        train(TINY, finished, progress=False, overwrite=True)
    assert _hashes(finished) == before


def test_overwrite_replaces_the_run_only_when_it_finishes(finished):
    old = load_checkpoint(finished / CHECKPOINT)
    result = train(replace(TINY, lr=0.05), finished, progress=False, overwrite=True)
    new = load_checkpoint(finished / CHECKPOINT)
    assert old["config"]["lr"] == 0.1 and new["config"]["lr"] == 0.05
    assert result.metrics["config"]["lr"] == 0.05
    assert sorted(p.name for p in finished.parent.iterdir()) == ["run"]  # no staging or old folder left
    assert sorted(p.name for p in finished.iterdir()) == [CHECKPOINT, METRICS]


def test_images_per_second_counts_the_images_processed(tmp_path):
    from attfc_lite.faces import SyntheticFaces

    # 11 images, batch 4: two full batches an epoch, the last 3 images dropped (BatchNorm)
    data = SyntheticFaces(3, 4, "train", 16, seed=0)
    data.labels, data.images, data.quality = data.labels[:11], data.images[:11], data.quality[:11]
    data.image_indices = data.image_indices[:11]
    config = replace(TINY, num_classes=3, batch_size=4, epochs=3)
    m = train(config, None, progress=False, train_set=data, evaluate=False).metrics
    assert m["steps"] == 6 and m["images"] == 3 * 2 * 4
    # seconds is stored to 1 ms and images/s to 0.1: the rate must lie within what those roundings allow
    low = m["images"] / (m["seconds"] + 5e-4) - 0.05
    high = m["images"] / max(m["seconds"] - 5e-4, 1e-9) + 0.05
    assert low <= m["images_per_second"] <= high


def test_resume_keeps_the_image_count(tmp_path):
    train(replace(TINY, epochs=3), tmp_path, progress=False, stop_after_epoch=1, evaluate=False)
    m = train(replace(TINY, epochs=3), tmp_path, resume=True, progress=False, evaluate=False).metrics
    assert m["images"] == 3 * (8 * 4 // 8) * 8


def test_make_lab_binds_to_localhost_with_a_token():
    text = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True).stdout
    command = next(line for line in text.splitlines() if "jupyter lab" in line)
    assert "--ServerApp.ip=127.0.0.1" in command
    # No option empties the token or the password (JupyterLab then makes a random token).
    assert not re.search(r"token=(''|\"\"|\s|$)", command) and "password=''" not in command
    assert "disable_check_xsrf" not in command


def test_a_second_run_on_a_folder_being_written_stops(tmp_path):
    import fcntl
    import os

    from attfc_lite.checks import ArgumentError
    from attfc_lite.train import LOCK

    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run" / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a first run holds it while it trains
    try:
        with pytest.raises(ArgumentError, match="being written by another run"):
            train(TINY, tmp_path / "run", progress=False)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK]  # nothing of the second run
    finally:
        os.close(fd)
    train(TINY, tmp_path / "run", progress=False, evaluate=False)  # free again: the run goes ahead
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT, METRICS]  # and no lock left


def test_overwrite_never_touches_the_users_neighbouring_folders(finished):
    mine = {finished.with_name(finished.name + ".old"), finished.with_name("backup")}
    for folder in mine:
        folder.mkdir()
        (folder / "keep.txt").write_text("the user's\n")
    train(replace(TINY, lr=0.05), finished, progress=False, overwrite=True, evaluate=False)
    for folder in mine:
        assert (folder / "keep.txt").read_text() == "the user's\n"
    assert sorted(p.name for p in finished.parent.iterdir()) == sorted(["run", "run.old", "backup"])
