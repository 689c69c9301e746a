"""What defines a run: `TrainConfig` (every setting, checked by `validate`), and the model it builds (lesson 01).

`build(config, device)` makes encoder_q (the backbone) and the head a config describes;
`head_settings` and `memory_knobs` are the settings the head and the memory model read. The
defaults are the CPU lesson configuration; `run.PROFILES` holds the GPU's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import nn

from .attention import check_temperature
from .heads.attfc import DEFAULT_CONTAINER_RATIO
from .backbones import BACKBONES, make_backbone
from .checks import ArgumentError, as_bool, as_choice, as_device, as_float, as_int
from .encoders import DEFAULT_MOMENTUM, check_momentum
from .faces import MAX_IDENTITIES
from .heads import HEADS, Head, make_head
from .margins import DEFAULT_M, MARGINS, make_margin
from .heads.partial_fc import DEFAULT_SAMPLE_RATE
from .utils import default_device

__all__ = ["TrainConfig", "MAX_KEYS", "build", "head_settings", "memory_knobs"]

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


def build(config: TrainConfig, device: torch.device, world=None) -> tuple[nn.Module, Head]:
    """encoder_q and the head; with a `distributed.World` of several processes, this rank's head."""
    backbone = make_backbone(config.backbone, config.embedding_dim, config.image_size).to(device)
    if config.channels_last:  # conv outputs follow their weights' format, so the inputs need no change
        backbone = backbone.to(memory_format=torch.channels_last)
    kwargs = dict(margin=config.margin, s=config.scale, m=config.margin_m, **head_settings(config),
                  **config.head_kwargs)
    if world is not None and world.size > 1:
        from .distributed.parallel import parallel_head

        return backbone, parallel_head(config.head, config.embedding_dim, config.num_classes, world,
                                       **kwargs).to(device)
    return backbone, make_head(config.head, config.embedding_dim, config.num_classes, **kwargs).to(device)
