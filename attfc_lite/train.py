"""The training loop: one seeding call, any head, progress, atomic checkpoints, resume.

`train(TrainConfig(...), out_dir)` renders the synthetic split (or takes a dataset), trains
backbone + head with SGD and a per-step cosine schedule, evaluates verification on held-out
identities and writes `metrics.json`. With `out_dir`, a checkpoint is written atomically
after every epoch; `resume=True` continues the same run from it, and because batches and
flips are drawn from generators seeded by (seed, epoch), a resumed run ends with the same
weights as one that was never interrupted.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from .backbones import BACKBONES, count_parameters, make_backbone
from .faces import MAX_IDENTITIES, FaceWorld, StreamedFaces, SyntheticFaces, check_disjoint_splits
from .attention import check_temperature
from .attfc import DEFAULT_CONTAINER_RATIO
from .encoders import DEFAULT_MOMENTUM, KeyEncoder, check_momentum
from .heads import HEADS, Head, make_head
from .margins import DEFAULT_M, MARGINS, make_margin
from .memory.oom import is_out_of_memory
from .partial_fc import DEFAULT_SAMPLE_RATE
from .sampling import identity_index, sample_keys
from .checks import ArgumentError, as_bool, as_choice, as_device, as_float, as_int
from .utils import (check_free_space, check_output, default_device, replace_folder, seed_everything, staging_path,
                    write_file, write_json)
from .verification import evaluate_verification

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
# everything train writes in a run folder (the .tmp files exist for a moment, or after a crash)
LOCK = ".lock"  # held while a run writes to its folder, so two runs never write to one
# in `<out>.new`, an overwrite's staging folder: the name of the folder the finished run replaces
REPLACES = ".replaces"
RUN_FILES = (CHECKPOINT, METRICS, CHECKPOINT + ".tmp", METRICS + ".tmp", LOCK, REPLACES)
MAX_KEYS = 64  # K key images per query: the paper uses 2; more only multiplies the key encoder's work


@dataclass
class TrainConfig:
    """Everything that defines a run; the defaults are the CPU lesson configuration."""

    head: str = "fc"
    num_classes: int = 1000  # training identities
    images_per_identity: int = 16
    eval_identities: int = 300
    eval_images_per_identity: int = 10
    image_size: int = 32
    backbone: str = "small"
    embedding_dim: int = 128
    margin: str = "arcface"  # arcface, cosface or combined
    scale: float = 32.0
    # The margin m: a number, or (m1, m2, m3) for 'combined'; None: the margin's usual value
    # (margins.DEFAULT_M). `validate()` fills it in, so a run records the value it used.
    margin_m: float | tuple | None = None
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    # Max norm of the backbone's gradient (0: off). Only the backbone is clipped, as in
    # insightface's arcface_torch: clipping the head too would shrink the backbone's step
    # by the head's gradient, and differently for each head (AttFC's head has no weights).
    clip_grad_norm: float = 5.0
    seed: int = 0
    device: str = "auto"
    num_pairs: int = 20000
    # Partial FC: the share of class centres in each step's logits (insightface's 0.1).
    sample_rate: float = DEFAULT_SAMPLE_RATE
    # AttFC: K key images per query, the container's size (a share of num_classes, or an
    # absolute count that overrides it), encoder_k's EMA momentum, the attention temperature.
    # K = 4 on the CPU (the official configuration has K = 2): with two keys the GCC is too
    # noisy a class centre for a 750-step run (10-fold accuracy 0.86 against FC's 0.89 on the
    # default data, TAR@FAR=1e-3 0.13), with four it is 0.89 (0.17; lesson 05;
    # data/sweeps/k.json, `sweep k`).
    num_keys: int = 4
    dcc_ratio: float = DEFAULT_CONTAINER_RATIO
    container_size: int | None = None
    ema_momentum: float = DEFAULT_MOMENTUM
    temperature: float = 1.0
    # AttFC: draw the K keys among the identity's images other than the query (when it has others).
    # False is the official sampler: with replacement among all of them, the query included
    # (`sampling.self_key_share`: 5/9 of the queries at 3 images per identity and K = 2).
    keys_exclude_query: bool = False
    # Mixed precision on CUDA: the backbone (and encoder_k) run under autocast in bfloat16, the
    # head in fp32 (its softmax over many classes wants the range). No loss scaling is needed.
    amp: bool = False
    # The backbone's weights (hence its activations) in channels-last memory format: faster
    # convolutions on GPU tensor cores, the same numbers up to rounding. The GPU profile sets it.
    channels_last: bool = False
    # Render each training batch when it is needed instead of all images up front
    # (`faces.StreamedFaces`): the data set then holds only its labels, whatever num_classes is.
    stream_data: bool = False
    # Stop after this many optimizer steps (None: all epochs); the learning-rate schedule ends
    # there. For runs whose epochs are too long to finish, as at hundreds of thousands of identities.
    max_steps: int | None = None
    head_kwargs: dict = field(default_factory=dict)  # anything else make_head takes

    def validate(self) -> "TrainConfig":
        """Check every field; returns a copy with whole numbers as ints and the defaults that
        depend on others filled in. A bad value raises ArgumentError (a ValueError) naming it."""
        c = dict(
            head=as_choice("head", self.head, sorted(HEADS)),
            num_classes=as_int("num_classes", self.num_classes, 2),  # a classifier needs two identities
            images_per_identity=as_int("images_per_identity", self.images_per_identity, 1),
            # impostor pairs need two identities, genuine pairs two images of one
            eval_identities=as_int("eval_identities", self.eval_identities, 2),
            eval_images_per_identity=as_int("eval_images_per_identity", self.eval_images_per_identity, 2),
            image_size=as_int("image_size", self.image_size, 8, 512),
            backbone=as_choice("backbone", self.backbone, sorted(BACKBONES)),
            embedding_dim=as_int("embedding_dim", self.embedding_dim, 1),
            scale=as_float("scale", self.scale, 0, 1024, low_open=True),  # s: 30 to 64 in practice
            epochs=as_int("epochs", self.epochs, 1),
            # BatchNorm needs two samples in a batch
            batch_size=as_int("batch_size", self.batch_size, 2),
            lr=as_float("lr", self.lr, 0, low_open=True),
            momentum=as_float("momentum", self.momentum, 0, 1, high_open=True),
            weight_decay=as_float("weight_decay", self.weight_decay, 0),
            warmup_epochs=as_float("warmup_epochs", self.warmup_epochs, 0),
            clip_grad_norm=as_float("clip_grad_norm", self.clip_grad_norm, 0),
            seed=as_int("seed", self.seed, 0, 2 ** 32 - 1),
            device=as_device("device", self.device),
            # 10-fold accuracy needs at least ten pairs of each kind in the folds
            num_pairs=as_int("num_pairs", self.num_pairs, 20),
            sample_rate=as_float("sample_rate", self.sample_rate, 0, 1, low_open=True),
            num_keys=as_int("num_keys", self.num_keys, 1, MAX_KEYS),
            dcc_ratio=as_float("dcc_ratio", self.dcc_ratio, 0, 1, low_open=True),
            container_size=None if self.container_size is None else as_int("container_size", self.container_size, 1),
            ema_momentum=as_float("ema_momentum", self.ema_momentum, 0, 1),
            temperature=check_temperature(self.temperature),
            keys_exclude_query=as_bool("keys_exclude_query", self.keys_exclude_query),
            amp=as_bool("amp", self.amp),
            channels_last=as_bool("channels_last", self.channels_last),
            stream_data=as_bool("stream_data", self.stream_data),
            max_steps=None if self.max_steps is None else as_int("max_steps", self.max_steps, 1),
        )
        if not isinstance(self.head_kwargs, dict):
            raise ArgumentError("head_kwargs", f"must be a dict of make_head's options, got {self.head_kwargs!r}")
        self = replace(self, **c)
        if self.amp and (self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())):
            raise ArgumentError("amp", "(bfloat16 autocast) is for CUDA devices; set amp=False (--no-amp) on the CPU")
        default_device(self.device)  # a CUDA device asked for where there is none: said now
        if self.num_classes + self.eval_identities > MAX_IDENTITIES:
            raise ArgumentError("num_classes", f"must be at most {MAX_IDENTITIES - self.eval_identities:,} with "
                                f"eval_identities = {self.eval_identities:,}: the synthetic world has "
                                f"{MAX_IDENTITIES:,} identities and training and evaluation must not share one; got "
                                f"{self.num_classes:,}")
        margin = as_choice("margin", str(self.margin).lower(), sorted(MARGINS))
        m = DEFAULT_M[margin] if self.margin_m is None else self.margin_m
        if isinstance(m, (tuple, list)):
            m = tuple(as_float(f"margin_m[{i}]", v) for i, v in enumerate(m))
        else:
            m = as_float("margin_m", m)
        try:
            make_margin(margin, s=self.scale, m=m)
        except (TypeError, ValueError) as exc:
            raise ArgumentError("margin_m", f"{m!r} does not suit margin={margin!r}: {exc}") from None
        checked = replace(self, margin=margin, margin_m=m)
        if self.head == "attfc" and self.images_per_identity == 1:
            raise ArgumentError("images_per_identity", "is 1, and AttFC cannot learn from one image per identity: "
                                                       "every key image is then the query image itself, so the "
                                                       "positive class centre is the query's own embedding and the "
                                                       "loss teaches nothing about the identity; give at least 2 "
                                                       "images per identity (--images-per-identity 2), or use "
                                                       "--head fc or partial_fc")
        if self.head == "attfc" and self.container_size is not None and self.container_size > self.num_classes:
            raise ArgumentError("container_size", f"must be at most the number of training identities "
                                                  f"({self.num_classes:,}), got {self.container_size:,}: the "
                                                  f"container holds one centre per identity, so slots past that "
                                                  f"stay empty; give {self.num_classes} or less, or leave it out "
                                                  f"and set the container's share of the identities instead "
                                                  f"(dcc_ratio, --dcc-ratio, at most 1)")
        if self.head == "attfc":
            try:
                check_momentum(self.ema_momentum)
            except ValueError as exc:
                raise ArgumentError("ema_momentum", str(exc)) from None
        with torch.device("meta"):  # the head's own checks, before anything is rendered; no memory
            try:
                probe = make_head(self.head, int(self.embedding_dim), int(self.num_classes), margin=margin,
                                  s=self.scale, m=m, **head_settings(checked), **self.head_kwargs)
            except TypeError as exc:  # an option the head does not take
                raise ArgumentError("head_kwargs", f"{self.head_kwargs!r} do not suit head={self.head!r}: "
                                                   f"{exc}") from None
        del probe
        return checked

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config a dict records (metrics.json, a checkpoint); keys of other versions are left out."""
        if not isinstance(values, dict):
            raise ArgumentError("values", f"must be a dict of TrainConfig fields, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to zero at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


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


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`; the message says what of the run is saved."""


class LearnedNothingWarning(UserWarning):
    """A run that finished without learning: every loss exactly 0, or the same loss at every step."""


class TrainingOutOfMemory(MemoryError):
    """A training step ran out of memory; the message gives the allocator's own words, whole (so
    `memory.oom.requested_bytes` reads the size that failed from it), the head's memory and what
    to change."""


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


@dataclass
class TrainResult:
    backbone: nn.Module
    head: Head
    metrics: dict
    history: list = field(default_factory=list)
    encoder_k: KeyEncoder | None = None  # AttFC's key encoder at the end of the run
    out_dir: Path | None = None  # where the run's files are at the end (the replaced folder after an overwrite)


def head_settings(config: TrainConfig) -> dict:
    """The options of `config` that its head takes (recorded in metrics.json)."""
    if config.head == "partial_fc":
        return {"sample_rate": config.sample_rate, "seed": config.seed}
    if config.head == "attfc":
        return {"num_keys": config.num_keys, "container_ratio": config.dcc_ratio,
                "container_size": config.container_size, "temperature": config.temperature}
    return {}


def memory_knobs(config: TrainConfig) -> dict:
    """The settings of `config` that the memory model (`predict_memory`, `memory_report`) reads."""
    knobs = {"momentum": config.momentum, "weight_decay": config.weight_decay}
    if config.head == "partial_fc":
        knobs["sample_rate"] = config.sample_rate
    if config.head == "attfc":
        knobs.update(num_keys=config.num_keys, container_ratio=config.dcc_ratio, container_size=config.container_size)
    return knobs


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


def build(config: TrainConfig, device: torch.device) -> tuple[nn.Module, Head]:
    backbone = make_backbone(config.backbone, config.embedding_dim, config.image_size).to(device)
    if config.channels_last:  # conv outputs follow their weights' format, so the inputs need no change
        backbone = backbone.to(memory_format=torch.channels_last)
    head = make_head(config.head, config.embedding_dim, config.num_classes, margin=config.margin,
                     s=config.scale, m=config.margin_m, **head_settings(config), **config.head_kwargs).to(device)
    return backbone, head


def train(config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, train_set=None, eval_set=None, stop_after_epoch: int | None = None,
          evaluate: bool = True, callback=None, overwrite: bool = False, check_memory: bool = True) -> TrainResult:
    """Train backbone + head on the synthetic world (or the given datasets), then evaluate.

    `out_dir` gets a checkpoint after every epoch and metrics.json at the end. A folder that
    already holds a run is refused unless `resume=True` (continue it) or `overwrite=True`
    (replace it: the new run is written to `<out_dir>.new` and takes the folder's place only
    when it finishes, so a new run that fails or is interrupted leaves the earlier one as it was).
    Everything that can be checked is checked before the first step; a failure at any point
    keeps the last checkpoint written, and non-finite weights are never written.

    `callback(state)`, if given, runs after every optimizer step with a dict: step, epoch,
    loss, labels (of the batch), backbone, head, encoder_k (None but for AttFC) and keys (the
    key embeddings, or None). The lessons use it to watch a run; it must not change them.

    Resuming `<out_dir>.new` (an overwrite that was interrupted) finishes that overwrite: the run
    continues there and replaces `<out_dir>` when it ends.

    `stop_after_epoch` ends the run early as if interrupted (the checkpoint stays), which is
    how the tests and the lesson show that `resume=True` continues the same run.
    `check_memory=False` skips the check that the run's predicted memory fits the machine (for
    the runs that are meant to run out of memory under a cap: `memory.oom`).
    """
    from tqdm.auto import tqdm

    if config is not None and not isinstance(config, TrainConfig):
        raise ArgumentError("config", f"must be a TrainConfig (TrainConfig(**values) from a dict), got "
                                      f"{type(config).__name__}")
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        raise ArgumentError("out_dir", f"must be a folder path (str or Path) or None, got {type(out_dir).__name__}")
    if callback is not None and not callable(callback):
        raise ArgumentError("callback", f"must be a function of one argument (the step's state), got "
                                        f"{type(callback).__name__}")
    config = (config or TrainConfig()).validate()
    resume, overwrite = as_bool("resume", resume), as_bool("overwrite", overwrite)
    if stop_after_epoch is not None:
        stop_after_epoch = as_int("stop_after_epoch", stop_after_epoch, 1)
    if resume and overwrite:
        raise ArgumentError("overwrite", "and resume exclude each other: resume continues the run in out_dir, "
                                         "overwrite replaces it; choose one")
    final = out = Path(out_dir) if out_dir is not None else None
    if final is not None:
        has_run = (final / CHECKPOINT).exists() or (final / METRICS).exists()
        check_output(final, "out_dir", "folder", overwrite=overwrite, resume=resume, holds="a run", occupied=has_run,
                     own=lambda e: e.name in RUN_FILES, need_bytes=0)  # the disk: `_check_disk`, below
        if overwrite and has_run:
            out = staging_path(final)  # the earlier run stays in `final` until this one finishes
            if out.exists() or out.is_symlink():
                raise ArgumentError("out_dir", f"{final} is being replaced by an unfinished run in {out} (an earlier "
                                               f"overwrite that did not finish), left unchanged: continue that one "
                                               f"with --resume --out {out} (resume=True), which finishes the "
                                               f"overwrite ({out} replaces {final} when the run ends), or delete "
                                               f"{out} first")
    replaces = _replaced_by(final) if resume and final is not None else None  # an interrupted overwrite, finished here
    if resume and (final is None or not (final / CHECKPOINT).exists()):
        where = "no out_dir was given" if final is None else f"there is no {final / CHECKPOINT}"
        raise FileNotFoundError(f"resume=True (--resume) but {where}; start the run without resume first")

    state = None
    if resume:  # checked before any rendering, so a mismatch fails at once
        state = load_checkpoint(final / CHECKPOINT)
        try:
            saved = TrainConfig.from_dict(state["config"]).validate()
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{final / CHECKPOINT} records a config this version cannot use: {exc}") from None
        if asdict(saved) != asdict(config):
            raise ConfigMismatch({k: (v, getattr(config, k)) for k, v in asdict(saved).items()
                                  if getattr(config, k) != v})
    # Before any rendering or training: verification must be on identities never trained on.
    train_ids = getattr(train_set, "identity_ids", None) if train_set is not None else \
        FaceWorld.train_identities(config.num_classes)
    eval_ids = getattr(eval_set, "identity_ids", None) if eval_set is not None else \
        FaceWorld.eval_identities(config.eval_identities)
    if evaluate and train_ids is not None and eval_ids is not None:
        check_disjoint_splits(train_ids, eval_ids)
    if evaluate and eval_set is not None:
        _check_eval_set(eval_set)
    given_train_set = train_set is not None
    if not given_train_set:
        _check_batch(config.batch_size, config.num_classes * config.images_per_identity)
        if check_memory:
            _check_memory(config, default_device(config.device), stream=config.stream_data,
                          eval_images=config.eval_identities * config.eval_images_per_identity if evaluate else 0)
    if final is not None:
        _check_disk(config, final, resume)
    if train_set is None and config.stream_data:
        train_set = StreamedFaces(config.num_classes, config.images_per_identity, "train", config.image_size,
                                  config.seed, device=default_device(config.device))
    elif train_set is None:
        train_set = SyntheticFaces(config.num_classes, config.images_per_identity, "train", config.image_size,
                                   config.seed, progress=progress)
    if getattr(train_set, "num_classes", config.num_classes) != config.num_classes:
        raise ArgumentError("num_classes", f"is {config.num_classes} but the training set has "
                                           f"{train_set.num_classes} identities; set num_classes to match")
    n = len(train_set)
    _check_batch(config.batch_size, n)
    if check_memory and given_train_set:  # its images are loaded: the head and the evaluation must fit beside
        _check_memory(config, default_device(config.device), stream=True,
                      eval_images=0 if not evaluate or eval_set is not None else
                      config.eval_identities * config.eval_images_per_identity)
    seed_everything(config.seed)
    device = default_device(config.device)
    backbone, head = build(config, device)
    params = list(backbone.parameters()) + list(head.parameters())
    backbone_params = list(backbone.parameters())
    # AttFC: encoder_k follows the backbone (encoder_q) by EMA and embeds K key images per query.
    encoder_k = KeyEncoder(backbone, config.ema_momentum) if head.num_keys else None
    if encoder_k is not None:
        train_labels = _labels_of(train_set)
        key_index = identity_index(train_labels)
        if int(key_index[2].max()) < 2:
            raise ArgumentError("train_set", f"has one image per identity, and AttFC cannot learn from that: every "
                                             f"key image would be the query itself (see images_per_identity); give "
                                             f"a training set with several images of its identities, or use head "
                                             f"'fc' or 'partial_fc'")
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if config.amp else contextlib.nullcontext
    steps_per_epoch = n // config.batch_size  # drop the last partial batch: BatchNorm needs > 1 sample
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    start_epoch, step, history, seconds, images = 0, 0, [], 0.0, 0
    self_keys = [0, 0]  # AttFC: queries with a key that is the query image, and such keys
    seen = {"steps": 0, "zero": 0, "distinct": set()}  # this session's losses, to tell a run that learns nothing

    if resume:
        try:
            backbone.load_state_dict(state["backbone"])
            head.load_state_dict(state["head"])
            if encoder_k is not None:
                encoder_k.load_state_dict(state["encoder_k"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{final / CHECKPOINT} does not fit this run's model: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
        start_epoch, step, history, seconds = state["epoch"], state["step"], list(state["history"]), state["seconds"]
        if not (isinstance(start_epoch, int) and isinstance(step, int) and 0 <= start_epoch <= config.epochs
                and 0 <= step <= total_steps and len(history) == start_epoch):
            raise CheckpointError(f"{final / CHECKPOINT} records epoch {start_epoch!r}, step {step!r} and "
                                  f"{len(history)} epochs of history, which a run of {config.epochs} epochs and "
                                  f"{total_steps} steps cannot have: it was changed or damaged")
        images = int(state.get("images", step * config.batch_size))  # checkpoints before it was recorded
        self_keys = [int(v) for v in state.get("self_keys", (0, 0))]
    saved_epoch = start_epoch if resume else None
    lock = _RunLock(out, final, has_run=(final / CHECKPOINT).exists() or (final / METRICS).exists()) \
        if out is not None else None

    def kept() -> str:
        """What of this run is on disk now, truthfully."""
        if out is None:
            text = "nothing of this run is saved (no out_dir was given)"
        elif saved_epoch is None:
            text = (f"no checkpoint of this run was written yet (one is written after each epoch), so nothing of it "
                    f"is saved")
        else:
            text = (f"the checkpoint of epoch {saved_epoch}/{config.epochs} is kept in {out / CHECKPOINT}; continue "
                    f"it with resume=True (--resume --out {out})")
        if out is not None and out != final:
            text += f"; the earlier run in {final} is unchanged"
        if out is not None and saved_epoch is not None and (out != final or replaces is not None):
            text += (f" (resuming {out} finishes the overwrite: the run replaces "
                     f"{final if replaces is None else replaces} when it ends)")
        return text

    epoch = start_epoch
    if lock is not None:
        lock.acquire()
    try:
        bar = tqdm(total=total_steps, initial=step, desc=f"training {config.head}", unit="step", disable=not progress)
        try:
            for epoch in range(start_epoch, config.epochs):
                backbone.train()
                head.train()
                if encoder_k is not None:
                    encoder_k.train()  # BatchNorm on each key batch's own statistics, as the official code
                gen = _epoch_generator(config.seed, epoch)
                order = torch.randperm(n, generator=gen)
                flips = torch.rand(n, generator=gen) < 0.5
                losses = []
                t0 = time.perf_counter()
                for b in range(steps_per_epoch):
                    if step >= total_steps:  # max_steps reached within this epoch
                        break
                    idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                    try:
                        images_, labels = _load(train_set, idx, flips[idx])
                        images_, labels = images_.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                        for group in optimizer.param_groups:
                            group["lr"] = lr_at(step, total_steps, warmup_steps, config.lr)
                        keys = None
                        if encoder_k is not None:
                            # EMA first, then the keys: K images of each query's identity, drawn with
                            # replacement from this epoch's generator (so a resumed run draws the same).
                            encoder_k.update(backbone)
                            key_idx = sample_keys(train_labels, idx, head.num_keys, generator=gen, index=key_index,
                                                  exclude_query=config.keys_exclude_query)
                            is_query = key_idx == idx[:, None]  # keys that are the query image itself
                            self_keys[0] += int(is_query.any(1).sum())
                            self_keys[1] += int(is_query.sum())
                            key_idx = key_idx.reshape(-1)
                            key_images, _ = _load(train_set, key_idx, torch.rand(key_idx.numel(), generator=gen) < 0.5)
                            with autocast():
                                keys = encoder_k(key_images.to(device, non_blocking=True)).float().view(
                                    idx.numel(), head.num_keys, -1)
                        with autocast():
                            embeddings = backbone(images_)
                        embeddings = embeddings.float()
                        loss = head(embeddings, labels) if keys is None else head(embeddings, labels, keys)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"the loss became {loss.item()} at step {step} (epoch {epoch + 1}); lower lr (now "
                                f"{config.lr:g}) or scale (now {config.scale:g}). " + kept() + ".")
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        if config.clip_grad_norm:
                            nn.utils.clip_grad_norm_(backbone_params, config.clip_grad_norm)
                        optimizer.step()
                    except (RuntimeError, MemoryError) as exc:
                        if not is_out_of_memory(exc):
                            raise
                        raise TrainingOutOfMemory(_out_of_memory_text(config, step, epoch, exc) + "\n" + kept() + ".") \
                            from None
                    losses.append(loss.item())
                    seen["steps"] += 1
                    seen["zero"] += losses[-1] == 0.0
                    if len(seen["distinct"]) < 2:
                        seen["distinct"].add(losses[-1])
                    step += 1
                    images += idx.numel()
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
                    if callback is not None:
                        callback({"step": step, "epoch": epoch, "loss": losses[-1], "labels": labels,
                                  "backbone": backbone, "head": head, "encoder_k": encoder_k, "keys": keys})
                seconds += time.perf_counter() - t0
                if not losses:  # max_steps ended the run before this epoch
                    break
                bad = _non_finite({"backbone": backbone.state_dict(), "head": head.state_dict(),
                                   **({"encoder_k": encoder_k.state_dict()} if encoder_k is not None else {})})
                if bad:
                    raise FloatingPointError(
                        f"weights became nan or inf in epoch {epoch + 1} ({', '.join(bad[:3])}"
                        f"{', ...' if len(bad) > 3 else ''}) and were not saved; lower lr (now {config.lr:g}) or scale "
                        f"(now {config.scale:g}). " + kept() + ".")
                history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses)})
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)  # made here, so a run that fails before leaves no folder
                    save_checkpoint(out / CHECKPOINT, kept=kept(), state={
                        "config": asdict(config), "backbone": backbone.state_dict(), "head": head.state_dict(),
                        "encoder_k": encoder_k.state_dict() if encoder_k is not None else None,
                        "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step, "history": history,
                        "seconds": seconds, "images": images, "self_keys": list(self_keys),
                    })
                    saved_epoch = epoch + 1
                    if out != final and not (out / REPLACES).exists():  # so that resuming it finishes the overwrite
                        write_file(out / REPLACES, lambda f: f.write(final.name.encode()), kept())
                if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
                    bar.close()
                    return TrainResult(backbone, head, {"stopped_after_epoch": epoch + 1}, history, encoder_k, out)
        except KeyboardInterrupt:
            bar.close()
            raise RunInterrupted(f"interrupted in epoch {epoch + 1}/{config.epochs} at step {step}: {kept()}.") from None
        finally:
            bar.close()

        metrics = {
            "head": config.head,
            "num_classes": config.num_classes,
            "steps": step,
            "images": images,
            "epochs": config.epochs,
            "seconds": round(seconds, 3),
            "images_per_second": round(images / max(seconds, 1e-9), 1),
            "device": device.type,
            "backbone_parameters": count_parameters(backbone),
            "head_parameters": sum(p.numel() for p in head.parameters()),
            "head_settings": {**head_settings(config), **({"container_capacity": head.container.capacity,
                                                             "ema_momentum": config.ema_momentum,
                                                             "keys_exclude_query": config.keys_exclude_query}
                                                            if config.head == "attfc" else {})},
            **({"self_keys": _self_key_record(self_keys, images, head.num_keys)} if encoder_k is not None else {}),
            "final_loss": history[-1]["loss"] if history else None,
            "history": history,
            "warnings": _learned_nothing(config, seen),
            "config": asdict(config),
        }
        for text in metrics["warnings"]:
            warnings.warn(text, LearnedNothingWarning, stacklevel=2)
        try:
            if evaluate:
                metrics["verification"] = evaluate_run(backbone, config, eval_set, device, progress)
            if out is not None:
                write_json(out / METRICS, metrics, kept=kept())  # refuses nan: a metric that is not a number is an error
                target = final if out != final else replaces
                if target is not None:
                    lock.release()  # its file, and the staging marker, must not move into the final folder
                    (out / REPLACES).unlink(missing_ok=True)
                    replace_folder(out, target)
                    out = target
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted during the evaluation after training: {kept()}.") from None
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise TrainingOutOfMemory(f"out of memory in the evaluation after training "
                                      f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else 'MemoryError'}); "
                                      f"fewer eval_identities or eval_images_per_identity need less: {kept()}.") from None
        return TrainResult(backbone, head, metrics, history, encoder_k, out)
    finally:
        if lock is not None:
            lock.release()


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


def _learned_nothing(config: TrainConfig, seen: dict) -> list[str]:
    """What to say of a run whose losses show it learned nothing (`seen`: steps, zero losses, distinct values)."""
    steps = seen["steps"]
    if steps and seen["zero"] == steps:
        why = (" For AttFC: the container held no other identity, or every key was the query image (one image per "
               "identity)" if config.head == "attfc" else "")
        return [f"every loss of this run was exactly 0 ({steps} steps): no gradient reached the backbone, so it "
                f"learned nothing.{why} Check the data (identities, images per identity) and the head's settings"]
    if steps >= 2 and len(seen["distinct"]) == 1:
        return [f"the loss was {next(iter(seen['distinct'])):g} at every one of the {steps} steps: no step changed "
                f"it, so the run learned nothing. Check the data and the head's settings"]
    return []


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


def _check_memory(config: TrainConfig, device: torch.device, stream: bool, eval_images: int) -> None:
    """Before anything is rendered: the images kept in memory and the head's training step (the
    memory model's prediction) must fit in what the machine has available."""
    from .memory import predict_memory
    from .memory.guard import available_bytes, format_bytes

    pixels = 3 * config.image_size ** 2
    # uint8 images kept for the run; the evaluation split also goes through float32 (4 bytes) at once
    parts = {"images_per_identity": 0 if stream else config.num_classes * config.images_per_identity * pixels,
             "eval_identities": eval_images * pixels * 5}
    head = predict_memory(config.num_classes, config.embedding_dim, config.batch_size, head=config.head,
                          **memory_knobs(config)).peak
    keys = config.batch_size * config.num_keys * pixels * 4 if config.head == "attfc" else 0
    # the head's memory is named after the size furthest above its usual value (the message lists all)
    usual = {"num_classes": (config.num_classes, 1000), "embedding_dim": (config.embedding_dim, 128),
             "batch_size": (config.batch_size, 128)}
    if config.head == "attfc":
        from .attfc import container_capacity

        usual["container_size"] = (container_capacity(config.num_classes, config.dcc_ratio, config.container_size), 300)
    head_name = max(usual, key=lambda k: usual[k][0] / usual[k][1])
    on_device = {head_name: head, "num_keys": keys}
    if device.type == "cpu":
        groups = [("cpu", {**parts, **on_device})]
    else:
        groups = [("cpu", parts), (str(device), on_device)]
    for where, need in groups:
        total, available = sum(need.values()), available_bytes(where)
        if total <= 0.8 * available:
            continue
        name = max(need, key=need.get)
        raise ArgumentError(name, f"makes the run too large for this machine: it needs about {format_bytes(total)} "
                                  f"on {where} (training images {format_bytes(parts['images_per_identity'])}, "
                                  f"evaluation images {format_bytes(parts['eval_identities'])}, the {config.head} "
                                  f"head's step {format_bytes(head)} with N = {config.num_classes:,}, "
                                  f"D = {config.embedding_dim:,}, B = {config.batch_size:,}) and {where} has "
                                  f"{format_bytes(available)} available; lower it (or use stream_data for the "
                                  f"training images). Nothing was rendered or trained")


def _self_key_record(counts: list[int], queries: int, k: int) -> dict:
    """How many queries had a key that is the query image itself, and how many keys were."""
    return {"queries": queries, "queries_with_self_key": counts[0], "keys": queries * k, "self_keys": counts[1],
            "share_of_queries": counts[0] / queries if queries else 0.0,
            "share_of_keys": counts[1] / (queries * k) if queries else 0.0}


def _check_batch(batch_size: int, num_images: int) -> None:
    if batch_size > num_images:
        raise ArgumentError("batch_size", f"is {batch_size:,} but the training set holds {num_images:,} images, so "
                                          f"no full batch can be drawn; use a batch_size of at most {num_images:,} "
                                          f"(and at least 2, for BatchNorm)")


def _check_eval_set(eval_set) -> None:
    """Verification pairs need two identities (impostors) and an identity with two images (genuine)."""
    counts = torch.bincount(_labels_of(eval_set).reshape(-1).long())
    counts = counts[counts > 0]
    if counts.numel() < 2 or int(counts.max()) < 2:
        raise ArgumentError("eval_set", f"has {counts.numel()} identities, the largest with "
                                        f"{int(counts.max()) if counts.numel() else 0} images: verification pairs need at "
                                        f"least two identities and two images of one; give a larger evaluation set")


def _out_of_memory_text(config: TrainConfig, step: int, epoch: int, exc: BaseException) -> str:
    first = " ".join(str(exc).split()) or type(exc).__name__  # whole: it names the allocation that failed
    text = (f"out of memory in training step {step} (epoch {epoch + 1}) of head {config.head} with "
            f"{config.num_classes:,} identities, D = {config.embedding_dim}, B = {config.batch_size}: {first}")
    try:
        from .memory import explain_oom

        return text + "\n" + explain_oom(config.head, config.num_classes, config.embedding_dim, config.batch_size,
                                         **memory_knobs(config))
    except Exception:  # the explanation must never hide the error itself
        return (text + "\nfewer identities (num_classes), Partial FC (head='partial_fc'), AttFC (head='attfc') or a "
                       "smaller batch_size lower the head's memory")


def evaluate_run(backbone: nn.Module, config: TrainConfig, eval_set=None, device=None, progress: bool = False) -> dict:
    """Verification of a trained backbone on the run's evaluation split (identities never trained on)."""
    device = device or default_device(config.device)
    if eval_set is None:  # rendered on the GPU when there is one (112-pixel faces are slow on a CPU)
        eval_set = SyntheticFaces(config.eval_identities, config.eval_images_per_identity, "eval",
                                  config.image_size, config.seed, progress=progress,
                                  device=device if torch.device(device).type == "cuda" else None)
    images, labels, quality = _all_items(eval_set)
    return evaluate_verification(backbone, images, labels, quality, num_pairs=config.num_pairs, seed=config.seed,
                                 device=device, progress=progress)


def _load(dataset, idx: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (mirrored where `flip`) and labels of the items `idx` of a dataset."""
    if hasattr(dataset, "get_batch"):
        images, labels, _ = dataset.get_batch(idx)
    else:
        items = [dataset[int(i)] for i in idx]
        images, labels = torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
    flip = flip.to(images.device)  # a streamed data set renders on the training device
    return torch.where(flip[:, None, None, None], images.flip(-1), images), labels


def _labels_of(dataset) -> torch.Tensor:
    """Every item's label, without loading the images when the dataset keeps them apart."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.numel() == len(dataset):
        return labels.long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def _all_items(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(torch.arange(len(dataset)))
    items = [dataset[i] for i in range(len(dataset))]
    quality = torch.tensor([float(it[2]) for it in items])
    return (torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items]),
            None if torch.isnan(quality).all() else quality)


def plot_history(histories, labels=None, ax=None, title: str | None = None):
    """Mean training loss per epoch for one run's history (or a list of them).

    Unlabelled runs are named 'run' (one history) or 'run 1', 'run 2', ... in the legend;
    `title` replaces the default title."""
    import matplotlib.pyplot as plt

    if histories and isinstance(histories[0], dict):
        histories = [histories]
    labels = [labels] if isinstance(labels, str) else list(labels or [None] * len(histories))
    labels = [label if label else ("run" if len(histories) == 1 else f"run {i + 1}") for i, label in enumerate(labels)]
    ax = ax or plt.subplots(figsize=(5, 3))[1]
    for history, label in zip(histories, labels):
        ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (cross-entropy, nats)")
    ax.set_title(title or "mean training loss per epoch", fontsize=10)
    ax.set_ylim(bottom=0)  # from 0, so that the fall is not exaggerated
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
