"""sweep.py: launching plans (processes, workers, submitit), reruns that skip finished runs,
stops, a full disk, collect, and the flags sweep.py owns."""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import data
import records
import sweep
import train
import worker
from conftest import REPO
from records import ResultsFileError, file_lock, read_csv
from tiny import SLOW_FLAGS, TIME_COLUMNS, TINY, says, wait_for

CONFIG_DIR = os.path.join(REPO, "config")


TINY_FLAGS = ["--depth=1", "--dataset_size=200", "--num_epochs=2", "--test_freq=10",
              "--batch_size=64", "--device=cpu"]


def planned(argv):
    return sweep.plan(sweep.parse_args(argv))


def test_each_plan_expands_to_its_grid(tmp_path):
    r = ["--results_dir", str(tmp_path)]
    runs, _ = planned(["width", "--seeds", "0,1"] + r)
    assert sorted({x.cfg.width for x in runs}) == sweep.DEFAULT_WIDTHS and len(runs) == 12
    assert {(x.cfg.depth, x.cfg.dataset_size) for x in runs} == {(2, 50_000)}
    runs, _ = planned(["depth"] + r + ["--", "--width=8"])
    assert [x.cfg.depth for x in runs] == sweep.DEFAULT_DEPTHS and {x.cfg.width for x in runs} == {8}
    runs, _ = planned(["data"] + r)
    assert [x.cfg.dataset_size for x in runs] == sweep.DEFAULT_DATASET_SIZES
    runs, _ = planned(["grid", "--widths", "4,8", "--dataset_sizes", "100,200"] + r)
    assert {(x.cfg.width, x.cfg.dataset_size) for x in runs} == {(4, 100), (4, 200), (8, 100), (8, 200)}


@pytest.mark.parametrize("tradeoff", ["data", "epochs"])
def test_compute_plan_points_are_within_tolerance_of_their_budget(tradeoff, tmp_path):
    runs, dropped = planned(["compute", "--tradeoff", tradeoff, "--budgets", "1e11,1e12",
                             "--results_dir", str(tmp_path)])
    assert len(runs) >= 4 and dropped  # the smallest widths cannot spend 1e12 on 50k images
    for run in runs:
        c = run.cfg
        C = sweep.num_params(c.model, c.width, c.depth) * c.dataset_size * c.num_epochs
        assert abs(C - run.budget) <= 0.1 * run.budget
        assert 1 <= c.dataset_size <= 50_000 and c.num_epochs >= 1
    if tradeoff == "epochs":
        assert {r.cfg.dataset_size for r in runs} == {50_000}
    else:
        assert {r.cfg.num_epochs for r in runs} == {100}


@pytest.mark.parametrize("argv,message", [
    (["compute", "--budgets", "10"], "no feasible configuration"),
    # was: 300-digit D, and with --tradeoff epochs a run of 10^291 epochs planned (a dry run that
    # never ended)
    (["compute", "--budgets", "1e300", "--widths", "4"], "needs D=2.04e+294, outside 1..50,000"),
    (["compute", "--budgets", "1e300", "--widths", "4", "--tradeoff", "epochs"],
     "needs 4.07e+291 epochs, above train.py's 1,000,000"),
    (["width", "--", "--num_epochs", "1000001"], "--num_epochs must be in 1..1000000"),
    (["width", "--widths", "0"], "--width must be >= 1"),
    (["width", "--widths", f"4,{2 ** 63 - 1}"], f"width {2 ** 63 - 1:,} depth 2 has N="),  # exact
    (["depth", "--depths", "100000000"], "more than this machine's"),
    (["width", "--widths", ""], "needs at least one value"),
    (["shape"], "invalid choice"),
    (["width", "--", "--lr=-1"], "--lr must be >= 0"),
    (["compute", "--budgets", "-1e9"], "--budgets: needs positive finite values"),  # was: "expected
    (["width", "--", "--lr", "-1e-3"], "--lr must be >= 0"),                       # one argument"
])
def test_bad_sweeps_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.main(argv + ["--results_dir", str(tmp_path / "r")] if "--" not in argv else
                   argv[:argv.index("--")] + ["--results_dir", str(tmp_path / "r")] + argv[argv.index("--"):])
    assert exit_.value.code not in (0, None)
    out = capsys.readouterr()
    assert message in str(exit_.value.code) + out.err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_dry_run_commands_are_runnable_as_is(data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "sweep.py", "width", "--widths", "2", "--dry_run",
                           "--results_dir", str(tmp_path), "--", *TINY_FLAGS, f"--data_dir={data_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1 and "# N=" in lines[0]
    assert subprocess.run(lines[0], shell=True, cwd=REPO, timeout=300).returncode == 0
    assert read_csv(str(tmp_path / "final_data.csv"))[0]["width"] == "2"


@pytest.mark.slow
def test_parallel_sweep_then_rerun_skips_everything(data_dir, tmp_path, capsys):
    argv = ["width", "--widths", "2,3,4", "--jobs", "2", "--results_dir", str(tmp_path),
            "--", *TINY_FLAGS, f"--data_dir={data_dir}"]
    sweep.main(argv)
    rows = read_csv(str(tmp_path / "final_data.csv"))
    assert sorted(r["width"] for r in rows) == ["2", "3", "4"]
    assert len({r["run_name"] for r in rows}) == 3 and all(r["status"] == "finished" for r in rows)
    capsys.readouterr()
    sweep.main(argv)
    assert "3 skipped" in capsys.readouterr().err
    assert len(read_csv(str(tmp_path / "final_data.csv"))) == 3


@pytest.mark.slow
def test_a_failing_run_is_reported_while_the_others_finish(data_dir, tmp_path, capsys):
    argv = ["width", "--widths", "2,3", "--results_dir", str(tmp_path),
            "--", *TINY_FLAGS, f"--data_dir={data_dir}"]
    runs, _ = planned(argv)
    blocked = runs[0].name
    os.makedirs(tmp_path / "runs")
    with file_lock(str(tmp_path / "runs" / blocked)):  # "another process" holds this one
        with pytest.raises(SystemExit) as exit_:
            sweep.main(argv)
    # held by another process (another sweep): left to it and said so, not a failure, and the
    # sweep's exit says it did not train everything it was asked to
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert "1 held by another process" in err and blocked in err and "rerun this command" in err
    assert [r["run_name"] for r in read_csv(str(tmp_path / "final_data.csv"))] == [runs[1].name]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_rows(data_dir, tmp_path):
    flags = ["--width=3", "--depth=1", "--dataset_size=300", "--num_epochs=6", "--test_freq=2",
             "--batch_size=32", "--device=cpu", f"--data_dir={data_dir}"]
    sweep_argv = ["width", "--widths", "3", "--results_dir", str(tmp_path / "killed"), "--", *flags]
    (run,), _ = planned(sweep_argv)
    per_epoch = tmp_path / "killed" / "runs" / (run.name + ".csv")
    proc = subprocess.Popen(sweep.command(run), cwd=REPO)
    while not (per_epoch.exists() and len(pd.read_csv(per_epoch)) >= 2) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = len(pd.read_csv(per_epoch))
    assert interrupted_at < 6, "the run finished before it could be killed"
    sweep.main(sweep_argv)  # rerunning the sweep resumes it
    train.train(train.parse_config(flags + ["--results_dir", str(tmp_path / "clean"), "--quiet"]))
    killed = pd.read_csv(per_epoch).drop(columns=TIME_COLUMNS)
    clean = pd.read_csv(tmp_path / "clean" / "runs" / (run.name + ".csv")).drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(killed, clean)
    assert len(read_csv(str(tmp_path / "killed" / "final_data.csv"))) == 1


@pytest.mark.slow
def test_collect_rebuilds_a_lost_summary_file(data_dir, tmp_path):
    sweep.main(["width", "--widths", "2,3", "--results_dir", str(tmp_path), "--", *TINY_FLAGS,
                f"--data_dir={data_dir}"])
    final = tmp_path / "final_data.csv"
    before = pd.read_csv(final).sort_values("run_name").reset_index(drop=True)
    final.write_text("run_name,N\ngarbage")  # damaged
    sweep.main(["collect", "--results_dir", str(tmp_path)])
    after = pd.read_csv(final).sort_values("run_name").reset_index(drop=True)
    pd.testing.assert_frame_equal(before[after.columns], after)
    assert any(p.name.startswith("final_data.csv.") and p.name.endswith(".bak") for p in tmp_path.iterdir())


def test_gpu_env_pins_one_device():
    assert sweep.gpu_env(1)["CUDA_VISIBLE_DEVICES"] == "1"
    assert sweep.gpu_env(None).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.slow
def test_submitit_array_runs_through_the_local_executor(data_dir, tmp_path):
    sweep.main(["width", "--widths", "2,3", "--launcher", "submitit-local", "--wait",
                "--results_dir", str(tmp_path), "--", *TINY_FLAGS, f"--data_dir={data_dir}"])
    rows = read_csv(str(tmp_path / "final_data.csv"))
    assert sorted(r["width"] for r in rows) == ["2", "3"]


def test_a_sweep_not_waiting_for_its_array_counts_nothing_as_done(data_dir, tmp_path, monkeypatch,
                                                                  capsys):
    submitted = []
    monkeypatch.setattr(sweep, "launch_submitit", lambda *args: submitted.append(args) or None)
    sweep.main(["width", "--widths", "2,3", "--launcher", "submitit-local",
                "--results_dir", str(tmp_path), "--", *TINY_FLAGS, f"--data_dir={data_dir}"])
    err = capsys.readouterr().err
    assert len(submitted) == 1 and "not waiting for the tasks (--wait waits and reports)" in err
    assert "done:" not in err  # was: "done: 0 finished (0 diverged), 0 failed" while they trained


@pytest.mark.parametrize("engine", ["process", "worker"])
def test_a_sweep_without_the_data_launches_nothing_and_says_where_to_put_it(engine, tmp_path,
                                                                           monkeypatch, capsys):
    """Was: every run launched, each failing alone with a traceback in its log (and, online,
    racing the others' downloads into one folder)."""
    def offline(data_dir):
        raise OSError("Name or service not known")
    monkeypatch.setattr(data, "download_cifar10", offline)
    monkeypatch.setattr(sweep, "run_one", lambda *a: pytest.fail("a run was launched"))
    empty = tmp_path / "nodata"
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["width", "--widths", "2,3", "--engine", engine, "--results_dir",
                    str(tmp_path / "results"), "--", *TINY_FLAGS, f"--data_dir={empty}"])
    says(str(exit_.value.code), "sweep.py: error", str(empty), "cifar-10-batches-py",
         "Nothing was launched")
    assert not (tmp_path / "results" / "runs").exists()


@pytest.mark.slow
def test_submitit_from_the_command_line_in_another_folder(data_dir, tmp_path):
    """Run as a script, sweep.py is __main__: its task function must reach the job by reference
    (was: "cannot pickle '_thread.lock' object")."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "sweep.py"), "width", "--widths", "2",
                           "--launcher", "submitit-local", "--wait", "--results_dir",
                           str(tmp_path / "r"), "--", *TINY_FLAGS, f"--data_dir={data_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "done: 1 finished" in proc.stderr + proc.stdout, proc.stderr


@pytest.mark.slow
def test_sweep_runs_bundles_through_workers(data_dir, tmp_path, capsys):
    tiny = ["--dataset_size=128", "--batch_size=64", "--test_freq=1", "--device=cpu",
            f"--data_dir={data_dir}"]
    sweep.main(["width", "--widths", "4,8", "--seeds", "0,1", "--num_epochs", "1", "--max_bundle", "2",
                "--results_dir", str(tmp_path), "--", *tiny])
    final = pd.read_csv(os.path.join(str(tmp_path), "final_data.csv"))
    assert sorted(zip(final.width, final.seed)) == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert set(final.bundle_size) == {2}
    assert "done: 4 finished" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_reports_a_run_another_process_holds_inside_a_worker(data_dir, tmp_path, capsys):
    """A run held by another process (its lock taken here, as a second sweep on the same folder
    finds it) is left to that process inside the worker; its bundle mate still finishes, and the
    sweep names the held run and exits 3: it did not train everything it was asked to."""
    argv = ["width", "--widths", "4", "--seeds", "0,1", "--num_epochs", "1", "--max_bundle", "2",
            "--results_dir", str(tmp_path), "--", "--dataset_size=128", "--batch_size=64",
            "--device=cpu", f"--data_dir={data_dir}"]
    held, free = sweep.plan(sweep.parse_args(argv))[0]
    os.makedirs(tmp_path / "runs", exist_ok=True)
    with file_lock(str(tmp_path / "runs" / held.name)):
        with pytest.raises(SystemExit) as exit_:
            sweep.main(argv)
    assert exit_.value.code == 3   # left to the process that holds it, and said so
    err = capsys.readouterr().err
    says(err, "1 finished", "0 failed", "1 held by another process", held.name, "another sweep")
    assert records.read_summary(train.run_stem(free.cfg) + ".json")["status"] == "finished"


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


def start_sweep(data_dir, results, widths, engine):
    argv = [sys.executable, "sweep.py", "width", "--widths", widths, "--jobs", "2",
            "--engine", engine, "--results_dir", str(results), "--", *SLOW_FLAGS, f"--data_dir={data_dir}"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    started = lambda: len(list((results / "runs").glob("*.ckpt.pt"))) == len(widths.split(","))
    assert wait_for(started), "the sweep's trainings did not start"
    return proc


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("engine", ["worker", "process"])
def test_trainings_do_not_outlive_a_sigkilled_sweep(data_dir, tmp_path, engine):
    results = tmp_path / "results"
    proc = start_sweep(data_dir, results, "2", engine)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not processes_mentioning(str(results)), 15)


@pytest.mark.parametrize("budget", ["inf", "nan"])
def test_non_finite_budgets_are_refused(budget, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(["compute", "--budgets", budget, "--results_dir", str(tmp_path)])
    assert exit_.value.code == 2 and "positive finite" in capsys.readouterr().err


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
    says(capsys.readouterr().err, "--num_epochs", "3", "5", "--")
    args = sweep.parse_args(["width", "--widths", "4", "--num_epochs", "3", "--results_dir",
                             str(tmp_path), "--", "--num_epochs=3"])
    assert sweep.plan(args)[0][0].cfg.num_epochs == 3


def test_cpu_jobs_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert sweep.gpu_env(None, jobs=2)["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert "OMP_NUM_THREADS" not in sweep.gpu_env(0, jobs=2)  # a GPU run keeps torch's default


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


@pytest.mark.parametrize("engine", ["process", "worker"])
def test_a_full_disk_stops_a_sweep_with_one_line_and_launches_nothing_more(engine, data_dir,
                                                                           tmp_path, monkeypatch,
                                                                           capsys):
    argv = ["width", "--widths", "4,8,16", "--seeds", "0", "--num_epochs", "1", "--jobs", "1",
            "--engine", engine, "--results_dir", str(tmp_path), "--", "--dataset_size=64",
            f"--data_dir={data_dir}"]
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
    says(err, "not finished", "free some space", "rerun the same command")
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
    (["width", "--dry_run", "--bench_csv", "/no/such.csv"], "--bench_csv '/no/such.csv' is not a file"),
    (["width", "--dry_run", "--bench_notes", "Notes/benchmarks.md"], "--bench_csv"),
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


def test_a_bench_csv_that_is_not_text_is_refused_naming_it(tmp_path, capsys):
    garbage = tmp_path / "bench.csv"
    garbage.write_bytes(bytes(range(128, 256)) * 8)   # was: a UnicodeDecodeError traceback
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["width", "--dry_run", "--bench_csv", str(garbage)])
    assert exit_.value.code == 2
    says(capsys.readouterr().err, "--bench_csv", str(garbage), "CSV")


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


# ---------------------------------------------------------------------------------------------
# collect: final_data.csv rebuilt without losing what the old file held

def run_summary(folder, name, loss=1.0):
    runs = folder / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    row = dict(run_name=name, config_id=name[-4:], status="finished", N=100, D=1000, epochs=1,
               seed=0, final_test_loss=loss, final_test_acc=0.5, final_test_loss_avg_last5=loss,
               final_test_acc_avg_last5=0.5, timestamp="2026-12-06T00:00:00+0000")
    (runs / f"{name}.json").write_text(json.dumps(row))
    return row


def test_collect_through_a_symlink_keeps_the_old_bytes_in_its_backup(tmp_path):
    """results/final_data.csv a link to a file elsewhere: the backup holds the old file's bytes
    (a hard link to the link itself followed the rewrite), and the rows it says are left out are
    in it."""
    results = tmp_path / "results"
    run_summary(results, "cnn_a_0001")
    real = tmp_path / "elsewhere.csv"
    real.write_text("run_name,final_test_loss\ncnn_a_0001,1.0\ncnn_hand_9999,2.0\n")
    old = real.read_bytes()
    (results / "final_data.csv").symlink_to(real)
    count, backup, orphans, _ = sweep.collect(str(results))
    assert count == 1 and orphans == ["cnn_hand_9999"]
    assert open(backup, "rb").read() == old
    assert "cnn_hand_9999" in open(backup).read()
    assert [r["run_name"] for r in read_csv(str(results / "final_data.csv"))] == ["cnn_a_0001"]


def test_collect_keeps_a_column_added_by_hand_and_says_so(tmp_path, capsys):
    results = tmp_path / "results"
    run_summary(results, "cnn_a_0001")
    run_summary(results, "cnn_b_0002", loss=0.8)
    (results / "final_data.csv").write_text("run_name,final_test_loss,my_notes\n"
                                            "cnn_a_0001,1.0,looks odd\n")
    sweep.main(["collect", "--results_dir", str(results)])
    rows = {r["run_name"]: r for r in read_csv(str(results / "final_data.csv"))}
    assert rows["cnn_a_0001"]["my_notes"] == "looks odd" and rows["cnn_b_0002"]["my_notes"] == ""
    assert "my_notes" in capsys.readouterr().err


def test_collect_refuses_a_folder_where_final_data_csv_should_be(tmp_path, capsys):
    results = tmp_path / "results"
    run_summary(results, "cnn_a_0001")
    (results / "final_data.csv").mkdir()
    with pytest.raises(SystemExit) as stop:
        sweep.main(["collect", "--results_dir", str(results)])
    message = str(stop.value.code)
    assert "final_data.csv" in message and "folder" in message
    assert os.path.isdir(results / "final_data.csv")   # nothing moved or removed


@pytest.mark.parametrize("value", ["60000", "0"])
def test_a_minimum_dataset_size_beyond_the_data_is_refused_naming_the_flag(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sweep.main(["compute", "--min_dataset_size", value, "--dry_run", "--results_dir",
                    str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--min_dataset_size" in err and "50,000" in err


def test_collect_refuses_a_results_folder_it_cannot_write_before_touching_it(tmp_path,
                                                                             monkeypatch):
    # a writable final_data.csv in a folder that is not (chattr +i, a read-only mount): the
    # backup beside it was a PermissionError traceback
    final = summaries_folder(tmp_path)
    before = final.read_bytes()
    monkeypatch.setattr(records, "unwritable_folder",
                        lambda folder: folder if folder == str(tmp_path) else None)
    with pytest.raises(SystemExit) as stop:
        sweep.main(["collect", "--results_dir", str(tmp_path)])
    says(str(stop.value.code), "--results_dir", str(tmp_path), "not writable", "--dry_run")
    assert final.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".bak", ".lock"))]
