"""The bad-input suite: meaningless values given to the command line, the library and the widget
callbacks. Each case asserts the error's type, that its message names the argument (the option,
on the command line) and that every file already written is unchanged (hashed before and after).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import hashlib
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from attfc_lite.__main__ import main
from attfc_lite.checks import ArgumentError
from attfc_lite.train import CHECKPOINT, CheckpointError, TrainConfig, load_checkpoint, train

# A finished run (written once per module) and the command-line options that describe it
TINY = TrainConfig(num_classes=8, images_per_identity=4, eval_identities=6, eval_images_per_identity=3, epochs=1,
                   batch_size=8, embedding_dim=16, num_pairs=30, device="cpu", image_size=16)
TINY_CLI = ["--classes", "8", "--images-per-identity", "4", "--eval-identities", "6", "--eval-images-per-identity",
            "3", "--epochs", "1", "--batch-size", "8", "--embedding-dim", "16", "--num-pairs", "30", "--device", "cpu",
            "--image-size", "16", "--quiet"]


def _tiny_cli(**changes) -> list[str]:
    """TINY_CLI with some options changed (epochs=2 -> --epochs 2)."""
    argv = list(TINY_CLI)
    for name, value in changes.items():
        argv[argv.index("--" + name.replace("_", "-")) + 1] = str(value)
    return argv


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace holding earlier results of every kind a command writes."""
    root = tmp_path_factory.mktemp("bad_input")
    train(TINY, root / "run", progress=False)
    shutil.copytree(root / "run", root / "truncated")
    data = (root / "truncated" / CHECKPOINT).read_bytes()
    (root / "truncated" / CHECKPOINT).write_bytes(data[: len(data) // 2])
    (root / "unsafe").mkdir()
    torch.save({"config": {}, "payload": argparse.Namespace(x=1)}, root / "unsafe" / CHECKPOINT)
    (root / "sweep.json").write_text('{"param": "k", "runs": []}\n')
    (root / "heads").mkdir()
    (root / "heads" / "summary.json").write_text("{}\n")
    (root / "a_file").write_text("not a folder\n")
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("a user's own file\n")
    (root / "heads" / "my_plot.png").write_bytes(b"a user's own figure")
    (root / "preview.png").write_bytes(b"\x89PNG an earlier preview")
    (root / "sweep2.png").write_bytes(b"\x89PNG a figure of the user's")
    shutil.copytree(root / "run", root / "staged")  # a run whose earlier --overwrite did not finish
    shutil.copytree(root / "run", root / "staged.new")
    (root / "link").symlink_to(root / "run")
    for name, damage in (("empty", b""), ("text", b"hello")):
        (root / name).mkdir()
        (root / name / CHECKPOINT).write_bytes(damage)
    state = load_checkpoint(root / "run" / CHECKPOINT)
    (root / "nan_weights").mkdir()
    bad = {**state, "backbone": {k: v.clone() for k, v in state["backbone"].items()}}
    next(v for v in bad["backbone"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    torch.save(bad, root / "nan_weights" / CHECKPOINT)
    (root / "epoch99").mkdir()
    torch.save({**state, "epoch": 99}, root / "epoch99" / CHECKPOINT)
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Case:
    id: str
    call: list[str] | Callable[[Path], Any]  # command-line arguments ({ws} is the workspace) or a call
    names: str  # what the message must contain: the option, or the argument's name
    error: type[BaseException] = ValueError  # for library calls


def cli(id_: str, argv: str, names: str) -> Case:
    return Case(id_, argv.split(), names)


CLI_CASES = [
    cli("classes-fraction", "train --classes 10.7", "--classes"),
    cli("classes-float-text", "train --classes 20.5e0", "--classes"),
    cli("classes-one", "train --classes 1", "--classes"),
    cli("classes-word", "train --classes many", "--classes"),
    cli("lr-inf", "train --lr inf", "--lr"),
    cli("lr-nan", "train --lr nan", "--lr"),
    cli("lr-negative", "train --lr -0.1", "--lr"),
    cli("scale-zero", "train --scale 0", "--scale"),
    cli("batch-one", "train --batch-size 1", "--batch-size"),
    cli("batch-larger-than-data", "train --classes 4 --images-per-identity 2 --batch-size 16", "--batch-size"),
    cli("device-bad-index", "train --device cuda:x", "--device"),
    cli("device-unknown", "train --device tpu", "--device"),
    cli("device-cpu-index", "train --device cpu:1", "--device"),
    cli("image-size-small", "train --image-size 4", "--image-size"),
    cli("image-size-huge", "train --image-size 1e9", "--image-size"),
    cli("seed-negative", "train --seed -1", "--seed"),
    cli("seed-fraction", "train --seed 1.5", "--seed"),
    cli("epochs-zero", "train --epochs 0", "--epochs"),
    cli("margin-m-nan", "train --margin-m nan", "--margin-m"),
    cli("combined-one-m", "train --margin combined --margin-m 0.5", "--margin-m"),
    cli("dcc-ratio-zero", "train --head attfc --dcc-ratio 0", "--dcc-ratio"),
    cli("ema-momentum-big", "train --head attfc --ema-momentum 1.5", "--ema-momentum"),
    cli("k-zero", "train --head attfc --k 0", "--k"),
    cli("temperature-inf", "train --head attfc --temperature inf", "--temperature"),
    cli("sample-rate-big", "train --head partial_fc --sample-rate 1.5", "--sample-rate"),
    cli("container-fraction", "train --head attfc --container-size 2.5", "--container-size"),
    cli("eval-identities-one", "train --eval-identities 1", "--eval-identities"),
    cli("eval-images-one", "train --eval-images-per-identity 1", "--eval-images-per-identity"),
    cli("world-too-small", "train --classes 9999900 --eval-identities 300", "--classes"),
    cli("out-is-a-file", "train --out {ws}/a_file", "--out"),
    cli("out-under-a-file", "train --out {ws}/a_file/run", "--out"),
    cli("out-holds-a-run", "train --out {ws}/run " + " ".join(TINY_CLI), "--out"),
    cli("resume-other-config", "train --resume --out {ws}/run --lr 0.05 " + " ".join(TINY_CLI), "lr"),
    cli("resume-nothing", "train --resume --out {ws}/nothing_here", "--resume"),
    cli("resume-and-overwrite", "train --resume --overwrite --out {ws}/run " + " ".join(TINY_CLI), "--overwrite"),
    cli("resume-truncated", "train --resume --out {ws}/truncated " + " ".join(TINY_CLI), "checkpoint.pt"),
    cli("resume-unsafe", "train --resume --out {ws}/unsafe " + " ".join(TINY_CLI), "checkpoint.pt"),
    cli("amp-on-cpu", "train --amp --device cpu", "--amp"),
    cli("no-mask-fc", "train --no-mask", "--no-mask"),
    cli("sweep-k-fraction", "sweep k --values 2.5 --out {ws}/new.json", "--values"),
    cli("sweep-momentum-big", "sweep ema-momentum --values 2 --out {ws}/new.json", "--values"),
    cli("sweep-seed-negative", "sweep k --seeds -1", "--seeds"),
    cli("sweep-out-exists", "sweep k --values 2 --out {ws}/sweep.json " + " ".join(TINY_CLI), "--out"),
    cli("sweep-out-folder", "sweep k --values 2 --out {ws}/heads", "--out"),
    cli("run-out-exists", "run --out {ws}/heads " + " ".join(TINY_CLI), "--out"),
    cli("run-overwrite-foreign", "run --overwrite --out {ws}/heads " + " ".join(TINY_CLI), "my_plot.png"),
    cli("run-overwrite-a-run-folder", "run --overwrite --out {ws}/run " + " ".join(TINY_CLI), "checkpoint.pt"),
    cli("train-into-foreign-folder", "train --out {ws}/notes " + " ".join(TINY_CLI), "notes.txt"),
    cli("train-overwrite-foreign-folder", "train --overwrite --out {ws}/heads " + " ".join(TINY_CLI), "summary.json"),
    cli("run-out-json", "run --out {ws}/heads.json", "--out"),
    cli("run-memory-classes-zero", "run --memory-classes 0", "--memory-classes"),
    cli("memory-beyond-the-machine", "memory --classes 1e12 --device cpu", "--no-measure"),
    cli("memory-classes-fraction", "memory --classes 10.5", "--classes"),
    cli("memory-dim-zero", "memory --classes 1000 --dim 0", "--dim"),
    cli("memory-foreign-flag", "memory --head fc --classes 1000 --k 2", "--k"),
    cli("memory-momentum-big", "memory --classes 1000 --momentum 1.5", "--momentum"),
    cli("memory-weight-decay-inf", "memory --classes 1000 --weight-decay inf", "--weight-decay"),
    cli("preview-out-txt", "data preview --out {ws}/preview.txt", "--out"),
    cli("preview-out-exists", "data preview --out {ws}/preview.png", "--overwrite"),
    cli("bench-size-zero", "data bench --image-size 0", "--image-size"),
    cli("bench-count-fraction", "data bench --num-images 1.5", "--num-images"),
    # from a new user's review
    cli("overwrite-with-staging-present", "train --overwrite --out {ws}/staged " + " ".join(TINY_CLI), "staged.new"),
    cli("overwrite-a-symlink", "train --overwrite --out {ws}/link " + " ".join(TINY_CLI), "symbolic link"),
    cli("sweep-png-exists", "sweep k --values 2 --out {ws}/sweep2.json " + " ".join(TINY_CLI), "sweep2.png"),
    cli("sweep-out-png", "sweep k --values 2 --out {ws}/new.png", "--out"),
    cli("sweep-option-of-other-head", "sweep k --head fc", "--head"),
    cli("sweep-swept-option-given", "sweep k --values 2 --k 3", "--values"),
    cli("sweep-duplicate-values", "sweep k --values 2 2", "--values"),
    cli("run-duplicate-seeds", "run --seeds 0 0", "--seeds"),
    cli("run-memory-classes-beyond-the-machine", "run --memory-classes 1e12 --out {ws}/heads_new " + " ".join(TINY_CLI),
        "--memory-classes"),
    cli("run-large-n-tiny-budget", "run --large-n-mib 0.001 --out {ws}/heads_new " + " ".join(TINY_CLI),
        "--large-n-mib"),
    cli("run-large-n-factor-zero", "run --large-n-mib 64 --large-n-factors 0", "--large-n-factors"),
    cli("run-large-n-factor-repeated", "run --large-n-mib 64 --large-n-factors 5 5 --out {ws}/heads_new "
        + " ".join(TINY_CLI), "--large-n-factors"),
    cli("run-large-n-one-image", "run --large-n-mib 64 --large-n-only --large-n-images-per-identity 1 "
        "--out {ws}/heads_new " + " ".join(TINY_CLI), "--large-n-images-per-identity"),
    cli("run-large-n-option-without-budget", "run --large-n-epochs 2 --out {ws}/heads_new " + " ".join(TINY_CLI),
        "--large-n-mib"),
    cli("run-large-n-without-fc", "run --large-n-mib 64 --large-n-heads attfc --out {ws}/heads_new "
        + " ".join(TINY_CLI), "--large-n-heads"),
    cli("run-option-of-an-untrained-head", "run --variants fc --k 3 --sample-rate 0.5 --out {ws}/heads_new "
        + " ".join(TINY_CLI), "none of them reads --sample-rate, --k"),
    cli("run-k-for-the-dcq-variant", "run --variants dcq --k 3 --out {ws}/heads_new " + " ".join(TINY_CLI),
        "are dcq, and none of them reads --k"),
    cli("run-large-n-only-with-variants", "run --large-n-mib 64 --large-n-only --variants fc --out {ws}/heads_new "
        + " ".join(TINY_CLI), "--large-n-only"),
    cli("run-large-n-limit-share-zero", "run --large-n-mib 64 --large-n-limit-share 0", "--large-n-limit-share"),
    cli("run-large-n-occupied", "run --large-n-mib 64 --large-n-only --out {ws}/heads " + " ".join(TINY_CLI),
        "--out"),
    cli("train-attfc-one-image", "train --head attfc --images-per-identity 1 --out {ws}/new_run " + " ".join(
        TINY_CLI).replace("--images-per-identity 4", ""), "--images-per-identity"),
    cli("train-fc-keys-exclude-query", "train --head fc --keys-exclude-query --out {ws}/new_run " + " ".join(TINY_CLI),
        "--keys-exclude-query"),
    cli("memory-max-share-zero", "memory --classes 1000 --max-share 0", "--max-share"),
    cli("memory-max-share-above-one", "memory --classes 1000 --max-share 1.5", "--max-share"),
    cli("train-option-of-other-head", "train --head fc --k 3", "--head"),
    cli("train-out-unwritable", "train --out /proc/attfc_run", "--out"),
    cli("train-out-empty", "train --out=", "--out"),
    cli("train-eval-beyond-the-machine", "train --eval-identities 5000000 --eval-images-per-identity 100 --out "
        "{ws}/new_run", "--eval-identities"),
    cli("train-container-beyond-the-machine", "train --head attfc --container-size 1e10 --out {ws}/new_run",
        "--container-size"),
    cli("train-dim-beyond-the-machine", "train --embedding-dim 1e9 --out {ws}/new_run", "--embedding-dim"),
    cli("train-k-too-many", "train --head attfc --k 65", "--k"),
    cli("train-scale-absurd", "train --scale 1e30", "--scale"),
    cli("train-temperature-absurd", "train --head attfc --temperature 1e-30", "--temperature"),
    cli("classes-double-underscore", "train --classes 1__0", "--classes"),
    cli("device-leading-zero", "train --device cuda:00", "--device"),
    cli("abbreviated-option", "train --dcc 0.3", "--dcc"),
    cli("resume-empty-checkpoint", "train --resume --out {ws}/empty " + " ".join(TINY_CLI), "checkpoint.pt"),
    cli("resume-text-checkpoint", "train --resume --out {ws}/text " + " ".join(TINY_CLI), "checkpoint.pt"),
    cli("resume-nan-checkpoint", "train --resume --out {ws}/nan_weights " + " ".join(TINY_CLI), "nan"),
    cli("resume-epoch-99", "train --resume --out {ws}/epoch99 " + " ".join(TINY_CLI), "epoch 99"),
]


def _overwrite_diverging(ws: Path):
    train(replace(TINY, lr=1e30), ws / "run", progress=False, overwrite=True)


def _faces(**kwargs):
    from attfc_lite.faces import SyntheticFaces

    return SyntheticFaces(**{"num_identities": 2, "images_per_identity": 2, "image_size": 16, **kwargs})


def _head_call(make, *args):
    def call(ws):
        head = make()
        head(*args)
    return call


def _fc():
    from attfc_lite.heads import FullFC

    return FullFC(8, 10)


def _widget(name, **kwargs):
    def call(ws):
        from attfc_lite import widgets

        getattr(widgets, name)(**kwargs)
    return call


LIBRARY_CASES = [
    Case("config-classes-fraction", lambda ws: TrainConfig(num_classes=10.7).validate(), "num_classes"),
    Case("config-lr-inf", lambda ws: TrainConfig(lr=float("inf")).validate(), "lr"),
    Case("config-weight-decay-nan", lambda ws: TrainConfig(weight_decay=float("nan")).validate(), "weight_decay"),
    Case("config-head-typo", lambda ws: TrainConfig(head="fcc").validate(), "head"),
    Case("config-backbone-typo", lambda ws: TrainConfig(backbone="resnet").validate(), "backbone"),
    Case("config-keys-bool", lambda ws: TrainConfig(head="attfc", num_keys=True).validate(), "num_keys"),
    Case("config-max-steps-zero", lambda ws: TrainConfig(max_steps=0).validate(), "max_steps"),
    Case("config-attfc-one-image", lambda ws: TrainConfig(head="attfc", images_per_identity=1).validate(),
         "images_per_identity"),
    Case("config-keys-exclude-text", lambda ws: TrainConfig(head="attfc", keys_exclude_query="no").validate(),
         "keys_exclude_query"),
    Case("config-momentum-one", lambda ws: TrainConfig(momentum=1.0).validate(), "momentum"),
    Case("config-device-typo", lambda ws: TrainConfig(device="cuda0").validate(), "device"),
    Case("train-into-a-run", lambda ws: train(TINY, ws / "run", progress=False), "out_dir"),
    Case("train-overwrite-diverges", _overwrite_diverging, "lr", FloatingPointError),
    Case("train-batch-larger-than-data", lambda ws: train(replace(TINY, batch_size=64), progress=False),
         "batch_size"),
    Case("load-truncated-checkpoint", lambda ws: load_checkpoint(ws / "truncated" / CHECKPOINT), "checkpoint.pt",
         CheckpointError),
    Case("load-unsafe-checkpoint", lambda ws: load_checkpoint(ws / "unsafe" / CHECKPOINT), "checkpoint.pt",
         CheckpointError),
    Case("fc-labels-out-of-range", _head_call(_fc, torch.randn(4, 8), torch.tensor([0, 1, 2, 10])), "labels"),
    Case("fc-embedding-shape", _head_call(_fc, torch.randn(4, 7), torch.tensor([0, 1, 2, 3])), "embeddings"),
    Case("fc-classes-fraction", lambda ws: __import__("attfc_lite.heads").heads.FullFC(8, 10.5), "num_classes"),
    Case("container-fraction", lambda ws: __import__("attfc_lite.container").container.DynamicClassContainer(2.5, 8),
         "capacity"),
    Case("faces-images-fraction", lambda ws: _faces(images_per_identity=10.7), "images_per_identity"),
    Case("imagefolder-size-fraction", lambda ws: __import__("attfc_lite.imagefolder").imagefolder.ImageFolderFaces(
        ws, image_size=10.7), "image_size"),
    Case("predict-memory-classes-fraction", lambda ws: __import__("attfc_lite.memory").memory.predict_memory(
        10.7, 512, 128), "num_classes"),
    Case("config-head-kwargs-unknown", lambda ws: TrainConfig(head_kwargs={"bogus": 1}).validate(), "head_kwargs"),
    Case("config-from-none", lambda ws: TrainConfig.from_dict(None), "values"),
    Case("train-out-dir-number", lambda ws: train(TINY, 123, progress=False), "out_dir"),
    Case("train-callback-number", lambda ws: train(TINY, None, progress=False, callback=5), "callback"),
    Case("train-config-dict", lambda ws: train({"num_classes": 8}, None, progress=False), "config"),
    Case("widget-fit-classes-fraction", _widget("fit_verdict", num_classes=1000.5), "num_classes"),
    Case("widget-fit-device-negative", _widget("fit_verdict", num_classes=1000, device_gib=-1), "device_gib"),
    Case("widget-fit-precision-typo", _widget("fit_verdict", num_classes=1000, precision="fp8"), "precision"),
    Case("widget-dcc-ratio-zero", _widget("dcc_size", ratio=0, num_classes=1000), "ratio"),
    Case("widget-dcc-classes-nan", _widget("dcc_size", ratio=0.3, num_classes=float("nan")), "num_classes"),
]


@pytest.mark.parametrize("case", CLI_CASES + LIBRARY_CASES, ids=lambda c: c.id)
def test_bad_input_is_named_and_loses_nothing(case, ws, capsys):
    before = _hashes(ws)
    if isinstance(case.call, list):
        argv = [a.format(ws=ws) for a in case.call]
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, err
        assert "Traceback" not in err
        message = err.strip().splitlines()[-1]  # argparse prints its usage line first
        assert "error:" in message and case.names in message, message
    else:
        with pytest.raises(case.error) as info:
            case.call(ws)
        assert case.names in str(info.value), str(info.value)
        if isinstance(info.value, ArgumentError):
            assert str(info.value).startswith(info.value.name)
    assert _hashes(ws) == before, "a file already written changed, or a new one appeared"


def test_the_suite_has_at_least_fifty_cases():
    assert len(CLI_CASES) + len(LIBRARY_CASES) >= 50


def test_unsafe_checkpoint_message_never_suggests_disabling_the_safe_loader(ws):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ws / "unsafe" / CHECKPOINT)
    assert "weights_only" not in str(info.value) and "refused" in str(info.value)


def test_the_workspace_run_is_what_resume_continues(ws):
    # Guards the resume cases above: with the right options the same folder resumes (a finished run
    # is only evaluated again), so the refusals come from the bad option, not from a broken folder.
    state = load_checkpoint(ws / "run" / CHECKPOINT)
    assert TrainConfig.from_dict(state["config"]) == TINY.validate()


TOO_MANY = ["train", "--classes", "9999900", "--eval-identities", "300"]


@pytest.mark.parametrize("argv", [["--debug", *TOO_MANY], [*TOO_MANY, "--debug"]])
def test_debug_shows_the_error_itself(argv):
    with pytest.raises(ArgumentError, match="^num_classes must be at most"):
        main(argv)


# --- A full disk, a read-only folder: every result is written whole or not at all (issue 19) ---

FULL_DISK = "/dev/full"  # every write to it fails with ENOSPC, as on a full disk


def _writes_fail_for(monkeypatch, suffix: str, device: str = FULL_DISK) -> None:
    """Make `utils.write_file`'s temporary files for names ending in `suffix` land on /dev/full."""
    import builtins

    from attfc_lite import utils

    real_open = builtins.open

    def open_(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(suffix + ".tmp"):
            return real_open(device, mode, *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(utils, "open", open_, raising=False)


@contextlib.contextmanager
def _small_disk(tmp_path: Path, size: str):
    """A tmpfs of `size` mounted under tmp_path (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the /dev/full tests cover the writes without it")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the disk of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    return filler


def test_a_checkpoint_on_a_full_disk_is_named_and_leaves_no_partial_file(ws, tmp_path, monkeypatch):
    shutil.copytree(ws / "run", tmp_path / "run")
    before = _hashes(tmp_path)
    _writes_fail_for(monkeypatch, CHECKPOINT)
    with pytest.raises(OSError) as info:  # the real torch.save, its writes failing with ENOSPC
        train(TINY, tmp_path / "run", progress=False, resume=False, overwrite=True)
    text = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert f"{tmp_path / 'run.new' / CHECKPOINT} could not be written: the disk is full" in text
    assert f"the earlier run in {tmp_path / 'run'} is unchanged" in text
    assert "unexpected pos" not in text  # torch's own words hide the cause
    assert "--resume" not in text  # nothing of the new run is saved, so there is nothing to resume
    assert _hashes(tmp_path) == before and not (tmp_path / "run.new").exists()


def test_metrics_on_a_full_disk_say_what_is_kept(tmp_path, monkeypatch):
    _writes_fail_for(monkeypatch, "metrics.json")
    with pytest.raises(OSError, match="metrics.json could not be written: the disk is full") as info:
        train(TINY, tmp_path / "run", progress=False)
    assert f"checkpoint of epoch 1/1 is kept in {tmp_path / 'run' / CHECKPOINT}" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT]


def test_a_read_only_file_system_is_named(tmp_path, monkeypatch):
    from attfc_lite import utils

    def read_only(path, mode="r", *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(utils, "open", read_only, raising=False)
    with pytest.raises(utils.WriteFailed, match=r"x\.json could not be written: the file system is read-only\. "
                                                r"The partial file was removed; nothing was written"):
        utils.write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_stale_temporary_file_is_removed_before_the_next_write(tmp_path):
    from attfc_lite.utils import write_json

    (tmp_path / "x.json.tmp").write_bytes(b"\0" * 100_000)  # left by a process killed while writing
    write_json(tmp_path / "x.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize("command", ["preview", "sweep"])
def test_a_figure_on_a_full_disk_keeps_the_earlier_one(command, ws, tmp_path, monkeypatch, capsys):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG the earlier figure")
    if command == "sweep":
        (tmp_path / "fig.json").write_text("{}\n")
    before = _hashes(tmp_path)
    _writes_fail_for(monkeypatch, ".png")
    argv = (["data", "preview", "--out", str(tmp_path / "fig.png"), "--overwrite"] if command == "preview" else
            ["sweep", "k", "--values", "2", "--seeds", "0", "--out", str(tmp_path / "fig.json"), "--overwrite", *TINY_CLI])
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"{tmp_path / 'fig.png'} could not be written: the disk is full" in err
    assert (tmp_path / "fig.png").read_bytes() == b"\x89PNG the earlier figure"
    assert not (tmp_path / "fig.png.tmp").exists()
    if command == "preview":
        assert _hashes(tmp_path) == before


def test_a_sweep_whose_file_cannot_be_written_prints_its_result(tmp_path, monkeypatch, capsys):
    _writes_fail_for(monkeypatch, ".json")
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "k", "--values", "2", "--seeds", "0", "--out", str(tmp_path / "k.json"), *TINY_CLI])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "k.json could not be written: the disk is full" in err
    assert "standard output" in err
    printed = json.loads(out)  # the hours of a real sweep are not lost
    assert printed["param"] == "k" and len(printed["runs"]) == 1
    assert not (tmp_path / "k.json").exists() and not (tmp_path / "k.json.tmp").exists()


def test_the_write_probe_checks_free_space_against_the_checkpoint(tmp_path, monkeypatch, capsys):
    from attfc_lite import utils
    from attfc_lite.train import checkpoint_bytes

    # the estimate against the real file: a finished one-epoch run of each head
    for head in ("fc", "attfc"):
        config = replace(TINY, head=head)
        train(config, tmp_path / head, progress=False, evaluate=False)
        real = (tmp_path / head / CHECKPOINT).stat().st_size
        assert real <= checkpoint_bytes(config) <= 1.2 * real + 2 ** 16, (head, real, checkpoint_bytes(config))
    monkeypatch.setattr(utils, "_free_bytes", lambda folder: 1000)
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "new"), *TINY_CLI])
    err = capsys.readouterr().err
    assert "--out cannot hold this run's checkpoint" in err and "0.0 MiB are free" in err
    assert not (tmp_path / "new").exists()


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_resume_finishes(tmp_path, capsys):
    with _small_disk(tmp_path, "7m") as disk:
        two_epochs = replace(TINY, epochs=2)
        seen = {}

        def fill_in_epoch_2(state):
            if state["epoch"] == 1 and "filler" not in seen:
                seen["checkpoint"] = (disk / "run" / CHECKPOINT).read_bytes()
                seen["filler"] = _fill(disk)

        with pytest.raises(OSError) as info:
            train(two_epochs, disk / "run", progress=False, callback=fill_in_epoch_2)
        text = str(info.value)
        assert f"{disk / 'run' / CHECKPOINT} could not be written: the disk is full" in text
        assert "the checkpoint of epoch 1/2 is kept" in text and "--resume" in text
        assert sorted(p.name for p in (disk / "run").iterdir()) == [CHECKPOINT]  # no partial file holds space
        assert (disk / "run" / CHECKPOINT).read_bytes() == seen["checkpoint"]
        seen["filler"].unlink()
        # a temporary file of a killed process holds most of the space: resume removes it first
        (disk / "run" / (CHECKPOINT + ".tmp")).write_bytes(b"\0" * (3 * 2 ** 20))
        assert main(["train", "--resume", "--out", str(disk / "run"), *_tiny_cli(epochs=2)]) == 0
        assert sorted(p.name for p in (disk / "run").iterdir()) == [CHECKPOINT, "metrics.json"]


def test_a_full_disk_is_refused_before_anything_is_rendered(tmp_path, capsys):
    with _small_disk(tmp_path, "1m") as disk:
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--out", str(disk / "run"), *TINY_CLI])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "--out cannot hold this run's checkpoint" in err and "free" in err
        assert list(disk.iterdir()) == []


# --- An interrupted --overwrite, finished by resuming <out>.new (issue 19) ---

def test_resuming_an_interrupted_overwrite_finishes_it(ws, tmp_path, capsys):
    shutil.copytree(ws / "run", tmp_path / "run")
    earlier = _hashes(tmp_path)
    two_epochs = replace(TINY, epochs=2, lr=0.05)
    train(two_epochs, tmp_path / "run", progress=False, overwrite=True, stop_after_epoch=1)  # as if interrupted
    assert {k: v for k, v in _hashes(tmp_path).items() if k.startswith("run/")} == earlier
    # a second overwrite refuses, and says what resuming the staging folder does
    with pytest.raises(ArgumentError, match=r"finishes the overwrite \(.*run\.new replaces .*run when the run ends\)"):
        train(two_epochs, tmp_path / "run", progress=False, overwrite=True)
    result = train(two_epochs, tmp_path / "run.new", progress=False, resume=True)
    assert result.out_dir == tmp_path / "run" and not (tmp_path / "run.new").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT, "metrics.json"]  # no marker, no lock
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["config"]["lr"] == 0.05
    # the same as the overwrite done in one go
    straight = train(two_epochs, tmp_path / "straight", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(result.backbone.state_dict().values(),
                                                  straight.backbone.state_dict().values()))
    # with no earlier folder left (deleted meanwhile), the run still ends in its place
    train(two_epochs, tmp_path / "run", progress=False, overwrite=True, stop_after_epoch=1)
    shutil.rmtree(tmp_path / "run")
    assert main(["train", "--resume", "--out", str(tmp_path / "run.new"), "--lr", "0.05",
                 *_tiny_cli(epochs=2)]) == 0
    assert "took the place of the earlier run" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run.new").exists()


def test_the_message_of_an_interrupted_overwrite_says_resuming_finishes_it(ws, tmp_path):
    shutil.copytree(ws / "run", tmp_path / "run")

    def stop(state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        train(replace(TINY, epochs=2), tmp_path / "run", progress=False, overwrite=True,
              callback=lambda s: stop(s) if s["epoch"] == 1 else None)
    assert (f"continue it with resume=True (--resume --out {tmp_path / 'run.new'}); the earlier run in "
            f"{tmp_path / 'run'} is unchanged (resuming {tmp_path / 'run.new'} finishes the overwrite: the run "
            f"replaces {tmp_path / 'run'} when it ends)") in str(info.value)


# --- A run that learns nothing says so (issue 19) ---

@pytest.mark.parametrize("loss, words", [(0.0, "every loss of this run was exactly 0 (4 steps)"),
                                         (1.5, "the loss was 1.5 at every one of the 4 steps")])
def test_a_run_that_learns_nothing_says_so(loss, words, tmp_path, monkeypatch, capsys):
    from attfc_lite.heads import FullFC
    from attfc_lite.train import LearnedNothingWarning

    monkeypatch.setattr(FullFC, "forward", lambda self, e, labels: (e * 0).sum() + loss)  # no gradient
    with pytest.warns(LearnedNothingWarning, match=re.escape(words)):
        result = train(TINY, None, progress=False, evaluate=False)
    assert len(result.metrics["warnings"]) == 1 and words in result.metrics["warnings"][0]
    assert main(["train", "--out", str(tmp_path / "run"), *TINY_CLI]) == 0
    err = capsys.readouterr().err
    assert f"python -m attfc_lite train: warning: {words}" in err and "LearnedNothingWarning" not in err
    assert words in json.loads((tmp_path / "run" / "metrics.json").read_text())["warnings"][0]


def test_a_run_that_learns_says_nothing(recwarn):
    from attfc_lite.train import LearnedNothingWarning

    assert train(TINY, None, progress=False, evaluate=False).metrics["warnings"] == []
    assert not [w for w in recwarn if issubclass(w.category, LearnedNothingWarning)]


# The messages that were vague: each names the option (or argument) as typed, the real limit and
# the cause. (argv or call, what the message must hold)
VAGUE_CLI = {
    "temperature-zero": ("train --head attfc --temperature 0", ["--temperature", "0.001", "1000", "got 0"]),
    "large-n-mib-zero": ("run --large-n-mib 0", ["--large-n-mib", ">= 16", "got 0", "backbone"]),
    "memory-classes-zero": ("memory --classes 0", ["--classes", ">= 2", "got 0", "one identity"]),
    "bench-image-size-zero": ("data bench --image-size 0", ["--image-size", ">= 8", "<= 512"]),
    "preview-image-size-zero": ("data preview --image-size 0 --out {ws}/p.png", ["--image-size", ">= 8", "<= 512"]),
    "ema-momentum-just-above-one": ("train --head attfc --ema-momentum 1.0000001", ["--ema-momentum", "<= 1",
                                                                                    "got 1.0000001"]),
    "memory-k-beyond-train": ("memory --head attfc --classes 1000 --k 100000", ["--k", "<= 64", "train"]),
    "container-above-classes": ("train --head attfc --classes 8 --container-size 9 --out {ws}/new_run",
                                ["--container-size", "at most", "(8)", "got 9"]),
    "profile-gpu-on-cpu": ("train --profile gpu --device cpu --out {ws}/new_run", ["--profile", "CUDA", "--no-amp"]),
    "preview-out-trailing-slash": ("data preview --out {ws}/x.png/", ["--out", "x.png/", "folder"]),
    "resume-other-classes": ("train --resume --out {ws}/run " + " ".join(_tiny_cli(classes=9)),
                             ["--resume", "--classes 9", "the checkpoint has 8"]),
}


@pytest.mark.parametrize("id_", sorted(VAGUE_CLI))
def test_vague_command_line_messages_name_the_real_limit(id_, ws, capsys):
    argv, words = VAGUE_CLI[id_]
    before = _hashes(ws)
    with pytest.raises(SystemExit) as exit_:
        main([a.format(ws=ws) for a in argv.split()])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "Traceback" not in message
    for word in words:
        assert word in message, (word, message)
    assert "num_classes" not in message and "amp (bfloat16" not in message  # fields and the wrong cause
    assert _hashes(ws) == before


def test_a_resume_mismatch_in_the_library_names_the_fields(ws):
    from attfc_lite.train import ConfigMismatch

    with pytest.raises(ConfigMismatch) as info:
        train(replace(TINY, num_classes=9, lr=0.2), ws / "run", progress=False, resume=True)
    assert info.value.diff == {"num_classes": (8, 9), "lr": (TINY.lr, 0.2)}
    assert "num_classes=9 (the checkpoint has 8)" in str(info.value)


def _png(path: Path, size, mode="RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)


def test_a_symlink_cycle_is_called_a_cycle(tmp_path):
    from attfc_lite.imagefolder import ImageFolderFaces, LayoutWarning

    _png(tmp_path / "a" / "x.png", (16, 16))
    (tmp_path / "a" / "one.png").symlink_to("two.png")
    (tmp_path / "a" / "two.png").symlink_to("one.png")
    (tmp_path / "a" / "gone.png").symlink_to("missing.png")
    with pytest.warns(LayoutWarning):
        ds = ImageFolderFaces(tmp_path)
    reasons = {Path(p).name: r for p, r in ds.skipped_links}
    assert reasons["one.png"].startswith("link cycle") and reasons["two.png"].startswith("link cycle")
    assert reasons["gone.png"].startswith("broken link")
    assert len(ds) == 1


@pytest.mark.parametrize("verify", [True, False])
def test_images_of_different_sizes_are_refused_before_training(tmp_path, verify):
    from attfc_lite.imagefolder import ImageFolderFaces

    _png(tmp_path / "a" / "x.png", (32, 32))
    _png(tmp_path / "b" / "y.png", (40, 24))
    with pytest.raises(ArgumentError) as info:
        ImageFolderFaces(tmp_path, verify=verify)
    text = str(info.value)
    assert text.startswith("image_size") and "32x32" in text and "40x24" in text and "image_size=24" in text
    assert len(ImageFolderFaces(tmp_path, image_size=16, verify=verify)) == 2  # resized: accepted


def test_a_huge_image_is_too_large_not_unreadable(tmp_path):
    from attfc_lite.imagefolder import ImageFolderFaces, ImageTooLargeError, load_image

    _png(tmp_path / "a" / "huge.png", (20000, 20000), mode="1")  # 4e8 pixels, past PIL's own refusal
    _png(tmp_path / "b" / "small.png", (16, 16))
    with pytest.raises(ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "a" / "huge.png")
    with pytest.raises(ImageTooLargeError, match="huge.png"):
        ImageFolderFaces(tmp_path, on_error="raise")


def test_a_container_past_the_memory_names_capacity():
    from attfc_lite.container import DynamicClassContainer

    with pytest.raises(ArgumentError, match=r"^capacity is 1,000,000,000,000.*GiB.*smaller capacity"):
        DynamicClassContainer(10 ** 12, 8)


def test_keys_that_do_not_match_num_keys_are_refused():
    from attfc_lite.heads.attfc import AttFC

    head = AttFC(4, 10, container_size=6, num_keys=2)
    with pytest.raises(ValueError, match="num_keys"):
        head(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(3, 3, 4))


@pytest.mark.parametrize("temperature", [1e-300, 0.0, 1e300])
def test_a_temperature_past_the_range_is_refused_by_the_library(temperature):
    from attfc_lite.heads.attfc import AttFC

    with pytest.raises(ArgumentError, match=r"^temperature.*0\.001.*1000"):
        AttFC(4, 10, container_size=6, temperature=temperature)
