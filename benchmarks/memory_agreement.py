"""Predicted vs measured peak memory of one head training step, and the out-of-memory boundary.

    python benchmarks/memory_agreement.py                      # FullFC, N = 1e3, 1e4, 1e5, 1e6 on the CPU
    python benchmarks/memory_agreement.py --head partial_fc --sample-rate 0.1 --no-oom
    python benchmarks/memory_agreement.py --head attfc --dcc-ratio 0.3 --k 2 --no-oom
    python benchmarks/memory_agreement.py --classes 1000 10000 --oom-budget-mib 256
    python benchmarks/memory_agreement.py --device cuda --classes 1000000 10000000

Prints the agreement table, the boundary found under a memory cap next to the predicted
one, and then one JSON object with every number. Exit status 1 when a peak disagrees by
more than --tolerance. The measurements run one at a time; N = 1e6 needs about 14 GB of
free memory (W, momentum, and five N x D copies in the backward of F.normalize).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from attfc_lite.memory import MiB, find_oom_boundary, format_agreement, memory_report, predict_memory


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", default="fc", choices=["fc", "partial_fc", "attfc"])
    parser.add_argument("--sample-rate", type=float, default=0.1, help="partial_fc: share of centres per step")
    parser.add_argument("--dcc-ratio", type=float, default=0.3, help="attfc: container size as a share of N")
    parser.add_argument("--k", type=int, default=2, help="attfc: key embeddings per query")
    parser.add_argument("--classes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6], help="values of N")
    parser.add_argument("--dim", type=int, default=512, help="embedding_dim D")
    parser.add_argument("--batch", type=int, default=128, help="batch size B")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tolerance", type=float, default=0.15, help="largest accepted relative error of the peak")
    parser.add_argument("--oom-budget-mib", type=float, default=1024.0, help="memory budget of the boundary search")
    parser.add_argument("--no-oom", action="store_true", help="skip the out-of-memory boundary search")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON object to PATH")
    args = parser.parse_args(argv)

    head_kwargs = {"fc": {}, "partial_fc": {"sample_rate": args.sample_rate},
                   "attfc": {"container_ratio": args.dcc_ratio, "num_keys": args.k}}[args.head]
    print(f"torch {torch.__version__}, python {platform.python_version()}, device {args.device}, "
          f"{torch.get_num_threads()} threads; head {args.head} {head_kwargs}, D={args.dim}, B={args.batch}, "
          f"{args.dtype}, {args.optimizer}")
    print("one steady-state step: forward, backward, optimizer.step (state already allocated), zero_grad(set_to_none=True)")
    rows = []
    for n in (int(c) for c in args.classes):
        need = predict_memory(n, args.dim, args.batch, args.dtype, args.optimizer, args.head, **head_kwargs).peak
        free = available_bytes() if args.device == "cpu" else None
        if free is not None and need > 0.85 * free:
            print(f"N={n:,}: skipped, needs about {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB are available")
            continue
        r = memory_report(args.head, n, args.dim, args.batch, args.dtype, args.optimizer, device=args.device,
                          **head_kwargs)
        rows.append(dict(
            num_classes=n, predicted_peak=r["predicted"]["peak"], measured_peak=r["measured_peak_bytes"],
            error=r["relative_error"], predicted_step_peak=r["predicted"]["step_peak"],
            measured_step_peak=r["measured_step_peak_bytes"], step_error=r["step_relative_error"],
            step_seconds=r["step_seconds"], predicted_peak_phase=r["predicted_peak_phase"],
            measured_phase_peaks=r["measured_phase_peaks"], method=r["method"],
        ))
        print(f"  measured N={n:,} ({r['step_seconds']:.2f} s per step)", flush=True)
    print()
    print("peak of one step = held between steps (W, momentum, batch) + largest phase of the step")
    print(format_agreement(rows))
    out: dict = dict(
        torch=torch.__version__, device=args.device, head=args.head, head_kwargs=head_kwargs, embedding_dim=args.dim, batch_size=args.batch, dtype=args.dtype,
        optimizer=args.optimizer, tolerance=args.tolerance, agreement=rows,
    )
    if not args.no_oom:
        budget = int(args.oom_budget_mib * MiB)
        boundary = find_oom_boundary(budget, args.head, args.dim, args.batch, args.dtype, args.optimizer, args.device,
                                     **head_kwargs)
        print()
        print(f"out-of-memory boundary under a {args.oom_budget_mib:g} MiB budget ({boundary.cap}):")
        for t in boundary.trials:
            print(f"  N={t['num_classes']:>10,}: {'fits' if t['fits'] else 'out of memory'}")
        def show(n):
            return "none" if n is None else f"{n:,}"

        print(f"  largest fit {show(boundary.largest_fit)}, first fail {show(boundary.first_fail)}, "
              f"predicted boundary {show(boundary.predicted_boundary)}")
        if boundary.child_error:
            print(f"  child error: {boundary.child_error}")
        out["oom_boundary"] = boundary.as_dict()
    worst = max((abs(r["error"]) for r in rows), default=0.0)
    out["max_abs_error"] = worst
    out["agrees"] = bool(rows) and worst <= args.tolerance
    print()
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if out["agrees"] else 1


if __name__ == "__main__":
    sys.exit(main())
