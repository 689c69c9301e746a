"""A run's memory, before it starts and when it ran out: lesson 02's model applied to a whole run.

`check_run_memory` refuses a run whose images and head step would not fit the machine, before anything
is rendered; `out_of_memory_text` says what a run that ran out of memory could lower.
"""
from __future__ import annotations

import torch

from .checks import ArgumentError
from .config import TrainConfig, memory_knobs
from .heads.attfc import container_capacity
from .memory import explain_oom, predict_memory
from .memory.guard import available_bytes, format_bytes

__all__ = ["check_run_memory", "out_of_memory_text"]


def check_run_memory(config: TrainConfig, device: torch.device, stream: bool, eval_images: int) -> None:
    """Before anything is rendered: the images kept in memory and the head's training step (the
    memory model's prediction) must fit in what the machine has available."""
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


def out_of_memory_text(config: TrainConfig, step: int, epoch: int, exc: BaseException) -> str:
    first = " ".join(str(exc).split()) or type(exc).__name__  # whole: it names the allocation that failed
    text = (f"out of memory in training step {step} (epoch {epoch + 1}) of head {config.head} with "
            f"{config.num_classes:,} identities, D = {config.embedding_dim}, B = {config.batch_size}: {first}")
    try:
        return text + "\n" + explain_oom(config.head, config.num_classes, config.embedding_dim, config.batch_size,
                                         **memory_knobs(config))
    except Exception:  # the explanation must never hide the error itself
        return (text + "\nfewer identities (num_classes), Partial FC (head='partial_fc'), AttFC (head='attfc') or a "
                       "smaller batch_size lower the head's memory")
