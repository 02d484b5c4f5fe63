import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import records
import train
from conftest import REPO
from records import file_lock, read_csv

TINY = dict(width=4, depth=1, dataset_size=300, num_epochs=3, test_freq=10, batch_size=64,
            quiet=True, device="cpu")
TIME_COLUMNS = ["epoch_time_s", "eval_time_s"]
REQUIRED_SUMMARY = ["run_name", "width", "depth", "seed", "N", "D", "C", "total_flops", "epochs",
                    "final_test_loss_avg_last5", "final_test_acc_avg_last5", "best_test_loss",
                    "best_test_acc", "batch_size", "lr", "momentum", "weight_decay",
                    "wall_time_s", "device", "data_fingerprint", "timestamp"]


def tiny_run(data_dir, results_dir, **overrides):
    options = {**TINY, **overrides}
    return train.run_experiment(options.pop("seed", 0), options.pop("batch_size"),
                                options.pop("num_epochs"), options.pop("test_freq"),
                                options.pop("width"), options.pop("depth"),
                                options.pop("dataset_size"), data_dir=data_dir,
                                results_dir=str(results_dir), **options)


def epoch_rows(results_dir, summary):
    frame = pd.read_csv(os.path.join(results_dir, "runs", summary["run_name"] + ".csv"))
    return frame.drop(columns=TIME_COLUMNS)


def test_cosine_lr_matches_torch_scheduler():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    for epoch in range(7):
        assert train.cosine_lr(epoch, 7, 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


def test_eval_epochs_cover_every_test_freq_and_the_last_five():
    cfg = train.Config(num_epochs=12, test_freq=5)
    assert [e for e in range(1, 13) if train.is_eval_epoch(e, cfg)] == [5, 8, 9, 10, 11, 12]


def test_run_name_is_a_function_of_the_configuration():
    a, b = train.Config(width=8), train.Config(width=8, quiet=True, results_dir="elsewhere")
    assert train.run_name(a) == train.run_name(b)
    assert train.run_name(a) != train.run_name(train.Config(width=8, lr=0.05))
    assert train.config_id(a) == train.config_id(train.Config(width=8, seed=3))
    assert train.run_name(a) != train.run_name(train.Config(width=8, seed=3))


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


@pytest.mark.parametrize("loader", ["tensor", "torchvision"])
def test_same_seed_gives_identical_epochs(real_data_dir, tmp_path, loader):
    a = tiny_run(real_data_dir, tmp_path / "a", loader=loader)
    b = tiny_run(real_data_dir, tmp_path / "b", loader=loader)
    c = tiny_run(real_data_dir, tmp_path / "c", loader=loader, seed=1)
    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "a", a), epoch_rows(tmp_path / "b", b))
    assert not epoch_rows(tmp_path / "a", a).equals(epoch_rows(tmp_path / "c", c))
    assert a["data_fingerprint"] == c["data_fingerprint"]


def killed_then_resumed(data_dir, results_dir, monkeypatch, **overrides):
    """A run killed right after epoch 2's checkpoint, then resumed; returns its summary."""
    real_save = records.save_checkpoint
    def save_then_crash(path, model, optimizer, rows, cfg):
        real_save(path, model, optimizer, rows, cfg)
        if len(rows) == 2:
            raise KeyboardInterrupt("killed after epoch 2")
    monkeypatch.setattr(records, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data_dir, results_dir, **overrides)
    monkeypatch.setattr(records, "save_checkpoint", real_save)
    return tiny_run(data_dir, results_dir, resume=True, **overrides)


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


def test_a_configuration_runs_once_at_a_time(data_dir, tmp_path):
    cfg = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path)})
    os.makedirs(tmp_path / "runs")
    with file_lock(str(tmp_path / "runs" / train.run_name(cfg))):
        with pytest.raises(train.ConfigError, match="already being trained"):
            train.train(cfg)


BAD_FLAGS = [
    (["--width", "0"], "--width must be >= 1"),
    (["--depth", "-1"], "--depth must be >= 1"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--num_epochs", "0"], "--num_epochs must be >= 1"),
    (["--test_freq", "0"], "--test_freq must be >= 1"),
    (["--dataset_size", "0"], "--dataset_size must be in 1..50000"),
    (["--dataset_size", "50001"], "--dataset_size must be in 1..50000"),
    (["--device", "tpu"], "--device"),
    (["--width", "four"], "invalid int value"),
    (["--loader", "dali"], "invalid choice"),
    (["--no_such_flag", "1"], "unrecognized arguments"),
    # sizes no machine holds: refused from the closed-form N, before torch overflows or hangs
    (["--width", str(2 ** 63 - 1)], "has N=23,734,695,092,735,457,822"),
    (["--depth", "100000000"], "more than this machine's"),
    # combinations (the CPU speedrun's and the ResNet-8 study's flags)
    (["--betas", "0.9", "0.99"], "--betas applies only with --optimizer adamw"),
    (["--optimizer", "adamw", "--momentum", "0.5"], "--momentum applies only with --optimizer sgd"),
    (["--val_size", "5000", "--dataset_size", "46000"], "exceed the 50,000 training images"),
    (["--val_size", "50000"], "--val_size must be in"),
    (["--val_size", "12.5"], "whole number of images or a fraction"),
    (["--bn"], "--bn is a switch of --model simplecnn"),
    (["--model", "resnet8", "--optimizer", "adamw", "--betas", "0.9", "1.5"], "--betas must be in"),
    (["--preset", "resnet9"], "--preset must be one of ['none', 'resnet8_adamw', 'resnet8_sgd'"),
    (["--scheduler", "step"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD_FLAGS)
def test_bad_flags_are_refused_with_the_flag_named(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv + ["--results_dir", str(tmp_path / "results")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_unwritable_results_dir_is_refused_before_data_is_read(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setattr(train.data, "load_cifar10", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(train.ConfigError, match="--results_dir"):
        tiny_run("data", tmp_path / "a_file" / "results")


def test_run_experiment_refuses_unknown_options(tmp_path):
    with pytest.raises(train.ConfigError, match="widht"):
        tiny_run("data", tmp_path, widht=3)


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
    assert "continuing from its checkpoint after epoch 2 of 3" in capsys.readouterr().err
    pd.testing.assert_frame_equal(epoch_rows(tmp_path / "killed", again),
                                  epoch_rows(tmp_path / "whole", whole))
    epochs.clear()
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data_dir, tmp_path / "forced")
    tiny_run(data_dir, tmp_path / "forced", force=True)
    assert epochs == [1, 2, 1, 2, 3]   # started over
