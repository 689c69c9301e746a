"""One training run for tests/test_interrupt.py, in its own process so the test can SIGKILL it.

    python tests/_interrupt_driver.py '<json spec>'

The spec: config (TrainConfig fields), out (run folder), resume (bool), and optionally
  pause_at_step: after this optimizer step, write `marker` (the step and epoch) and sleep,
      so the test can kill the process at a known point in the middle of an epoch;
  tear_save: on this call of torch.save (1: the epoch-1 checkpoint), write only the first
      half of the bytes to the file, then write `marker` and sleep: a kill during the write;
  snapshot_after_step / snapshot: after this step, copy the run folder's checkpoint.pt to
      `snapshot` (the reference run keeps its epoch-1 checkpoint this way).
With cli (a list of arguments) it runs the command line instead, pausing at pause_at_step.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time

import torch

# One thread, as the test's other processes: the same reductions in the same order, so the
# runs can be compared bit for bit.
torch.set_num_threads(1)

from attfc_lite.train import CHECKPOINT, TrainConfig, train  # noqa: E402

SLEEP_S = 120  # long enough for the test to kill us; bounded so a crashed test leaves no process for long


def _write_marker(path: str, info: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)  # the test reads it as soon as it exists: never half-written


def main(spec: dict) -> None:
    config = TrainConfig(**spec["config"])
    out = spec["out"]
    pause_at = spec.get("pause_at_step")
    snapshot_after = spec.get("snapshot_after_step")

    def callback(state: dict) -> None:
        if snapshot_after is not None and state["step"] == snapshot_after:
            shutil.copyfile(os.path.join(out, CHECKPOINT), spec["snapshot"])
        if pause_at is not None and state["step"] == pause_at:
            _write_marker(spec["marker"], {"step": state["step"], "epoch": state["epoch"]})
            time.sleep(SLEEP_S)

    tear_at = spec.get("tear_save")
    if tear_at is not None:
        real_save = torch.save
        calls = []

        def torn_save(obj, f, *args, **kwargs):
            calls.append(f)
            if len(calls) != tear_at:
                return real_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            # save_checkpoint may hand over a path or an open file: write half of the bytes to it
            fh = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else fh.name
            _write_marker(spec["marker"], {"path": os.path.abspath(path), "written": len(data) // 2,
                                           "size": len(data)})
            time.sleep(SLEEP_S)

        torch.save = torn_save  # train.save_checkpoint calls torch.save through the module

    train(config, out, resume=bool(spec.get("resume")), progress=False, evaluate=False,
          callback=callback if (pause_at is not None or snapshot_after is not None) else None)



def main_cli(spec: dict) -> int:
    """The command line (`python -m attfc_lite` with spec["cli"]), pausing after step
    pause_at_step as above, so the test can press Ctrl-C (SIGINT) at a known point."""
    import attfc_lite.train as train_module
    from attfc_lite.__main__ import main as cli_main

    real_train = train_module.train
    pause_at = spec["pause_at_step"]

    def pausing_train(*args, **kwargs):
        def callback(state: dict) -> None:
            if state["step"] == pause_at:
                _write_marker(spec["marker"], {"step": state["step"], "epoch": state["epoch"]})
                time.sleep(SLEEP_S)

        return real_train(*args, callback=callback, **kwargs)

    train_module.train = pausing_train  # the command imports train from the module when it runs
    return cli_main(spec["cli"])


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    sys.exit(main_cli(spec)) if "cli" in spec else main(spec)
