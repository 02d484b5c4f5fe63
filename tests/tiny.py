"""Helpers the test files share: tiny end-to-end runs of train.py, what they wrote, and a way to
assert that a message names what the user needs without pinning its sentence."""
import os
import time

import pandas as pd
import pytest

import records
import train

TINY = dict(width=4, depth=1, dataset_size=300, num_epochs=3, test_freq=10, batch_size=64,
            quiet=True, device="cpu")
TIME_COLUMNS = ["epoch_time_s", "eval_time_s"]
# a run that trains for minutes: long enough to be stopped while it trains
SLOW_FLAGS = ["--depth=1", "--dataset_size=500", "--num_epochs=300", "--test_freq=1000",
              "--batch_size=32", "--device=cpu"]


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


def forbid_training(monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained again"))


def damage_summary(results_dir, cfg) -> str:
    """A summary cut off mid-write (a full disk, a hand edit); returns its path."""
    path = os.path.join(str(results_dir), "runs", train.run_name(cfg) + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('{"run_name": "cnn_w4')
    return path


def wait_for(condition, timeout_s=60):
    deadline = time.time() + timeout_s
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def parse_fails(argv, capsys):
    """train.py's parser refuses argv (exit status 2); its message."""
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def says(text: str, *parts: str) -> None:
    """The message names each of parts (a flag, the value given, the way out), in any wording."""
    missing = [part for part in parts if part not in text]
    assert not missing, f"{missing} not in {text!r}"
