"""The side-by-side runs of lesson 08: summaries, the table and the plots, on a made-up result."""
from __future__ import annotations

import pytest

from attfc_lite.run import VARIANTS, load_run, plot_losses, plot_rocs, run_heads, summarise, summary_table


def fake_run(variant, seed, acc, tar):
    return {"variant": variant, "seed": seed, "accuracy_mean": acc, "tar_at_far": {"1e-2": tar, "1e-3": None},
            "images_per_second": 100.0 * (seed + 1), "auc": 0.9,
            "loss_curve": {"every": 10, "loss": [3.0, 2.0, 1.0 + seed]},
            "roc": {"fpr": [0.0, 0.01, 1.0], "tpr": [0.0, 0.5, 1.0]},
            **({"head_memory": [{"num_classes": 1000, "measured_peak_bytes": 2 ** 20, "predicted_peak_bytes": 1}]}
               if seed == 0 else {})}


RUNS = [fake_run("fc", 0, 0.9, 0.5), fake_run("fc", 1, 0.8, 0.3), fake_run("dcq", 0, 0.7, 0.1),
        fake_run("dcq", 1, 0.7, 0.2)]


def test_summarise_means_over_seeds():
    fc, dcq = summarise(RUNS)
    assert fc["accuracy_mean"] == pytest.approx(0.85) and fc["accuracy_seed_std"] == pytest.approx(0.05)
    assert fc["tar_at_far"] == {"1e-2": pytest.approx(0.4), "1e-3": 0.0}  # no TAR at a FAR: counted as 0
    assert fc["images_per_second"] == 150.0 and dcq["accuracy_seed_std"] == pytest.approx(0.0)
    assert fc["head_memory"][0]["num_classes"] == 1000


def test_table_and_plots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = {"variants": {v: {"label": VARIANTS[v][0]} for v in ("fc", "dcq")}, "seeds": [0, 1], "runs": RUNS,
              "summary": summarise(RUNS)}
    table = summary_table(result).splitlines()
    assert len(table) == 3 and "head MiB N=1,000" in table[0]
    assert table[1].startswith("full FC") and "0.850 ± 0.050" in table[1] and table[1].endswith("1.00")
    ax = plot_losses(result)
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [5, 15, 25] and list(line.get_ydata()) == [3.0, 2.0, 1.5]
    ax = plot_rocs(result)
    assert len(ax.get_lines()) == 2 and list(ax.get_lines()[0].get_xdata()) == [0.01, 1.0]  # FAR 0 has no log
    plt.close("all")


def test_bad_variants_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="variants"):
        run_heads(["fc", "nope"])
    with pytest.raises(ValueError, match="repeats"):
        run_heads(["fc", "fc"])
    with pytest.raises(ValueError, match="seeds"):
        run_heads(["fc"], seeds=[])
    with pytest.raises(FileNotFoundError, match="attfc_lite run"):
        load_run(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="lacks"):
        load_run(tmp_path / "x.json")


def test_stored_results_record_where_they_came_from_and_are_written_whole(tmp_path, monkeypatch):
    import json
    import os

    from attfc_lite.utils import provenance, read_stored, write_json

    record = provenance("cpu")
    assert record["device"] == f"cpu ({os.cpu_count()} cores)" and set(record) == {"device", "torch", "python", "date"}
    write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 1}
    assert not (tmp_path / "a" / "r.json.tmp").exists()
    with pytest.raises(ValueError):
        write_json(tmp_path / "bad.json", {"x": float("nan")})  # JSON has no NaN: refused, not written
    assert not (tmp_path / "bad.json").exists()
    assert read_stored("r", tmp_path / "a", {"x"}, "cmd") == {"x": 1}  # a name is looked up in the folder


@pytest.mark.parametrize("kwargs, name", [
    ({"factors": [0]}, "factors"), ({"factors": [5, 5]}, "factors"), ({"factors": []}, "factors"),
    ({"heads": ["attfc"]}, "heads"), ({"heads": ["fc", "dcq"]}, "heads"), ({"epochs": 0}, "epochs"),
    ({"images_per_identity": 1}, "images_per_identity"), ({"limit_share": 1.5}, "limit_share"),
    ({"steps": 0.5}, "steps"),
])
def test_large_n_refuses_bad_options_by_name_before_any_search(kwargs, name, monkeypatch):
    import attfc_lite.memory as memory
    from attfc_lite.checks import ArgumentError
    from attfc_lite.large_n import large_n

    monkeypatch.setattr(memory, "find_oom_boundary", lambda *a, **k: pytest.fail("searched before checking"))
    with pytest.raises(ArgumentError) as info:
        large_n(**kwargs)
    assert info.value.name == name


def test_full_fc_alone_may_take_one_image_per_identity(monkeypatch):
    import attfc_lite.memory as memory
    from attfc_lite.large_n import large_n

    class Searched(Exception):
        pass

    def stop(*a, **k):
        raise Searched

    monkeypatch.setattr(memory, "find_oom_boundary", stop)
    with pytest.raises(Searched):  # past the checks: only AttFC needs two images of an identity
        large_n(images_per_identity=1, heads=["fc"])


def _point(head, n, factor, fits=True, acc=0.7, excl=False, **extra):
    v = {"accuracy_mean": acc, "accuracy_std": 0.01, "tar_at_far": {"1e-3": 0.1, "1e-4": 0.02},
         "num_impostor_all": 4_485_000, "num_genuine_all": 13_500, "roc": {"fpr": [0, 1], "tpr": [0, 1]}}
    return {"head": head, "label": {"fc": "full FC", "partial_fc": "Partial FC", "attfc": "AttFC"}[head],
            "num_classes": n, "factor": factor, "fits": fits, "images_per_identity": 2, "epochs": 3,
            "steps": 30 if fits else 0, "images_seen": 3840 if fits else None, "train_seconds": 12.0 if fits else None,
            "peak_bytes": 100 * 2 ** 20 if fits else None, "keys_exclude_query": excl,
            "verification": v if fits else None, "loss_curve": {"every": 10, "loss": [9.0, 5.0, 4.0]} if fits else None,
            **extra}


def test_large_n_table_and_plot_by_hand():
    import matplotlib

    matplotlib.use("Agg")
    from attfc_lite.large_n import large_n_table, plot_large_n

    points = [_point("fc", 20_000, 1.0), _point("attfc", 100_000, 5.0, acc=0.8),
              _point("attfc", 100_000, 5.0, acc=0.75, excl=True),
              _point("attfc", 200_000, 10.0, fits=False, error="... you tried to allocate 31457280 bytes ...",
                     requested_bytes=31_457_280)]
    result = {"points": points, "boundaries": {"fc": {"largest_fit": 20_000}}, "epochs": 3, "budget_mib": 128,
              "world": {"images_per_identity": 2, "image_size": 32, "batch_size": 128}, "device": "cpu", "date": "d"}
    lines = large_n_table(result).splitlines()
    assert lines[1].split()[:4] == ["full", "FC", "(1x)", "20,000"] and lines[1].split()[-5:] == ["0.700", "±", "0.010",
                                                                                              "0.100", "0.020"]
    assert "keys other than the query" in lines[3] and "0.750" in lines[3]
    assert "out of memory: an allocation of 30.0 MiB failed" in lines[4]  # 31,457,280 bytes = 30 MiB
    assert "4,485,000 impostor pairs" in lines[5] and "at most 448 of them" in lines[5]
    fig = plot_large_n(result)
    acc_ax, loss_ax = fig.axes
    labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert labels == ["full FC's limit (20,000)", "full FC", "AttFC, keys with the query (official)",
                      "AttFC, keys other than the query"]
    notes = [t.get_text() for t in acc_ax.texts]
    assert notes == ["AttFC (10x):\nout of memory"]  # at N = 200,000, on the axis
    assert 200_000 in [line.get_xdata()[0] for line in acc_ax.get_lines()]
    assert acc_ax.get_xscale() == "log" and acc_ax.get_xlabel() and acc_ax.get_ylabel() and acc_ax.get_title()
    # the loss curves against epochs: 3 points every 10 steps of 20,000 x 2 / 128 = 312 steps an epoch
    line = loss_ax.get_lines()[0]
    assert list(line.get_xdata()) == pytest.approx([5 / 312, 15 / 312, 25 / 312])
    assert len(loss_ax.get_legend().get_texts()) == 3  # the run that did not fit has no curve
    assert "keys with the query (official)" in lines[2] and "keys other than the query" in lines[3]


def test_ablation_plot_puts_accuracy_against_the_models_head_memory():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attfc_lite.memory import predict_memory
    from attfc_lite.sweep import head_memory_of, load_sweep, plot_accuracy_memory

    sweep = load_sweep("dcc_ratio")
    config = sweep["config"]
    # ratio 0.1 of 1,000 identities: a container of 100, by the model directly
    want = predict_memory(1000, config["embedding_dim"], config["batch_size"], head="attfc", container_size=100,
                          num_keys=config["num_keys"], weight_decay=config["weight_decay"]).peak
    assert head_memory_of(sweep, 0.1) == want
    assert head_memory_of(sweep, 1.0) > head_memory_of(sweep, 0.1)  # a larger container costs more
    ax = plot_accuracy_memory(sweep, num_classes=1_000_000)
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == [r["accuracy_mean"] for r in sorted(sweep["summary"], key=lambda r: r["value"])]
    assert list(line.get_xdata()) == sorted(line.get_xdata())  # memory grows with the ratio
    plt.close("all")


def test_profiles_set_what_they_say_and_overrides_win():
    import torch

    from attfc_lite.run import PROFILES, profile_config, resolve_profile
    from attfc_lite.train import TrainConfig

    assert profile_config("cpu") == TrainConfig().validate()  # the CPU profile is the lessons' defaults
    gpu = profile_config("gpu", amp=False, device="cpu")  # the GPU profile's shapes, built on a CPU
    assert (gpu.num_classes, gpu.image_size, gpu.backbone, gpu.embedding_dim) == (100_000, 112, "resnet18", 512)
    assert gpu.stream_data and gpu.channels_last and not gpu.amp and PROFILES["gpu"]["amp"]
    assert profile_config("cpu", epochs=2).epochs == 2
    assert resolve_profile("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="profile must be 'auto' or one of"):
        resolve_profile("tpu")
    with pytest.raises(ValueError, match="overrides must be TrainConfig fields, got \\['epoch'\\]"):
        profile_config("cpu", epoch=2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device.*profile 'cpu'"):
            profile_config("gpu")


def test_cli_profile_gives_defaults_that_options_override():
    from attfc_lite.__main__ import _apply_profile, build_parser, config_from_args

    parser = build_parser()
    argv = ["run", "--profile", "cpu", "--epochs", "2", "--amp"]
    args = _apply_profile(parser, argv, parser.parse_args(argv))
    assert args.epochs == 2 and args.classes == 1000 and args.variants == ["fc", "partial_fc", "attfc", "dcq"]
    assert args.memory_classes == 100_000 and args.amp and args.profile_extra == {}
    # the GPU profile's values become the defaults; an option given still wins
    parser = build_parser()
    argv = ["sweep", "k", "--classes", "5000", "--no-amp", "--device", "cpu"]
    args = parser.parse_args(argv)
    args.profile = "cpu"
    from unittest import mock

    with mock.patch("attfc_lite.run.resolve_profile", return_value="gpu"):
        args = _apply_profile(parser, argv, args)
    assert (args.classes, args.image_size, args.backbone, args.batch_size, args.k) == (5000, 112, "resnet18", 512, 2)
    assert not args.amp and args.profile == "gpu"
    assert args.profile_extra == {"warmup_epochs": 0.1, "channels_last": True, "stream_data": True}
    config = config_from_args(args, head="attfc")
    assert config.num_classes == 5000 and config.stream_data and config.warmup_epochs == 0.1 and config.num_keys == 2


def test_plot_sweep_says_log_scale_once_and_labels_every_series():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attfc_lite.sweep import plot_sweep

    sweep = {"param": "dcc-ratio", "seeds": [0, 1], "device": "cpu",
             "summary": [{"value": 0.1, "accuracy_mean": 0.8, "accuracy_seed_std": 0.01},
                         {"value": 1.0, "accuracy_mean": 0.9, "accuracy_seed_std": 0.02}],
             "runs": [{"value": v, "accuracy_mean": a} for v, a in ((0.1, 0.79), (0.1, 0.81), (1.0, 0.9))]}
    ax = plot_sweep(sweep, log_x=True, reference=0.85, xlabel="container ratio Q / N")
    assert ax.get_title() and ax.get_ylabel() and ax.get_xlabel() == "container ratio Q / N (log scale)"
    assert len(ax.get_legend().get_texts()) == 3  # mean ± std, each run, the reference line
    ax = plot_sweep(sweep, log_x=True, xlabel="sample rate r (log scale)")
    assert ax.get_xlabel() == "sample rate r (log scale)"
    assert plot_sweep(sweep).get_xlabel() == "dcc-ratio"  # a linear axis says nothing about scale
    plt.close("all")


def test_plot_sweep_draws_the_tar_of_each_run_and_its_spread_over_seeds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attfc_lite.checks import ArgumentError
    from attfc_lite.sweep import plot_sweep, summarise

    runs = [{"value": v, "seed": s, "accuracy_mean": 0.8, "accuracy_std": 0.01, "tar_at_far": {"1e-2": t},
             "auc": 0.9, "images_per_second": 10.0, "head_settings": {}}
            for v, s, t in ((0.9, 0, 0.10), (0.9, 1, 0.20), (0.99, 0, 0.40), (0.99, 1, 0.40))]
    sweep = {"param": "ema-momentum", "seeds": [0, 1], "device": "cpu", "runs": runs, "summary": summarise(runs)}
    ax = plot_sweep(sweep, metric="1e-2")
    mean_line, dots = ax.lines[0], ax.lines[-1]
    assert list(mean_line.get_ydata()) == pytest.approx([0.15, 0.40])
    assert list(dots.get_ydata()) == [0.10, 0.20, 0.40, 0.40]
    bars = [seg for seg in ax.collections[0].get_segments()]
    assert [round(float(b[1][1] - b[0][1]), 6) for b in bars] == [0.1, 0.0]  # two half-spreads of 0.05, and 0
    assert "TAR" in ax.get_ylabel()
    with pytest.raises(ArgumentError, match="metric"):
        plot_sweep(sweep, metric="1e-5")
    plt.close("all")


def test_over_seeds_gives_means_and_population_spreads():
    from attfc_lite.verification import over_seeds

    runs = [{"accuracy_mean": 0.8, "tar_at_far": {"1e-3": 0.1, "1e-4": None}, "auc": 0.90},
            {"accuracy_mean": 0.9, "tar_at_far": {"1e-3": 0.3, "1e-4": 0.2}, "auc": 0.94},
            {"accuracy_mean": 1.0, "tar_at_far": {"1e-3": 0.2, "1e-4": 0.1}, "auc": 0.98}]
    out = over_seeds(runs)
    assert out["accuracy_mean"] == pytest.approx(0.9)
    assert out["accuracy_seed_std"] == pytest.approx((0.02 / 3) ** 0.5)  # sqrt(((-.1)^2 + 0 + .1^2) / 3)
    assert out["tar_at_far"] == pytest.approx({"1e-3": 0.2, "1e-4": 0.1})  # a missing TAR counts as 0
    assert out["tar_at_far_seed_std"]["1e-3"] == pytest.approx((0.02 / 3) ** 0.5)
    assert out["auc"] == pytest.approx(0.94) and out["auc_seed_std"] == pytest.approx((0.0032 / 3) ** 0.5)
    assert over_seeds(runs[:1])["accuracy_seed_std"] == 0.0
    with pytest.raises(ValueError, match="runs"):
        over_seeds([])


def test_stored_sweeps_read_tar_from_over_a_million_impostor_pairs():
    from attfc_lite.sweep import STORED, load_sweep

    files = sorted(STORED.glob("*.json"))
    assert len(files) >= 4
    for path in files:
        sweep = load_sweep(path)
        assert sweep["tar_protocol"].startswith("all pairs"), path.name
        for run in sweep["runs"]:
            assert run["num_pairs_all"]["impostor"] >= 1_000_000, path.name
            assert run["far_achieved"]["1e-4"] <= 1e-4
        for row in sweep["summary"]:
            assert "tar_at_far_seed_std" in row, path.name


def test_large_n_keeps_an_n_beyond_the_world_as_a_result_without_training_it(monkeypatch):
    import types

    import attfc_lite.capped as capped
    import attfc_lite.memory as memory
    from attfc_lite.faces import MAX_IDENTITIES
    from attfc_lite.large_n import large_n

    limit = MAX_IDENTITIES // 4  # 10x that is more identities than the synthetic world holds
    monkeypatch.setattr(memory, "find_oom_boundary", lambda *a, **k: types.SimpleNamespace(
        largest_fit=limit, first_fail=limit + 1, trials=[], cap="test", seconds=0.0, child_error=None))
    trained = []

    def fake_train(config, *a, **k):
        trained.append(config.num_classes)
        return {"fits": False, "error": "out of memory: you tried to allocate 1024 bytes", "metrics": None,
                "requested_bytes": 1024, "seconds": 0.0, "child_error": None}

    monkeypatch.setattr(capped, "train_under_budget", fake_train)
    result = large_n(heads=["fc", "attfc"], factors=[10], limit_share=1.0, progress=False)
    # full FC out of memory every time: tried at its limit and twice more at 0.95 of the N before, then kept
    assert trained == [limit, int(0.95 * limit), int(0.95 * int(0.95 * limit))]
    assert [t["num_classes"] for t in result["tried"][:3]] == trained and not result["runs"]["fc"]["fits"]
    beyond = result["points"][-1]
    assert beyond["skipped"] and not beyond["fits"] and beyond["num_classes"] == 10 * limit
    assert beyond["error"].startswith("not trained: num_classes must be at most")
    assert 10 * limit not in trained and result["tried"][-1]["num_classes"] == 10 * limit
