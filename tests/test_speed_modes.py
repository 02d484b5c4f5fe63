"""Every speed mode trains end to end and writes the same records; the benchmark runs."""
import io
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch._dynamo

import bench
import model
import train
from conftest import REPO
from test_train import TINY

TINY_NO_DEVICE = {k: v for k, v in TINY.items() if k != "device"}


# "compiled" differs from "fast" only in a CUDA-only compile mode, "compile_fp32" from "default"
# and "compile_channels_last" from "channels_last" only in compiling: on CPU "fast" covers the
# compiled path.
@pytest.mark.parametrize("pipeline", [p for p in bench.PIPELINES if p not in (
    "compiled", "compile_fp32", "compile_channels_last")])
def test_every_pipeline_writes_the_same_schema(pipeline, data_dir, tmp_path):
    reference = train.train(bench.pipeline_config("default", "cpu", **TINY_NO_DEVICE, data_dir=data_dir,
                                                  results_dir=str(tmp_path / "default")))
    cfg = bench.pipeline_config(pipeline, "cpu", **TINY_NO_DEVICE, data_dir=data_dir,
                                results_dir=str(tmp_path / pipeline))
    summary = train.train(cfg)
    assert summary.keys() == reference.keys()
    for field in ("loader", "precision", "channels_last", "compile", "deterministic"):
        assert summary[field] == getattr(cfg, field)  # the record says which levers were used
    rows = lambda d, s: pd.read_csv(tmp_path / d / "runs" / (s["run_name"] + ".csv"))
    assert list(rows(pipeline, summary).columns) == list(rows("default", reference).columns)
    assert summary["status"] == "finished" and summary["final_test_loss_avg_last5"] > 0


def test_bench_prints_and_records_a_table(data_dir, tmp_path):
    notes = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--sizes", "4x1",
                           "--dataset_size", "200", "--warmup", "1", "--epochs", "1",
                           "--pipelines", "brief,default", "--data_dir", data_dir,
                           "--threads", "1", "--notes", str(notes)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = notes.read_text()
    assert "| 4x1    | brief" in text and "| 4x1    | default" in text and "speedup_vs_brief" in text
    assert text.strip() in proc.stdout
    table = pd.read_csv(io.StringIO("\n".join(line for line in text.splitlines()
                                              if line.startswith("|") and "---" not in line)),
                        sep="|", skipinitialspace=True).rename(columns=str.strip)
    assert (table.threads == 1).all()
    # on a CPU the peak is measured (a matmul on the same threads), so the fraction of it is known
    assert ((table.mfu > 0) & (table.mfu < 1)).all()
    assert (table.eval_images_per_s > 0).all() and (table.eval_vs_train > 0).all()


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


def test_bench_sweep_refuses_an_out_that_is_a_file_before_measuring(tmp_path):
    (tmp_path / "afile").write_text("")
    proc = subprocess.run([sys.executable, "bench.py", "--sweep", "width", "--device", "cpu",
                           "--out", str(tmp_path / "afile")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "afile' is a file; give a folder" in proc.stderr  # was: a
    assert "s per bundle epoch" not in proc.stderr + proc.stdout          # traceback after it


def test_bench_refuses_a_size_beyond_memory_before_measuring_the_others():
    proc = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--sizes",
                           "2x1,100000000x1", "--step_parts", "--notes", ""], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--sizes: cnn width 100,000,000 depth 1 has N=" in proc.stderr
    assert "step parts measured" not in proc.stderr  # checked before any size is measured


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_bench_stopped_while_measuring_says_so_in_one_line(tmp_path, signum):
    notes = tmp_path / "benchmarks.md"
    proc = subprocess.Popen([sys.executable, "bench.py", "--device", "cpu", "--sizes", "16x2",
                             "--pipelines", "default", "--dataset_size", "5000", "--epochs", "50",
                             "--notes", str(notes)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = [proc.stderr.readline()]  # the peak is measured first: the measurements have begun
    proc.send_signal(signum)
    err = "".join(lines) + proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signum, err  # was: a traceback; SIGTERM: no word
    assert lines[0].startswith("  measured peak") and err.count("\n") == 2, err
    assert err.endswith(f"bench.py: stopped by {signum.name}; nothing was added to {notes}\n")
    assert not notes.exists()


@pytest.mark.parametrize("gflops, sizes", [(1, [256, 512]), (1000, [256, 512, 1024, 2048])])
def test_the_cpu_peak_grows_its_product_until_one_takes_long_enough(monkeypatch, gflops, sizes):
    """1 GFLOP/s is bf16 on an AVX2-only CPU, where one 2048 product took 13 s and a stop
    waited for it; 1000 stands for a fast BLAS, measured up to 2048."""
    tried = []

    def matmul_s(size, dtype, repeats):
        tried.append(size)
        return 2 * size ** 3 / (gflops * 1e9)
    monkeypatch.setattr(bench.train, "best_matmul_s", matmul_s)
    assert bench.measured_peak_tflops("bf16") == pytest.approx(gflops / 1000)
    assert tried == sizes


def test_bench_stopped_after_some_rows_keeps_them_and_says_what_is_missing(tmp_path):
    """A device call's time limit stops bench.py mid-table: the rows already measured are the
    call's only result, so they are written, marked as partial."""
    notes = tmp_path / "benchmarks.md"
    proc = subprocess.Popen([sys.executable, "bench.py", "--device", "cpu", "--sizes", "2x1,64x3",
                             "--pipelines", "default", "--dataset_size", "500", "--warmup", "1",
                             "--epochs", "8", "--notes", str(notes)], cwd=REPO,
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
    assert err == f"bench.py: stopped by SIGTERM; the rows measured before it are above and in {notes}\n"


@pytest.mark.parametrize("threads", ["0", "99999"])  # 99999: was a segfault in OpenMP
def test_bench_refuses_a_thread_count_out_of_range(threads):
    proc = subprocess.run([sys.executable, "bench.py", "--threads", threads], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"--threads must be 1 to {4 * os.cpu_count()} (4 per core " \
        f"here), got {threads}" in proc.stderr


def test_bench_refuses_notes_that_are_a_folder_before_measuring(tmp_path):
    proc = subprocess.run([sys.executable, "bench.py", "--notes", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is a folder, not a file" in proc.stderr  # was: a traceback


def test_projection_counts_the_briefs_evaluations():
    # 100 epochs, test every 5 plus the last 5: 20 + 4 evaluations.
    assert bench.projected_run_s(epoch_s=1.0, eval_s=0.5) == 100 + 24 * 0.5


def test_unknown_pipeline_is_refused():
    proc = subprocess.run([sys.executable, "bench.py", "--pipelines", "brief,turbo"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown pipelines ['turbo']" in proc.stderr


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


def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_buffers():
    """Buffers of a few MiB freed and allocated again (a batch's activations) are faulted in page by
    page again and again under glibc's defaults; kept on the heap, once."""
    script = """
import resource, sys, torch, train
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        for mib in (4, 16, 8, 24):
            torch.ones(mib * 2 ** 18).sum()  # freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
train.keep_freed_memory()
faults()  # the heap grows once
print(default, faults())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    default, kept = map(int, out.stdout.split())
    assert default > 5000 and kept < default / 10, (default, kept)  # 19,533 and 0 when written


def test_a_process_compiles_every_model_past_dynamos_recompile_limit(monkeypatch):
    """bench.py's pipelines and the worker's shapes each compile model.forward again, once for
    training and once for evaluation: past dynamo's limit of 8 the later ones ran eagerly (an
    H200's bench.py "fast" row timed eager code). A counting backend stands in for inductor."""
    graph_calls = []

    def counting_backend(graph, example_inputs):
        def run(*args):
            graph_calls.append(1)
            return graph.forward(*args)
        return run
    for name in ("cache_size_limit", "recompile_limit"):  # restored after the test
        if hasattr(torch._dynamo.config, name):
            monkeypatch.setattr(torch._dynamo.config, name, getattr(torch._dynamo.config, name))
    inductor_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: inductor_compile(
        module, backend=counting_backend))
    torch._dynamo.reset()
    images = torch.randn(2, 3, 32, 32)
    for width in range(1, 6):  # 10 graphs of one forward
        step = train.compiled(model.build_model(width=width, depth=1),
                              train.Config(compile="default", device="cpu"))
        before = len(graph_calls)
        step(images).sum().backward()
        with torch.no_grad():
            step(images)
        assert len(graph_calls) == before + 2, f"width {width} ran eagerly"
    torch._dynamo.reset()
