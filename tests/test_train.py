"""The training loop on tiny runs: schedule, outputs, checkpoints, resume and failure modes."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch

from attfc_lite.faces import SyntheticFaces
from attfc_lite.heads import FullFC
from attfc_lite.train import CHECKPOINT, METRICS, TrainConfig, load_checkpoint, lr_at, save_checkpoint, train

# 8 identities x 4 images = 32 images, batch 8: 4 steps per epoch. Eval: 6 x 3 images give
# 18 genuine pairs, so 30 pairs (15 genuine) need no repeats.
TINY = TrainConfig(num_classes=8, images_per_identity=4, eval_identities=6, eval_images_per_identity=3, epochs=2,
                   batch_size=8, embedding_dim=16, num_pairs=30, device="cpu")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.allclose(sa[k].float(), sb[k].float(), rtol=0, atol=1e-6), k
        else:  # extra state, e.g. Partial FC's step counter
            assert sa[k] == sb[k], k


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tiny run must not warn (e.g. about repeated pairs)
        result = train(TINY, out, progress=False)
    return out, result


# -- schedule ------------------------------------------------------------------------------


def test_lr_warmup_is_linear():
    # step s < warmup: base * (s + 1) / warmup
    assert lr_at(0, 100, 10, 0.1) == pytest.approx(0.01)
    assert lr_at(4, 100, 10, 0.1) == pytest.approx(0.05)
    assert lr_at(9, 100, 10, 0.1) == pytest.approx(0.1)


def test_lr_cosine_after_warmup():
    # base / 2 * (1 + cos(pi * (s - warmup) / (total - warmup)))
    assert lr_at(10, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 100, 10, 0.1) == pytest.approx(0.05)  # half way: cos(pi / 2) = 0
    assert lr_at(40, 100, 10, 0.1) == pytest.approx(0.05 * (1 + math.cos(math.pi / 3)))
    assert lr_at(100, 100, 10, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(150, 100, 10, 0.1) == pytest.approx(0.0, abs=1e-12)  # stays at zero past the end


def test_lr_without_warmup_and_monotone_decay():
    assert lr_at(0, 8, 0, 1.0) == pytest.approx(1.0)
    values = [lr_at(s, 50, 5, 0.2) for s in range(50)]
    assert max(values) == pytest.approx(0.2)
    assert all(b <= a + 1e-12 for a, b in zip(values[5:], values[6:]))


# -- a full run ----------------------------------------------------------------------------


def test_tiny_run_metrics(full_run):
    out, result = full_run
    m = result.metrics
    for key in ("head", "num_classes", "steps", "seconds", "images_per_second", "verification"):
        assert key in m, key
    assert m["head"] == "fc" and m["num_classes"] == 8
    assert m["steps"] == 2 * (32 // 8)
    assert m["seconds"] > 0 and m["images_per_second"] > 0
    assert m["images_per_second"] == pytest.approx(m["steps"] * 8 / m["seconds"], rel=0.01)
    v = m["verification"]
    assert 0 <= v["accuracy_mean"] <= 1 and v["accuracy_std"] >= 0
    assert set(v["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
    assert len(result.history) == 2 and [h["epoch"] for h in result.history] == [1, 2]
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_tiny_run_writes_metrics_and_checkpoint(full_run):
    out, result = full_run
    assert (out / METRICS).is_file() and (out / CHECKPOINT).is_file()
    written = json.loads((out / METRICS).read_text())
    assert written["steps"] == result.metrics["steps"] and written["verification"]["tar_at_far"].keys() == {
        "1e-2", "1e-3", "1e-4"}
    assert not list(out.glob("*.tmp"))
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 8
    assert TrainConfig.from_dict(state["config"]) == TINY.validate()  # the margin m filled in
    # The checkpoint holds the final weights.
    for k, v in result.backbone.state_dict().items():
        assert torch.equal(state["backbone"][k], v), k
    assert torch.equal(state["head"]["weight"], result.head.weight.detach())


def test_resume_ends_with_the_same_weights(full_run, tmp_path):
    _, uninterrupted = full_run
    first = train(TINY, tmp_path, progress=False, stop_after_epoch=1, evaluate=False)
    assert first.metrics == {"stopped_after_epoch": 1}
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1
    resumed = train(TINY, tmp_path, resume=True, progress=False, evaluate=False)
    _same_weights(resumed.backbone, uninterrupted.backbone)
    _same_weights(resumed.head, uninterrupted.head)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["loss"] == pytest.approx(uninterrupted.history[1]["loss"], rel=1e-5)
    assert resumed.metrics["steps"] == 8


def test_interrupted_run_differs_from_finished_one(full_run, tmp_path):
    # Guards the resume test: after one epoch the weights are not yet the final ones.
    _, uninterrupted = full_run
    first = train(TINY, tmp_path, progress=False, stop_after_epoch=1, evaluate=False)
    diff = (first.head.weight - uninterrupted.head.weight).detach().abs().max()
    assert float(diff) > 1e-4


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume"):
        train(TINY, tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="out_dir"):
        train(TINY, None, resume=True, progress=False)


def test_resume_with_a_different_config_raises(tmp_path):
    train(replace(TINY, epochs=1), tmp_path, progress=False, evaluate=False)
    with pytest.raises(ValueError, match="lr"):
        train(replace(TINY, epochs=1, lr=0.05), tmp_path, resume=True, progress=False, evaluate=False)


def test_nan_loss_raises_naming_lr_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real_forward = FullFC.forward
    calls = {"n": 0}

    def forward(self, embeddings, labels):
        calls["n"] += 1
        loss = real_forward(self, embeddings, labels)
        return loss * float("nan") if calls["n"] > 4 else loss  # epoch 2's first step

    monkeypatch.setattr(FullFC, "forward", forward)
    with pytest.raises(FloatingPointError, match="lr") as info:
        train(TINY, tmp_path, progress=False)
    assert "nan" in str(info.value).lower()
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["epoch"] == 1 and state["step"] == 4
    assert not (tmp_path / METRICS).exists()


def test_infinite_loss_without_out_dir_also_raises(monkeypatch):
    monkeypatch.setattr(FullFC, "forward", lambda self, e, l: (e.sum() * 0 + float("inf")))
    with pytest.raises(FloatingPointError, match="lr"):
        train(replace(TINY, epochs=1), None, progress=False, evaluate=False)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.arange(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    # The previous checkpoint survives an interrupted save.
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_plain_dataset_path_matches_get_batch_path(tmp_path):
    """A dataset without get_batch goes through __getitem__; the run must be the same."""
    data = SyntheticFaces(8, 4, "train", 32, seed=0)

    class Plain(torch.utils.data.Dataset):
        num_classes = 8

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    cfg = replace(TINY, epochs=1)
    a = train(cfg, None, progress=False, train_set=data, evaluate=False)
    b = train(cfg, None, progress=False, train_set=Plain(), evaluate=False)
    _same_weights(a.backbone, b.backbone)
    _same_weights(a.head, b.head)


def test_evaluate_false_has_no_verification():
    result = train(replace(TINY, epochs=1), None, progress=False, evaluate=False)
    assert "verification" not in result.metrics and result.metrics["steps"] == 4


@pytest.mark.parametrize(
    "change,name",
    [(dict(num_classes=1), "num_classes"), (dict(lr=0.0), "lr"), (dict(head="nope"), "head"),
     (dict(eval_images_per_identity=1), "eval_images_per_identity"), (dict(batch_size=0), "batch_size"),
     (dict(image_size=4), "image_size")],
)
def test_bad_config_raises_naming_the_field(change, name):
    with pytest.raises(ValueError, match=name):
        train(replace(TINY, **change), None, progress=False)


def test_train_set_with_other_num_classes_raises():
    data = SyntheticFaces(4, 2, "train", 32, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        train(TINY, None, progress=False, train_set=data)


def test_config_from_dict_ignores_unknown_keys():
    cfg = TrainConfig.from_dict({"num_classes": 12, "not_a_field": 1})
    assert cfg.num_classes == 12 and cfg.epochs == TrainConfig().epochs


def test_gradient_clipping_covers_the_backbone_only(monkeypatch):
    # The reference recipe (arcface_torch) clips the backbone's gradient alone; a head's
    # gradient must neither be clipped nor count towards the backbone's norm.
    import attfc_lite.train as train_module

    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        seen.append({id(p) for p in parameters})
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    built = {}
    real_build = train_module.build

    def keep(config, device, world=None):
        built["backbone"], built["head"] = real_build(config, device, world)
        return built["backbone"], built["head"]

    monkeypatch.setattr(train_module, "build", keep)
    train(replace(TINY, epochs=1), progress=False, evaluate=False)
    backbone_ids = {id(p) for p in built["backbone"].parameters()}
    assert seen and all(ids == backbone_ids for ids in seen)
    assert not any(id(p) in ids for p in built["head"].parameters() for ids in seen)


def test_overlapping_identity_splits_are_rejected_before_training(monkeypatch):
    import attfc_lite.train as train_module

    # train ids 500,000..500,019; eval ids counted down from 9,999,999 - 9,499,990 = 500,009.
    train_set = SyntheticFaces(20, 2, "train", identity_offset=500_000)
    eval_set = SyntheticFaces(10, 2, "eval", identity_offset=9_499_990)
    monkeypatch.setattr(train_module, "build", lambda *a: pytest.fail("training started"))
    config = replace(TINY, num_classes=20, eval_identities=10, eval_images_per_identity=2)
    with pytest.raises(ValueError, match="identity_offset") as info:
        train(config, progress=False, train_set=train_set, eval_set=eval_set)
    assert "10 shared" in str(info.value)
    # A training set that meets the config's default evaluation identities (the top 6).
    top = SyntheticFaces(8, 4, "train", identity_offset=9_999_990)
    with pytest.raises(ValueError, match="overlap"):
        train(TINY, progress=False, train_set=top)


def test_identity_offset_past_the_world_is_named():
    with pytest.raises(ValueError, match="identity_offset"):
        SyntheticFaces(8, 1, "train", identity_offset=9_999_995)
    with pytest.raises(ValueError, match="identity_offset"):
        SyntheticFaces(8, 1, "eval", identity_offset=-1)


def test_config_rejects_more_identities_than_the_world_splits():
    with pytest.raises(ValueError, match="num_classes must be at most 9,999,700 with eval_identities = 300"):
        TrainConfig(num_classes=9_999_900, eval_identities=300).validate()


def test_combined_margin_trains_and_a_float_m_is_named():
    # TrainConfig(margin="combined") once crashed with a TypeError deep in the head.
    config = replace(TINY, margin="combined", epochs=1).validate()
    assert config.margin_m == (1.0, 0.3, 0.2)  # insightface's combined default
    result = train(replace(TINY, margin="combined", margin_m=(1.0, 0.2, 0.1), epochs=1), progress=False,
                   evaluate=False)
    margin = result.head.margin
    assert (type(margin).__name__, margin.m1, margin.m2, margin.m3) == ("CombinedMargin", 1.0, 0.2, 0.1)
    with pytest.raises(ValueError, match="margin_m"):
        replace(TINY, margin="combined", margin_m=0.5).validate()
    with pytest.raises(ValueError, match="margin must be one of"):
        replace(TINY, margin="sphereface").validate()
    assert replace(TINY, margin="cosface").validate().margin_m == 0.35


def test_validate_returns_a_copy_and_leaves_the_config_alone():
    config = replace(TINY)
    checked = config.validate()
    assert config.margin_m is None and checked.margin_m == 0.5


# -- Partial FC and AttFC through the same loop ---------------------------------------------

ATT = replace(TINY, head="attfc", num_keys=2, container_size=6, ema_momentum=0.9)


def test_attfc_run_records_its_settings_and_fills_the_container(tmp_path):
    result = train(ATT, tmp_path, progress=False)
    m = result.metrics
    assert m["head"] == "attfc" and m["head_parameters"] == 0
    assert m["head_settings"] == {"num_keys": 2, "container_ratio": 0.3, "container_size": 6, "temperature": 1.0,
                                  "container_capacity": 6, "ema_momentum": 0.9, "keys_exclude_query": False}
    written = json.loads((tmp_path / METRICS).read_text())
    assert written["config"]["head"] == "attfc" and written["config"]["ema_momentum"] == 0.9
    # 8 steps of 8 queries through a container of 6: full, and every label a training identity
    assert int(result.head.container.filled()) == 6
    assert 0 <= int(result.head.container.labels.min()) and int(result.head.container.labels.max()) < 8
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert 0 <= m["verification"]["accuracy_mean"] <= 1


def test_attfc_keys_come_from_the_query_identity_and_encoder_k_follows_by_ema(monkeypatch):
    import attfc_lite.train as train_module
    from attfc_lite.heads.attfc import AttFC

    seen = []
    real_forward = AttFC.forward

    def spy(self, embeddings, labels, keys=None):
        seen.append(keys.shape)
        return real_forward(self, embeddings, labels, keys)

    monkeypatch.setattr(AttFC, "forward", spy)
    drawn = []
    real_sample = train_module.sample_keys

    def spy_sample(labels, query_indices, k, generator=None, index=None, exclude_query=False):
        keys = real_sample(labels, query_indices, k, generator=generator, index=index, exclude_query=exclude_query)
        drawn.append((labels[torch.as_tensor(query_indices)], labels[keys]))
        return keys

    monkeypatch.setattr(train_module, "sample_keys", spy_sample)
    train(replace(ATT, epochs=1), progress=False, evaluate=False)
    assert seen == [torch.Size([8, 2, 16])] * 4
    for query_labels, key_labels in drawn:
        assert torch.equal(key_labels, query_labels[:, None].expand_as(key_labels))


@pytest.mark.parametrize("exclude", [False, True])
def test_attfc_counts_the_keys_that_are_the_query_image(exclude, monkeypatch):
    import attfc_lite.train as train_module

    naive = {"queries": 0, "with": 0, "keys": 0}
    real_sample = train_module.sample_keys

    def spy_sample(labels, query_indices, k, generator=None, index=None, exclude_query=False):
        keys = real_sample(labels, query_indices, k, generator=generator, index=index, exclude_query=exclude_query)
        for q, row in zip(torch.as_tensor(query_indices).tolist(), keys.tolist()):  # a plain loop, key by key
            naive["queries"] += 1
            naive["with"] += any(key == q for key in row)
            naive["keys"] += sum(key == q for key in row)
        return keys

    monkeypatch.setattr(train_module, "sample_keys", spy_sample)
    # 2 images per identity, K = 2: a query gets its own image as a key 3 times in 4
    config = replace(ATT, images_per_identity=2, epochs=4, keys_exclude_query=exclude)
    m = train(config, progress=False, evaluate=False).metrics
    record = m["self_keys"]
    assert record["queries"] == naive["queries"] == m["images"] == 4 * 2 * 8  # 4 epochs of 2 steps of 8 queries
    assert record["queries_with_self_key"] == naive["with"] and record["self_keys"] == naive["keys"]
    assert record["share_of_queries"] == pytest.approx(naive["with"] / naive["queries"])
    assert record["keys"] == 2 * naive["queries"] and m["head_settings"]["keys_exclude_query"] is exclude
    if exclude:
        assert naive["keys"] == 0
    else:
        assert 0.5 < record["share_of_queries"] < 0.95  # 0.75 expected; 64 queries


def test_attfc_with_one_image_per_identity_is_refused_by_name():
    from attfc_lite.checks import ArgumentError

    with pytest.raises(ArgumentError, match="^images_per_identity is 1, and AttFC cannot learn") as info:
        replace(ATT, images_per_identity=1).validate()
    assert "the query" in str(info.value)
    replace(TINY, images_per_identity=1).validate()  # full FC may
    one_each = SyntheticFaces(8, 1, "train", 32, 0)
    with pytest.raises(ArgumentError, match="^train_set has one image per identity"):
        train(ATT, train_set=one_each, progress=False, evaluate=False)


def test_attfc_resume_restores_encoder_k_and_the_container(tmp_path):
    uninterrupted = train(ATT, tmp_path / "a", progress=False, evaluate=False)
    first = train(ATT, tmp_path / "b", progress=False, stop_after_epoch=1, evaluate=False)
    state = load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert state["encoder_k"] is not None and "container.labels" in state["head"]
    assert not torch.equal(first.head.container.centres, uninterrupted.head.container.centres)
    resumed = train(ATT, tmp_path / "b", resume=True, progress=False, evaluate=False)
    _same_weights(resumed.backbone, uninterrupted.backbone)
    _same_weights(resumed.head, uninterrupted.head)  # the container: centres, labels, pointer
    assert torch.equal(resumed.head.container.labels, uninterrupted.head.container.labels)


def test_partial_fc_run_and_resume(tmp_path):
    config = replace(TINY, head="partial_fc", sample_rate=0.5)
    uninterrupted = train(config, tmp_path / "a", progress=False, evaluate=False)
    assert uninterrupted.metrics["head_settings"] == {"sample_rate": 0.5, "seed": 0}
    assert uninterrupted.head.step == 8
    train(config, tmp_path / "b", progress=False, stop_after_epoch=1, evaluate=False)
    resumed = train(config, tmp_path / "b", resume=True, progress=False, evaluate=False)
    _same_weights(resumed.backbone, uninterrupted.backbone)
    _same_weights(resumed.head, uninterrupted.head)


@pytest.mark.parametrize("bad,word", [(dict(head="attfc", ema_momentum=1.5), "ema_momentum"),
                                      (dict(head="attfc", dcc_ratio=0.0), "dcc_ratio"),
                                      (dict(head="attfc", num_keys=0), "num_keys"),
                                      (dict(head="partial_fc", sample_rate=2.0), "sample_rate")])
def test_head_settings_are_checked_before_anything_renders(bad, word, monkeypatch):
    import attfc_lite.train as train_module

    monkeypatch.setattr(train_module, "SyntheticFaces", lambda *a, **k: pytest.fail("rendered"))
    with pytest.raises(ValueError, match=word):
        train(replace(TINY, **bad), progress=False)


def test_callback_sees_every_step_and_the_result_keeps_encoder_k():
    seen = []
    result = train(replace(ATT, epochs=1), progress=False, evaluate=False,
                   callback=lambda state: seen.append((state["step"], state["keys"].shape, state["encoder_k"])))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert all(shape == (8, 2, 16) for _, shape, _ in seen)
    assert seen[-1][2] is result.encoder_k is not None


def test_max_steps_ends_the_run_and_its_schedule_there(monkeypatch):
    import attfc_lite.train as train_module

    totals = []
    real = train_module.lr_at
    monkeypatch.setattr(train_module, "lr_at", lambda step, total, warm, lr: totals.append(total) or real(step, total, warm, lr))
    config = TrainConfig(num_classes=8, images_per_identity=8, eval_identities=6, epochs=3, batch_size=8,
                         image_size=16, embedding_dim=8, device="cpu", max_steps=10, warmup_epochs=0.0)
    result = train(config, progress=False, evaluate=False)
    # 64 images in batches of 8: 8 steps an epoch; 10 steps = one epoch and 2 steps of the next
    assert result.metrics["steps"] == 10 and len(result.history) == 2
    assert totals == [10] * 10  # the cosine schedule reaches zero at step 10, not at 24
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0).validate()


def test_channels_last_backbone_gives_the_same_run_up_to_rounding():
    from dataclasses import replace

    config = TrainConfig(num_classes=6, images_per_identity=4, eval_identities=4, eval_images_per_identity=2,
                         epochs=1, batch_size=8, image_size=16, embedding_dim=16, device="cpu", num_pairs=20)
    plain = train(config, progress=False, evaluate=False)
    last = train(replace(config, channels_last=True), progress=False, evaluate=False)
    w = next(p for p in last.backbone.parameters() if p.dim() == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)  # the setting took effect
    assert last.metrics["final_loss"] == pytest.approx(plain.metrics["final_loss"], rel=1e-4)
    for a, b in zip(plain.backbone.parameters(), last.backbone.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_plot_history_has_a_title_labels_and_a_legend_entry_per_run():
    import matplotlib.pyplot as plt

    from attfc_lite.train import plot_history

    history = [{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0}]
    ax = plot_history(history)
    assert ax.get_title() and ax.get_xlabel() == "epoch" and "nats" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run"]  # unlabelled: still in the legend
    ax = plot_history([history, history], labels=["FC", None], title="two runs")
    assert ax.get_title() == "two runs"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FC", "run 2"]
    plt.close("all")


def test_plot_history_takes_one_label_as_a_string_and_starts_at_zero():
    import matplotlib

    matplotlib.use("Agg")
    from attfc_lite.train import plot_history

    ax = plot_history([{"epoch": 1, "loss": 20.0}, {"epoch": 2, "loss": 15.0}], labels="FC baseline")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["FC baseline"]
    assert ax.get_ylim()[0] == 0
