"""bench.py: the pipelines' timing table, step parts, the sweep engine's measurements, and the
refusals before anything is measured."""
import io
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

import bench
import speed
import train
import worker
from conftest import REPO
from tiny import says


@pytest.mark.slow
def test_bench_prints_and_records_a_table(data_dir, tmp_path):
    notes, rows = tmp_path / "benchmarks.md", tmp_path / "benchmarks.csv"
    rows.write_text("date,device,size,pipeline,epoch_s\n2026-01-01 00:00,cpu,2x1,default,9\n")
    proc = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--sizes", "4x1",
                           "--dataset_size", "200", "--warmup", "1", "--epochs", "1",
                           "--pipelines", "torchvision,default", "--data_dir", data_dir,
                           "--threads", "1", "--notes", str(notes), "--csv", str(rows)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # The CSV keeps the earlier measurement and gains one row per size and pipeline, each saying
    # where, when and how it was measured: the data that sweep.py's projections read.
    csv = pd.read_csv(rows)
    assert list(csv.pipeline) == ["default", "torchvision", "default"] and csv.epoch_s[0] == 9
    new = csv.iloc[1:]
    assert (new.device == "cpu").all() and (new["size"] == "4x1").all() and (new.model == "cnn").all()
    assert (new.dataset_size == 200).all() and (new.timed_epochs == 1).all()
    assert new.command.str.contains("--sizes 4x1").all() and new.code_version.notna().all()
    assert (new.epoch_s > 0).all() and (new.threads == 1).all()
    text = notes.read_text()
    assert "| 4x1    | torchvision" in text and "| 4x1    | default" in text
    assert "speedup_vs_torchvision" in text
    assert text.strip() in proc.stdout
    table = pd.read_csv(io.StringIO("\n".join(line for line in text.splitlines()
                                              if line.startswith("|") and "---" not in line)),
                        sep="|", skipinitialspace=True).rename(columns=str.strip)
    assert (table.threads == 1).all()
    # on a CPU the peak is measured (a matmul on the same threads), so the fraction of it is known
    assert ((table.mfu > 0) & (table.mfu < 1)).all()
    assert (table.eval_images_per_s > 0).all() and (table.eval_vs_train > 0).all()


@pytest.mark.slow
def test_step_parts_time_each_sgd_and_find_foreach_identical_to_the_for_loop(tmp_path):
    notes = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--sizes", "2x1",
                           "--step_parts", "--epochs", "1", "--notes", str(notes)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, rule, row = [line for line in notes.read_text().splitlines() if line.startswith("|")]
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]],
                     [c.strip() for c in row.split("|")[1:-1]]))
    assert list(cells) == bench.STEP_PARTS_COLUMNS and cells["size"] == "2x1"
    assert cells["foreach_identical"] == "True"  # the same arithmetic, tensor by tensor
    assert all(float(cells[k]) > 0 for k in ("forward_ms", "backward_ms", "for_loop_step_ms",
                                             "foreach_step_ms", "eval_vs_train"))
    assert "convolution" in cells["training_top_ops"] and "%" in cells["eval_top_ops"]


@pytest.mark.slow
def test_bench_sweep_refuses_an_out_that_is_a_file_before_measuring(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([sys.executable, "bench.py", "--sweep", "width", "--device", "cpu",
                           "--out", str(tmp_path / "afile")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # was: a traceback after it
    says(proc.stderr, "--out", str(tmp_path / "afile"), "folder")
    assert "s per bundle epoch" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_bench_refuses_a_size_beyond_memory_before_measuring_the_others():
    proc = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--sizes",
                           "2x1,100000000x1", "--step_parts", "--notes", ""], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--sizes: cnn width 100,000,000 depth 1 has N=" in proc.stderr
    assert "step parts measured" not in proc.stderr  # checked before any size is measured


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_bench_stopped_while_measuring_says_so_in_one_line(tmp_path, signum):
    notes = tmp_path / "benchmarks.md"
    proc = subprocess.Popen([sys.executable, "bench.py", "--device", "cpu", "--sizes", "16x2",
                             "--pipelines", "default", "--dataset_size", "5000", "--epochs", "50",
                             "--notes", str(notes), "--csv", str(tmp_path / "b.csv")],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = [proc.stderr.readline()]  # the peak is measured first: the measurements have begun
    proc.send_signal(signum)
    err = "".join(lines) + proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signum, err  # was: a traceback; SIGTERM: no word
    assert lines[0].startswith("  measured peak") and err.count("\n") == 2, err
    assert err.endswith(f"bench.py: stopped by {signum.name}; nothing was added to {notes}\n")
    assert not notes.exists() and not (tmp_path / "b.csv").exists()


@pytest.mark.parametrize("gflops, sizes", [(1, [256, 512]), (1000, [256, 512, 1024, 2048])])
def test_the_cpu_peak_grows_its_product_until_one_takes_long_enough(monkeypatch, gflops, sizes):
    """1 GFLOP/s is bf16 on an AVX2-only CPU, where one 2048 product took 13 s and a stop
    waited for it; 1000 stands for a fast BLAS, measured up to 2048."""
    tried = []

    def matmul_s(size, dtype, repeats):
        tried.append(size)
        return 2 * size ** 3 / (gflops * 1e9)
    monkeypatch.setattr(speed, "best_matmul_s", matmul_s)
    assert bench.measured_peak_tflops("bf16") == pytest.approx(gflops / 1000)
    assert tried == sizes


@pytest.mark.slow
def test_bench_stopped_after_some_rows_keeps_them_and_says_what_is_missing(tmp_path):
    """A device call's time limit stops bench.py mid-table: the rows already measured are the
    call's only result, so they are written, marked as partial."""
    notes, rows = tmp_path / "benchmarks.md", tmp_path / "benchmarks.csv"
    proc = subprocess.Popen([sys.executable, "bench.py", "--device", "cpu", "--sizes", "2x1,64x3",
                             "--pipelines", "default", "--dataset_size", "500", "--warmup", "1",
                             "--epochs", "8", "--notes", str(notes), "--csv", str(rows)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [proc.stderr.readline()]
    while lines[-1] and not lines[-1].startswith("  2x1 default"):
        lines.append(proc.stderr.readline())
    proc.send_signal(signal.SIGTERM)  # while 64x3 trains
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines) + err
    table = notes.read_text()
    assert "| 2x1 " in table and "| 64x3 " not in table and table.strip() in out
    assert "Stopped by SIGTERM after 1 of 2 rows.\n" in table
    assert list(pd.read_csv(rows)["size"]) == ["2x1"]
    assert err == (f"bench.py: stopped by SIGTERM; the rows measured before it are above and in "
                   f"{rows} and in {notes}\n")


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["0", "99999"])  # 99999: was a segfault in OpenMP
def test_bench_refuses_a_thread_count_out_of_range(threads):
    proc = subprocess.run([sys.executable, "bench.py", "--threads", threads], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"--threads must be 1 to {4 * os.cpu_count()} (4 per core " \
        f"here), got {threads}" in proc.stderr


@pytest.mark.parametrize("flag, other, content, named", [
    ("--csv", "--notes", bytes(range(128, 256)) * 8, ["not a CSV", "another --csv"]),
    ("--notes", "--csv", b"\xff\xfe| old table |\n", ["UTF-8", "another --notes"]),
])
def test_bench_refuses_a_file_it_could_not_append_to_before_measuring(tmp_path, monkeypatch, capsys,
                                                                       flag, other, content, named):
    path = tmp_path / "bench.out"
    path.write_bytes(content)
    monkeypatch.setattr(sys, "argv", ["bench.py", flag, str(path), other, ""])
    monkeypatch.setattr(bench, "measured", lambda *a: pytest.fail("measured before refusing"))
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    says(capsys.readouterr().err, flag, str(path), *named)
    assert path.read_bytes() == content


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--notes", "--csv"])
def test_bench_refuses_notes_that_are_a_folder_before_measuring(tmp_path, flag):
    proc = subprocess.run([sys.executable, "bench.py", flag, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # was: a traceback
    says(proc.stderr, flag, str(tmp_path), "folder")


def test_projection_counts_the_recipes_evaluations():
    # 100 epochs, test every 5 plus the last 5: 20 + 4 evaluations.
    assert bench.projected_run_s(epoch_s=1.0, eval_s=0.5) == 100 + 24 * 0.5


@pytest.mark.slow
def test_unknown_pipeline_is_refused():
    proc = subprocess.run([sys.executable, "bench.py", "--pipelines", "torchvision,turbo"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown pipelines ['turbo']" in proc.stderr


@pytest.mark.slow
def test_sweep_benchmark_times_the_width_plan_per_jobs(data_dir, tmp_path):
    notes = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "bench.py", "--sweep_jobs", "1,2", "--sweep_args",
                           "--widths 4,8 --seeds 0 -- --depth 1 --dataset_size 100 --num_epochs 1 "
                           "--test_freq 1 --device cpu", "--data_dir", data_dir,
                           "--notes", str(notes)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = [line for line in notes.read_text().splitlines() if line.startswith("|")]
    assert "jobs" in table[0] and "wall_s" in table[0]
    jobs_and_runs = [[cell.strip() for cell in row.split("|")[1:3]] for row in table[2:]]
    assert jobs_and_runs == [["1", "2"], ["2", "2"]]


def test_sweep_benchmark_defaults_to_the_fast_pipeline():
    assert train.parse_config(bench.sweep_args_default().split("-- ")[1].split()) == \
        train.Config(**bench.PIPELINES["fast"])


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--sizes", "32x2,32"], "--sizes takes WIDTHxDEPTH"),
    (["--dataset_size", "0"], "--dataset_size must be in 1..50000, got 0"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--sweep_jobs", "1,0"], "--sweep_jobs must be >= 1 each"),
    (["--device", "foo"], "--device 'foo' is not a device"),  # was: a RuntimeError traceback
])
def test_bad_benchmark_flags_are_refused_before_anything_runs(flags, message, tmp_path):
    notes = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--notes", str(notes),
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not notes.exists()


@pytest.mark.slow
def test_bench_sweep_measures_engines_and_fusion(data_dir, tmp_path):
    out = tmp_path / "bench"
    plan = "--widths 4 --seeds 0,1 --num_epochs 1 -- --dataset_size 128 --device cpu --test_freq 1"
    proc = subprocess.run([sys.executable, "bench.py", "--sweep", "width", "--device", "cpu",
                           "--fused_size", "4x1", "--fused_copies", "1,2", "--dataset_size", "128",
                           "--warmup", "1", "--epochs", "1", "--fused_pipeline", "default",
                           "--engines", "worker,process", "--data_dir", data_dir, "--notes", "",
                           "--out", str(out), "--sweep_args", plan],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    engines = pd.read_csv(out / "sweep_engines.csv")
    assert list(engines.engine) == ["worker", "process"] and set(engines.runs) == {2}
    fusion = pd.read_csv(out / "fused_throughput.csv")
    assert list(fusion.copies) == [1, 2] and fusion.per_copy_vs_single.iloc[0] == 1
    assert (fusion.images_per_s_per_copy > 0).all()
    report = (out / "report.md").read_text()
    assert report.startswith("## ") and "· cpu ·" in report and "bench.py --sweep width" in report


@pytest.mark.slow
def test_bench_refuses_a_bad_fused_size():
    proc = subprocess.run([sys.executable, "bench.py", "--sweep", "width", "--fused_size", "32"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    says(proc.stderr, "--fused_size", "WIDTHxDEPTH")


def bench_args(data_dir, out, *flags):
    args = bench.build_parser().parse_args([
        "--sweep", "width", "--device", "cpu", "--fused_size", "4x1", "--dataset_size", "64",
        "--warmup", "1", "--epochs", "1", "--engines", "", "--data_dir", data_dir, "--notes", "",
        "--out", str(out), *flags])
    args.failures = []
    return args


def test_bench_sweep_split_over_calls_keeps_each_calls_table(data_dir, tmp_path):
    """gpu_session.sh measures fusion and the engines in separate calls into one --out: a call
    that skips a part ('') must not overwrite the table an earlier call measured."""
    out = tmp_path / "bench"
    bench.engine_report(bench_args(data_dir, out, "--fused_copies", "1"), "cpu", "cpu")
    bench.engine_report(bench_args(data_dir, out, "--fused_copies", ""), "cpu", "cpu")
    assert list(pd.read_csv(out / "fused_throughput.csv").copies) == [1]
    assert not (out / "sweep_engines.csv").exists()
    report = (out / "report.md").read_text()
    assert report.count("## ") == 2 and report.count("Fused bundle vs single run") == 1


def test_bench_refuses_to_time_a_bundle_that_fell_back_to_single_runs(data_dir, tmp_path, monkeypatch):
    """A bundle that fails is retried run by run: those times are not fusion's. The sizes
    measured before are kept and the failure is named."""

    def out_of_memory(self, cfgs):
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(worker.Worker, "train_bundle", out_of_memory)
    args = bench_args(data_dir, tmp_path / "bench", "--fused_copies", "1,2")
    table = bench.fused_table(args, "cpu")
    assert list(table.copies) == [1]
    assert len(args.failures) == 1 and "bundle of 2 copies of 4x1 did not train as one network" \
        in args.failures[0] and "out of memory" in args.failures[0]


def test_bench_tables_go_under_results_by_default():
    args = bench.build_parser().parse_args([])
    assert args.notes == os.path.join("results", "benchmarks.md")
    assert args.csv == os.path.join("results", "benchmarks.csv")


def test_the_old_name_of_the_torchvision_pipeline_is_refused_naming_the_new_one(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--pipelines", "brief,default", "--notes", ""])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    says(capsys.readouterr().err, "--pipelines", "brief", "torchvision")
