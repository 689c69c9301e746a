"""Lesson 10: the heads over two processes (torchrun, gloo, CPU) against one process on the
concatenated batch, and runs over two processes repeated bit for bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attfc_lite.distributed import World, shard_range, sharded_cross_entropy
from attfc_lite.heads import AttFC, FullFC
from attfc_lite.margins import ArcFace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import _distributed_worker as worker  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(TORCHRUN + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done


def _main_here(args: list[str]) -> subprocess.CompletedProcess:
    """The command line in this process (what a refused command says needs no new process)."""
    import contextlib
    import io

    from attfc_lite.__main__ import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    done = _torchrun([str(ROOT / "tests" / "_distributed_worker.py"), str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return [dict(torch.load(out / f"rank{r}.pt", weights_only=False), out=str(out)) for r in range(2)]


# --- pieces, in one process ----------------------------------------------------------------------

def test_shards_cover_every_row_once_and_differ_by_at_most_one():
    for n, p in [(11, 2), (10, 3), (7, 7), (1000, 64)]:
        ranges = [shard_range(n, r, p) for r in range(p)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_sharded_cross_entropy_on_one_rank_is_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 9, generator=gen) * 5).requires_grad_(True)
    target = torch.randint(0, 9, (6,), generator=gen)
    ours = sharded_cross_entropy(logits, target, World())
    ours.backward()
    grad = logits.grad.clone()
    logits.grad = None
    ref = F.cross_entropy(logits, target)
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(grad, logits.grad, atol=1e-7)


def test_sharded_cross_entropy_of_two_column_halves_by_hand():
    # the two ranks' columns computed one after the other: max and sum combined as the all-reduces would
    gen = torch.Generator().manual_seed(1)
    logits, target = torch.randn(5, 8, generator=gen) * 4, torch.tensor([0, 7, 3, 4, 6])
    halves = logits[:, :4], logits[:, 4:]
    row_max = torch.maximum(halves[0].max(1).values, halves[1].max(1).values)
    total = sum((h - row_max[:, None]).exp().sum(1) for h in halves)
    picked = logits[torch.arange(5), target]
    assert (total.log() + row_max - picked).mean().item() == pytest.approx(F.cross_entropy(logits, target).item(),
                                                                           rel=1e-6)


# --- two processes against one -------------------------------------------------------------------

def test_model_parallel_fc_step_equals_full_fc_on_the_concatenated_batch(ranks):
    x = worker.inputs()
    net = worker.backbone()
    head = FullFC(worker.D, worker.N)
    with torch.no_grad():
        head.weight.copy_(x["weight"])
    loss = head(net(x["images"]), x["labels"])
    loss.backward()
    for r in ranks:
        fc = r["fc"]
        assert fc["loss"] == pytest.approx(loss.item(), abs=1e-5)
        for name, p in net.named_parameters():
            assert torch.allclose(fc["backbone_grad"][name], p.grad, atol=1e-5, rtol=1e-4), name
        start, stop = fc["rows"]
        assert torch.allclose(fc["weight_grad"], head.weight.grad[start:stop], atol=1e-6)
    assert [r["fc"]["rows"] for r in ranks] == [(0, 6), (6, 11)]


def test_model_parallel_fc_sends_what_the_sizes_say(ranks):
    traffic = ranks[0]["fc"]["traffic"]
    B, D = worker.B, worker.D
    assert traffic["embeddings"] == B * D * 4  # all_gather: the other rank's B x D floats
    assert traffic["labels"] == B * 8
    assert traffic["softmax_max"] == traffic["softmax_sum"] == 2 * B * 4  # all_reduce of 2B floats: 2 (P-1)/P * n
    assert traffic["embedding_grad"] == 2 * B * D * 4


def test_partial_fc_on_shards_with_every_centre_is_the_fc(ranks):
    for r in ranks:
        assert r["partial_fc"]["loss"] == pytest.approx(r["fc_again"]["loss"], abs=1e-6)


def test_attfc_container_after_a_two_rank_step_equals_one_process_on_the_concatenated_batch(ranks):
    x = worker.inputs()
    head = AttFC(worker.D, worker.N, container_size=8, num_keys=worker.K)
    head.container.enqueue(x["earlier"], x["earlier_labels"])
    q = x["queries"].clone().requires_grad_(True)
    loss = head(q, x["labels"], x["keys"])
    loss.backward()
    for r in ranks:
        assert torch.equal(r["attfc"]["labels"], head.container.labels)
        assert torch.allclose(r["attfc"]["centres"], head.container.centres, atol=1e-6)
        assert r["attfc"]["pointer"] == int(head.container.pointer)
    # each rank's loss is the mean over its half; DDP would average them into the whole batch's
    assert (ranks[0]["attfc"]["loss"] + ranks[1]["attfc"]["loss"]) / 2 == pytest.approx(loss.item(), abs=1e-5)
    grads = torch.cat([ranks[0]["attfc"]["query_grad"], ranks[1]["attfc"]["query_grad"]])
    assert torch.allclose(grads / 2, q.grad, atol=1e-6)  # d(mean of B) = 2 d(mean of 2B)


def test_margin_skips_rows_whose_target_is_on_another_rank():
    cos = torch.tensor([[0.5, 0.2], [0.1, 0.3]])
    logits = ArcFace(s=1.0, m=0.5)(cos, torch.tensor([-1, 1]))
    assert logits[0].tolist() == pytest.approx([0.5, 0.2])  # no positive here: untouched
    assert logits[1, 1].item() == pytest.approx(torch.cos(torch.acos(torch.tensor(0.3)) + 0.5).item(), abs=1e-6)


# --- whole runs over two processes ---------------------------------------------------------------

TINY = ["--classes", "8", "--images-per-identity", "4", "--eval-identities", "6", "--eval-images-per-identity", "3",
        "--epochs", "2", "--batch-size", "4", "--embedding-dim", "16", "--image-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    outs = {}
    for name in ("attfc_a", "attfc_b"):
        done = _torchrun(["-m", "attfc_lite", "train", "--head", "attfc", *TINY, "--k", "2", "--container-size", "6",
                          "--out", str(base / name)])
        assert done.returncode == 0, done.stderr[-3000:]
        outs[name] = (base / name, done)
    return outs


def _same_checkpoint(a: dict, b: dict) -> None:
    for part in ("backbone", "head", "encoder_k"):
        for key, value in (a[part] or {}).items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[part][key]), (part, key)
    assert a["history"] == b["history"] and a["step"] == b["step"]


def test_a_two_rank_run_repeats_bit_for_bit(two_rank_runs):
    a = torch.load(two_rank_runs["attfc_a"][0] / "checkpoint.pt", weights_only=False)
    b = torch.load(two_rank_runs["attfc_b"][0] / "checkpoint.pt", weights_only=False)
    assert a["world_size"] == 2 and a["step"] == 8  # 32 images, 2 x 4 a step: 4 steps an epoch, 2 epochs
    _same_checkpoint(a, b)


def test_rank_zero_alone_writes_and_reports(two_rank_runs):
    out, done = two_rank_runs["attfc_a"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and "verification" in metrics
    assert done.stderr.count("wrote ") == 1  # one process prints the summary


def test_rank_zero_writes_the_whole_sharded_w_and_a_resumed_run_is_the_uninterrupted_one(ranks, tmp_path_factory):
    out = Path(ranks[0]["out"])
    whole = torch.load(out / "whole" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(out / "resumed" / "checkpoint.pt", weights_only=False)
    assert whole["world_size"] == 2
    assert whole["head"]["weight"].shape == (9, 16)  # both shards of W (5 and 4 rows), gathered by rank 0
    momentum = next(s["momentum_buffer"] for s in whole["optimizer"]["state"].values()
                    if s["momentum_buffer"].shape == (9, 16))
    assert momentum.abs().sum() > 0
    _same_checkpoint(whole, resumed)


def test_resuming_with_another_number_of_processes_is_refused(two_rank_runs):
    out, _ = two_rank_runs["attfc_a"]
    done = _main_here(["train", "--head", "attfc", *TINY, "--k", "2", "--container-size", "6", "--out", str(out),
                       "--resume"])
    assert done.returncode == 2
    assert "written by a run over 2 processes and this run has 1" in done.stderr
    assert "--nproc_per_node 2" in done.stderr


# --- memory and traffic per rank -------------------------------------------------------------------

@pytest.mark.parametrize("head", ["fc", "attfc"])
def test_per_rank_memory_model_agrees_with_the_measurement_at_one_and_two_processes(head, ranks):
    from attfc_lite.distributed.measure import measure_rank_memory
    from attfc_lite.distributed.per_rank import traffic_per_step
    from attfc_lite.memory import predict_memory

    n, d, b = worker.MEMORY_SIZES
    measured = {1: measure_rank_memory(head, n, d, b, 1)["ranks"], 2: [r["memory"][head] for r in ranks]}
    for world_size, per_rank in measured.items():
        predicted = predict_memory(n, d, b, head=head, world_size=world_size)
        for rank in per_rank:
            assert abs(predicted.peak / rank["peak_bytes"] - 1) < 0.15, (world_size, rank)
            # the traffic the collectives counted is the model's, collective by collective
            assert rank["traffic_per_step"] == traffic_per_step(head, n, d, b, world_size)
    one = predict_memory(n, d, b, head=head, world_size=1)
    many = predict_memory(n, d, b, head=head, world_size=64)
    if head == "fc":  # W and its momentum fall as N / P; the logits of the P*B gathered rows do not
        assert many.terms["class_centres"] == -(-n // 64) * d * 4
        assert many.terms["logits"] == pytest.approx(one.terms["logits"], rel=0.03)
    else:  # every rank holds the whole container
        assert many.terms["container"] == one.terms["container"]


def test_commands_other_than_train_refuse_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    done = _main_here(["memory", "--head", "fc", "--classes", "100"])
    assert done.returncode == 2
    assert "only train runs over several processes (torchrun started 2)" in done.stderr


def test_more_processes_than_gpus_is_named_before_joining(monkeypatch):
    from attfc_lite.checks import ArgumentError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ArgumentError, match=r"started 2 processes on this machine and it has 1 GPU\(s\): use "
                                            r"--nproc_per_node 1, or --device cpu"):
        World.from_env(torch.device("cuda"))
