"""Config files, --print_config and named experiments: the ResNet-8 study's way of driving
runs, on top of the same Config table as the flags."""
import dataclasses
import json
import os

import pytest
import torch

import config
import train
from conftest import REPO
from model import build_model
from test_train import TINY

CONFIG_DIR = os.path.join(REPO, "config")


def parse_fails(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("preset", ["resnet8_sgd", "resnet8_adamw", "speedrun_cpu"])
def test_a_preset_is_its_config_file(preset):
    """--preset NAME and --config config/NAME.yaml are one configuration (only the label
    differs), and the run names are those the presets had as a table in train.py."""
    path = os.path.join(CONFIG_DIR, f"{preset}.yaml")
    from_file = train.parse_config(["--config", path])
    assert dataclasses.replace(from_file, preset=preset) == train.parse_config(["--preset", preset])
    assert train.run_name(from_file) == dict(
        resnet8_sgd="resnet8_w16_d1_D45000_e200_s42_f2a334b39c",
        resnet8_adamw="resnet8_w16_d1_D45000_e200_s42_adamw_e8c021878b",
        speedrun_cpu="simplecnn_w32_d1_D50000_e10_s0_a3e74dec87")[preset]


def test_a_new_preset_is_one_file(tmp_path, monkeypatch):
    (tmp_path / "tiny_sgd.yaml").write_text("# a tiny study\nwidth: 4\nlr: 0.05\n")
    monkeypatch.setattr(config, "PRESET_DIR", str(tmp_path))
    monkeypatch.setattr(config, "presets", config.presets.__wrapped__)  # uncached: reads tmp_path
    cfg = train.parse_config(["--preset", "tiny_sgd", "--lr", "0.1"])
    assert (cfg.width, cfg.lr, cfg.preset) == (4, 0.1, "tiny_sgd")  # the flag over the file
    assert "tiny_sgd: a tiny study\n    --width 4 --lr 0.05" in config.presets_text()


@pytest.mark.parametrize("text,message", [
    ("lrr: 0.1\n", "unknown key(s) ['lrr']"),
    ("lr: fast\n", "key 'lr' must be float, got 'fast'"),
    ("width: 8.5\n", "key 'width' must be int, got 8.5"),
    ("augment: 1\n", "key 'augment' must be bool, got 1"),
    ("compile: false\n", "key 'compile' must be str, got False (bool) (quote it for a string)"),
    # YAML 1.1's guesses, refused with the line named (were: the last key kept, 010 read as 8)
    ("compile: off\n", "is ambiguous: 'off' is a boolean only by YAML 1.1's guess"),
    ("augment: yes\n", "is ambiguous: 'yes' is a boolean only by YAML 1.1's guess"),
    ("width: 8\nlr: 0.1\nwidth: 16\n", "is ambiguous: key 'width' is given twice"),
    ("width: 010\n", "is ambiguous: '010' is read by YAML 1.1 as octal"),
    ("width: 0x10\n", "is ambiguous: '0x10' is read by YAML 1.1 as octal, hexadecimal"),
    ("num_epochs: 1:30\n", "line 1, column 13"),
    ("betas: [0.9]\n", "key 'betas' must be a list of 2 floats"),
    ("optimizer:\n  type: sgd\n", "key 'optimizer' must be str, got {'type': 'sgd'}"),
    ("- lr\n- 0.1\n", "must be a mapping of settings (key: value), got a list"),
    ("", "must be a mapping of settings (key: value), got an empty file"),
    ("lr: [0.1\n", "is not valid YAML"),
])
def test_bad_config_files_are_refused_naming_file_and_key(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    err = parse_fails(["--config", str(path)], capsys)
    assert f"config file {path}" in err and message in err


def test_missing_config_file_and_bad_values_are_refused_clearly(tmp_path, capsys):
    err = parse_fails(["--config", str(tmp_path / "none.yaml")], capsys)
    assert f"cannot read config file {tmp_path / 'none.yaml'}: No such file" in err
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00lr")
    assert "is not a text file" in parse_fails(["--config", str(tmp_path / "binary.yaml")], capsys)
    path = tmp_path / "c.yaml"
    path.write_text("lr: -1\noptimizer: adamw\nmomentum: 0.9\n")  # ranges and combinations as flags
    err = parse_fails(["--config", str(path)], capsys)
    assert "--lr must be >= 0.0" in err and "--momentum applies only with --optimizer sgd" in err
    assert f"settings from {path}" in err


def test_a_typed_preset_beside_a_config_file_is_refused(capsys):
    with pytest.raises(SystemExit):  # was: resnet8 with the speedrun's augment: false, unlabelled
        train.parse_config(["--preset", "speedrun_cpu", "--config",
                            os.path.join(CONFIG_DIR, "resnet8_sgd.yaml")])
    assert "--preset speedrun_cpu and a --config file both give a recipe" in capsys.readouterr().err


def test_preset_then_file_then_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: resnet8_sgd\nlr: 1e-3\nseed: 7\nbetas: [0.8, 0.99]\n")
    cfg = train.parse_config(["--config", str(path), "--seed", "3", "--optimizer", "adamw"])
    assert (cfg.model, cfg.batch_size, cfg.scheduler) == ("resnet8", 128, "none")  # the preset
    assert (cfg.lr, cfg.betas) == (0.001, (0.8, 0.99))  # the file over the preset (1e-3: a float)
    assert (cfg.seed, cfg.optimizer) == (3, "adamw")  # the command line over the file
    # The ResNet-8 study's flow: the SGD file with the optimizer switched on the command line. The
    # file's momentum stops applying, as the preset's would; in the file beside adamw it is refused.
    switched = train.parse_config(["--config", os.path.join(CONFIG_DIR, "resnet8_sgd.yaml"),
                                   "--optimizer", "adamw", "--lr", "1e-3"])
    assert dataclasses.replace(switched, preset="resnet8_adamw") == \
        train.parse_config(["--preset", "resnet8_adamw"])
    # A file's 1 and the flag's 1.0 are one configuration (same config_id).
    path.write_text("lr: 1\nval_size: 0\n")
    assert train.run_name(train.parse_config(["--config", str(path)])) == \
        train.run_name(train.parse_config(["--lr", "1.0", "--val_size", "0.0"]))


@pytest.mark.parametrize("argv", [
    [],
    ["--preset", "resnet8_adamw", "--seed", "3", "--width", "8", "--experiment_name", "a.b-1"],
    ["--preset", "speedrun_cpu", "--bn", "--lr", "0.015", "--momentum", "0.95"],
    ["--loader", "torchvision", "--num_workers", "2", "--compile", "off", "--val_size", "500",
     "--dataset_size", "1000", "--optimizer", "adamw", "--betas", "0.5", "0.6", "--trackio", "", "--data_dir", "a b: #c"],
])
def test_print_config_fed_back_gives_the_same_config(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv + ["--print_config"])
    assert exit_.value.code == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    again = train.parse_config(["--config", str(path)])
    assert again == train.parse_config(argv)
    assert train.run_name(again) == train.run_name(train.parse_config(argv))


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


def test_bad_experiment_name_is_refused(capsys):
    err = parse_fails(["--experiment_name", "../elsewhere"], capsys)
    assert "--experiment_name must be letters, digits" in err


def test_airbench_reads_the_same_kind_of_config_file(tmp_path, capsys):
    import airbench
    path = tmp_path / "a.yaml"
    path.write_text("width: 1\nnum_epochs: 2\ntranslate_schedule: cyclic\n")
    cfg = airbench.parse_config(["--config", str(path), "--num_epochs", "3", "--device", "cpu"])
    assert (cfg.width, cfg.num_epochs, cfg.translate_schedule) == (1.0, 3.0, "cyclic")
    assert airbench.run_name(cfg) == airbench.run_name(airbench.parse_config(
        ["--width", "1", "--num_epochs", "3", "--translate_schedule", "cyclic", "--device", "cpu"]))
    with pytest.raises(SystemExit) as exit_:
        airbench.parse_config(["--config", str(path), "--print_config"])
    assert exit_.value.code == 0
    path.write_text(capsys.readouterr().out)
    assert airbench.parse_config(["--config", str(path)]) == airbench.parse_config(
        ["--width", "1", "--num_epochs", "2", "--translate_schedule", "cyclic"])
    path.write_text("widht: 1\n")
    with pytest.raises(SystemExit):
        airbench.parse_config(["--config", str(path)])
    assert f"config file {path}: unknown key(s) ['widht']" in capsys.readouterr().err


def test_airbench_saves_the_config_of_each_recorded_run(data_dir, tmp_path):
    import airbench
    import data
    cfg = airbench.parse_config(["--dataset_size", "256", "--batch_size", "32", "--width", "0.0625",
                                 "--num_epochs", "1", "--tta_level", "0", "--runs", "2", "--seed", "3",
                                 "--device", "cpu", "--results_dir", str(tmp_path), "--quiet"])
    # The data loaded by hand: airbench.load_data assumes all 50,000 training images.
    cifar = data.load_cifar10(data_dir)
    idx = data.subset_indices(len(cifar.train_labels), cfg.dataset_size, cfg.subset_seed)
    x, y = cifar.train_images[idx], cifar.train_labels[idx]
    summary = airbench.train(cfg, ((x, y, cifar.test_images, cifar.test_labels),
                                   data.fingerprints(cifar, x, y)))
    saved = tmp_path / "runs" / (summary["run_name"] + ".yaml")
    again = airbench.parse_config(["--config", str(saved)])
    assert again == dataclasses.replace(cfg, runs=1)  # this seed alone, not the --runs batch
    assert airbench.run_name(again) == summary["run_name"]


def test_a_config_file_after_the_separator_is_the_base_of_every_run_of_a_sweep(tmp_path, capsys):
    """The plan's settings override a config file's as typed flags do, and sweep.py's
    --results_dir wins over the file's (--print_config's output sets every field, results_dir
    included)."""
    import sweep
    shipped = os.path.join(CONFIG_DIR, "resnet8_sgd.yaml")
    args = sweep.parse_args(["grid", "--lr", "0.05,0.1", "--seeds", "0,1", "--results_dir",
                             str(tmp_path), "--", "--config", shipped])
    runs, _ = sweep.plan(args)
    preset = train.parse_config(["--preset", "resnet8_sgd"])
    assert sorted((r.cfg.lr, r.cfg.seed) for r in runs) == [(0.05, 0), (0.05, 1), (0.1, 0), (0.1, 1)]
    assert all(dataclasses.replace(r.cfg, lr=preset.lr, seed=preset.seed, force=False, resume=False,
                                   quiet=False, results_dir=preset.results_dir,
                                   preset="resnet8_sgd", plan="") == preset for r in runs)
    assert {r.cfg.plan for r in runs} == {"grid"}  # recorded in every row
    assert args.results_dir == str(tmp_path) and {r.cfg.results_dir for r in runs} == {str(tmp_path)}

    forcing = tmp_path / "force.yaml"
    forcing.write_text("force: true\n")
    with pytest.raises(SystemExit):
        sweep.parse_args(["width", "--", "--config", str(forcing)])
    assert "put --force before --" in capsys.readouterr().err


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


@pytest.mark.parametrize("slowdown, warned", [(75.0, True), (0.6, False)])
def test_bf16_on_a_cpu_that_emulates_it_is_flagged_before_training(monkeypatch, capsys, data_dir,
                                                                    tmp_path, slowdown, warned):
    """An AVX2-only CPU multiplies bf16 ~75x slower than fp32: --precision bf16 there would make a
    CPU speedrun hours long. The measurement is replaced by the slowdown under test."""
    monkeypatch.setattr(train, "cpu_bf16_slowdown", lambda: slowdown)
    train.train(train.Config(**{**TINY, "num_epochs": 1}, precision="bf16", data_dir=data_dir,
                             results_dir=str(tmp_path)))
    err = capsys.readouterr().err
    assert ("bf16 75x slower than fp32" in err and "--precision fp32 is faster here" in err) == warned
    train.warn_if_slow_bf16("fp32", torch.device("cpu"))  # fp32 runs are never warned
    train.warn_if_slow_bf16("bf16", torch.device("cuda"))  # nor GPUs
    assert capsys.readouterr().err == ""


def test_the_cpu_bf16_slowdown_is_a_measured_ratio():
    slowdown = train.cpu_bf16_slowdown.__wrapped__()
    assert 0.01 < slowdown < 1000
    assert train.best_matmul_s(64, torch.float32) < train.best_matmul_s(512, torch.float32)
