"""The training loop: one seeding call, any head, progress, atomic checkpoints, resume (lesson 01).

`train(TrainConfig(...), out_dir)` renders the synthetic split (or takes a dataset), trains
backbone + head with SGD and a per-step cosine schedule, each step by `step.training_step`,
evaluates verification on held-out identities and writes `metrics.json`. With `out_dir`, a
checkpoint is written atomically after every epoch (`checkpoints`); `resume=True` continues the
same run from it, and because batches and flips are drawn from generators seeded by (seed,
epoch), a resumed run ends with the same weights as one that was never interrupted.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .backbones import count_parameters
from .checkpoints import (CHECKPOINT, LOCK, METRICS, REPLACES, RUN_FILES, CheckpointError, ConfigMismatch,
                          _check_disk, _non_finite, _replaced_by, _RunLock, checkpoint_bytes, load_checkpoint,
                          save_checkpoint)
from .checks import ArgumentError, as_bool, as_int
from .config import MAX_KEYS, TrainConfig, build, head_settings, memory_knobs
from .distributed import ShardedFC, World
from .distributed.parallel import check_world_size, gathered_states, sharded_states, wrap_backbone
from .encoders import KeyEncoder
from .faces import FaceWorld, StreamedFaces, SyntheticFaces, check_disjoint_splits
from .heads import Head
from .memory.oom import is_out_of_memory
from .preflight import check_run_memory, out_of_memory_text
from .sampling import identity_index, sample_keys
from .step import NonFiniteLoss, training_step
from .utils import check_output, default_device, replace_folder, seed_everything, staging_path, write_file, write_json
from .verification import evaluate_verification

# the names the lessons and tests import from here (they moved to config and checkpoints)
__all__ = ["train", "TrainConfig", "TrainResult", "evaluate_run", "plot_history", "lr_at", "build", "head_settings",
           "memory_knobs", "MAX_KEYS", "CHECKPOINT", "METRICS", "LOCK", "REPLACES", "RUN_FILES", "CheckpointError",
           "ConfigMismatch", "RunInterrupted", "LearnedNothingWarning", "TrainingOutOfMemory", "checkpoint_bytes",
           "load_checkpoint", "save_checkpoint"]


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to zero at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`; the message says what of the run is saved."""


class LearnedNothingWarning(UserWarning):
    """A run that finished without learning: every loss exactly 0, or the same loss at every step."""


class TrainingOutOfMemory(MemoryError):
    """A training step ran out of memory; the message gives the allocator's own words, whole (so
    `memory.oom.requested_bytes` reads the size that failed from it), the head's memory and what
    to change."""


@dataclass
class TrainResult:
    backbone: nn.Module
    head: Head
    metrics: dict
    history: list = field(default_factory=list)
    encoder_k: KeyEncoder | None = None  # AttFC's key encoder at the end of the run
    out_dir: Path | None = None  # where the run's files are at the end (the replaced folder after an overwrite)


def train(config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, train_set=None, eval_set=None, stop_after_epoch: int | None = None,
          evaluate: bool = True, callback=None, overwrite: bool = False, check_memory: bool = True,
          world: World | None = None) -> TrainResult:
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

    Under torchrun (lesson 10) `world` is the processes of the run (read from the environment
    when None): each rank trains its share of every step's batches and its shard of the head,
    rank 0 alone shows progress, writes the files and evaluates.
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
    world = world if world is not None else World.from_env(default_device(config.device))
    progress = progress and world.main
    resume, overwrite = as_bool("resume", resume), as_bool("overwrite", overwrite)
    if stop_after_epoch is not None:
        stop_after_epoch = as_int("stop_after_epoch", stop_after_epoch, 1)
    if resume and overwrite:
        raise ArgumentError("overwrite", "and resume exclude each other: resume continues the run in out_dir, "
                                         "overwrite replaces it; choose one")
    final = Path(out_dir) if out_dir is not None else None
    out, replaces, state = _prepare_folder(config, final, resume, overwrite)
    if state is not None:
        check_world_size(state.get("world_size", 1), world, final / CHECKPOINT)
    train_set = _prepare_data(config, train_set, eval_set, evaluate, check_memory, progress)
    if final is not None:  # after the memory checks, so a run too large is named for its memory first
        _check_disk(config, final, resume)
    run = _Run(config, train_set, out, final, replaces, state, world)
    if run.lock is not None:
        run.lock.acquire()
    try:
        bar = tqdm(total=run.total_steps, initial=run.step, desc=f"training {config.head}", unit="step",
                   disable=not progress)
        epoch = run.start_epoch
        try:
            for epoch in range(run.start_epoch, config.epochs):
                if not run.train_epoch(epoch, bar, callback):  # max_steps ended the run before this epoch
                    break
                if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
                    world.barrier()  # every process returns once rank 0's checkpoint is written
                    return run.result({"stopped_after_epoch": epoch + 1})
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted in epoch {epoch + 1}/{config.epochs} at step {run.step}: "
                                 f"{run.kept()}.") from None
        finally:
            bar.close()
        metrics = run.metrics()
        for text in metrics["warnings"]:
            warnings.warn(text, LearnedNothingWarning, stacklevel=2)
        try:
            if evaluate and world.main:
                metrics["verification"] = evaluate_run(run.backbone, config, eval_set, run.device, progress)
            run.finish(metrics)
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted during the evaluation after training: {run.kept()}.") from None
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "MemoryError"
            raise TrainingOutOfMemory(f"out of memory in the evaluation after training ({first}); fewer "
                                      f"eval_identities or eval_images_per_identity need less: {run.kept()}.") from None
        world.barrier()  # the others wait for rank 0's evaluation and files
        return run.result(metrics)
    finally:
        if run.lock is not None:
            run.lock.release()


def _prepare_folder(config: TrainConfig, final: Path | None, resume: bool, overwrite: bool):
    """Check the run folder before anything is rendered: (where this run writes, the folder an
    interrupted overwrite replaces, the checkpoint's state when resuming)."""
    out = final
    if final is not None:
        has_run = (final / CHECKPOINT).exists() or (final / METRICS).exists()
        check_output(final, "out_dir", "folder", overwrite=overwrite, resume=resume, holds="a run", occupied=has_run,
                     own=lambda e: e.name in RUN_FILES, need_bytes=0)  # the disk: `_check_disk`
        if overwrite and has_run:
            out = staging_path(final)  # the earlier run stays in `final` until this one finishes
            if out.exists() or out.is_symlink():
                raise ArgumentError("out_dir", f"{final} is being replaced by an unfinished run in {out} (an earlier "
                                               f"overwrite that did not finish), left unchanged: continue that one "
                                               f"with --resume --out {out} (resume=True), which finishes the "
                                               f"overwrite ({out} replaces {final} when the run ends), or delete "
                                               f"{out} first")
    replaces = _replaced_by(final) if resume and final is not None else None  # an interrupted overwrite
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
    return out, replaces, state


def _prepare_data(config: TrainConfig, train_set, eval_set, evaluate: bool, check_memory: bool, progress: bool):
    """The training set (rendered unless given), after every check that needs no rendering."""
    # verification must be on identities never trained on
    train_ids = getattr(train_set, "identity_ids", None) if train_set is not None else \
        FaceWorld.train_identities(config.num_classes)
    eval_ids = getattr(eval_set, "identity_ids", None) if eval_set is not None else \
        FaceWorld.eval_identities(config.eval_identities)
    if evaluate and train_ids is not None and eval_ids is not None:
        check_disjoint_splits(train_ids, eval_ids)
    if evaluate and eval_set is not None:
        _check_eval_set(eval_set)
    eval_images = config.eval_identities * config.eval_images_per_identity if evaluate else 0
    device = default_device(config.device)
    if train_set is not None:
        _check_size(config, train_set)
        if check_memory:  # its images are loaded: the head and the evaluation must fit beside
            check_run_memory(config, device, stream=True, eval_images=0 if eval_set is not None else eval_images)
        return train_set
    _check_batch(config.batch_size, config.num_classes * config.images_per_identity)
    if check_memory:
        check_run_memory(config, device, stream=config.stream_data, eval_images=eval_images)
    return _Deferred(config, progress)


class _Deferred:
    """The synthetic training set, rendered only once the disk check has passed."""

    def __init__(self, config: TrainConfig, progress: bool) -> None:
        self.config, self.progress = config, progress

    def render(self):
        c = self.config
        if c.stream_data:
            return StreamedFaces(c.num_classes, c.images_per_identity, "train", c.image_size, c.seed,
                                 device=default_device(c.device))
        return SyntheticFaces(c.num_classes, c.images_per_identity, "train", c.image_size, c.seed,
                              progress=self.progress)


def _check_size(config: TrainConfig, train_set) -> None:
    if getattr(train_set, "num_classes", config.num_classes) != config.num_classes:
        raise ArgumentError("num_classes", f"is {config.num_classes} but the training set has "
                                           f"{train_set.num_classes} identities; set num_classes to match")
    _check_batch(config.batch_size, len(train_set))


class _Run:
    """One run's model, optimizer, counters and files: what `train` steps through epoch by epoch."""

    def __init__(self, config: TrainConfig, train_set, out: Path | None, final: Path | None, replaces: Path | None,
                 state: dict | None, world: World) -> None:
        if isinstance(train_set, _Deferred):
            train_set = train_set.render()
            _check_size(config, train_set)
        self.config, self.train_set, self.out, self.final, self.replaces = config, train_set, out, final, replaces
        self.world, self.per_step = world, config.batch_size * world.size  # images of all ranks in a step
        self.n = len(train_set)
        seed_everything(config.seed)
        self.device = default_device(config.device)
        self.backbone, self.head = build(config, self.device, world)
        self.encoder_q = wrap_backbone(self.backbone, world, self.device)  # what the step calls: DDP or itself
        # AttFC: encoder_k follows the backbone (encoder_q) by EMA and embeds K key images per query.
        self.encoder_k = KeyEncoder(self.backbone, config.ema_momentum) if self.head.num_keys else None
        if self.encoder_k is not None:
            self.train_labels = _labels_of(train_set)
            self.key_index = identity_index(self.train_labels)
            if int(self.key_index[2].max()) < 2:
                raise ArgumentError("train_set", "has one image per identity, and AttFC cannot learn from that: every "
                                                 "key image would be the query itself (see images_per_identity); "
                                                 "give a training set with several images of its identities, or use "
                                                 "head 'fc' or 'partial_fc'")
        self.optimizer = torch.optim.SGD(list(self.backbone.parameters()) + list(self.head.parameters()),
                                         lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        self.steps_per_epoch = self.n // self.per_step  # drop the last partial batch: BatchNorm needs > 1
        if self.steps_per_epoch == 0:
            raise ArgumentError("batch_size", f"of {config.batch_size:,} on each of {world.size} processes needs "
                                              f"{self.per_step:,} images a step, more than the {self.n:,} of the "
                                              f"training set; use a batch_size of at most {self.n // world.size:,}")
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.warmup_steps = int(config.warmup_epochs * self.steps_per_epoch)
        self.start_epoch, self.step, self.history, self.seconds, self.images = 0, 0, [], 0.0, 0
        self.self_keys = [0, 0]  # AttFC: queries with a key that is the query image, and such keys
        self.seen = {"steps": 0, "zero": 0, "distinct": set()}  # this session's losses: a run that learns nothing?
        self.saved_epoch = None
        if state is not None:
            self._restore(state)
        self.lock = _RunLock(out, final, has_run=(final / CHECKPOINT).exists() or (final / METRICS).exists()) \
            if out is not None and world.main else None

    def _restore(self, state: dict) -> None:
        config, path = self.config, self.final / CHECKPOINT
        try:
            self.backbone.load_state_dict(state["backbone"])
            head, optimizer = sharded_states(state["head"], state["optimizer"], self.head, self.optimizer, self.world)
            self.head.load_state_dict(head)
            if self.encoder_k is not None:
                self.encoder_k.load_state_dict(state["encoder_k"])
            self.optimizer.load_state_dict(optimizer)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} does not fit this run's model: {str(exc).splitlines()[0][:200]}") from None
        start, step, history = state["epoch"], state["step"], list(state["history"])
        if not (isinstance(start, int) and isinstance(step, int) and 0 <= start <= config.epochs
                and 0 <= step <= self.total_steps and len(history) == start):
            raise CheckpointError(f"{path} records epoch {start!r}, step {step!r} and {len(history)} epochs of "
                                  f"history, which a run of {config.epochs} epochs and {self.total_steps} steps "
                                  f"cannot have: it was changed or damaged")
        self.start_epoch, self.step, self.history, self.seconds = start, step, history, state["seconds"]
        self.images = int(state.get("images", step * config.batch_size))  # checkpoints before it was recorded
        self.self_keys = [int(v) for v in state.get("self_keys", (0, 0))]
        self.saved_epoch = start

    def kept(self) -> str:
        """What of this run is on disk now, truthfully."""
        out, final, config = self.out, self.final, self.config
        if out is None:
            text = "nothing of this run is saved (no out_dir was given)"
        elif self.saved_epoch is None:
            text = "no checkpoint of this run was written yet (one is written after each epoch), so nothing of it is saved"
        else:
            text = (f"the checkpoint of epoch {self.saved_epoch}/{config.epochs} is kept in {out / CHECKPOINT}; "
                    f"continue it with resume=True (--resume --out {out})")
        if out is not None and out != final:
            text += f"; the earlier run in {final} is unchanged"
        if out is not None and self.saved_epoch is not None and (out != final or self.replaces is not None):
            text += (f" (resuming {out} finishes the overwrite: the run replaces "
                     f"{final if self.replaces is None else self.replaces} when it ends)")
        return text

    def _batch(self, idx: torch.Tensor, flips: torch.Tensor, gen: torch.Generator):
        """This rank's share of the step's images `idx` on the device, and for AttFC its key images: K
        images of each query's identity, drawn from this epoch's generator (so a resumed run draws the
        same; every rank draws the keys of the whole step, to stay in step)."""
        mine = slice(self.world.rank * self.config.batch_size, (self.world.rank + 1) * self.config.batch_size)
        images, labels = _load(self.train_set, idx[mine], flips[idx[mine]])
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.encoder_k is None:
            return images, labels, None
        key_idx = sample_keys(self.train_labels, idx, self.head.num_keys, generator=gen, index=self.key_index,
                              exclude_query=self.config.keys_exclude_query)
        is_query = key_idx == idx[:, None]  # keys that are the query image itself
        self.self_keys[0] += int(is_query.any(1).sum())
        self.self_keys[1] += int(is_query.sum())
        key_flips = (torch.rand(key_idx.numel(), generator=gen) < 0.5).view(key_idx.shape)
        key_images, _ = _load(self.train_set, key_idx[mine].reshape(-1), key_flips[mine].reshape(-1))
        return images, labels, key_images.to(self.device, non_blocking=True)

    def train_epoch(self, epoch: int, bar, callback) -> bool:
        """One epoch of steps, then its checkpoint; False when max_steps ended the run before it."""
        config = self.config
        self.backbone.train()
        self.head.train()
        if self.encoder_k is not None:
            self.encoder_k.train()  # BatchNorm on each key batch's own statistics, as the official code
        gen = _epoch_generator(config.seed, epoch)
        order = torch.randperm(self.n, generator=gen)
        flips = torch.rand(self.n, generator=gen) < 0.5
        losses, t0 = [], time.perf_counter()
        for b in range(self.steps_per_epoch):
            if self.step >= self.total_steps:  # max_steps reached within this epoch
                break
            idx = order[b * self.per_step:(b + 1) * self.per_step]
            try:
                images, labels, key_images = self._batch(idx, flips, gen)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(self.step, self.total_steps, self.warmup_steps, config.lr)
                loss, keys = training_step(self.encoder_q, self.head, self.optimizer, images, labels, self.encoder_k,
                                           key_images, clip_grad_norm=config.clip_grad_norm, amp=config.amp)
            except NonFiniteLoss as exc:
                raise FloatingPointError(f"the loss became {exc.loss} at step {self.step} (epoch {epoch + 1}); lower "
                                         f"lr (now {config.lr:g}) or scale (now {config.scale:g}). {self.kept()}.") \
                    from None
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                raise TrainingOutOfMemory(out_of_memory_text(config, self.step, epoch, exc) + "\n" + self.kept()
                                          + ".") from None
            losses.append(self.world.mean(loss.item()))  # each rank's batch: the mean over all
            self._count(losses[-1], idx.numel())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
            if callback is not None:
                callback({"step": self.step, "epoch": epoch, "loss": losses[-1], "labels": labels,
                          "backbone": self.backbone, "head": self.head, "encoder_k": self.encoder_k, "keys": keys})
        self.seconds += time.perf_counter() - t0
        if not losses:
            return False
        self._end_epoch(epoch, losses)
        return True

    def _count(self, loss: float, queries: int) -> None:
        self.seen["steps"] += 1
        self.seen["zero"] += loss == 0.0
        if len(self.seen["distinct"]) < 2:
            self.seen["distinct"].add(loss)
        self.step += 1
        self.images += queries

    def _states(self) -> dict:
        return {"backbone": self.backbone.state_dict(), "head": self.head.state_dict(),
                **({"encoder_k": self.encoder_k.state_dict()} if self.encoder_k is not None else {})}

    def _end_epoch(self, epoch: int, losses: list[float]) -> None:
        """Record the epoch and write its checkpoint; non-finite weights are never written."""
        config, out = self.config, self.out
        bad = _non_finite(self._states())
        if bad:
            raise FloatingPointError(
                f"weights became nan or inf in epoch {epoch + 1} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}) and were not saved; lower lr (now {config.lr:g}) or scale "
                f"(now {config.scale:g}). " + self.kept() + ".")
        self.history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses)})
        if out is None:
            return
        head, optimizer = gathered_states(self.head, self.optimizer, self.world)  # every rank sends its shard
        if not self.world.main:  # rank 0 writes it
            self.saved_epoch = epoch + 1
            return
        out.mkdir(parents=True, exist_ok=True)  # made here, so a run that fails before leaves no folder
        save_checkpoint(out / CHECKPOINT, kept=self.kept(), state={
            "config": asdict(config), "backbone": self.backbone.state_dict(), "head": head,
            "encoder_k": self.encoder_k.state_dict() if self.encoder_k is not None else None,
            "optimizer": optimizer, "epoch": epoch + 1, "step": self.step, "world_size": self.world.size,
            "history": self.history, "seconds": self.seconds, "images": self.images,
            "self_keys": list(self.self_keys),
        })
        self.saved_epoch = epoch + 1
        if out != self.final and not (out / REPLACES).exists():  # so that resuming it finishes the overwrite
            write_file(out / REPLACES, lambda f: f.write(self.final.name.encode()), self.kept())

    def metrics(self) -> dict:
        config, head = self.config, self.head
        return {
            "head": config.head,
            "num_classes": config.num_classes,
            "steps": self.step,
            "images": self.images,
            "epochs": config.epochs,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images / max(self.seconds, 1e-9), 1),
            "device": self.device.type,
            "backbone_parameters": count_parameters(self.backbone),
            "head_parameters": head.num_classes * head.embedding_dim if isinstance(head, ShardedFC) else
            sum(p.numel() for p in head.parameters()),  # a shard's: the whole W's
            **({"world_size": self.world.size} if self.world.size > 1 else {}),
            "head_settings": {**head_settings(config), **({"container_capacity": head.container.capacity,
                                                             "ema_momentum": config.ema_momentum,
                                                             "keys_exclude_query": config.keys_exclude_query}
                                                            if config.head == "attfc" else {})},
            **({"self_keys": _self_key_record(self.self_keys, self.images, head.num_keys)}
               if self.encoder_k is not None else {}),
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "history": self.history,
            "warnings": _learned_nothing(config, self.seen),
            "config": asdict(config),
        }

    def finish(self, metrics: dict) -> None:
        """Write metrics.json; a staged overwrite then takes the place of the run it replaces."""
        if self.out is None or not self.world.main:
            return
        write_json(self.out / METRICS, metrics, kept=self.kept())  # refuses nan: a metric must be a number
        target = self.final if self.out != self.final else self.replaces
        if target is not None:
            self.lock.release()  # its file, and the staging marker, must not move into the final folder
            (self.out / REPLACES).unlink(missing_ok=True)
            replace_folder(self.out, target)
            self.out = target

    def result(self, metrics: dict) -> TrainResult:
        return TrainResult(self.backbone, self.head, metrics, self.history, self.encoder_k, self.out)


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
