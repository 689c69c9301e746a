"""The command line's options: value types that name their limits, the parser of every command,
the profiles' defaults, and the config a command's options describe (`config_from_args`); the
README's commands.

`__main__` runs the commands; this module only says what they accept.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .checks import ArgumentError, as_device, as_float, as_int, cli_type

_positive_int = cli_type(as_int, minimum=1)
_positive_float = cli_type(as_float, minimum=0, low_open=True)
_share = cli_type(as_float, minimum=0, maximum=1, low_open=True)  # a ratio in (0, 1]
_unit = cli_type(as_float, minimum=0, maximum=1)  # a momentum in [0, 1]
_non_negative = cli_type(as_float, minimum=0)
_finite = cli_type(as_float)
_seed = cli_type(as_int, minimum=0, maximum=2 ** 32 - 1)
_device = cli_type(as_device)
_at_least_2 = cli_type(as_int, minimum=2)
_image_size = cli_type(as_int, minimum=8, maximum=512,
                       why="the face world draws faces of 8 to 512 pixels")


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty one (write . for the current folder)")
    return Path(text)


def _file_path(text: str) -> Path:
    """A path that names a file: a trailing separator (a folder) is refused, not silently dropped."""
    path = _path(text)
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"expected a file, got {text!r}, which ends in '/' and so names a "
                                         f"folder; drop the trailing '/' (e.g. {text.rstrip('/' + os.sep)!r})")
    return path


def _margin_m(text: str) -> float | tuple[float, ...]:
    parts = text.split(",")
    if len(parts) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected one number, or three (m1,m2,m3) for the combined margin, got {text!r}")
    try:
        values = tuple(as_float("m", v) for v in parts)
    except ArgumentError:
        raise argparse.ArgumentTypeError(f"expected finite numbers: one, or m1,m2,m3 for the combined margin, "
                                         f"got {text!r}") from None
    return values[0] if len(values) == 1 else values


# TrainConfig fields whose command-line option has another name
_DEST_OF = {"num_classes": "classes", "num_keys": "k"}


def _profile_text() -> str:
    from .run import PROFILES

    return ", ".join(f"{k}={v}" for k, v in PROFILES["gpu"].items())


def _apply_profile(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace):
    """Parse again with the chosen profile's values as the defaults (options given still win); the
    TrainConfig fields without an option go to args.profile_extra."""
    from .run import PROFILE_MEMORY_CLASSES, PROFILE_VARIANTS, PROFILES, resolve_profile

    typed = list(sys.argv[1:] if argv is None else argv)
    # only an --amp or --no-amp the user typed counts: the default (False) must not let --profile gpu
    # pass on a CPU, to fail later as if --amp had been asked for
    amp_typed = any(a.split("=")[0] in ("--amp", "--no-amp") for a in typed)
    name = resolve_profile(args.profile, amp=args.amp if amp_typed else None)
    sub = parser.train_parsers[args.command]
    dests = {a.dest for a in sub._actions}
    values = {_DEST_OF.get(k, k): v for k, v in PROFILES[name].items()}
    if args.command == "run":
        values.update(memory_classes=PROFILE_MEMORY_CLASSES[name], variants=PROFILE_VARIANTS[name])
    sub.set_defaults(**{k: v for k, v in values.items() if k in dests})
    args = parser.parse_args(argv)
    args.profile = name
    args.profile_extra = {k: v for k, v in PROFILES[name].items() if _DEST_OF.get(k, k) not in dests}
    return args


def _add_train_options(t: argparse.ArgumentParser, d) -> None:
    """The options of one training run, shared by `train` and `sweep`."""
    from .attention import TEMPERATURE_RANGE
    from .margins import DEFAULT_M, MARGINS
    from .train import MAX_KEYS

    t.add_argument("--classes", type=_at_least_2, default=d.num_classes, help="training identities")
    t.add_argument("--images-per-identity", type=_positive_int, default=d.images_per_identity)
    t.add_argument("--eval-identities", type=_at_least_2, default=d.eval_identities)
    t.add_argument("--eval-images-per-identity", type=_at_least_2, default=d.eval_images_per_identity)
    t.add_argument("--num-pairs", type=cli_type(as_int, minimum=20), default=d.num_pairs,
                   help="verification pairs (half genuine); capped at what the evaluation split holds")
    t.add_argument("--epochs", type=_positive_int, default=d.epochs)
    t.add_argument("--batch-size", type=_at_least_2, default=d.batch_size)
    t.add_argument("--image-size", type=_image_size, default=d.image_size, help="pixels, 8 to 512")
    t.add_argument("--backbone", default=d.backbone, choices=["small", "resnet18", "resnet34", "resnet50"])
    t.add_argument("--embedding-dim", type=_positive_int, default=d.embedding_dim)
    t.add_argument("--margin", default=d.margin, choices=sorted(MARGINS))
    t.add_argument("--margin-m", type=_margin_m, default=None,
                   help="the margin m; m1,m2,m3 for combined; default: "
                        + ", ".join(f"{k} {','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in DEFAULT_M.items()))
    t.add_argument("--scale", type=_positive_float, default=d.scale, help="the logit scale s")
    t.add_argument("--lr", type=_positive_float, default=d.lr)
    g = t.add_argument_group("Partial FC and AttFC")
    g.add_argument("--sample-rate", type=_share, default=d.sample_rate,
                   help="partial_fc: share of class centres in each step's logits, in (0, 1]")
    g.add_argument("--k", type=cli_type(as_int, minimum=1, maximum=MAX_KEYS), default=d.num_keys,
                   help=f"attfc: key images per query, at most {MAX_KEYS}")
    g.add_argument("--dcc-ratio", type=_share, default=d.dcc_ratio,
                   help="attfc: container size as a share of the identities, in (0, 1]")
    g.add_argument("--container-size", type=_positive_int, default=None,
                   help="attfc: container size in entries (overrides --dcc-ratio)")
    g.add_argument("--ema-momentum", type=_unit, default=d.ema_momentum,
                   help="attfc: encoder_k's EMA momentum, in [0, 1] (the paper's 0.999)")
    low, high = TEMPERATURE_RANGE
    g.add_argument("--temperature", type=cli_type(as_float, minimum=low, maximum=high, why="past these the attention "
                                                  "over the keys is one-hot or uniform, and exp overflows"),
                   default=d.temperature,
                   help="attfc: temperature of the attention softmax, 0.001 to 1000")
    g.add_argument("--keys-exclude-query", action=argparse.BooleanOptionalAction, default=d.keys_exclude_query,
                   help="attfc: draw the key images among the identity's images other than the query (default: "
                        "with replacement among all of them, the query included, as the official sampler)")
    g.add_argument("--no-mask", action="store_true",
                   help="attfc: keep the container's entries of a query's own identity as negatives (an ablation)")
    t.add_argument("--seed", type=_seed, default=d.seed)
    t.add_argument("--device", type=_device, default=d.device)
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help="CUDA only: the backbone in bfloat16 autocast, the head in fp32")
    t.add_argument("--profile", default="auto", choices=["auto", "cpu", "gpu"],
                   help="the defaults of the options: cpu (as shown), or gpu, whose TrainConfig differs in "
                        + _profile_text() + "; auto: gpu when CUDA is present. Options given override the profile")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .heads import HEADS
    from .sweep import DEFAULT_VALUES, PARAMS
    from .train import MAX_KEYS, TrainConfig

    d = TrainConfig()
    # No abbreviations: a shortened option that silently meant another one would be a silent mistake.
    parser = argparse.ArgumentParser(prog="python -m attfc_lite", description="The AttFC course's command line.",
                                     allow_abbrev=False)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a backbone + head on the synthetic faces, then evaluate verification",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    t.add_argument("--head", choices=sorted(HEADS), default=d.head)
    t.add_argument("--out", type=_path, default=None, help="run folder (metrics.json, checkpoint.pt); default runs/<head>")
    _add_train_options(t, d)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out; it stays as it was until the new run finishes")

    sw = sub.add_parser("sweep", help="train one run per value and seed of one setting; write the results as JSON",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    sw.add_argument("param", choices=sorted(PARAMS), help="the setting to vary")
    sw.add_argument("--values", type=_finite, nargs="+", default=None,
                    help="its values; default: " + "; ".join(f"{k} {' '.join(map(str, v))}"
                                                             for k, v in DEFAULT_VALUES.items()))
    sw.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1])
    sw.add_argument("--head", choices=sorted(HEADS), default=None,
                    help="default: the head the setting belongs to (attfc; partial_fc for sample-rate)")
    sw.add_argument("--out", type=_file_path, default=None, help="JSON file; default data/sweeps/<setting>.json")
    sw.add_argument("--overwrite", action="store_true",
                    help="replace an existing --out file (it stays as it was until the sweep finishes)")
    _add_train_options(sw, d)

    from .run import VARIANTS

    r = sub.add_parser("run", help="train several heads on the same data, one after the other; write per head "
                                   "metrics and a whole-step memory timeline, and a summary (JSON and PNG)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    r.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="heads to train (the gpu profile: the first three): " + "; ".join(f"{k} = {v[0]}" for k, v in VARIANTS.items()))
    r.add_argument("--seeds", type=_seed, nargs="+", default=[0])
    r.add_argument("--memory-classes", type=_positive_int, default=100_000,
                   help="also measure each head's step at this many identities (the gpu profile: 1,000,000)")
    r.add_argument("--out", type=_path, default=Path("runs") / "heads",
                   help="folder to write: summary.json, summary.png, <head>/seed_<s>/metrics.json, <head>/step_memory.json")
    r.add_argument("--no-step-memory", action="store_true", help="skip measuring one whole training step per head")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the results already in --out (they stay as they were until the new ones are complete)")
    g = r.add_argument_group("same budget, trained to the end (large_n.json, large_n.png)")
    g.add_argument("--large-n-mib", type=cli_type(as_float, minimum=16, why="the backbone's step alone needs a few MiB"),
                   default=None,
                   help="under this memory budget (MiB): find the largest N whose whole full FC (and Partial FC) "
                        "training step fits, then train full FC and Partial FC at their limits and AttFC at "
                        "--large-n-factors times full FC's, each for --large-n-epochs epochs under the same cap, "
                        "and evaluate them on the same unseen identities; writes large_n.json and large_n.png")
    g.add_argument("--large-n-only", action="store_true",
                   help="only the --large-n-mib runs: no side-by-side run of --variants first")
    g.add_argument("--large-n-factors", type=cli_type(as_float, minimum=0, maximum=1000, low_open=True), nargs="+",
                   default=[5.0], help="AttFC's N as multiples of full FC's limit; the first is the main run "
                                       "(e.g. 5 1 0.2 10)")
    g.add_argument("--large-n-epochs", type=_positive_int, default=3, help="epochs of each capped run")
    g.add_argument("--large-n-limit-share", type=_share, default=0.95,
                   help="full FC and Partial FC train at this share of the largest N whose two steps fit (a long "
                        "run needs a little more room), in (0, 1]")
    g.add_argument("--large-n-images-per-identity", type=_positive_int, default=2,
                   help="images per identity of the capped runs (as few as in large face data sets)")
    g.add_argument("--large-n-steps", type=_positive_int, default=None,
                   help="stop each capped run after this many steps (a quick look, not a run to the end)")
    g.add_argument("--large-n-compare-keys", action="store_true",
                   help="also train AttFC at the main factor with its keys drawn the other way (--keys-exclude-query)")
    g.add_argument("--large-n-heads", nargs="+", choices=["fc", "partial_fc", "attfc"],
                   default=["fc", "partial_fc", "attfc"], help="heads of the capped runs (fc is needed)")
    g.add_argument("--large-n-timeout", type=_positive_float, default=7200.0,
                   help="seconds each search or capped run may take before it is stopped")
    _add_train_options(r, d)

    data = sub.add_parser("data", help="the synthetic face world: speed and a preview", allow_abbrev=False)
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("bench", help="batched rendering speed, printed as one JSON object",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    b.add_argument("--num-images", type=cli_type(as_int, minimum=1, maximum=10_000_000), default=16384)
    b.add_argument("--image-size", type=_image_size, default=32, help="pixels, 8 to 512")
    b.add_argument("--device", type=_device, default="auto")
    p = dsub.add_parser("preview", help="save a grid of identities x images with their quality",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--out", type=_file_path, required=True, help="image file to write, e.g. preview.png")
    p.add_argument("--identities", type=cli_type(as_int, minimum=1, maximum=100), default=6)
    p.add_argument("--images", type=cli_type(as_int, minimum=1, maximum=100), default=8, help="images per identity")
    p.add_argument("--image-size", type=_image_size, default=32, help="pixels, 8 to 512")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    m = sub.add_parser("memory", help="predicted vs measured memory of one head step, printed as JSON",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    m.add_argument("--head", choices=sorted(HEADS), default="fc")
    m.add_argument("--classes", type=cli_type(as_int, minimum=2, why="a softmax over one identity has nothing "
                                                                         "to tell apart"), required=True, help="number of identities N, at least 2 (1e6 is "
                                                                      "accepted)")
    m.add_argument("--dim", type=_positive_int, default=512, help="embedding dimension D")
    m.add_argument("--batch", type=_positive_int, default=128, help="batch size B")
    m.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    m.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    m.add_argument("--momentum", type=_unit, default=0.9, help="SGD momentum (0 = no momentum buffer)")
    m.add_argument("--weight-decay", type=_non_negative, default=0.0)
    m.add_argument("--sample-rate", type=_share, default=None,
                   help="partial_fc: share of class centres in each step's logits (default 0.1)")
    m.add_argument("--dcc-ratio", type=_share, default=None,
                   help="attfc: container size as a share of the identities (default 0.3)")
    m.add_argument("--container-size", type=_positive_int, default=None, help="attfc: container size in entries")
    m.add_argument("--k", type=cli_type(as_int, minimum=1, maximum=MAX_KEYS, why="train's limit: more keys only "
                                                                                  "multiply the key encoder's work"),
                   default=None,
                   help=f"attfc: key embeddings per query (default 2), at most {MAX_KEYS} as in train")
    m.add_argument("--no-measure", action="store_true", help="prediction only (for sizes that would not fit)")
    m.add_argument("--max-share", type=_share, default=None,
                   help="measure only if the predicted peak is at most this share of the memory available now, in "
                        "(0, 1]; default 0.75 on the CPU, 0.9 on CUDA (past it: refused, nothing allocated)")
    m.add_argument("--device", type=_device, default="auto")
    for command in (t, sw, r, b, p, m):  # also after the command; SUPPRESS keeps the top level's value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    parser.train_parsers = {"train": t, "sweep": sw, "run": r}
    parser.all_parsers = {"train": t, "sweep": sw, "run": r, "bench": b, "preview": p, "memory": m}
    return parser


def config_from_args(args, head: str | None = None):
    """The TrainConfig that `train` arguments describe (validated: a bad value raises ValueError)."""
    from .train import TrainConfig

    head = head or args.head
    if args.no_mask and head != "attfc":
        raise ValueError(f"--no-mask only applies to --head attfc, not {head}")
    return TrainConfig(head=head, num_classes=args.classes, images_per_identity=args.images_per_identity,
                       eval_identities=args.eval_identities, eval_images_per_identity=args.eval_images_per_identity,
                       num_pairs=args.num_pairs, epochs=args.epochs, batch_size=args.batch_size,
                       image_size=args.image_size, backbone=args.backbone, embedding_dim=args.embedding_dim,
                       margin=args.margin, margin_m=args.margin_m, scale=args.scale, lr=args.lr, seed=args.seed,
                       device=args.device, sample_rate=args.sample_rate, num_keys=args.k, dcc_ratio=args.dcc_ratio,
                       container_size=args.container_size, ema_momentum=args.ema_momentum,
                       temperature=args.temperature, keys_exclude_query=args.keys_exclude_query, amp=args.amp,
                       head_kwargs={"mask_own": False} if args.no_mask else {},
                       **getattr(args, "profile_extra", {})).validate()


# options that only one head reads: (the heads, the option)
_HEAD_OPTIONS = {"--sample-rate": ("partial_fc",), "--k": ("attfc",), "--dcc-ratio": ("attfc",),
                 "--container-size": ("attfc",), "--ema-momentum": ("attfc",), "--temperature": ("attfc",),
                 "--keys-exclude-query": ("attfc",), "--no-keys-exclude-query": ("attfc",)}


def _given(argv: list[str], option: str) -> bool:
    """Whether `option` was typed (abbreviations are off, so it is spelled out)."""
    return any(a == option or a.startswith(option + "=") for a in argv)


def _check_head_options(argv: list[str], head: str) -> None:
    foreign = [o for o, heads in _HEAD_OPTIONS.items() if head not in heads and _given(argv, o)]
    if foreign:
        owners = sorted({h for o in foreign for h in _HEAD_OPTIONS[o]})
        raise ArgumentError("head", f"is {head}, which does not read {', '.join(foreign)} (options of --head "
                                    f"{' / '.join(owners)}); drop them or choose that head")


def _check_run_head_options(args, large: bool) -> None:
    """`run` refuses a head's option when no head it trains reads it (it used to record them as used).

    The DCQ-style variant is AttFC with K = 1: it reads AttFC's options except --k."""
    trained = set() if large and args.large_n_only else set(args.variants)
    if large:
        trained |= set(args.large_n_heads)
    readers = {o: set(heads) | ({"dcq"} if "attfc" in heads and o != "--k" else set())
               for o, heads in _HEAD_OPTIONS.items()}
    unread = [o for o, heads in readers.items() if _given(args.argv, o) and not heads & trained]
    if unread:
        owners = sorted({h for o in unread for h in readers[o]})
        name = "large_n_heads" if large and args.large_n_only else "variants"
        raise ArgumentError(name, f"are {' '.join(sorted(trained))}, and none of them reads {', '.join(unread)} "
                                        f"(options of {' / '.join(owners)}): drop them or add such a variant")
