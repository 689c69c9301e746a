"""One rank of tests/test_distributed.py's checks, started by torchrun with two processes:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_distributed_worker.py OUT

Each rank takes its half of a batch that both draw from one seed, runs one step of each head
over the two processes (gloo), and saves what the test compares with one process on the whole
batch: OUT/rank<r>.pt, with each rank's measured memory of one FC and one AttFC step. Then `train` over
the two processes: a whole run in OUT/whole, and the same
run stopped after its first epoch and resumed in OUT/resumed.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

torch.set_num_threads(1)

from attfc_lite.backbones import make_backbone  # noqa: E402
from attfc_lite.distributed import ShardedFC, ShardedPartialFC, World, gather_container  # noqa: E402
from attfc_lite.distributed.measure import _measure_here  # noqa: E402
from attfc_lite.distributed.parallel import wrap_backbone  # noqa: E402
from attfc_lite.heads import AttFC  # noqa: E402
from attfc_lite.train import TrainConfig, train  # noqa: E402

B, D, N, IMAGE, K = 4, 8, 11, 16, 2  # N odd: the shards are uneven (6 and 5 rows)
MEMORY_SIZES = (3001, 32, 16)  # N, D, B of the per-rank memory measurement


def inputs(seed: int = 0) -> dict:
    """The whole two-rank batch, the same on every rank and in the test."""
    gen = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(2 * B, 3, IMAGE, IMAGE, generator=gen),
            "labels": torch.randint(0, N, (2 * B,), generator=gen),
            "weight": torch.randn(N, D, generator=gen) * 0.5,
            "queries": torch.randn(2 * B, D, generator=gen),
            "keys": torch.randn(2 * B, K, D, generator=gen),
            "earlier": torch.randn(3, D, generator=gen),  # entries already in the container
            "earlier_labels": torch.randint(0, N, (3,), generator=gen)}


def backbone() -> torch.nn.Module:
    torch.manual_seed(1)
    # eval mode: BatchNorm on its running statistics, so half a batch is embedded as in the whole
    return make_backbone("small", D, IMAGE).eval()


def main(out: str) -> None:
    world = World.from_env()
    rank, mine = world.rank, slice(world.rank * B, (world.rank + 1) * B)
    x = inputs()
    result = {}

    # model-parallel FC, one step: loss, the backbone's gradient after DDP, this shard's W.grad
    net = backbone()
    encoder_q = wrap_backbone(net, world, torch.device("cpu"))
    head = ShardedFC(D, N, world)
    with torch.no_grad():
        head.weight.copy_(world.rows(x["weight"], N))
    world.traffic.reset()
    loss = head(encoder_q(x["images"][mine]), x["labels"][mine])
    loss.backward()
    result["fc"] = {"loss": loss.item(), "rows": (head.start, head.stop), "weight_grad": head.weight.grad.clone(),
                    "backbone_grad": {n: p.grad.clone() for n, p in net.named_parameters()},
                    "traffic": dict(world.traffic.bytes)}

    # Partial FC with sample_rate 1 on a shard is the shard's FC
    for name, cls, kw in (("partial_fc", ShardedPartialFC, {"sample_rate": 1.0}), ("fc_again", ShardedFC, {})):
        h = cls(D, N, world, **kw)
        with torch.no_grad():
            h.weight.copy_(world.rows(x["weight"], N))
        e = x["queries"][mine].clone().requires_grad_(True)
        result[name] = {"loss": h(e, x["labels"][mine]).item()}

    # AttFC: one step in training mode; the container after it
    att = gather_container(AttFC(D, N, container_size=8, num_keys=K), world)
    att.container.enqueue(x["earlier"], x["earlier_labels"])
    q = x["queries"][mine].clone().requires_grad_(True)
    loss = att(q, x["labels"][mine], x["keys"][mine])
    loss.backward()
    result["attfc"] = {"loss": loss.item(), "query_grad": q.grad.clone(),
                       "centres": att.container.centres.clone(), "labels": att.container.labels.clone(),
                       "pointer": int(att.container.pointer)}
    # one head step of each head measured on this rank, as `measure_rank_memory` does through torchrun
    result["memory"] = {head: _measure_here({"head": head, "num_classes": MEMORY_SIZES[0],
                                             "embedding_dim": MEMORY_SIZES[1], "batch_size": MEMORY_SIZES[2],
                                             "knobs": {}}, world) for head in ("fc", "attfc")}
    torch.save(result, f"{out}/rank{rank}.pt")

    # train over the two processes: whole, and interrupted after epoch 1 then resumed
    config = TrainConfig(head="partial_fc", sample_rate=0.5, num_classes=9, images_per_identity=4, eval_identities=6,
                         eval_images_per_identity=3, epochs=2, batch_size=4, embedding_dim=16, image_size=16,
                         device="cpu")
    train(config, f"{out}/whole", progress=False, world=world)
    train(config, f"{out}/resumed", progress=False, world=world, stop_after_epoch=1)
    train(config, f"{out}/resumed", progress=False, world=world, resume=True)
    dist.barrier()
    world.close()


if __name__ == "__main__":
    main(sys.argv[1])
