"""Command line: `python -m attfc_lite {train, sweep, run, data, memory} ...` (see --help of
each; lessons 08-09 and the README's commands).

The options each command takes are in `options`; this module runs the commands and turns the
library's errors into one-line messages that name the option as typed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from .checks import ArgumentError
from .options import (_apply_profile, _check_head_options, _check_run_head_options, _given, build_parser,
                      config_from_args)

__all__ = ["main", "build_parser", "config_from_args"]


def _train(args) -> int:
    from .train import train
    from .verification import verification_summary

    _check_head_options(args.argv, args.head)
    config = config_from_args(args)
    out = args.out if args.out is not None else Path("runs") / args.head
    try:
        result = train(config, out_dir=out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    finally:  # under torchrun (lesson 10): leave the process group as every process started it
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    m = result.metrics
    if "verification" not in m:  # a rank other than 0 under torchrun: rank 0 reports the run
        return 0
    print(f"{m['head']}: {m['num_classes']} identities, {m['steps']} steps in {m['seconds']:.1f} s "
          f"({m['images_per_second']:.0f} images/s on {m['device']})", file=sys.stderr)
    print(verification_summary(m["verification"]), file=sys.stderr)
    replaced = f" ({out}, resumed, took the place of the earlier run)" if result.out_dir != out else ""
    print(f"wrote {result.out_dir / 'metrics.json'}{replaced}", file=sys.stderr)
    return 0


def _sweep(args) -> int:
    from .sweep import HEAD_OF, run_sweep

    head = args.head or HEAD_OF.get(args.param, "attfc")
    if args.param in HEAD_OF and head != HEAD_OF[args.param]:
        raise ArgumentError("head", f"is {head}, but {args.param} is a setting of --head {HEAD_OF[args.param]} "
                                    f"only; drop --head or give {HEAD_OF[args.param]}")
    swept = "--" + args.param
    if _given(args.argv, swept):
        raise ArgumentError("values", f"give {args.param} its values in a sweep: drop {swept}, which the sweep "
                                      f"would ignore")
    _check_head_options([a for a in args.argv if a != swept], head)
    for name, given in (("values", args.values or []), ("seeds", args.seeds)):
        if len(set(given)) != len(given):
            raise ArgumentError(name, f"repeat a value ({' '.join(map(str, given))}): each run would be done twice "
                                      f"and counted as two")
    base = config_from_args(args, head=head)
    out = args.out if args.out is not None else Path("data") / "sweeps" / f"{args.param.replace('-', '_')}.json"
    if out.suffix != ".json":
        raise ArgumentError("out", f"must be a .json file (its figure goes beside it as .png), got {out}")
    from .utils import check_output

    check_output(out.with_suffix(".png"), "out", "file", overwrite=args.overwrite,
                 holds=f"a figure ({out.with_suffix('.png')}, written beside the JSON)")
    command = "python -m attfc_lite " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["sweep"] else None

    def tar(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def report(run: dict) -> None:
        print(f"{args.param}={run['value']:g} seed {run['seed']}: accuracy {run['accuracy_mean']:.3f} "
              f"± {run['accuracy_std']:.3f}, TAR@1e-3 {tar(run['tar_at_far'].get('1e-3'))} ({run['seconds']:.0f} s)",
              file=sys.stderr, flush=True)

    result = run_sweep(args.param, args.values, args.seeds, base, out=out, progress=not args.quiet,
                       command=command, on_run=report, overwrite=args.overwrite)
    for row in result["summary"]:
        print(f"{args.param}={row['value']:g}: accuracy {row['accuracy_mean']:.3f} (seed spread "
              f"±{row['accuracy_seed_std']:.3f}), TAR@1e-3 {tar(row['tar_at_far'].get('1e-3'))} "
              f"(±{row['tar_at_far_seed_std'].get('1e-3', 0.0):.3f})", file=sys.stderr)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sweep import plot_accuracy_memory
    from .utils import save_figure

    ax = plot_accuracy_memory(result)
    ax.figure.tight_layout()
    save_figure(ax.figure, out.with_suffix(".png"), kept=f"{out} is written", dpi=100)
    plt.close(ax.figure)
    print(f"wrote {out} and {out.with_suffix('.png')} (accuracy against head memory)", file=sys.stderr)
    return 0


def _run(args) -> int:
    from .run import VARIANTS, run_heads, summary_table

    if args.no_mask:
        raise ValueError("--no-mask is an ablation of one head: use it with train or sweep, not run")
    if len(set(args.seeds)) != len(args.seeds):
        raise ArgumentError("seeds", f"repeat a value ({' '.join(map(str, args.seeds))}): each run would be done "
                                     f"twice and counted as two")
    large = args.large_n_mib is not None
    if not large:
        given = [o for o in ("--large-n-only", "--large-n-factors", "--large-n-epochs", "--large-n-images-per-identity",
                             "--large-n-steps", "--large-n-compare-keys", "--large-n-heads", "--large-n-timeout",
                             "--large-n-limit-share") if _given(args.argv, o)]
        if given:
            raise ArgumentError("large_n_mib", f"is not given, so {', '.join(given)} would do nothing: give the "
                                               f"budget (--large-n-mib 128) or drop them")
    if large and len(set(args.large_n_factors)) != len(args.large_n_factors):
        raise ArgumentError("large_n_factors", f"repeat a value ({' '.join(map(str, args.large_n_factors))})")
    if large and "fc" not in args.large_n_heads:
        raise ArgumentError("large_n_heads", "must include fc: its limit sets the sizes of the other runs")
    if large and args.large_n_only:
        given = [o for o in ("--variants", "--seeds", "--memory-classes", "--no-step-memory") if _given(args.argv, o)]
        if given:
            raise ArgumentError("large_n_only", f"trains only the capped runs, so {', '.join(given)} (options of the "
                                                f"side-by-side run) would do nothing: drop them or --large-n-only")
    _check_run_head_options(args, large)
    base = config_from_args(args, head="fc")
    if large:  # checked now, not after the heads have trained
        from .memory.guard import available_bytes, format_bytes
        from .utils import default_device

        where = default_device(base.device)
        if not 16 <= args.large_n_mib <= available_bytes(where) / 2 ** 20:
            raise ArgumentError("large_n_mib", f"must be at least 16 MiB (the backbone alone needs a few) and at most "
                                               f"what {where} has available ({format_bytes(available_bytes(where))}), "
                                               f"got {args.large_n_mib:g} MiB")
        if "attfc" in args.large_n_heads and args.large_n_images_per_identity < 2:
            raise ArgumentError("large_n_images_per_identity", "is 1, and AttFC cannot learn from one image per "
                                                               "identity (every key would be the query itself): "
                                                               "give at least 2")
    command = "python -m attfc_lite " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["run"] else None

    def report(run: dict) -> None:
        print(f"{VARIANTS[run['variant']][0]}, seed {run['seed']}: accuracy {run['accuracy_mean']:.3f} "
              f"± {run['accuracy_std']:.3f}, {run['images_per_second']:,.0f} images/s ({run['seconds']:.0f} s)",
              file=sys.stderr, flush=True)

    def epoch_done(e: dict) -> None:
        if args.quiet:  # the bars show it otherwise
            print(f"  {VARIANTS[e['variant']][0]}, seed {e['seed']}: epoch {e['epoch']}/{e['epochs']}, "
                  f"mean loss {e['loss']:.3f}", file=sys.stderr, flush=True)

    print(f"profile {args.profile}: {base.num_classes:,} identities x {base.images_per_identity} images of "
          f"{base.image_size} px, {base.backbone}, D = {base.embedding_dim}, B = {base.batch_size}, "
          f"{base.epochs} epoch(s){', bfloat16 autocast' if base.amp else ''}; heads: {', '.join(args.variants)}"
          if not (large and args.large_n_only) else
          f"profile {args.profile}: {args.large_n_images_per_identity} images per identity of {base.image_size} px, "
          f"{base.backbone}, D = {base.embedding_dim}, B = {base.batch_size}, {args.large_n_epochs} epoch(s), "
          f"under {args.large_n_mib:g} MiB{', bfloat16 autocast' if base.amp else ''}", file=sys.stderr, flush=True)
    if not (large and args.large_n_only):
        result = run_heads(args.variants, args.seeds, base, memory_classes=args.memory_classes, out=args.out,
                           progress=not args.quiet, command=command, on_run=report,
                           step_memory=not args.no_step_memory, on_epoch=epoch_done, overwrite=args.overwrite)
        print(summary_table(result), file=sys.stderr)
        print(f"wrote {args.out / 'summary.json'}, {args.out / 'summary.png'} and a folder per head", file=sys.stderr)
    if large:
        from .large_n import large_n_table, write_large_n

        big = write_large_n(args.out, base, int(args.large_n_mib * 2 ** 20), factors=args.large_n_factors,
                            epochs=args.large_n_epochs, images_per_identity=args.large_n_images_per_identity,
                            steps=args.large_n_steps, heads=args.large_n_heads,
                            limit_share=args.large_n_limit_share,
                            compare_keys=args.large_n_compare_keys, timeout_s=args.large_n_timeout,
                            progress=True, command=command, overwrite=args.overwrite,
                            beside_run=not args.large_n_only)
        print(large_n_table(big), file=sys.stderr)
        print(f"wrote {args.out / 'large_n.json'} and {args.out / 'large_n.png'}", file=sys.stderr)
    return 0


def _data(args) -> int:
    if args.data_command == "bench":
        from .faces import bench

        print(json.dumps(bench(args.num_images, args.image_size, None if args.device == "auto" else args.device)))
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .faces import FaceWorld, plot_preview

    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
        raise ValueError(f"--out must end in .png, .jpg, .pdf or .svg, got {args.out}")
    from .utils import check_output, save_figure

    check_output(args.out, "out", "file", overwrite=args.overwrite, holds="a file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    axes = plot_preview(FaceWorld(args.seed, args.image_size), num_identities=args.identities,
                        images_per_identity=args.images)
    fig = axes[0][0].figure
    fig.tight_layout()
    save_figure(fig, args.out, dpi=120)
    plt.close(fig)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _memory(args) -> int:
    from .memory import memory_report

    _check_head_options(args.argv, args.head)
    # memory_report's keyword of each head option, when given
    given = {"sample_rate": args.sample_rate, "container_ratio": args.dcc_ratio,
             "container_size": args.container_size, "num_keys": args.k}
    head_kwargs = {key: value for key, value in given.items() if value is not None}
    report = memory_report(head=args.head, num_classes=args.classes, embedding_dim=args.dim, batch_size=args.batch,
                           dtype=args.dtype, optimizer=args.optimizer, measure=not args.no_measure,
                           max_share=args.max_share,
                           momentum=args.momentum, weight_decay=args.weight_decay,
                           device=None if args.device == "auto" else args.device, **head_kwargs)
    print(json.dumps(report))
    return 0


# Names in the library's messages -> the option's dest, where they differ
_DEST_OF_NAME = {"num_classes": "classes", "num_keys": "k", "container_ratio": "dcc_ratio", "out_dir": "out",
                 "measure": "no_measure"}
_MEMORY_DEST_OF_NAME = {"embedding_dim": "dim", "batch_size": "batch"}


def _option_of(name: str, parser: argparse.ArgumentParser, command: str) -> str | None:
    """The command-line option that sets the library argument `name`, if any."""
    dest = (_MEMORY_DEST_OF_NAME if command == "memory" else {}).get(name) or _DEST_OF_NAME.get(name, name)
    for action in parser._actions:
        if action.dest == dest:
            longs = [o for o in action.option_strings if o.startswith("--")]
            return (longs or action.option_strings or [action.dest])[0]
    return None


def _typed(value) -> str:
    """A value as it is typed on the command line."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def _user_message(exc: BaseException, parser: argparse.ArgumentParser, command: str) -> str:
    """The error's message, with the library's argument name replaced by its option."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ArgumentError):
        base = exc.name.split(" ")[0].split("[")[0]
        option = _option_of(base, parser, command)
        if option is not None and text.startswith(base):
            text = option + text[len(base):]
    elif type(exc).__name__ == "ConfigMismatch":  # name the options, not TrainConfig's fields
        shown = []
        for name, (was, now) in exc.diff.items():
            option = _option_of(name, parser, command)
            shown.append(f"{option} {_typed(now)} (the checkpoint has {_typed(was)})" if option
                         else f"{name}={now!r} (the checkpoint has {was!r}; not an option: set in the library)")
        text = (f"--resume with options that differ from the checkpoint's: {', '.join(shown)}; give the "
                f"checkpoint's values, or start a new run with another --out")
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text


def _interrupted(args, exc: BaseException) -> str:
    """What an interrupted command leaves behind, truthfully."""
    from .train import RunInterrupted

    if isinstance(exc, RunInterrupted) and args.command == "train":
        return str(exc)
    if args.command == "train":
        return "interrupted before the first training step: nothing of this run was written"
    if args.command == "sweep":
        return ("interrupted: a sweep writes its file only when every run has finished, so nothing was written "
                "(an earlier file at --out is unchanged)")
    if args.command == "run" and getattr(args, "large_n_only", False):
        return ("interrupted: large_n.json and large_n.png are written only when every capped run has finished, so "
                "nothing was written (an earlier folder at --out is unchanged)")
    if args.command == "run":
        return ("interrupted: the heads finished so far have their metrics.json under --out (or <out>.new with "
                "--overwrite, the earlier results staying unchanged); summary.json is written only at the end, and "
                "large_n.json (--large-n-mib) after it")
    return "interrupted"


def main(argv: list[str] | None = None) -> int:
    """Run a command. A user error (a bad value, a missing or occupied path, a run that diverges
    or runs out of memory) prints one message and exits with 2; --debug shows the traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    typed = list(sys.argv[1:] if argv is None else argv)
    sub = parser.all_parsers.get(args.data_command if args.command == "data" else args.command, parser)
    if args.command in parser.train_parsers:
        try:
            args = _apply_profile(parser, argv, args)
        except ValueError as exc:
            if debug:
                raise
            parser.exit(2, f"{parser.prog} {args.command}: error: {_user_message(exc, sub, args.command)}\n")
    handlers = {"train": _train, "sweep": _sweep, "run": _run, "data": _data, "memory": _memory}
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and args.command != "train":
        parser.exit(2, f"{parser.prog} {args.command}: error: only train runs over several processes (torchrun "
                       f"started {os.environ['WORLD_SIZE']}); run {args.command} without torchrun\n")
    args.argv = typed
    shown = _say_warnings(f"{parser.prog} {args.command}")
    terminated = []
    previous = _on_sigterm(terminated)
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        # SIGTERM (a batch scheduler, docker stop, systemd) is handled as Ctrl-C, with its usual status
        how = "stopped by SIGTERM, as by Ctrl-C: " if terminated else ""
        parser.exit(143 if terminated else 130, f"{parser.prog} {args.command}: {how}{_interrupted(args, exc)}\n")
    except (ValueError, OSError, FloatingPointError, MemoryError) as exc:
        # A user error (bad input, a path, a diverging run, out of memory): a message, not a traceback.
        if debug:
            raise
        if getattr(exc, "result", None) is not None:  # work done whose file could not be written
            print(json.dumps(exc.result))
        parser.exit(2, f"{parser.prog} {args.command}: error: {_user_message(exc, sub, args.command)}\n")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        warnings.showwarning = shown


def _say_warnings(prefix: str):
    """Print the library's warnings about a run (`train.LearnedNothingWarning`) as one line each.
    Returns the previous `warnings.showwarning`, to put back."""
    from .train import LearnedNothingWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, LearnedNothingWarning):
            return previous(message, category, filename, lineno, file, line)
        print(f"{prefix}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    return previous


def _on_sigterm(received: list) -> object:
    """Make SIGTERM raise KeyboardInterrupt (noted in `received`), so that a terminated command says
    what it keeps and how to resume, as after Ctrl-C. Returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
