"""train.py: one configuration end to end, its records, reruns, resumes, divergence, a full disk,
the other studies' runs (validation split, gradient norms, saved models, trackio)."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import data
import records
import sweep
import train
import utils
from conftest import REPO
from model import build_model
from records import append_row, file_lock, read_csv
from tiny import (SLOW_FLAGS, TIME_COLUMNS, TINY, damage_summary, epoch_rows, forbid_training,
                  killed_then_resumed, says, tiny_run, wait_for)


REQUIRED_SUMMARY = ["run_name", "width", "depth", "seed", "N", "D", "C", "total_flops", "epochs",
                    "final_test_loss_avg_last5", "final_test_acc_avg_last5", "best_test_loss",
                    "best_test_acc", "batch_size", "lr", "momentum", "weight_decay",
                    "wall_time_s", "device", "data_fingerprint", "timestamp"]


def test_cosine_lr_matches_torch_scheduler():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    for epoch in range(7):
        assert train.cosine_lr(epoch, 7, 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


def test_cosine_step_anneals_over_every_optimiser_step_and_the_optimiser_gets_each_lr(
        data_dir, tmp_path, monkeypatch):
    D, batch_size, epochs = 300, 64, 3       # 5 steps an epoch, the last one partial
    cfg = train.Config(dataset_size=D, batch_size=batch_size, num_epochs=epochs, lr=0.1,
                       scheduler="cosine_step")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=15)
    expected = []
    for step in range(15):
        expected.append(opt.param_groups[0]["lr"])
        assert train.learning_rate(cfg, step // 5, step % 5) == pytest.approx(expected[-1],
                                                                            rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()
    assert expected[-1] < 0.02 * 0.1   # annealed by the last step (per epoch: still lr/4 here)
    used = []
    real_step = torch.optim.SGD.step
    def step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    summary = tiny_run(data_dir, tmp_path, scheduler="cosine_step")
    assert used == pytest.approx(expected, rel=1e-12)
    assert summary["steps"] == 15
    assert list(epoch_rows(tmp_path, summary).lr) == pytest.approx(expected[::5])  # each epoch's first
    per_epoch = train.Config(num_epochs=epochs, lr=0.1)   # the recipe's default: one lr an epoch
    assert [train.learning_rate(per_epoch, e, b) for e in range(3) for b in (0, 4)] == \
        pytest.approx([0.1, 0.1, 0.075, 0.075, 0.025, 0.025])


def test_a_killed_cosine_step_run_resumes_to_the_uninterrupted_rows(data_dir, tmp_path,
                                                                   monkeypatch):
    whole = tiny_run(data_dir, tmp_path / "whole", scheduler="cosine_step")
    resumed = killed_then_resumed(data_dir, tmp_path / "resumed", monkeypatch,
                                  scheduler="cosine_step")
    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "resumed", resumed),
                                  epoch_rows(tmp_path / "whole", whole))


def test_eval_epochs_cover_every_test_freq_and_the_last_five():
    cfg = train.Config(num_epochs=12, test_freq=5)
    assert [e for e in range(1, 13) if train.is_eval_epoch(e, cfg)] == [5, 8, 9, 10, 11, 12]


def test_evaluation_count_is_the_eval_epochs_counted_without_visiting_them():
    """The count sweep.py and bench.py project evaluation time from; a plan of 10^11 epochs
    once made the dry run visit every epoch (minutes, not a line)."""
    for num_epochs in range(1, 30):
        for test_freq in (1, 2, 3, 5, 7, 10, 40):
            cfg = train.Config(num_epochs=num_epochs, test_freq=test_freq)
            visited = sum(train.is_eval_epoch(e, cfg) for e in range(1, num_epochs + 1))
            assert train.evaluation_count(num_epochs, test_freq) == visited, (num_epochs, test_freq)
    assert train.evaluation_count(10**11, 10) == 10**10 - 1 + 5   # 10^11 - 10 is the last multiple


def test_end_to_end_schema_and_last5_average(real_data_dir, tmp_path):
    summary = tiny_run(real_data_dir, tmp_path, num_epochs=7, test_freq=3)
    rows = pd.read_csv(tmp_path / "runs" / (summary["run_name"] + ".csv"))
    assert list(rows.columns[:7]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc",
                                      "lr", "epoch_time_s"]
    assert rows["epoch"].tolist() == list(range(1, 8))
    assert rows["test_loss"].notna().tolist() == [False, False, True, True, True, True, True]
    assert summary["final_test_loss_avg_last5"] == pytest.approx(rows["test_loss"].tail(5).mean())
    assert summary["final_test_acc_avg_last5"] == pytest.approx(rows["test_acc"].tail(5).mean())
    assert summary["best_test_loss"] == pytest.approx(rows["test_loss"].min())
    N, D = summary["N"], summary["D"]
    assert (D, summary["epochs"], summary["C"]) == (300, 7, N * 300 * 7)
    assert summary["total_flops"] == 3 * summary["flops_per_image"] * 300 * 7
    assert summary["status"] == "finished"

    final = pd.read_csv(tmp_path / "final_data.csv")
    assert set(REQUIRED_SUMMARY) <= set(final.columns) and len(final) == 1
    assert final.loc[0, "run_name"] == summary["run_name"]
    saved = json.loads((tmp_path / "runs" / (summary["run_name"] + ".json")).read_text())
    assert saved["final_test_loss_avg_last5"] == summary["final_test_loss_avg_last5"]
    assert not (tmp_path / "runs" / (summary["run_name"] + ".ckpt.pt")).exists()


def test_learning_happens(synthetic_data_dir, tmp_path):
    summary = tiny_run(synthetic_data_dir, tmp_path, dataset_size=500, num_epochs=5, width=8)
    rows = pd.read_csv(tmp_path / "runs" / (summary["run_name"] + ".csv"))
    assert rows["train_loss"].iloc[-1] < rows["train_loss"].iloc[0]
    assert summary["final_test_acc_avg_last5"] > 0.3  # 10 colour-coded classes: chance is 0.1


@pytest.mark.parametrize("loader", ["tensor", pytest.param("torchvision", marks=pytest.mark.slow)])
def test_same_seed_gives_identical_epochs(real_data_dir, tmp_path, loader):
    a = tiny_run(real_data_dir, tmp_path / "a", loader=loader)
    b = tiny_run(real_data_dir, tmp_path / "b", loader=loader)
    c = tiny_run(real_data_dir, tmp_path / "c", loader=loader, seed=1)
    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "a", a), epoch_rows(tmp_path / "b", b))
    assert not epoch_rows(tmp_path / "a", a).equals(epoch_rows(tmp_path / "c", c))
    assert a["data_fingerprint"] == c["data_fingerprint"]


def test_resumed_run_equals_uninterrupted(real_data_dir, tmp_path, monkeypatch):
    full = tiny_run(real_data_dir, tmp_path / "full", num_epochs=4)
    resumed = killed_then_resumed(real_data_dir, tmp_path / "resumed", monkeypatch, num_epochs=4)

    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "full", full),
                                  epoch_rows(tmp_path / "resumed", resumed))
    assert resumed["final_test_loss_avg_last5"] == full["final_test_loss_avg_last5"]
    assert len(pd.read_csv(tmp_path / "resumed" / "final_data.csv")) == 1


def test_divergence_is_recorded_not_raised(data_dir, tmp_path):
    summary = tiny_run(data_dir, tmp_path, lr=1e30, num_epochs=4)
    assert summary["status"] == "diverged" and summary["epochs"] < 4
    assert read_csv(str(tmp_path / "final_data.csv"))[0]["status"] == "diverged"


def test_a_diverged_run_is_skipped_on_a_rerun_and_collected(data_dir, tmp_path, monkeypatch):
    first = tiny_run(data_dir, tmp_path, lr=1e30, num_epochs=4)
    assert first["status"] == "diverged" and first["epochs"] < 4
    forbid_training(monkeypatch)
    again = tiny_run(data_dir, tmp_path, lr=1e30, num_epochs=4)  # not refused as damaged
    assert again["timestamp"] == first["timestamp"]
    assert sweep.collect(str(tmp_path))[0] == 1


def test_a_configuration_runs_once_at_a_time(data_dir, tmp_path):
    cfg = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path)})
    os.makedirs(tmp_path / "runs")
    with file_lock(str(tmp_path / "runs" / train.run_name(cfg))):
        with pytest.raises(train.ConfigError, match="already being trained"):
            train.train(cfg)


def test_unwritable_results_dir_is_refused_before_data_is_read(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setattr(train.data, "load_cifar10", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(train.ConfigError, match="--results_dir"):
        tiny_run("data", tmp_path / "a_file" / "results")


def test_run_experiment_refuses_unknown_options(tmp_path):
    with pytest.raises(train.ConfigError, match="widht"):
        tiny_run("data", tmp_path, widht=3)


@pytest.mark.slow
def test_cli_end_to_end_with_missing_data_prints_one_clear_error(tmp_path):
    """No traceback, exit status 1, and the message says where to put the files."""
    env = {**os.environ, "NO_PROXY": "*", "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "train.py", "--data_dir", str(tmp_path / "empty"),
                           "--results_dir", str(tmp_path / "r"), "--quiet", "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "error: CIFAR-10 was not found" in proc.stderr


def test_summary_records_the_last_evaluation_and_the_thread_count(data_dir, tmp_path):
    summary = tiny_run(data_dir, tmp_path, num_epochs=3, test_freq=1)
    rows = pd.read_csv(os.path.join(tmp_path, "runs", summary["run_name"] + ".csv"))
    assert summary["final_test_loss"] == rows.test_loss.iloc[-1]
    assert summary["final_test_acc"] == rows.test_acc.iloc[-1]
    assert summary["num_threads"] == torch.get_num_threads() and summary["budget"] == ""


# The ResNet-8 study's presets shrunk to seconds: only size, length and evaluation are overridden.
RESNET_TINY = dict(width=4, dataset_size=300, val_size=100, num_epochs=2, test_freq=1,
                   quiet=True, device="cpu")


def preset_run(data_dir, results_dir, preset, **overrides):
    cfg = train.make_config({"preset": preset, **RESNET_TINY, **overrides,
                             "data_dir": data_dir, "results_dir": str(results_dir)})
    return train.train(cfg)


def test_validation_is_logged_per_evaluation_and_summarised(data_dir, tmp_path):
    summary = preset_run(data_dir, tmp_path, "resnet8_sgd", num_epochs=3, test_freq=2)
    rows = pd.read_csv(tmp_path / "runs" / (summary["run_name"] + ".csv"))
    assert rows["val_loss"].notna().tolist() == rows["test_loss"].notna().tolist()
    assert summary["val_images"] == 100
    last5 = rows["val_loss"].dropna().tail(5).mean()
    assert summary["final_val_loss_avg_last5"] == pytest.approx(last5)
    assert summary["best_val_acc"] == pytest.approx(rows["val_acc"].max())
    split = json.loads((tmp_path / "runs" / summary["run_name"] / "split.json").read_text())
    available = len(data.load_cifar10(data_dir).train_labels)
    train_idx, val_idx = data.split_indices(available, 300, 100, subset_seed=42)  # the preset's
    assert split["train_indices"] == train_idx.tolist() and split["val_indices"] == val_idx.tolist()
    assert sweep.collect(str(tmp_path))[0] == 1  # the split file is not taken for a summary
    plain = tiny_run(data_dir, tmp_path / "plain", dataset_size=300, subset_seed=42)
    assert plain["data_fingerprint"] == summary["data_fingerprint"]  # the split keeps the D images
    assert np.isnan(plain["final_val_loss_avg_last5"]) and plain["val_images"] == 0


@pytest.mark.slow
def test_sgd_and_adamw_are_deterministic_and_differ(data_dir, tmp_path):
    sgd = [preset_run(data_dir, tmp_path / f"sgd{i}", "resnet8_sgd") for i in range(2)]
    adamw = preset_run(data_dir, tmp_path / "adamw", "resnet8_adamw")
    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "sgd0", sgd[0]),
                                  epoch_rows(tmp_path / "sgd1", sgd[1]))
    a, b = epoch_rows(tmp_path / "sgd0", sgd[0]), epoch_rows(tmp_path / "adamw", adamw)
    assert not np.allclose(a["train_loss"], b["train_loss"])
    assert (sgd[0]["betas"], adamw["momentum"]) == ("", "")  # unused settings are not recorded
    assert (sgd[0]["momentum"], adamw["betas"]) == (0.9, "0.9 0.999")
    assert sgd[0]["run_name"] != adamw["run_name"] and "_adamw_" in adamw["run_name"]


def test_save_model_writes_loadable_weights_and_metrics(data_dir, tmp_path):
    summary = preset_run(data_dir, tmp_path, "resnet8_adamw", save_model=True)
    folder = tmp_path / "runs" / summary["run_name"]
    model = build_model("resnet8", 4, 1)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["summary"]["final_test_loss_avg_last5"] == summary["final_test_loss_avg_last5"]
    assert metrics["config"]["optimizer"] == "adamw" and metrics["config"]["betas"] == [0.9, 0.999]


def test_grad_norms_are_logged_per_layer_and_survive_resume(data_dir, tmp_path, monkeypatch):
    summary = tiny_run(data_dir, tmp_path / "full", model="resnet8", log_grad_norms=True)
    rows = epoch_rows(tmp_path / "full", summary)
    columns = [c for c in rows if c.startswith("grad_norm_")]
    layers = {n.rsplit(".", 1)[0] for n, _ in build_model("resnet8", 4, 1).named_parameters()}
    assert {c[len("grad_norm_"):] for c in columns} == layers
    assert (rows[columns] > 0).all().all() and np.isfinite(rows[columns]).all().all()

    resumed = killed_then_resumed(data_dir, tmp_path / "resumed", monkeypatch, model="resnet8",
                                  log_grad_norms=True)
    pd.testing.assert_frame_equal(rows, epoch_rows(tmp_path / "resumed", resumed))


def test_speedrun_cpu_preset_runs_simplecnn(data_dir, tmp_path):
    summary = preset_run(data_dir, tmp_path, "speedrun_cpu", val_size=0, dataset_size=200,
                         width=4, num_epochs=1)
    assert (summary["model"], summary["bn"], summary["augment"], summary["preset"]) == \
        ("simplecnn", False, False, "speedrun_cpu")
    assert summary["status"] == "finished"


@pytest.mark.slow
def test_trackio_logs_every_epoch_and_finishes(data_dir, tmp_path):
    pytest.importorskip("trackio")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    run = subprocess.run(
        [sys.executable, "train.py", "--width", "4", "--depth", "1", "--dataset_size", "200",
         "--num_epochs", "3", "--test_freq", "2", "--device", "cpu", "--quiet",
         "--data_dir", data_dir, "--results_dir", str(tmp_path / "r"), "--trackio", "lab-test"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    name = pd.read_csv(tmp_path / "r" / "final_data.csv")["run_name"][0]
    read = subprocess.run(
        [sys.executable, "-c", "import json, sys; from trackio.sqlite_storage import SQLiteStorage;"
         "print(json.dumps(SQLiteStorage.get_logs(sys.argv[1], sys.argv[2])))", "lab-test", name],
        env=env, capture_output=True, text=True, timeout=120)
    logged = json.loads(read.stdout.strip().splitlines()[-1])
    csv = pd.read_csv(tmp_path / "r" / "runs" / (name + ".csv"))
    assert [r["epoch"] for r in logged] == csv["epoch"].tolist()
    assert [r["train_loss"] for r in logged] == pytest.approx(csv["train_loss"].tolist())
    assert [("test_loss" in r) for r in logged] == csv["test_loss"].notna().tolist()


def test_trackio_run_is_finished_when_training_fails(data_dir, tmp_path, monkeypatch):
    trackio = pytest.importorskip("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    calls = []
    monkeypatch.setattr(trackio, "init", lambda **kw: calls.append("init"))
    monkeypatch.setattr(trackio, "log", lambda *a, **kw: calls.append("log"))
    monkeypatch.setattr(trackio, "finish", lambda: calls.append("finish"))
    def crash(*args):
        raise RuntimeError("device-side assert triggered")
    monkeypatch.setattr(train, "train_epoch", crash)
    with pytest.raises(RuntimeError, match="device-side assert"):
        tiny_run(data_dir, tmp_path / "r", trackio="lab-test")
    assert calls == ["init", "finish"]


def named_run(data_dir, results_dir, **options):
    cfg = train.make_config({**TINY, "num_epochs": 1, "save_model": True, "data_dir": data_dir,
                             "results_dir": str(results_dir), **options})
    return train.train(cfg)


def test_every_run_saves_its_resolved_config_beside_its_summary(data_dir, tmp_path):
    summary = named_run(data_dir, tmp_path, save_model=False, lr=0.05)
    saved = tmp_path / "runs" / (summary["run_name"] + ".yaml")
    cfg = train.parse_config(["--config", str(saved)])
    assert train.run_name(cfg) == summary["run_name"] and cfg.lr == 0.05
    assert sorted(p.name for p in (tmp_path / "runs").glob("*.json")) == [summary["run_name"] + ".json"]


def test_experiment_name_names_the_saved_model_folder_and_one_configuration(data_dir, tmp_path):
    anonymous = named_run(data_dir, tmp_path / "a")
    summary = named_run(data_dir, tmp_path / "b", experiment_name="sgd_seed42")
    assert summary["run_name"] == anonymous["run_name"]  # sweeps and analysis unaffected
    assert summary["config_id"] == anonymous["config_id"]
    assert summary["experiment_name"] == "sgd_seed42"
    folder = tmp_path / "b" / "runs" / "sgd_seed42"
    build_model("cnn", 4, 1).load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["summary"]["run_name"] == summary["run_name"]
    assert not (tmp_path / "b" / "runs" / summary["run_name"] / "model.pt").exists()
    assert named_run(data_dir, tmp_path / "b", experiment_name="sgd_seed42")  # a rerun is fine

    before = {p: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(train.ConfigError, match="already names run " + summary["run_name"]):
        named_run(data_dir, tmp_path / "b", experiment_name="sgd_seed42", seed=1)
    assert {p: p.read_bytes() for p in folder.iterdir()} == before  # nothing overwritten
    other = train.run_name(train.make_config({**TINY, "num_epochs": 1, "seed": 1}))
    assert not (tmp_path / "b" / "runs" / (other + ".csv")).exists()  # refused before training


def test_a_name_whose_run_never_trained_can_be_given_to_another_configuration(data_dir, tmp_path,
                                                                             monkeypatch):
    def too_big(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3e11 bytes")
    with monkeypatch.context() as patch:
        patch.setattr(train, "build_model", too_big)
        with pytest.raises(train.ConfigError, match="does not fit"):
            named_run(data_dir, tmp_path, experiment_name="big", width=8)
    summary = named_run(data_dir, tmp_path, experiment_name="big")  # the corrected width
    assert summary["experiment_name"] == "big" and summary["width"] == 4
    assert (tmp_path / "runs" / "big" / "model.pt").exists()


def kill_after_summary(data_dir, tmp_path, monkeypatch, **overrides):
    """Runs tiny_run and kills it between writing the summary and appending its row."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the summary was written")
    monkeypatch.setattr(train, "append_row", killed)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data_dir, tmp_path, **overrides)
    monkeypatch.undo()


def test_rerun_of_a_finished_run_is_skipped_and_force_retrains_it(data_dir, tmp_path, monkeypatch,
                                                                   capsys):
    first = tiny_run(data_dir, tmp_path, quiet=False)
    forbid_training(monkeypatch)
    again = tiny_run(data_dir, tmp_path, resume=True, quiet=False)
    assert again["timestamp"] == first["timestamp"] and "already finished" in capsys.readouterr().out
    assert len(read_csv(str(tmp_path / "final_data.csv"))) == 1
    monkeypatch.undo()
    forced = tiny_run(data_dir, tmp_path, resume=True, force=True)
    rows = read_csv(str(tmp_path / "final_data.csv"))
    assert [r["timestamp"] for r in rows] == [forced["timestamp"]]  # replaced, not duplicated


def test_a_killed_force_retrain_counts_as_unfinished_and_resume_continues_it(data_dir, tmp_path,
                                                                            monkeypatch):
    first = tiny_run(data_dir, tmp_path)
    stem, first_rows = tmp_path / "runs" / first["run_name"], epoch_rows(tmp_path, first)
    real_save, epochs_trained = records.save_checkpoint, []
    def save_then_crash(path, model, optimizer, rows, cfg):
        real_save(path, model, optimizer, rows, cfg)
        epochs_trained.append(len(rows))
        if len(rows) == 2:
            raise KeyboardInterrupt("killed after epoch 2")
    monkeypatch.setattr(records, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data_dir, tmp_path, force=True)
    # the old summary is kept aside; nothing marks the run finished any more
    assert records.read_summary(str(stem) + records.REPLACED)["timestamp"] == first["timestamp"]
    assert not stem.with_suffix(".json").exists() and read_csv(str(tmp_path / "final_data.csv")) == []
    assert first["run_name"] not in sweep.finished_names(str(tmp_path))

    time.sleep(1.05)  # summaries are stamped to the second: the new one must differ
    resumed = tiny_run(data_dir, tmp_path, resume=True)  # no --force: a plain resume
    assert epochs_trained == [1, 2, 3]  # epoch 3 only, from the retrain's checkpoint
    assert resumed["timestamp"] != first["timestamp"]
    assert [r["timestamp"] for r in read_csv(str(tmp_path / "final_data.csv"))] == [resumed["timestamp"]]
    assert not os.path.exists(str(stem) + records.REPLACED) and not stem.with_suffix(".ckpt.pt").exists()
    pd.testing.assert_frame_equal(epoch_rows(tmp_path, resumed), first_rows)  # same seed, same run


def test_force_leaves_the_checkpoint_of_a_run_another_process_is_training(data_dir, tmp_path):
    cfg = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path), "force": True})
    stem = tmp_path / "runs" / train.run_name(cfg)
    os.makedirs(tmp_path / "runs")
    stem.with_suffix(".json").write_text("{}")  # the old summary; another process retrains it
    stem.with_suffix(".ckpt.pt").write_bytes(b"its latest epoch")
    with file_lock(str(stem)):
        with pytest.raises(train.ConfigError, match="already being trained"):
            train.train(cfg)
    assert stem.with_suffix(".ckpt.pt").read_bytes() == b"its latest epoch"


def test_kill_between_summary_and_cleanup_does_not_cause_a_rerun(data_dir, tmp_path, monkeypatch):
    kill_after_summary(data_dir, tmp_path, monkeypatch, keep_checkpoints=False)
    name = train.run_name(train.Config(**{**TINY, "data_dir": data_dir}))
    assert (tmp_path / "runs" / f"{name}.ckpt.pt").exists()
    forbid_training(monkeypatch)
    tiny_run(data_dir, tmp_path, resume=True)
    assert [r["run_name"] for r in read_csv(str(tmp_path / "final_data.csv"))] == [name]
    assert not (tmp_path / "runs" / f"{name}.ckpt.pt").exists()


def test_a_summary_without_its_row_is_left_for_a_sweep_to_launch_again(data_dir, tmp_path,
                                                                       monkeypatch):
    # a sweep that skipped it would leave its row out of final_data.csv for good
    kill_after_summary(data_dir, tmp_path, monkeypatch)
    name = train.run_name(train.Config(**{**TINY, "data_dir": data_dir}))
    assert (tmp_path / "runs" / f"{name}.json").exists()
    assert name not in sweep.finished_names(str(tmp_path))
    forbid_training(monkeypatch)
    tiny_run(data_dir, tmp_path, resume=True)  # what the sweep launches: the row, no training
    assert name in sweep.finished_names(str(tmp_path))


def test_a_full_disk_before_the_summary_leaves_the_run_to_resume_whole(data_dir, tmp_path,
                                                                      monkeypatch):
    # the summary marks a run finished: files written after it would be missing for good
    real_write = train.atomic_write
    def full_at_yaml(path, *args, **kwargs):
        if path.endswith(".yaml"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_write(path, *args, **kwargs)
    monkeypatch.setattr(train, "atomic_write", full_at_yaml)
    with pytest.raises(OSError):
        tiny_run(data_dir, tmp_path, save_model=True)
    name = train.run_name(train.Config(**{**TINY, "data_dir": data_dir}))
    assert not (tmp_path / "runs" / f"{name}.json").exists()
    monkeypatch.setattr(train, "atomic_write", real_write)
    monkeypatch.setattr(records, "save_checkpoint",  # every epoch is in the checkpoint
                        lambda *a, **k: pytest.fail("trained an epoch again"))
    tiny_run(data_dir, tmp_path, resume=True, save_model=True)
    for written in (f"{name}.json", f"{name}.yaml", f"{name}/model.pt"):
        assert (tmp_path / "runs" / written).exists()
    assert [r["run_name"] for r in read_csv(str(tmp_path / "final_data.csv"))] == [name]


def test_a_force_retrain_killed_after_its_summary_leaves_nothing_set_aside(data_dir, tmp_path,
                                                                            monkeypatch):
    name = tiny_run(data_dir, tmp_path)["run_name"]
    kill_after_summary(data_dir, tmp_path, monkeypatch, force=True)
    replaced = tmp_path / "runs" / (name + records.REPLACED)
    assert replaced.exists()
    forbid_training(monkeypatch)
    retrained = tiny_run(data_dir, tmp_path, resume=True)
    assert [r["timestamp"] for r in read_csv(str(tmp_path / "final_data.csv"))] == [retrained["timestamp"]]
    assert not replaced.exists()


def test_a_damaged_summary_is_named_by_train_py_and_collect_without_a_traceback(data_dir, tmp_path,
                                                                              capsys):
    tiny_run(data_dir, tmp_path, seed=1)
    final = tmp_path / "final_data.csv"
    before = final.read_text()
    path = damage_summary(tmp_path, train.Config(**{**TINY, "data_dir": data_dir}))
    flags = [f"--{k}={v}" for k, v in TINY.items() if k != "quiet"]
    named = re.escape(path)
    with pytest.raises(SystemExit, match=rf"error: {named} is not a readable run summary.*--force"):
        train.main([*flags, "--quiet", f"--data_dir={data_dir}", f"--results_dir={tmp_path}"])
    with pytest.raises(SystemExit, match=rf"1 damaged run summaries.*\n  {named}"):
        sweep.main(["collect", "--results_dir", str(tmp_path)])
    assert final.read_text() == before  # left as it was, no backup taken
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".bak")] == []
    train.main([*flags, "--quiet", f"--data_dir={data_dir}", f"--results_dir={tmp_path}", "--force"])
    assert sweep.collect(str(tmp_path))[0] == 2  # the way out the message gives


@pytest.mark.slow
def test_sigterm_stops_train_py_without_a_traceback(data_dir, tmp_path):
    argv = [sys.executable, "train.py", "--width=2", *SLOW_FLAGS, f"--data_dir={data_dir}",
            f"--results_dir={tmp_path}", "--quiet"]
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(list((tmp_path / "runs").glob("*.ckpt.pt"))) == 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "rerun with --resume" in err


def test_divergence_is_seen_in_the_parameters_and_the_evaluation_losses():
    model = torch.nn.Linear(2, 2)
    assert not train.is_diverged((1.0, "", 2.0), train.params_finite(model))
    assert train.is_diverged((1.0, float("inf"), ""), train.params_finite(model))  # test loss
    assert train.is_diverged((1.0, "", float("nan")), train.params_finite(model))  # validation loss
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    assert train.is_diverged((1.0, "", ""), train.params_finite(model))  # finite losses do not clear it


@pytest.mark.slow
@pytest.mark.parametrize("lr,dataset_size", [(1e6, 256), (1000.0, 2000)])
def test_a_huge_lr_is_never_recorded_as_finished_with_a_non_finite_loss(real_data_dir, tmp_path,
                                                                         lr, dataset_size):
    if dataset_size > len(data.load_cifar10(real_data_dir).train_labels):
        pytest.skip(f"needs {dataset_size} training images (the real CIFAR-10 under data/)")
    summary = tiny_run(real_data_dir, tmp_path, lr=lr, dataset_size=dataset_size, num_epochs=3,
                       test_freq=1)
    assert summary["status"] == "diverged"
    assert read_csv(str(tmp_path / "final_data.csv"))[0]["status"] == "diverged"


def test_out_of_memory_names_the_configuration(data_dir, tmp_path, monkeypatch):
    def too_big(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3e11 bytes")
    monkeypatch.setattr(train, "build_model", too_big)
    with pytest.raises(train.ConfigError, match=r"cnn width 4 depth 1 \(N=.*does not fit in cpu memory"):
        tiny_run(data_dir, tmp_path)


def test_a_nondeterministic_op_is_refused_with_the_way_out(data_dir, tmp_path, monkeypatch):
    utils.set_seed(0, True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # fail, not warn

    def no_kernel(*args, **kwargs):
        raise RuntimeError("max_unpool2d does not have a deterministic implementation, but you set ...")
    monkeypatch.setattr(train, "build_model", no_kernel)
    with pytest.raises(train.ConfigError, match="--no_deterministic"):
        tiny_run(data_dir, tmp_path)


def test_no_stale_lock_after_a_run_or_an_offline_failure(data_dir, tmp_path):
    tiny_run(data_dir, tmp_path / "ok")
    assert not list((tmp_path / "ok" / "runs").glob("*.lock"))
    with pytest.raises(data.DataError):
        tiny_run(str(tmp_path / "no_data"), tmp_path / "offline", device="cpu")
    assert not (tmp_path / "offline").exists()


def test_resume_with_grad_norms_newly_switched_on(data_dir, tmp_path):
    first = tiny_run(data_dir, tmp_path, num_epochs=4, keep_checkpoints=True)
    stem = tmp_path / "runs" / first["run_name"]
    os.remove(f"{stem}.json")  # as if killed after epoch 2
    state = records.read_checkpoint(f"{stem}.ckpt.pt")
    state["rows"] = state["rows"][:2]
    torch.save(state, f"{stem}.ckpt.pt")  # without the checksum header: a checkpoint of older code
    again = tiny_run(data_dir, tmp_path, num_epochs=4, resume=True, log_grad_norms=True)
    rows = pd.read_csv(f"{stem}.csv")
    assert again["status"] == "finished"
    assert rows["grad_norm_head"].isna().tolist() == [True, True, False, False]


def test_summary_records_optimiser_steps(data_dir, tmp_path):
    summary = tiny_run(data_dir, tmp_path, dataset_size=300, batch_size=64, num_epochs=3)
    assert summary["steps"] == 3 * 5  # ceil(300 / 64) = 5 steps an epoch


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes(data_dir, tmp_path, monkeypatch,
                                                                capsys):
    flags = [f"--{k}={v}" for k, v in TINY.items() if k != "quiet"] + [
        "--num_epochs=3", "--quiet", f"--data_dir={data_dir}", f"--results_dir={tmp_path}"]
    real_save, saved = records.save_checkpoint, []

    def full_at_epoch_2(path, model, optimizer, rows, cfg):
        if len(rows) == 2:
            raise OSError(28, "No space left on device", path)
        saved.append(len(rows))
        real_save(path, model, optimizer, rows, cfg)
    monkeypatch.setattr(records, "save_checkpoint", full_at_epoch_2)
    with pytest.raises(SystemExit) as exit_:  # was: an OSError traceback
        train.main(flags)
    message = capsys.readouterr().err
    assert exit_.value.code == records.DISK_FULL_EXIT  # tells a sweep to launch nothing more
    assert message.startswith("error: no space left on the device writing ")
    assert ".ckpt.pt" in message and "MiB free there" in message and "--resume" in message
    assert "the epochs it finished are in its checkpoint" in message
    monkeypatch.undo()
    train.main(flags + ["--resume"])
    resumed = pd.read_csv(next((tmp_path / "runs").glob("*.csv")))
    train.main(flags + ["--force", f"--results_dir={tmp_path / 'again'}"])
    whole = pd.read_csv(next((tmp_path / "again" / "runs").glob("*.csv")))
    pd.testing.assert_frame_equal(resumed.drop(columns=list(TIME_COLUMNS)),
                                  whole.drop(columns=list(TIME_COLUMNS)))


@pytest.mark.parametrize("damage", ["all bytes", "bytes mid-file"])
def test_a_final_data_csv_that_is_not_text_is_named_before_training(tmp_path, monkeypatch,
                                                                      capsys, damage):
    whole = "run_name,N,loss\na,1,0.5\nb,2,0.4\n".encode()
    (tmp_path / "final_data.csv").write_bytes(  # mid-file: header and last row intact
        bytes(range(256)) if damage == "all bytes" else whole[:20] + b"\x00\xff\xfe\x80" + whole[20:])
    forbid_training(monkeypatch)
    with pytest.raises(SystemExit) as exit_:  # was: a UnicodeDecodeError traceback
        train.main(["--width=2", "--depth=1", "--num_epochs=1", f"--results_dir={tmp_path}"])
    assert exit_.value.code == 2
    says(capsys.readouterr().err, "final_data.csv", "not a CSV")


@pytest.mark.parametrize("text,message", [
    ("a,b,c\n" + ",".join(["x"] * 63) + "\n",
     "line 2 has 63 fields, more than the header line's 3"),
    ("N,loss\n1,0.5\n", "has no run_name column in its header line"),
])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_final_data_csv_under_a_wrong_header_is_named_before_training(tmp_path, monkeypatch,
                                                                         capsys, text, message,
                                                                         command):
    (tmp_path / "final_data.csv").write_text(text)
    forbid_training(monkeypatch)
    argv = ["--width=2", "--depth=1", "--num_epochs=1", f"--results_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_:  # was: a traceback after training; sweep: KeyError
        if command == "train":
            train.main(argv)
        sweep.main(["width", "--widths", "2", "--"] + argv)
    assert exit_.value.code not in (0, None)
    assert message in capsys.readouterr().err + str(exit_.value.code)
    assert (tmp_path / "final_data.csv").read_text() == text


def test_a_full_disk_before_the_first_checkpoint_does_not_promise_one(data_dir, tmp_path,
                                                                      monkeypatch, capsys):
    def full(path, model, optimizer, rows, cfg):
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(records, "save_checkpoint", full)
    flags = [f"--{k}={v}" for k, v in TINY.items() if k != "quiet"] + [
        "--num_epochs=2", "--quiet", f"--data_dir={data_dir}", f"--results_dir={tmp_path}"]
    with pytest.raises(SystemExit):
        train.main(flags)
    message = capsys.readouterr().err  # was: "the epochs it finished are in its checkpoint"
    says(message, "before its first checkpoint", "free some space")


def test_a_stop_before_the_first_checkpoint_promises_no_resume(tmp_path, monkeypatch, capsys):
    def stopped_in_epoch_1(cfg):
        raise train.Stopped(signal.SIGTERM)
    monkeypatch.setattr(train, "train", stopped_in_epoch_1)
    with pytest.raises(SystemExit) as exit_:
        train.main(["--width=2", "--depth=1", "--num_epochs=1", f"--results_dir={tmp_path}"])
    assert exit_.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err  # was: "the epochs it finished are in its checkpoint"
    assert err.endswith("stopped by SIGTERM; before its first epoch ended: nothing to resume yet\n")


def test_resume_refuses_a_checkpoint_another_run_saved(data_dir, tmp_path):
    other = tiny_run(data_dir, tmp_path, seed=1, num_epochs=2, keep_checkpoints=True)
    runs = tmp_path / "runs"
    mine = other["run_name"].replace("_s1_", "_s0_")
    (runs / f"{mine}.ckpt.pt").write_bytes((runs / f"{other['run_name']}.ckpt.pt").read_bytes())
    with pytest.raises(train.ConfigError, match=f"belongs to another run .it was saved by run "
                                                f"{other['run_name']}"):
        tiny_run(data_dir, tmp_path, seed=0, num_epochs=2, resume=True)  # was: seed 1's curve as seed 0's
    assert not (runs / f"{mine}.json").exists()


def test_a_killed_run_rerun_without_resume_continues_and_says_so(data_dir, tmp_path, monkeypatch,
                                                                 capsys):
    """Forgetting --resume must not throw a killed run's epochs away: the rerun continues from its
    checkpoint with one line saying so, to the rows an uninterrupted run gives; --force starts
    a killed run over."""
    import records
    whole = tiny_run(data_dir, tmp_path / "whole")
    real_save, epochs = records.save_checkpoint, []

    def save_then_crash(path, model, optimizer, rows, cfg):
        real_save(path, model, optimizer, rows, cfg)
        epochs.append(len(rows))
        if len(rows) == 2 and len(epochs) == 2:
            raise KeyboardInterrupt("killed after epoch 2")
    monkeypatch.setattr(records, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data_dir, tmp_path / "killed")
    capsys.readouterr()
    again = tiny_run(data_dir, tmp_path / "killed", quiet=False)   # no --resume
    assert epochs == [1, 2, 3]   # only epoch 3 trained again
    says(capsys.readouterr().err, "continuing from its checkpoint", "epoch 2 of 3")
    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "killed", again),
                                  epoch_rows(tmp_path / "whole", whole))
    epochs.clear()
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data_dir, tmp_path / "forced")
    tiny_run(data_dir, tmp_path / "forced", force=True)
    assert epochs == [1, 2, 1, 2, 3]   # started over
