"""Seeding, device choice, what stored results record, and the self-check helper used by the exercises."""
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


def write_json(path, data) -> None:
    """Write `data` as JSON to `path` through a temporary file, so a reader never sees half a file."""
    import json
    from pathlib import Path

    path = Path(path)
    bad = _non_finite_at(data)
    if bad is not None:
        raise ValueError(f"{path.name} would hold {bad[1]} at {bad[0]}, which is not a number; nothing was written "
                         f"(a result that is nan or inf is a failed measurement, not a value to store)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(tmp, path)


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
                 holds: str = "results", occupied: bool | None = None, own=None):
    """Check, before any work, that results can be written to `path` (a folder or a file) without
    losing earlier ones: it must not be of the other kind, its parent must be a folder we can
    write, and if it already holds results (`occupied`, by default: is a file or a non-empty
    folder) the caller must say `resume` or `overwrite`. With `own(entry) -> bool`, a folder
    holding any entry the caller did not write is refused whatever is said: writing there would
    mix two kinds of results, and replacing it would delete what it holds."""
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
