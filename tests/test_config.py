"""config.py: the Config table, presets, validation of every value before anything runs, and a
run's identity (run names that survive the lab gaining settings)."""
import dataclasses
import os

import pytest

import config
import sweep
import train
from conftest import REPO
from tiny import forbid_training, parse_fails, says

CONFIG_DIR = os.path.join(REPO, "config")


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


def test_a_typed_preset_beside_a_config_file_is_refused(capsys):
    with pytest.raises(SystemExit):  # was: resnet8 with the speedrun's augment: false, unlabelled
        train.parse_config(["--preset", "speedrun_cpu", "--config",
                            os.path.join(CONFIG_DIR, "resnet8_sgd.yaml")])
    says(capsys.readouterr().err, "--preset", "speedrun_cpu", "--config")


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


def test_bad_experiment_name_is_refused(capsys):
    err = parse_fails(["--experiment_name", "../elsewhere"], capsys)
    says(err, "--experiment_name", "letters, digits")


def test_run_name_is_a_function_of_the_configuration():
    a, b = train.Config(width=8), train.Config(width=8, quiet=True, results_dir="elsewhere")
    assert train.run_name(a) == train.run_name(b)
    assert train.run_name(a) != train.run_name(train.Config(width=8, lr=0.05))
    assert train.config_id(a) == train.config_id(train.Config(width=8, seed=3))
    assert train.run_name(a) != train.run_name(train.Config(width=8, seed=3))


# What each refusal must name: the flag, the value given or the range, the way out where there is
# one. Any wording that names them passes.
BAD_FLAGS = [
    (["--width", "0"], ["--width", ">= 1", "0"]),
    (["--depth", "-1"], ["--depth", ">= 1", "-1"]),
    (["--batch_size", "0"], ["--batch_size", ">= 1", "0"]),
    (["--num_epochs", "0"], ["--num_epochs", "1..1000000", "0"]),
    (["--test_freq", "0"], ["--test_freq", ">= 1", "0"]),
    (["--dataset_size", "0"], ["--dataset_size", "1..50000", "0"]),
    (["--dataset_size", "50001"], ["--dataset_size", "1..50000", "50001"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--width", "four"], ["--width", "int", "four"]),
    (["--loader", "dali"], ["--loader", "dali", "tensor", "torchvision"]),
    (["--no_such_flag", "1"], ["--no_such_flag"]),
    # sizes no machine holds: refused from the closed-form N, before torch overflows or hangs
    (["--width", str(2 ** 63 - 1)], ["width", "N=23,734,695,092,735,457,822", "--width"]),
    (["--depth", "100000000"], ["depth 100,000,000", "GiB", "--depth"]),
    # combinations (the CPU speedrun's and the ResNet-8 study's flags)
    (["--betas", "0.9", "0.99"], ["--betas", "--optimizer adamw"]),
    (["--optimizer", "adamw", "--momentum", "0.5"], ["--momentum", "--optimizer sgd"]),
    (["--val_size", "5000", "--dataset_size", "46000"], ["--dataset_size", "--val_size", "50,000",
                                                         "--dataset_size <= 45000"]),
    (["--val_size", "50000"], ["--val_size", "50000"]),
    (["--val_size", "12.5"], ["--val_size", "12.5", "whole number", "fraction"]),
    (["--bn"], ["--bn", "--model simplecnn"]),
    (["--model", "resnet8", "--optimizer", "adamw", "--betas", "0.9", "1.5"], ["--betas", "1.5"]),
    (["--preset", "resnet9"], ["--preset", "resnet9", "resnet8_adamw", "resnet8_sgd"]),
    (["--scheduler", "step"], ["--scheduler", "step", "cosine", "cosine_step", "none"]),
]


@pytest.mark.parametrize("argv,parts", BAD_FLAGS)
def test_bad_flags_are_refused_with_the_flag_named(argv, parts, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv + ["--results_dir", str(tmp_path / "results")])
    assert exit_.value.code == 2
    says(capsys.readouterr().err, *parts)
    assert not (tmp_path / "results").exists()


def test_preset_fills_defaults_and_explicit_flags_override(tmp_path):
    cfg = train.parse_config(["--preset", "resnet8_sgd", "--lr", "0.05", "--num_epochs", "3"])
    assert (cfg.model, cfg.width, cfg.depth) == ("resnet8", 16, 1)  # the model's default size
    assert (cfg.lr, cfg.num_epochs) == (0.05, 3)  # explicit flags win
    assert (cfg.batch_size, cfg.test_freq, cfg.optimizer, cfg.momentum, cfg.weight_decay,
            cfg.scheduler, cfg.normalize) == (128, 10, "sgd", 0.9, 1e-4, "none", True)
    assert (cfg.val_size, cfg.dataset_size) == (0.1, 45_000)  # 10% carved off, the rest trains
    assert (cfg.seed, cfg.subset_seed) == (42, 42)  # the ResNet-8 study seeds the split with 42 too

    adamw = train.parse_config(["--preset", "resnet8_adamw", "--width", "32", "--no_normalize"])
    # The ResNet-8 study's config gives weight_decay 0.0001 for both optimisers.
    assert (adamw.optimizer, adamw.lr, adamw.betas, adamw.weight_decay, adamw.subset_seed) == \
        ("adamw", 1e-3, (0.9, 0.999), 1e-4, 42)
    assert (adamw.width, adamw.normalize) == (32, False)

    cpu = train.parse_config(["--preset", "speedrun_cpu"])
    assert (cpu.model, cpu.bn, cpu.augment, cpu.lr, cpu.momentum, cpu.num_epochs, cpu.scheduler) == \
        ("simplecnn", False, False, 0.02, 0.9, 10, "none")
    assert train.parse_config(["--model", "simplecnn", "--bn"]).bn
    # Without a preset nothing changes for the scaling study.
    assert train.parse_config([]) == train.Config()


def test_list_presets_prints_runnable_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(["--list_presets"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in config.presets():
        assert f"{name}:" in out
    flags = out.split("resnet8_adamw:")[1].splitlines()[1].split()
    preset = train.parse_config(["--preset", "resnet8_adamw"])
    assert train.parse_config(flags) == dataclasses.replace(preset, preset="none")


def test_trackio_missing_is_a_clear_message(monkeypatch):
    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec",
                        lambda name, *a: None if name == "trackio" else real(name, *a))
    with pytest.raises(train.ConfigError, match="pip install trackio"):
        train.make_config({"trackio": "study"})


def test_a_torn_final_data_csv_is_refused_before_training(tmp_path):
    (tmp_path / "final_data.csv").write_text("run_name,N,loss\na,1,0.5\nb,2")
    with pytest.raises(SystemExit):
        train.parse_config(["--results_dir", str(tmp_path)])


NON_FINITE = [["--lr", "nan"], ["--lr", "inf"], ["--momentum", "nan"], ["--weight_decay", "nan"],
              ["--weight_decay", "inf"], ["--val_size", "nan"], ["--val_size", "inf"],
              ["--optimizer", "adamw", "--betas", "nan", "nan"]]


@pytest.mark.parametrize("argv", NON_FINITE)
def test_non_finite_values_are_refused_naming_the_flag(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv + ["--results_dir", str(tmp_path / "r")])
    assert exit_.value.code == 2
    flag = argv[-3] if argv[-1] == "nan" and argv[-2] == "nan" else argv[-2]
    says(capsys.readouterr().err, flag, "finite", argv[-1])


def test_unwritable_runs_folder_and_a_folder_named_final_data_csv_are_refused(tmp_path):
    (tmp_path / "a" / "final_data.csv").mkdir(parents=True)
    with pytest.raises(train.ConfigError, match="final_data.csv is not a writable file"):
        train.make_config(dict(results_dir=str(tmp_path / "a")))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "runs").write_text("a file where the runs folder goes")
    with pytest.raises(train.ConfigError, match="runs is not a writable folder"):
        train.make_config(dict(results_dir=str(tmp_path / "b")))


def test_seed_beyond_numpy_range_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        train.parse_config(["--seed", str(2 ** 32), "--results_dir", str(tmp_path / "r")])
    says(capsys.readouterr().err, "--seed", "0..4294967295")


def test_help_spells_bool_flags_as_the_readme_does():
    text = config.build_parser().format_help()
    assert "--no_bn" in text and "--no-bn" not in text
    assert train.parse_config(["--no-augment"]).augment is False  # the old spelling still works


def test_num_workers_is_part_of_the_configuration_for_the_torchvision_loader():
    tv = dict(loader="torchvision")
    assert train.config_id(train.Config(**tv, num_workers=0)) != train.config_id(train.Config(**tv, num_workers=4))
    assert train.config_id(train.Config(num_workers=0)) == train.config_id(train.Config(num_workers=4))


# run_name of these configurations as the lab named them before settings could be neutral
# (commit a5cf1ae): a results folder made then must still be recognised.
NAMES_BEFORE = {
    "cnn_w32_d2_D50000_e100_s0_0431677f92": dict(),
    "cnn_w4_d1_D500_e3_s0_adamw_528b083f8b": dict(width=4, depth=1, dataset_size=500, num_epochs=3,
                                                 optimizer="adamw"),
}


def test_run_names_are_those_of_earlier_versions(tmp_path, monkeypatch):
    for name, settings in NAMES_BEFORE.items():
        assert train.run_name(train.Config(**settings)) == name
    # A results folder of that version: its runs are skipped, not trained again.
    settings = NAMES_BEFORE["cnn_w4_d1_D500_e3_s0_adamw_528b083f8b"]
    cfg = train.Config(**settings, results_dir=str(tmp_path), quiet=True)
    os.makedirs(tmp_path / "runs")
    (tmp_path / "runs" / "cnn_w4_d1_D500_e3_s0_adamw_528b083f8b.json").write_text(
        '{"run_name": "cnn_w4_d1_D500_e3_s0_adamw_528b083f8b", "status": "finished"}')
    forbid_training(monkeypatch)
    assert train.train(cfg)["status"] == "finished"


def test_a_new_setting_at_its_neutral_value_keeps_every_run_name():
    from dataclasses import dataclass, fields as dc_fields

    @dataclass
    class Upgraded(train.Config):  # the lab a version later, with one more setting
        precise_bn: bool = config.hp(False, "recompute BatchNorm statistics", neutral=False)

    for settings in NAMES_BEFORE.values():
        old, new = train.Config(**settings), Upgraded(**settings)
        assert train.config_id(new) == train.config_id(old)
        assert train.config_id(Upgraded(**settings, precise_bn=True)) != train.config_id(old)
    assert "precise_bn" in {f.name for f in dc_fields(Upgraded)}


def test_an_empty_results_dir_is_refused_not_the_working_folder(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--results_dir", ""])  # was: runs/ written into the working folder
    says(capsys.readouterr().err, "--results_dir", "''", "folder")


@pytest.mark.parametrize("argv, lines", [(["--width", "abc"], 1), (["--width", "0"], 1)])
def test_a_refused_flag_is_its_message_not_the_usage_block(argv, lines, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv)  # a bad value; a bad setting (was: a header, then a line each)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage:" not in err and len(err.splitlines()) == lines
    assert "--width" in err and err.endswith("(--help lists every option)\n")


def test_a_budget_far_from_the_runs_compute_is_refused(capsys):
    with pytest.raises(SystemExit):  # was: trained and recorded; analysis grouped by it
        train.parse_config(["--width=2", "--depth=1", "--dataset_size=200", "--num_epochs=2",
                            "--budget=1e-300"])
    assert "--budget 1e-300 is not this run's budget: its C = N*D*epochs is 2.184e+05" in \
        capsys.readouterr().err
    cfg = train.parse_config(["--width=2", "--depth=1", "--dataset_size=200", "--num_epochs=2",
                              "--budget=2e5"])  # within a sweep's tolerance: kept
    assert cfg.budget == 2e5


def test_a_validation_split_that_leaves_nothing_to_train_is_refused_first(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(["--val_size", "0.999999"])  # was: exit 1 after loading the data
    assert exit_.value.code == 2
    says(capsys.readouterr().err, "--val_size", "0.999999", "50,000", "none")


def test_a_validation_fraction_and_its_count_are_one_configuration(tmp_path, capsys):
    """--val_size 0.1 carves the same 5,000 images as --val_size 5000: one config_id, and a grid
    of both is refused as a repeat instead of training the split twice."""
    fraction, count = (train.parse_config(["--val_size", v, "--dataset_size", "1000"])
                       for v in ("0.1", "5000"))
    assert train.config_id(fraction) == train.config_id(count)
    assert train.run_name(fraction) == train.run_name(count)
    assert train.config_id(train.parse_config(["--val_size", "0.2", "--dataset_size", "1000"])) \
        != train.config_id(count)
    with pytest.raises(SystemExit) as stop:
        sweep.main(["grid", "--val_size", "0.1,5000", "--dry_run", "--results_dir", str(tmp_path),
                    "--", "--dataset_size=1000"])
    assert stop.value.code == 2 and "repeats" in capsys.readouterr().err


@pytest.mark.parametrize("data_dir", ["", "file"])
def test_a_data_dir_that_cannot_hold_cifar10_is_refused_with_the_other_flags(data_dir, tmp_path,
                                                                            capsys):
    # exit status 2 like any bad setting (was 1, found only when the data was loaded)
    if data_dir:
        data_dir = str(tmp_path / data_dir)
        open(data_dir, "w").close()
    err = parse_fails(["--data_dir", data_dir, "--results_dir", str(tmp_path)], capsys)
    says(err, "--data_dir", data_dir)
