"""benchmarks/gpu_check.sh --tiny: the lent-GPU script's own path, on the CPU at toy sizes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_mode_runs_every_part_and_writes_into_out(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PY=sys.executable)
    start = time.perf_counter()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny", "every"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    print(f"gpu_check.sh --tiny: {seconds:.0f} s")  # the target is under 2 minutes; printed, not asserted
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    log = (tmp_path / "gpu_check_every.log").read_text()
    assert "done: 0 step(s) failed" in log and "!! failed" not in log
    for part in ("versions", "render speed", "memory of one AttFC head step", "same budget, trained to the end",
                 "the heads side by side", "sweep dcc-ratio"):
        assert part in log, part
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["variants"]) == ["fc", "partial_fc", "attfc", "dcq"] and summary["device"].startswith("cpu")
    assert "profile cpu: 20 identities x 4 images of 16 px" in log  # the toy sizes beat the profile's
    assert "epoch 1/1, mean loss" in log  # progress per head and epoch with --quiet
    assert (tmp_path / "run" / "summary.png").exists() and (tmp_path / "run" / "attfc" / "step_memory.json").exists()
    assert not (tmp_path / "run" / "large_n.json").exists()  # the heads' folder holds the heads only
    big = json.loads((tmp_path / "large_n" / "large_n.json").read_text())
    limit = big["boundaries"]["fc"]["largest_fit"]
    assert big["runs"]["attfc"]["fits"] and big["runs"]["attfc"]["num_classes"] == 5 * limit
    assert big["runs"]["fc"]["fits"] and big["runs"]["fc"]["num_classes"] <= int(0.95 * limit)
    # AttFC at 5x and 10x with the keys of the profile, and at 5x with the other sampler
    attfc = [(p["factor"], p["keys_exclude_query"]) for p in big["points"] if p["head"] == "attfc"]
    assert attfc == [(5, False), (10, False), (5, True)]
    assert big["world"]["images_per_identity"] == 3 and big["epochs"] == 1 and big["max_steps"] == 4
    assert (tmp_path / "large_n" / "large_n.png").exists()
    sweep = json.loads((tmp_path / "sweeps" / "dcc_ratio.json").read_text())
    assert sweep["values"] == [0.1, 1.0]


def test_a_failing_step_is_counted_and_the_script_fails(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PY=str(tmp_path / "no-such-python"))
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny", "checks"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 1
    assert "!! failed" in proc.stdout and "step(s) failed" in proc.stdout
    assert "done: 0 step(s)" not in proc.stdout


def test_bad_mode_is_named():
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "bogus"], cwd=ROOT, text=True, capture_output=True,
                          env=dict(os.environ, OUT="/tmp/attfc_gpu_check_bad"), timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stdout
