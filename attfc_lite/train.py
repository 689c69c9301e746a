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
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from .backbones import count_parameters, make_backbone
from .faces import MAX_IDENTITIES, FaceWorld, StreamedFaces, SyntheticFaces, check_disjoint_splits
from .attfc import DEFAULT_CONTAINER_RATIO
from .encoders import DEFAULT_MOMENTUM, KeyEncoder, check_momentum
from .heads import HEADS, Head, make_head
from .margins import DEFAULT_M, MARGINS, make_margin
from .partial_fc import DEFAULT_SAMPLE_RATE
from .sampling import identity_index, sample_keys
from .utils import default_device, seed_everything
from .verification import evaluate_verification

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


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
    # default data), with four it is 0.89 (lesson 05; data/sweeps/k.json, `sweep k`).
    num_keys: int = 4
    dcc_ratio: float = DEFAULT_CONTAINER_RATIO
    container_size: int | None = None
    ema_momentum: float = DEFAULT_MOMENTUM
    temperature: float = 1.0
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
        """Check every field; returns a copy with the defaults that depend on others filled in."""
        positive = ("num_classes", "images_per_identity", "eval_identities", "eval_images_per_identity", "epochs",
                    "batch_size", "embedding_dim", "num_pairs")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {sorted(HEADS)}, got {self.head!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a classifier needs two identities), got {self.num_classes}")
        if self.eval_images_per_identity < 2:
            raise ValueError("eval_images_per_identity must be >= 2 (genuine pairs need two images of one identity)")
        if not 8 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [8, 512], got {self.image_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"max_steps must be None or an int >= 1, got {self.max_steps!r}")
        if self.amp and (self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())):
            raise ValueError("amp=True (bfloat16 autocast) is for CUDA devices; set amp=False on the CPU")
        if self.num_classes + self.eval_identities > MAX_IDENTITIES:
            raise ValueError(f"num_classes + eval_identities must be at most {MAX_IDENTITIES:,} (the synthetic world's "
                             f"identities; training and evaluation must not share one), got {self.num_classes:,} + "
                             f"{self.eval_identities:,}")
        margin = str(self.margin).lower()
        if margin not in MARGINS:
            raise ValueError(f"margin must be one of {sorted(MARGINS)}, got {self.margin!r}")
        m = DEFAULT_M[margin] if self.margin_m is None else self.margin_m
        m = tuple(float(v) for v in m) if isinstance(m, (tuple, list)) else m
        try:
            make_margin(margin, s=self.scale, m=m)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"margin_m={m!r} does not suit margin={margin!r}: {exc}") from None
        checked = replace(self, margin=margin, margin_m=m)
        if self.head == "partial_fc" and not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1] (the share of class centres in each step's logits), "
                             f"got {self.sample_rate}")
        if self.head == "attfc":
            if isinstance(self.num_keys, bool) or not isinstance(self.num_keys, int) or self.num_keys < 1:
                raise ValueError(f"num_keys (K, key images per query) must be an int >= 1, got {self.num_keys!r}")
            if self.container_size is None and not 0 < self.dcc_ratio <= 1:
                raise ValueError(f"dcc_ratio must be in (0, 1] (the container's size as a share of num_classes), "
                                 f"got {self.dcc_ratio}; or set container_size")
            try:
                check_momentum(self.ema_momentum)
            except ValueError as exc:
                raise ValueError(f"ema_momentum: {exc}") from None
        with torch.device("meta"):  # the head's own checks, before anything is rendered; no memory
            probe = make_head(self.head, int(self.embedding_dim), int(self.num_classes), margin=margin,
                              s=self.scale, m=m, **head_settings(checked), **self.head_kwargs)
        del probe
        return checked

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
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


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write then rename, so an interrupted save never leaves a broken checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain containers, no pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class TrainResult:
    backbone: nn.Module
    head: Head
    metrics: dict
    history: list = field(default_factory=list)
    encoder_k: KeyEncoder | None = None  # AttFC's key encoder at the end of the run


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


def build(config: TrainConfig, device: torch.device) -> tuple[nn.Module, Head]:
    backbone = make_backbone(config.backbone, config.embedding_dim, config.image_size).to(device)
    if config.channels_last:  # conv outputs follow their weights' format, so the inputs need no change
        backbone = backbone.to(memory_format=torch.channels_last)
    head = make_head(config.head, config.embedding_dim, config.num_classes, margin=config.margin,
                     s=config.scale, m=config.margin_m, **head_settings(config), **config.head_kwargs).to(device)
    return backbone, head


def train(config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None, resume: bool = False,
          progress: bool = True, train_set=None, eval_set=None, stop_after_epoch: int | None = None,
          evaluate: bool = True, callback=None) -> TrainResult:
    """Train backbone + head on the synthetic world (or the given datasets), then evaluate.

    `callback(state)`, if given, runs after every optimizer step with a dict: step, epoch,
    loss, labels (of the batch), backbone, head, encoder_k (None but for AttFC) and keys (the
    key embeddings, or None). The lessons use it to watch a run; it must not change them.

    `stop_after_epoch` ends the run early as if interrupted (the checkpoint stays), which is
    how the tests and the lesson show that `resume=True` continues the same run.
    """
    from tqdm.auto import tqdm

    config = (config or TrainConfig()).validate()
    seed_everything(config.seed)
    device = default_device(config.device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if resume and (out is None or not (out / CHECKPOINT).exists()):
        where = "no out_dir was given" if out is None else f"there is no {out / CHECKPOINT}"
        raise FileNotFoundError(f"resume=True but {where}; start the run without resume first")

    state = None
    if resume:  # checked before any rendering, so a mismatch fails at once
        state = load_checkpoint(out / CHECKPOINT)
        saved = TrainConfig.from_dict(state["config"])
        if asdict(saved) != asdict(config):
            diff = {k: (v, getattr(config, k)) for k, v in asdict(saved).items() if getattr(config, k) != v}
            raise ValueError(f"resume=True with a different config than the checkpoint's: {diff} (checkpoint, now)")
    # Before any rendering or training: verification must be on identities never trained on.
    train_ids = getattr(train_set, "identity_ids", None) if train_set is not None else \
        FaceWorld.train_identities(config.num_classes)
    eval_ids = getattr(eval_set, "identity_ids", None) if eval_set is not None else \
        FaceWorld.eval_identities(config.eval_identities)
    if evaluate and train_ids is not None and eval_ids is not None:
        check_disjoint_splits(train_ids, eval_ids)
    if train_set is None and config.stream_data:
        train_set = StreamedFaces(config.num_classes, config.images_per_identity, "train", config.image_size,
                                  config.seed, device=device)
    elif train_set is None:
        train_set = SyntheticFaces(config.num_classes, config.images_per_identity, "train", config.image_size,
                                   config.seed, progress=progress)
    if getattr(train_set, "num_classes", config.num_classes) != config.num_classes:
        raise ValueError(f"config.num_classes={config.num_classes} but the training set has "
                         f"{train_set.num_classes} identities; set num_classes to match")
    backbone, head = build(config, device)
    params = list(backbone.parameters()) + list(head.parameters())
    backbone_params = list(backbone.parameters())
    # AttFC: encoder_k follows the backbone (encoder_q) by EMA and embeds K key images per query.
    encoder_k = KeyEncoder(backbone, config.ema_momentum) if head.num_keys else None
    if encoder_k is not None:
        train_labels = _labels_of(train_set)
        key_index = identity_index(train_labels)
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if config.amp else contextlib.nullcontext
    n = len(train_set)
    steps_per_epoch = max(1, n // config.batch_size)  # drop the last partial batch: BatchNorm needs > 1 sample
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    start_epoch, step, history, seconds = 0, 0, [], 0.0

    if resume:
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        if encoder_k is not None:
            encoder_k.load_state_dict(state["encoder_k"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, history, seconds = state["epoch"], state["step"], list(state["history"]), state["seconds"]

    bar = tqdm(total=total_steps, initial=step, desc=f"training {config.head}", unit="step", disable=not progress)
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
            images, labels = _load(train_set, idx, flips[idx])
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, config.lr)
            keys = None
            if encoder_k is not None:
                # EMA first, then the keys: K images of each query's identity, drawn with
                # replacement from this epoch's generator (so a resumed run draws the same).
                encoder_k.update(backbone)
                key_idx = sample_keys(train_labels, idx, head.num_keys, generator=gen, index=key_index).reshape(-1)
                key_images, _ = _load(train_set, key_idx, torch.rand(key_idx.numel(), generator=gen) < 0.5)
                with autocast():
                    keys = encoder_k(key_images.to(device, non_blocking=True)).float().view(idx.numel(),
                                                                                           head.num_keys, -1)
            with autocast():
                embeddings = backbone(images)
            embeddings = embeddings.float()
            loss = head(embeddings, labels) if keys is None else head(embeddings, labels, keys)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at step {step} (epoch {epoch}); lower lr (now {config.lr}) or "
                    f"scale (now {config.scale}). The last good checkpoint is kept"
                    + (f" in {out / CHECKPOINT}." if out is not None and (out / CHECKPOINT).exists()
                       else ": none was written yet (checkpoints are written after each epoch when out_dir is given).")
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad_norm:
                nn.utils.clip_grad_norm_(backbone_params, config.clip_grad_norm)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
            if callback is not None:
                callback({"step": step, "epoch": epoch, "loss": losses[-1], "labels": labels, "backbone": backbone,
                          "head": head, "encoder_k": encoder_k, "keys": keys})
        seconds += time.perf_counter() - t0
        if not losses:  # max_steps ended the run before this epoch
            break
        history.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses)})
        if out is not None:
            save_checkpoint(out / CHECKPOINT, {
                "config": asdict(config), "backbone": backbone.state_dict(), "head": head.state_dict(),
                "encoder_k": encoder_k.state_dict() if encoder_k is not None else None,
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step, "history": history,
                "seconds": seconds,
            })
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            bar.close()
            return TrainResult(backbone, head, {"stopped_after_epoch": epoch + 1}, history, encoder_k)
    bar.close()

    metrics = {
        "head": config.head,
        "num_classes": config.num_classes,
        "steps": step,
        "epochs": config.epochs,
        "seconds": round(seconds, 3),
        "images_per_second": round(step * config.batch_size / max(seconds, 1e-9), 1),
        "device": device.type,
        "backbone_parameters": count_parameters(backbone),
        "head_parameters": sum(p.numel() for p in head.parameters()),
        "head_settings": {**head_settings(config), **({"container_capacity": head.container.capacity,
                                                         "ema_momentum": config.ema_momentum}
                                                        if config.head == "attfc" else {})},
        "final_loss": history[-1]["loss"] if history else None,
        "history": history,
        "config": asdict(config),
    }
    if evaluate:
        metrics["verification"] = evaluate_run(backbone, config, eval_set, device, progress)
    if out is not None:
        tmp = out / (METRICS + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, out / METRICS)
    return TrainResult(backbone, head, metrics, history, encoder_k)


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
