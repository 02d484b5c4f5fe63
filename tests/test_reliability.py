"""Bad runs, reruns, damaged files and killed sweeps: each test failed before its fix."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import data
import sweep
import config
import records
import train
import utils
import worker
from conftest import REPO, write_synthetic_cifar10
from test_train import TIME_COLUMNS, TINY, epoch_rows, tiny_run
from records import ResultsFileError, append_row, file_lock, read_csv

SLOW_FLAGS = ["--depth=1", "--dataset_size=500", "--num_epochs=300", "--test_freq=1000",
              "--batch_size=32", "--device=cpu"]


def forbid_training(monkeypatch):
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained again"))


def kill_after_summary(data_dir, tmp_path, monkeypatch, **overrides):
    """Runs tiny_run and kills it between writing the summary and appending its row."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the summary was written")
    monkeypatch.setattr(train, "append_row", killed)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(data_dir, tmp_path, **overrides)
    monkeypatch.undo()


# --- 1. appends never corrupt final_data.csv


def test_append_after_a_missing_final_newline_keeps_the_file_readable(tmp_path):
    path = tmp_path / "final_data.csv"
    path.write_text("run_name,N\na,1")  # an editor saved it without the last newline
    append_row(str(path), {"run_name": "b", "N": 2})
    assert read_csv(str(path)) == [{"run_name": "a", "N": "1"}, {"run_name": "b", "N": "2"}]


def test_append_after_a_torn_row_is_refused_and_the_file_left_alone(tmp_path):
    path = tmp_path / "final_data.csv"
    path.write_text("run_name,N,loss\na,1,0.5\nb,2")  # a write cut off by a crash
    with pytest.raises(ResultsFileError, match=r"final_data.csv: line 3 .*not a whole row"):
        append_row(str(path), {"run_name": "c", "N": 3, "loss": 0.1})
    assert path.read_text() == "run_name,N,loss\na,1,0.5\nb,2"


def test_a_torn_final_data_csv_is_refused_before_training(tmp_path):
    (tmp_path / "final_data.csv").write_text("run_name,N,loss\na,1,0.5\nb,2")
    with pytest.raises(SystemExit):
        train.parse_config(["--results_dir", str(tmp_path)])


# --- 2. a finished run is not trained twice


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


def damage_summary(results_dir, cfg) -> str:
    """A summary cut off mid-write (a full disk, a hand edit); returns its path."""
    path = os.path.join(str(results_dir), "runs", train.run_name(cfg) + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('{"run_name": "cnn_w4')
    return path


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


def test_a_damaged_summary_fails_only_its_run_in_a_worker(data_dir, tmp_path):
    cfgs = [train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path), "seed": s})
            for s in (0, 1)]
    damage_summary(tmp_path, cfgs[0])
    lines = []
    codes = worker.Worker().run(worker.make_bundles(cfgs, 2), log=lines.append)
    assert codes == {train.run_name(cfgs[0]): 1, train.run_name(cfgs[1]): 0}
    assert any("not a readable run summary" in line for line in lines)
    with open(worker.log_path(str(tmp_path), train.run_name(cfgs[0]))) as f:  # sweep.py points here
        assert "not a readable run summary" in f.read()


# --- 3. killing a sweep stops its trainings


def processes_mentioning(text: str) -> list:
    """Pids of live processes whose command line contains text (Linux /proc)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid() and not zombie:
            pids.append(int(pid))
    return pids


def wait_for(condition, timeout_s=60):
    deadline = time.time() + timeout_s
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_sweep(data_dir, results, widths, engine):
    argv = [sys.executable, "sweep.py", "width", "--widths", widths, "--jobs", "2",
            "--engine", engine, "--results_dir", str(results), "--", *SLOW_FLAGS, f"--data_dir={data_dir}"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    started = lambda: len(list((results / "runs").glob("*.ckpt.pt"))) == len(widths.split(","))
    assert wait_for(started), "the sweep's trainings did not start"
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("engine", ["worker", "process"])
def test_sigterm_stops_the_sweep_and_its_trainings_cleanly(data_dir, tmp_path, engine):
    results = tmp_path / "results"
    proc = start_sweep(data_dir, results, "2,3", engine)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM: 0 finished, 2 stopped" in err and "Traceback" not in err
    assert wait_for(lambda: not processes_mentioning(str(results)), 10)
    for log in (results / "logs").glob("*.log"):
        text = log.read_text()
        assert "Traceback" not in text and "stopped by SIGTERM" in text
    assert len(list((results / "runs").glob("*.ckpt.pt"))) == 2  # they resume on a rerun


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("engine", ["worker", "process"])
def test_trainings_do_not_outlive_a_sigkilled_sweep(data_dir, tmp_path, engine):
    results = tmp_path / "results"
    proc = start_sweep(data_dir, results, "2", engine)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not processes_mentioning(str(results)), 15)


def test_sigterm_stops_train_py_without_a_traceback(data_dir, tmp_path):
    argv = [sys.executable, "train.py", "--width=2", *SLOW_FLAGS, f"--data_dir={data_dir}",
            f"--results_dir={tmp_path}", "--quiet"]
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(list((tmp_path / "runs").glob("*.ckpt.pt"))) == 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "rerun with --resume" in err


# --- 4. non-finite values are refused, divergence is caught wherever it shows


NON_FINITE = [["--lr", "nan"], ["--lr", "inf"], ["--momentum", "nan"], ["--weight_decay", "nan"],
              ["--weight_decay", "inf"], ["--val_size", "nan"], ["--val_size", "inf"],
              ["--optimizer", "adamw", "--betas", "nan", "nan"]]


@pytest.mark.parametrize("argv", NON_FINITE)
def test_non_finite_values_are_refused_naming_the_flag(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv + ["--results_dir", str(tmp_path / "r")])
    assert exit_.value.code == 2
    flag = argv[-3] if argv[-1] == "nan" and argv[-2] == "nan" else argv[-2]
    assert f"{flag} must be a finite number" in capsys.readouterr().err


def test_divergence_is_seen_in_the_parameters_and_the_evaluation_losses():
    model = torch.nn.Linear(2, 2)
    assert not train.is_diverged((1.0, "", 2.0), train.params_finite(model))
    assert train.is_diverged((1.0, float("inf"), ""), train.params_finite(model))  # test loss
    assert train.is_diverged((1.0, "", float("nan")), train.params_finite(model))  # validation loss
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    assert train.is_diverged((1.0, "", ""), train.params_finite(model))  # finite losses do not clear it


@pytest.mark.parametrize("lr,dataset_size", [(1e6, 256), (1000.0, 2000)])
def test_a_huge_lr_is_never_recorded_as_finished_with_a_non_finite_loss(real_data_dir, tmp_path,
                                                                         lr, dataset_size):
    if dataset_size > len(data.load_cifar10(real_data_dir).train_labels):
        pytest.skip(f"needs {dataset_size} training images (the real CIFAR-10 under data/)")
    summary = tiny_run(real_data_dir, tmp_path, lr=lr, dataset_size=dataset_size, num_epochs=3,
                       test_freq=1)
    assert summary["status"] == "diverged"
    assert read_csv(str(tmp_path / "final_data.csv"))[0]["status"] == "diverged"


# --- 5. messages, not tracebacks


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


def test_unwritable_runs_folder_and_a_folder_named_final_data_csv_are_refused(tmp_path):
    (tmp_path / "a" / "final_data.csv").mkdir(parents=True)
    with pytest.raises(train.ConfigError, match="final_data.csv is not a writable file"):
        train.make_config(dict(results_dir=str(tmp_path / "a")))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "runs").write_text("a file where the runs folder goes")
    with pytest.raises(train.ConfigError, match="runs is not a writable folder"):
        train.make_config(dict(results_dir=str(tmp_path / "b")))


def test_labels_outside_0_to_9_are_a_data_error(tmp_path):
    import pickle
    root = write_synthetic_cifar10(str(tmp_path))
    path = os.path.join(root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "rb") as f:
        batch = pickle.load(f)
    batch["labels"][7] = 10
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(data.DataError, match=r"data_batch_2 is corrupted: label 10 of image 7"):
        data.load_cifar10(root)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "architecture", "flipped"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(data_dir, tmp_path, damage):
    cfg = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path),
                          "resume": True, "keep_checkpoints": True})
    ckpt = tmp_path / "runs" / f"{train.run_name(cfg)}.ckpt.pt"
    ckpt.parent.mkdir(parents=True)
    if damage in ("architecture", "flipped"):
        model = "resnet8" if damage == "architecture" else cfg.model
        other = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path / "o"),
                                "model": model, "keep_checkpoints": True})
        train.train(other)
        blob = bytearray((tmp_path / "o" / "runs" / f"{train.run_name(other)}.ckpt.pt").read_bytes())
        if damage == "flipped":  # bits flipped inside torch's zip: it would still load
            middle = len(blob) // 2
            blob[middle:middle + 64] = bytes(b ^ 0x5A for b in blob[middle:middle + 64])
        ckpt.write_bytes(bytes(blob))
    else:
        ckpt.write_bytes({"truncated": b"PK\x03\x04" + b"\0" * 20, "random": os.urandom(500),
                          "empty": b""}[damage])
    why = "belongs to another run .it was saved by run resnet8_.*move it away" \
        if damage == "architecture" else "is damaged.*delete it"
    with pytest.raises(train.ConfigError, match=f"checkpoint {re.escape(str(ckpt))} {why}"):
        train.train(cfg)


def test_seed_beyond_numpy_range_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        train.parse_config(["--seed", str(2 ** 32), "--results_dir", str(tmp_path / "r")])
    assert "--seed must be in 0..4294967295" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["inf", "nan"])
def test_non_finite_budgets_are_refused(budget, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(["compute", "--budgets", budget, "--results_dir", str(tmp_path)])
    assert exit_.value.code == 2 and "positive finite" in capsys.readouterr().err


# --- 7. sweep.py's own flags after --


def test_results_dir_after_the_separator_is_honoured(tmp_path):
    args = sweep.parse_args(["width", "--widths", "4", "--", f"--results_dir={tmp_path}"])
    assert args.results_dir == str(tmp_path)
    (run,), _ = sweep.plan(args)
    assert run.cfg.results_dir == str(tmp_path)


@pytest.mark.parametrize("extra,message", [(["--width=8"], "--width after -- would be overridden"),
                                           (["--force"], "put --force before --"),
                                           (["--seed=3"], "--seed after -- would be overridden")])
def test_plan_owned_flags_after_the_separator_are_refused(extra, message, tmp_path, capsys):
    with pytest.raises((SystemExit, sweep.PlanError), match=None) as caught:
        sweep.plan(sweep.parse_args(["width", "--widths", "4,16", "--results_dir", str(tmp_path),
                                     "--", *extra]))
    shown = str(caught.value) + capsys.readouterr().err
    assert message in shown


def test_num_epochs_before_and_after_the_separator_must_agree(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["width", "--num_epochs", "3", "--results_dir", str(tmp_path), "--",
                          "--num_epochs=5"])
    assert "--num_epochs 3 before -- and 5 after it disagree" in capsys.readouterr().err
    args = sweep.parse_args(["width", "--widths", "4", "--num_epochs", "3", "--results_dir",
                             str(tmp_path), "--", "--num_epochs=3"])
    assert sweep.plan(args)[0][0].cfg.num_epochs == 3


# --- 9. smaller ones


def test_no_stale_lock_after_a_run_or_an_offline_failure(data_dir, tmp_path):
    tiny_run(data_dir, tmp_path / "ok")
    assert not list((tmp_path / "ok" / "runs").glob("*.lock"))
    with pytest.raises(data.DataError):
        tiny_run(str(tmp_path / "no_data"), tmp_path / "offline", device="cpu")
    assert not (tmp_path / "offline").exists()


def test_help_spells_bool_flags_as_the_readme_does():
    text = config.build_parser().format_help()
    assert "--no_bn" in text and "--no-bn" not in text
    assert train.parse_config(["--no-augment"]).augment is False  # the old spelling still works


def test_num_workers_is_part_of_the_configuration_for_the_torchvision_loader():
    tv = dict(loader="torchvision")
    assert train.config_id(train.Config(**tv, num_workers=0)) != train.config_id(train.Config(**tv, num_workers=4))
    assert train.config_id(train.Config(num_workers=0)) == train.config_id(train.Config(num_workers=4))


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


def test_cpu_jobs_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert sweep.gpu_env(None, jobs=2)["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert "OMP_NUM_THREADS" not in sweep.gpu_env(0, jobs=2)  # a GPU run keeps torch's default


def test_summary_records_optimiser_steps(data_dir, tmp_path):
    summary = tiny_run(data_dir, tmp_path, dataset_size=300, batch_size=64, num_epochs=3)
    assert summary["steps"] == 3 * 5  # ceil(300 / 64) = 5 steps an epoch


def test_bench_tables_go_under_results_by_default():
    import bench
    assert bench.build_parser().parse_args([]).notes == os.path.join("results", "benchmarks.md")


# --- collect never makes a results folder worse; a summary must be its run's own

def summaries_folder(tmp_path, names=("run_a", "run_b")):
    """runs/<name>.json for each name, and a final_data.csv holding them plus a row of a run
    whose summary is gone."""
    os.makedirs(tmp_path / "runs")
    for i, name in enumerate(names):
        (tmp_path / "runs" / f"{name}.json").write_text(
            f'{{"run_name": "{name}", "N": {i + 1}, "timestamp": "2026-01-0{i + 1}"}}')
    final = tmp_path / "final_data.csv"
    final.write_text("run_name,N\n" + "".join(f"{n},{i + 1}\n" for i, n in enumerate(names))
                     + "lost_run,9\n")
    return final


def test_two_collects_in_one_second_keep_both_backups(tmp_path, monkeypatch, capsys):
    final = summaries_folder(tmp_path)
    original = final.read_text()
    monkeypatch.setattr(sweep.time, "strftime", lambda *a: "20260101T000000")
    sweep.main(["collect", "--results_dir", str(tmp_path)])
    out = capsys.readouterr()
    assert "rebuilt" in out.out and "1 rows of the old file have no run summary" in out.err
    assert "lost_run" in out.err
    sweep.main(["collect", "--results_dir", str(tmp_path)])
    backups = {p.name: p.read_text() for p in tmp_path.iterdir() if p.name.endswith(".bak")}
    assert len(backups) == 2  # the first one, with the row only it had, is still there
    assert backups["final_data.csv.20260101T000000.bak"] == original
    assert [r["run_name"] for r in read_csv(final)] == ["run_a", "run_b"]


def test_collect_on_a_full_disk_leaves_final_data_as_it_was(tmp_path, monkeypatch, capsys):
    final = summaries_folder(tmp_path)
    original = final.read_text()

    def full(path, data, mode="w"):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(records, "atomic_write", full)
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["collect", "--results_dir", str(tmp_path)])
    assert exit_.value.code == 28  # as every command ends on a full disk (was: 1)
    assert re.search("could not write .*final_data.csv \\(No space left on device\\); it is left "
                     "as it was, with a copy in", capsys.readouterr().err)
    assert final.read_text() == original


def test_a_summary_holding_another_runs_summary_is_refused(data_dir, tmp_path, capsys):
    final = summaries_folder(tmp_path)
    (tmp_path / "runs" / "run_b.json").write_text((tmp_path / "runs" / "run_a.json").read_text())
    before = final.read_text()
    with pytest.raises(SystemExit, match="run_b.json is not a readable run summary \\(it holds the "
                                         "summary of run_a"):
        sweep.main(["collect", "--results_dir", str(tmp_path)])
    assert final.read_text() == before
    # train.py does not take it for its own run either: it names the file instead of skipping.
    cfg = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path)})
    name = train.run_name(cfg)
    (tmp_path / "runs" / f"{name}.json").write_text((tmp_path / "runs" / "run_a.json").read_text())
    with pytest.raises(ResultsFileError, match=f"{name}.json is not a readable run summary"):
        records.finished_summary(cfg, str(tmp_path / "runs" / name))


# --- a run's identity survives the lab gaining a setting

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


# --- a full disk: one line, and the run resumes to the same rows

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


@pytest.mark.parametrize("engine", ["process", "worker"])
def test_a_full_disk_stops_a_sweep_with_one_line_and_launches_nothing_more(engine, tmp_path,
                                                                           monkeypatch, capsys):
    argv = ["width", "--widths", "4,8,16", "--seeds", "0", "--num_epochs", "1", "--jobs", "1",
            "--engine", engine, "--results_dir", str(tmp_path), "--", "--dataset_size=64"]
    launched = []

    def full(command, log, env):  # the first training finds the disk full
        launched.append(command)
        return records.DISK_FULL_EXIT
    monkeypatch.setattr(sweep, "run_one", full)
    with pytest.raises(SystemExit) as exit_:
        sweep.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == records.DISK_FULL_EXIT  # was: 1
    assert err.splitlines()[-1].startswith(f"error: no space left on the device under {tmp_path}")
    assert "run(s) not finished: free some space and rerun the same command" in err
    assert len(launched) == 1  # was: every later run launched, and failed, one by one
    assert " exited " not in err  # was, for the worker engine: a 2nd line

    def no_space(*args, **kwargs):  # the sweep's own files: its plan, its logs
        raise OSError(28, "No space left on device", str(tmp_path / "logs" / "plan.json"))
    monkeypatch.setattr(sweep, "run_one", no_space)
    with pytest.raises(SystemExit) as exit_:  # was: an OSError traceback
        sweep.main(argv)
    assert exit_.value.code == records.DISK_FULL_EXIT
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: no space left on the device writing ")


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
    assert "final_data.csv is not a CSV text file" in capsys.readouterr().err


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


def test_collect_dry_run_names_what_it_would_do_and_writes_nothing(tmp_path, capsys):
    final = summaries_folder(tmp_path)
    before = sorted(os.listdir(tmp_path)), final.read_text()
    sweep.main(["collect", "--dry_run", "--results_dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert "would rebuild" in captured.out and "lost_run" in captured.err
    assert (sorted(os.listdir(tmp_path)), final.read_text()) == before  # was: rebuilt, a .bak made


@pytest.mark.parametrize("argv, message", [
    (["collect", "--widths", "2"], "takes no plan flags: --widths"),
    (["width", "--widths", "2,,3", "--dry_run"], "'2,,3' has an empty item"),
    (["width", "--widths", "2,4,2", "--dry_run"], "--widths: 2 is given twice"),
    (["width", "--seeds", "-1", "--dry_run"], "--seed must be in 0..4294967295, got -1"),  # was: exit 1
    (["width", "--seeds", "1000,1e3", "--dry_run"], "--seeds: 1000 is given twice"),
    (["compute", "--budgets", "1e9,1000000000", "--dry_run"], "--budgets: 1000000000.0 is given twice"),
    (["width", "--gpus", "7", "--dry_run"], "no CUDA device 7 on this machine"),
    (["width", "--dry_run", "--results_dir", ""], "--results_dir must name a folder"),
    (["width", "--dry_run", "--bench_notes", "/no/such.md"], "is not a file (bench.py's tables)"),
    (["width", "--dry_run", "--time_min", "-5"], "--time_min must be >= 1, got -5"),
    (["data", "--widths", "2,3", "--dry_run"], "--widths is not read by the data plan"),
    (["depth", "--dataset_sizes", "200", "--dry_run"], "--dataset_sizes is not read by the depth"),
    (["width", "--dry_run", "--max_concurrent", "0"], "--max_concurrent must be >= 1, got 0"),
])
def test_sweep_refuses_what_it_would_silently_ignore(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_an_empty_results_dir_is_refused_not_the_working_folder(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--results_dir", ""])  # was: runs/ written into the working folder
    assert "--results_dir must name a folder, got ''" in capsys.readouterr().err


def test_a_plan_that_repeats_a_run_is_refused(tmp_path):
    run = ["--width=2", "--depth=1", "--num_epochs=1"]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"runs": [run, ["--width=3"] + run[1:], run]}))
    with pytest.raises(train.ConfigError, match="run 2 repeats run 0 "):  # was: "already being
        worker.read_plan(str(path))                                       # trained by another"


def test_a_plan_that_is_not_a_regular_file_is_refused_at_once():
    with pytest.raises(train.ConfigError, match="/dev/urandom is not a plan file .*not a regular"):
        worker.read_plan("/dev/urandom")  # was: read without end


@pytest.mark.parametrize("runs", [[[1, 2]], "abc"])
def test_a_malformed_plan_is_named(tmp_path, runs):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"runs": runs}))
    with pytest.raises(train.ConfigError, match="is not a plan file"):  # was: a TypeError
        worker.read_plan(str(path))


@pytest.mark.parametrize("plan", [[1, 2], "runs", {"run": []}])
def test_a_plan_of_another_shape_is_named_in_words(tmp_path, plan):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(train.ConfigError, match='is not a plan file .*: no "runs" key at its top$'):
        worker.read_plan(str(path))  # was: TypeError('list indices must be integers ...')


@pytest.mark.parametrize("argv,message", [
    (["plan.json", "--slice", "-1/2"], "--slice needs I/N with 0 <= I < N, got -1/2"),
    (["plan.json", "--max_bundle", "-1e3"], "--max_bundle: invalid int value: '-1e3'"),
])
def test_a_value_starting_with_minus_reaches_its_flags_check(argv, message, capsys):
    with pytest.raises(SystemExit):
        worker.main(argv)  # was: "expected one argument", as if the value were a flag
    assert message in capsys.readouterr().err


def test_values_are_joined_to_their_flag_only_before_a_double_dash():
    from utils import ArgumentParser
    parser = ArgumentParser()
    parser.add_argument("--lr", type=float)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(["--lr", "-1e-3", "--quiet", "--", "--lr", "-2e3"])
    assert args.lr == -1e-3 and args.quiet and args.rest == ["--lr", "-2e3"]


@pytest.mark.parametrize("argv, lines", [(["--width", "abc"], 1), (["--width", "0"], 1)])
def test_a_refused_flag_is_its_message_not_the_usage_block(argv, lines, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(argv)  # a bad value; a bad setting (was: a header, then a line each)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage:" not in err and len(err.splitlines()) == lines
    assert "--width" in err and err.endswith("(--help lists every option)\n")


def test_airbench_stopped_by_sigterm_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    import airbench

    def stopped(cfg, finished):
        raise train.Stopped(signal.SIGTERM)
    monkeypatch.setattr(airbench, "bench", stopped)
    with pytest.raises(SystemExit) as exit_:
        airbench.main(["--device", "cpu", "--results_dir", str(tmp_path)])
    assert exit_.value.code == 128 + signal.SIGTERM  # was: killed without a word
    # and no folder named as holding runs when none finished
    assert "airbench.py: stopped by SIGTERM; 0 of 1 run(s) finished; the one in progress is lost" \
        in capsys.readouterr().err


@pytest.mark.parametrize("edit", ['"N": "abc"', '"D": -5', '"status": "done"', '"epochs": 7',
                                  '"final_test_acc": 0.5', '"final_test_loss_avg_last5": "low"'])
def test_collect_refuses_a_hand_edited_summary_and_leaves_final_data(tmp_path, edit):
    final = summaries_folder(tmp_path, names=("run_a", "cnn_w2_d1_D200_e2_s0_e17ed54315"))
    original = final.read_text()
    path = tmp_path / "runs" / "cnn_w2_d1_D200_e2_s0_e17ed54315.json"
    path.write_text(path.read_text()[:-1] + f", {edit}}}")  # was: copied into final_data.csv
    with pytest.raises(SystemExit, match=r"(?s)1 damaged run summaries.*_e17ed54315.json is not a "
                                         r"readable"):
        sweep.main(["collect", "--results_dir", str(tmp_path)])
    assert final.read_text() == original


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
    assert "stopped, before its first checkpoint: free some space" in message


@pytest.mark.parametrize("script", ["train.py", "sweep.py", "worker.py", "airbench.py", "bench.py",
                                    "model.py"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_a_script_loads_torch_is_one_line(tmp_path, script, signum):
    proc = subprocess.Popen([sys.executable, script, *{"sweep.py": ["width"], "worker.py": [
        "plan.json"]}.get(script, [])], cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing torch takes a second or more
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signum, err  # was: a KeyboardInterrupt traceback; no word
    assert err == f"{script}: stopped by {signum.name} while starting; nothing was done\n", err


def test_a_budget_far_from_the_runs_compute_is_refused(capsys):
    with pytest.raises(SystemExit):  # was: trained and recorded; analysis grouped by it
        train.parse_config(["--width=2", "--depth=1", "--dataset_size=200", "--num_epochs=2",
                            "--budget=1e-300"])
    assert "--budget 1e-300 is not this run's budget: its C = N*D*epochs is 2.184e+05" in \
        capsys.readouterr().err
    cfg = train.parse_config(["--width=2", "--depth=1", "--dataset_size=200", "--num_epochs=2",
                              "--budget=2e5"])  # within a sweep's tolerance: kept
    assert cfg.budget == 2e5


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


def test_a_notes_file_behind_a_symbolic_link_is_appended_through_it(tmp_path):
    target, link = tmp_path / "notes.md", tmp_path / "link.md"
    target.write_text("# kept\n")
    link.symlink_to(target)
    records.append_text(str(link), "| a |\n")
    assert link.is_symlink() and target.read_text() == "# kept\n\n| a |\n"  # was: link replaced


def test_a_loop_of_links_is_refused_as_a_file_and_as_a_results_folder(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert "is a symbolic link to nothing (or a loop of links)" in \
        records.writable_file_error(str(loop), "--notes")
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(["--results_dir", str(loop)])  # was: an OSError traceback when training
    assert exit_.value.code == 2 and f"{loop}" in capsys.readouterr().err


def test_a_results_file_a_spreadsheet_saved_with_a_byte_order_mark_is_still_appended_to(tmp_path):
    path = tmp_path / "final_data.csv"
    path.write_bytes(b"\xef\xbb\xbfrun_name,N\r\na,1\r\n")
    assert records.csv_append_error(str(path), "run_name") is None  # was: "no run_name column"
    append_row(str(path), {"run_name": "b", "N": "2"}, key="run_name")
    assert [(r["run_name"], r["N"]) for r in read_csv(str(path))] == [("a", "1"), ("b", "2")]


def test_a_validation_split_that_leaves_nothing_to_train_is_refused_first(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(["--val_size", "0.999999"])  # was: exit 1 after loading the data
    assert exit_.value.code == 2 and "--val_size 0.999999 asks for 50,000 validation images and " \
        "leaves none of the 50,000 to train on" in capsys.readouterr().err
