"""The three heads side by side through the memory CLI: measured peak and step time as ratios to FullFC.

    python benchmarks/head_benchmark.py                    # N = 1e6, D = 512, B = 128, fp32, SGD, on the CPU
    python benchmarks/head_benchmark.py --classes 100000   # a quicker look

Each head runs `python -m attfc_lite memory` in its own process, one after the other (the
FullFC step at N = 1e6 needs about 14 GB), so no head's memory is left over for the next.
Prints a table and one JSON object; exit status 1 when AttFC misses the targets of the
issue that built it (peak <= 0.12 and step time <= 0.08 of FullFC's) unless --no-targets.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"peak": 0.12, "step_seconds": 0.08}


def run_head(head: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "attfc_lite", "memory", "--head", head, "--classes", str(args.classes),
           "--dim", str(args.dim), "--batch", str(args.batch), "--device", args.device]
    if head == "partial_fc":
        cmd += ["--sample-rate", str(args.sample_rate)]
    if head == "attfc":
        cmd += ["--dcc-ratio", str(args.dcc_ratio), "--k", str(args.k)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:])} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--dcc-ratio", type=float, default=0.3)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-targets", action="store_true", help="always exit 0")
    args = parser.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, device {args.device}; "
          f"N={args.classes:,}, D={args.dim}, B={args.batch}, fp32, SGD momentum 0.9")
    reports = {}
    for head in ("fc", "partial_fc", "attfc"):
        print(f"  measuring {head} ...", flush=True)
        reports[head] = run_head(head, args)
    fc = reports["fc"]
    rows = {}
    print(f"\n{'head':<12}{'predicted MiB':>15}{'measured MiB':>14}{'error':>8}{'step s':>9}{'peak / FC':>11}{'time / FC':>11}")
    for head, r in reports.items():
        rows[head] = dict(
            predicted_peak=r["predicted"]["peak"], measured_peak=r["measured_peak_bytes"], error=r["relative_error"],
            step_seconds=r["step_seconds"], peak_ratio=r["measured_peak_bytes"] / fc["measured_peak_bytes"],
            time_ratio=r["step_seconds"] / fc["step_seconds"],
            settings={k: r[k] for k in ("sample_rate", "container_size", "num_keys") if k in r},
        )
        row = rows[head]
        print(f"{head:<12}{row['predicted_peak'] / 2**20:>15,.1f}{row['measured_peak'] / 2**20:>14,.1f}"
              f"{row['error']:>+8.1%}{row['step_seconds']:>9.3f}{row['peak_ratio']:>11.3f}{row['time_ratio']:>11.3f}")
    att = rows["attfc"]
    meets = att["peak_ratio"] <= TARGETS["peak"] and att["time_ratio"] <= TARGETS["step_seconds"]
    print(f"\nAttFC: peak {att['peak_ratio']:.3f} of FullFC's (target <= {TARGETS['peak']}), step time "
          f"{att['time_ratio']:.3f} (target <= {TARGETS['step_seconds']}): {'met' if meets else 'MISSED'}")
    print(json.dumps(dict(torch=torch.__version__, device=args.device, cpus=os.cpu_count(), classes=args.classes,
                          embedding_dim=args.dim, batch_size=args.batch, heads=rows, targets=TARGETS, meets=meets)))
    return 0 if meets or args.no_targets else 1


if __name__ == "__main__":
    sys.exit(main())
