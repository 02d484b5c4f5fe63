import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import sweep
import train
from conftest import REPO
from records import file_lock, read_csv

TINY_FLAGS = ["--depth=1", "--dataset_size=200", "--num_epochs=2", "--test_freq=10",
              "--batch_size=64", "--device=cpu"]
TIME_COLUMNS = ["epoch_time_s", "eval_time_s"]


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


def test_dry_run_commands_are_runnable_as_is(data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "sweep.py", "width", "--widths", "2", "--dry_run",
                           "--results_dir", str(tmp_path), "--", *TINY_FLAGS, f"--data_dir={data_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 1 and "# N=" in lines[0]
    assert subprocess.run(lines[0], shell=True, cwd=REPO, timeout=300).returncode == 0
    assert read_csv(str(tmp_path / "final_data.csv"))[0]["width"] == "2"


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


def test_submitit_array_runs_through_the_local_executor(data_dir, tmp_path):
    sweep.main(["width", "--widths", "2,3", "--launcher", "submitit-local", "--wait",
                "--results_dir", str(tmp_path), "--", *TINY_FLAGS, f"--data_dir={data_dir}"])
    rows = read_csv(str(tmp_path / "final_data.csv"))
    assert sorted(r["width"] for r in rows) == ["2", "3"]


def test_a_sweep_not_waiting_for_its_array_counts_nothing_as_done(tmp_path, monkeypatch, capsys):
    submitted = []
    monkeypatch.setattr(sweep, "launch_submitit", lambda *args: submitted.append(args) or None)
    sweep.main(["width", "--widths", "2,3", "--launcher", "submitit-local",
                "--results_dir", str(tmp_path), "--", *TINY_FLAGS])
    err = capsys.readouterr().err
    assert len(submitted) == 1 and "not waiting for the tasks (--wait waits and reports)" in err
    assert "done:" not in err  # was: "done: 0 finished (0 diverged), 0 failed" while they trained


def test_submitit_from_the_command_line_in_another_folder(data_dir, tmp_path):
    """Run as a script, sweep.py is __main__: its task function must reach the job by reference
    (was: "cannot pickle '_thread.lock' object")."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "sweep.py"), "width", "--widths", "2",
                           "--launcher", "submitit-local", "--wait", "--results_dir",
                           str(tmp_path / "r"), "--", *TINY_FLAGS, f"--data_dir={data_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "done: 1 finished" in proc.stderr + proc.stdout, proc.stderr
