"""A run's files: atomic checkpoints that load safely, the lock on a run folder, the disk check (lesson 01).

A checkpoint is written to a temporary file, fsynced and renamed (`utils.write_file`), so a
kill at any moment leaves the previous one or the new one; `load_checkpoint` loads tensors and
plain containers only (`weights_only=True`). An overwrite is staged in `<out>.new`, whose
`.replaces` marker names the folder it replaces when the run ends.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .checks import ArgumentError
from .config import TrainConfig, build
from .utils import check_free_space, write_file

__all__ = ["CHECKPOINT", "METRICS", "LOCK", "REPLACES", "RUN_FILES", "CheckpointError", "ConfigMismatch",
           "save_checkpoint", "load_checkpoint", "checkpoint_bytes"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
# everything train writes in a run folder (the .tmp files exist for a moment, or after a crash)
LOCK = ".lock"  # held while a run writes to its folder, so two runs never write to one
# in `<out>.new`, an overwrite's staging folder: the name of the folder the finished run replaces
REPLACES = ".replaces"
RUN_FILES = (CHECKPOINT, METRICS, CHECKPOINT + ".tmp", METRICS + ".tmp", LOCK, REPLACES)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, not written by attfc_lite, or of another run."""


class ConfigMismatch(ValueError):
    """resume=True with a config other than the checkpoint's; `diff` maps each field that differs to
    (the checkpoint's value, the value given), so the command line can name its options."""

    def __init__(self, diff: dict[str, tuple]):
        self.diff = diff
        given = ", ".join(f"{k}={now!r} (the checkpoint has {was!r})" for k, (was, now) in diff.items())
        super().__init__(f"resume=True with a config that differs from the checkpoint's: {given}; give the "
                         f"checkpoint's values, or start a new run in another folder")


def save_checkpoint(path: str | os.PathLike, state: dict, kept: str | None = None) -> None:
    """Write to a temporary file, flush it to disk, then rename (`utils.write_file`): a crash or a
    kill at any moment leaves either the previous checkpoint or the new one, never a broken one. A
    failed write (a full disk) removes its partial file and raises `WriteFailed` naming the file,
    why, and `kept`."""
    write_file(path, lambda f: torch.save(state, f), kept)


_CHECKPOINT_KEYS = ("config", "backbone", "head", "optimizer", "epoch", "step", "history", "seconds")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain containers, no pickled code.

    A file that is truncated, not a checkpoint, or holds anything else is refused with a
    CheckpointError that says so (loading pickled objects could run code, so none are loaded)."""
    import pickle

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} is refused: it holds Python objects other than tensors, numbers and plain containers, and "
            f"loading those could run code. attfc_lite's checkpoints hold only those, so this file was not written "
            f"by attfc_lite's train or was changed since; start the run again in a new folder") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch's readers fail in many ways on a damaged file (EOFError, KeyError, ...)
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "no detail"
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(exc).__name__}: {first}); it is "
            f"truncated or not a checkpoint. attfc_lite writes checkpoints atomically, so this file was damaged or "
            f"written by something else: restore it, or start the run again (overwrite=True, --overwrite)") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of attfc_lite's train: it lacks {missing}")
    bad = _non_finite({part: state[part] for part in ("backbone", "head", "encoder_k")
                       if isinstance(state.get(part), dict)})
    if bad:  # train never writes these: the file was changed
        raise CheckpointError(f"{path} holds nan or inf weights ({', '.join(bad[:3])}), which attfc_lite never "
                              f"writes: it was changed or damaged; start the run again")
    return state


def _non_finite(states: dict[str, dict]) -> list[str]:
    """'part.name' of every floating-point tensor holding nan or inf in the state dicts `states`."""
    return [f"{part}.{name}" for part, sd in states.items() for name, t in sd.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def checkpoint_bytes(config: TrainConfig) -> int:
    """About the size of one checkpoint of this run, from its model built on the meta device (no
    memory): the backbone's and head's tensors, encoder_k's for AttFC, and SGD's momentum of each
    trained parameter."""
    config = config.validate()
    meta = torch.device("meta")
    with meta:
        backbone, head = build(config, meta)

    def size(tensors) -> int:  # the bytes of each, and about 512 for its record and alignment in the file
        return sum(t.numel() * t.element_size() + 512 for t in tensors if isinstance(t, torch.Tensor))

    states = size(backbone.state_dict().values()) + size(head.state_dict().values())
    encoder_k = size(backbone.state_dict().values()) if head.num_keys else 0
    params = [p for p in (*backbone.parameters(), *head.parameters()) if p.requires_grad]
    return states + encoder_k + (size(params) if config.momentum else 0) + 2 ** 16  # + config, history, pickling


class _RunLock:
    """An exclusive lock (flock) on `out`/.lock while a run writes to `out`: a second run started
    on the same folder stops with a message instead of mixing its files with the first's. The
    operating system releases it when the process ends, even by SIGKILL."""

    def __init__(self, out: Path, final: Path, has_run: bool) -> None:
        self.out, self.final, self.has_run, self.fd, self.created = out, final, has_run, None, False

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not on Windows: no lock
            return
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise ArgumentError("out_dir", f"{self.out} is being written by another run now, left unchanged: wait "
                                           f"for it to finish, or choose another folder") from None
        # Checked before rendering; another run may have finished here since.
        if self.out == self.final and not self.has_run and \
                ((self.final / CHECKPOINT).exists() or (self.final / METRICS).exists()):
            self.release()
            raise ArgumentError("out_dir", f"{self.final} received a run from another process meanwhile, left "
                                           f"unchanged: choose another folder")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.out / LOCK)
        os.close(self.fd)
        self.fd = None
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()  # a run that wrote nothing leaves no folder


def _check_disk(config: TrainConfig, folder: Path, resume: bool) -> None:
    """Before any rendering: the disk of `folder` must hold the run's checkpoints (a write probe
    alone passes on a full disk, an empty file taking no space)."""
    size = checkpoint_bytes(config)
    # after the first epoch each checkpoint is written beside the previous one, then replaces it
    copies = 1 if resume or config.epochs == 1 else 2
    # a temporary file left by a killed run is removed before the next write: its space counts as free
    stale = sum(p.stat().st_size for p in (folder / (CHECKPOINT + ".tmp"), folder / (METRICS + ".tmp"))
                if resume and p.is_file())
    check_free_space(folder, "out_dir", max(1, copies * size + 2 ** 20 - stale),
                     f"this run's checkpoints ({size / 2 ** 20:,.1f} MiB each, written beside the previous one "
                     f"before replacing it)" if copies == 2 else f"this run's checkpoint ({size / 2 ** 20:,.1f} MiB)")


def _replaced_by(folder: Path) -> Path | None:
    """The folder that `folder` will replace, if it is the staging folder of an interrupted overwrite."""
    marker = folder / REPLACES
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointError(f"{marker} should name the folder beside {folder} that this run replaces, but holds "
                              f"{name!r}: it was changed; delete it to resume {folder} as a run of its own")
    return folder.with_name(name)
