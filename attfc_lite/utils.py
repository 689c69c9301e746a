"""Seeding, device choice, what stored results record, and the self-check helper used by the exercises (every lesson)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a lesson reproduces."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given (validated), else CUDA when available, else CPU."""
    from .checks import ArgumentError, as_device

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(as_device("device", device))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("device", f"{str(device)!r} was asked for, but no CUDA device is available; use 'cpu' "
                                      f"or 'auto'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ArgumentError("device", f"{str(device)!r} was asked for, but there are {torch.cuda.device_count()} CUDA "
                                      f"devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def check(name: str, got, expected, rtol: float = 1e-5, atol: float = 1e-6, close_factor: float = 100.0) -> str:
    """Compare an answer with the expected value and print right / close / wrong.

    Works on numbers, sequences and tensors. 'close' means within `close_factor` times the
    tolerance: usually a rounding or an off-by-one-epsilon slip rather than a wrong idea.
    Returns the verdict so tests can use it.
    """
    got_t = torch.as_tensor(got, dtype=torch.float64)
    exp_t = torch.as_tensor(expected, dtype=torch.float64)
    if got_t.shape != exp_t.shape:
        print(f"{name}: wrong shape: got {tuple(got_t.shape)}, expected {tuple(exp_t.shape)}")
        return "wrong"
    diff = (got_t - exp_t).abs()
    max_diff = float(diff.max()) if diff.numel() else 0.0
    tol = atol + rtol * exp_t.abs()
    if bool((diff <= tol).all()):
        verdict = "right"
    elif bool((diff <= close_factor * tol).all()):
        verdict = "close"
    else:
        verdict = "wrong"
    print(f"{name}: {verdict} (max difference {max_diff:.3g})")
    return verdict


def provenance(device: str | torch.device | None = None) -> dict:
    """What a stored result records about where it came from: the device in words, torch,
    Python and the date."""
    import datetime
    import platform

    dev = default_device(device)
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def write_json(path, data, kept: str | None = None) -> None:
    """Write `data` as JSON to `path` through `write_file`, so a reader never sees half a file."""
    import json

    path = Path(path)
    bad = _non_finite_at(data)
    if bad is not None:
        raise ValueError(f"{path.name} would hold {bad[1]} at {bad[0]}, which is not a number; nothing was written "
                         f"(a result that is nan or inf is a failed measurement, not a value to store)")
    text = json.dumps(data, indent=1, allow_nan=False).encode()
    write_file(path, lambda f: f.write(text), kept)


class WriteFailed(OSError):
    """A result that could not be written. The message names the file, why (the disk is full, the
    file system is read-only, permission) and what is kept; `errno` is the system's code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


_WHY = {"ENOSPC": "the disk is full", "EDQUOT": "the disk quota is used up", "EROFS": "the file system is read-only",
        "EACCES": "permission denied", "EPERM": "permission denied", "EFBIG": "the file is too large for this file "
        "system", "EIO": "the disk reported an input/output error"}


def temporary_path(path) -> Path:
    """Where `write_file` writes `path` before renaming it into place."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def write_file(path, write, kept: str | None = None) -> None:
    """Write `path` atomically: `write(f)` fills a temporary file in the same folder, which is
    flushed to disk (fsync) and renamed over `path`, so a reader, a crash or a kill sees the old
    file or the new one, never half of one. A temporary file left by a killed process is removed
    first (it may hold the space this write needs). On any failure the temporary file is removed
    and `WriteFailed` says which file, why, and `kept` (what is kept, in words)."""
    import contextlib
    import errno as errnos

    path = Path(path)
    tmp = temporary_path(path)
    recorder = _RecordingFile(None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with open(tmp, "wb") as raw:
            recorder.file = raw
            write(recorder)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM, exit: only the temporary file is undone
            raise
        # torch.save reports a failed write as "unexpected pos ...": the file's own error says why
        cause = recorder.error or (exc if isinstance(exc, OSError) else None)
        if cause is None and isinstance(exc, RuntimeError) and _free_bytes(path.parent) < 2 ** 20:
            cause = OSError(errnos.ENOSPC, os.strerror(errnos.ENOSPC))
        if cause is None:
            raise
        name = errnos.errorcode.get(cause.errno, "")
        why = _WHY.get(name) or (cause.strerror or str(cause)).lower()
        if name == "ENOSPC":
            why += f" ({_free_bytes(path.parent) / 2 ** 20:,.1f} MiB free in {_nearest_existing(path.parent)})"
        raise WriteFailed(f"{path} could not be written: {why}. The partial file was removed; "
                          f"{kept or ('an earlier ' + path.name + ' is unchanged' if path.exists() else 'nothing was written')}",
                          cause.errno) from None


class _RecordingFile:
    """A binary file that keeps the first OSError of its writes, which torch.save would replace by
    a message without the cause."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.file.flush()

    def __getattr__(self, name):  # seek, tell, fileno ... of the file itself
        return getattr(self.file, name)


def _free_bytes(folder) -> int:
    import shutil

    try:
        return shutil.disk_usage(_nearest_existing(Path(folder))).free
    except OSError:
        return 0


def save_figure(fig, path, kept: str | None = None, **savefig_kwargs) -> None:
    """`fig.savefig` to `path` through `write_file`: an earlier figure there stays whole until the
    new one is complete."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    write_file(path, lambda f: fig.savefig(f, format="jpeg" if fmt == "jpg" else fmt, **savefig_kwargs), kept)


def _non_finite_at(data, where: str = "") -> tuple[str, float] | None:
    """The first (key path, value) in nested dicts and lists whose float is nan or inf, else None."""
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return where or "the top level", data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite_at(value, f"{where}.{key}" if where and isinstance(key, str) else
                               f"{where}[{key}]" if where else str(key))
        if found is not None:
            return found
    return None


def read_stored(path, folder, required, command: str) -> dict:
    """A stored result: a JSON file, or the name of one in `folder` ("dcc_ratio" for
    folder/dcc_ratio.json), checked for the `required` fields; `command` (e.g. "python -m
    attfc_lite sweep ...") is named in the errors as the way to make it."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.suffix != ".json" and not path.exists():
        path = Path(folder) / f"{path.name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no file {path}; make it with {command} --out {path}")
    data = json.loads(path.read_text())
    missing = set(required) - set(data)
    if missing:
        raise ValueError(f"{path} was not written by {command}: it lacks {sorted(missing)}; regenerate it")
    return data


def _nearest_existing(path):
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path.anchor


def holds_results(path) -> bool:
    """Whether `path` holds results: a file, or a folder with anything in it."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def check_output(path, name: str, kind: str = "folder", overwrite: bool = False, resume: bool = False,
                 holds: str = "results", occupied: bool | None = None, own=None, need_bytes: int = 2 ** 20,
                 need_for: str = "the results"):
    """Check, before any work, that results can be written to `path` (a folder or a file) without
    losing earlier ones: it must not be of the other kind, its parent must be a folder we can
    write, and if it already holds results (`occupied`, by default: is a file or a non-empty
    folder) the caller must say `resume` or `overwrite`. With `own(entry) -> bool`, a folder
    holding any entry the caller did not write is refused whatever is said: writing there would
    mix two kinds of results, and replacing it would delete what it holds. `need_bytes` (what the
    work will write, described by `need_for`; 1 MiB covers a JSON file and a figure) must be free on the disk: an empty probe file takes
    no space, so a full disk would pass the write probe alone."""
    from pathlib import Path

    from .checks import ArgumentError

    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ArgumentError(name, f"must be a folder, but {path} is a file; give a folder path (it is created)")
    if kind == "file" and path.is_dir():
        raise ArgumentError(name, f"must be a file path, but {path} is a folder; give e.g. {path / 'result.json'}")
    base = _nearest_existing(path.parent if kind == "file" or not path.exists() else path)
    if not Path(base).is_dir():
        raise ArgumentError(name, f"cannot be created: {base} is a file, not a folder; choose another path")
    import tempfile

    try:  # a real write: permission bits say little to root, and nothing about /proc or a full disk
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise ArgumentError(name, f"cannot be written: {exc.strerror or exc} in {base}; choose another path") from None
    check_free_space(base, name, need_bytes, need_for)
    if overwrite and path.is_symlink():
        raise ArgumentError(name, f"{path} is a symbolic link (to {os.readlink(path)}); to replace what it holds, "
                                  f"give the folder it points to")
    if own is not None and path.is_dir():
        foreign = sorted(e.name for e in path.iterdir() if not own(e))
        if foreign:
            raise ArgumentError(name, f"{path} holds files this command did not write ({', '.join(foreign[:4])}"
                                      f"{', ...' if len(foreign) > 4 else ''}), left unchanged: use a new folder for "
                                      f"{holds}")
    if (holds_results(path) if occupied is None else occupied) and not (overwrite or resume):
        raise ArgumentError(name, f"{path} already holds {holds}, left unchanged: choose another path, "
                                  + ("continue it with --resume (resume=True), " if holds == "a run" else "")
                                  + "or replace it with --overwrite (overwrite=True), which keeps it until the new "
                                    "work has finished")
    return path


def check_free_space(path, name: str, need_bytes: int, need_for: str = "the results") -> None:
    """Refuse (naming the argument `name`) when the disk of `path` has less than `need_bytes` free."""
    from .checks import ArgumentError

    base = _nearest_existing(Path(path))
    free = _free_bytes(base)
    if need_bytes and free < need_bytes:
        raise ArgumentError(name, f"cannot hold {need_for}: about {need_bytes / 2 ** 20:,.1f} MiB are needed and "
                                  f"{free / 2 ** 20:,.1f} MiB are free on the disk of {base}; free some space or "
                                  f"choose a path on another disk. Nothing was written")


def staging_path(path, name: str | None = None):
    """Where work that will replace the results in `path` is written until it finishes. With
    `name` (the argument that gave `path`), refuse if it exists: an earlier replacement that did
    not finish, or a folder of the user's, is never removed."""
    stage = path.with_name(path.name + ".new")
    if name is not None and (stage.exists() or stage.is_symlink()):
        from .checks import ArgumentError

        raise ArgumentError(name, f"{path} would be replaced through {stage}, which exists already (an earlier "
                                  f"overwrite that did not finish, or a folder of yours), left unchanged: move or "
                                  f"delete {stage} first")
    return stage


def replace_folder(stage, path) -> None:
    """Put the finished folder `stage` in the place of `path`, removing what `path` held."""
    import shutil
    import tempfile

    # A fresh hidden name beside it, so that no folder of the user's is touched
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    if path.exists():
        os.replace(path, old)  # onto the empty folder just made
    os.replace(stage, path)  # between the two renames the earlier results are in `old`
    shutil.rmtree(old)
