"""speed.py: every speed lever trains end to end and writes the same records; the allocator, the
bf16 check and the compile limit do what they say."""
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch._dynamo

import bench
import speed
import train
from conftest import REPO
from model import build_model
from tiny import TINY, says


TINY_NO_DEVICE = {k: v for k, v in TINY.items() if k != "device"}


# "compiled" differs from "fast" only in a CUDA-only compile mode, "compile_fp32" from "default"
# and "compile_channels_last" from "channels_last" only in compiling: on CPU "fast" covers the
# compiled path.
@pytest.mark.parametrize("pipeline", [
    pytest.param(p, marks=[] if p == "channels_last" else [pytest.mark.slow])
    for p in bench.PIPELINES if p not in ("compiled", "compile_fp32", "compile_channels_last")])
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


@pytest.mark.slow
def test_keep_freed_memory_stops_the_page_faults_of_repeated_large_buffers():
    """Buffers of a few MiB freed and allocated again (a batch's activations) are faulted in page by
    page again and again under glibc's defaults; kept on the heap, once."""
    script = """
import resource, sys, torch, speed
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        for mib in (4, 16, 8, 24):
            torch.ones(mib * 2 ** 18).sum()  # freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
speed.keep_freed_memory()
faults()  # the heap grows once
print(default, faults())
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    default, kept = map(int, out.stdout.split())
    assert default > 5000 and kept < default / 10, (default, kept)  # 19,533 and 0 when written


@pytest.mark.slow
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
        step = speed.compiled(build_model(width=width, depth=1),
                              train.Config(compile="default", device="cpu"))
        before = len(graph_calls)
        step(images).sum().backward()
        with torch.no_grad():
            step(images)
        assert len(graph_calls) == before + 2, f"width {width} ran eagerly"
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("slowdown, warned", [(75.0, True), (0.6, False)])
def test_bf16_on_a_cpu_that_emulates_it_is_flagged_before_training(monkeypatch, capsys, data_dir,
                                                                    tmp_path, slowdown, warned):
    """An AVX2-only CPU multiplies bf16 ~75x slower than fp32: --precision bf16 there would make a
    CPU speedrun hours long. The measurement is replaced by the slowdown under test."""
    monkeypatch.setattr(speed, "cpu_bf16_slowdown", lambda: slowdown)
    train.train(train.Config(**{**TINY, "num_epochs": 1}, precision="bf16", data_dir=data_dir,
                             results_dir=str(tmp_path)))
    err = capsys.readouterr().err
    assert ("bf16 75x slower than fp32" in err and "--precision fp32 is faster here" in err) == warned
    speed.warn_if_slow_bf16("fp32", torch.device("cpu"))  # fp32 runs are never warned
    speed.warn_if_slow_bf16("bf16", torch.device("cuda"))  # nor GPUs
    assert capsys.readouterr().err == ""


def test_the_cpu_bf16_slowdown_is_a_measured_ratio():
    slowdown = speed.cpu_bf16_slowdown.__wrapped__()
    assert 0.01 < slowdown < 1000
    assert speed.best_matmul_s(64, torch.float32) < speed.best_matmul_s(512, torch.float32)


def test_bf16_is_flagged_only_on_a_cpu_that_emulates_it(monkeypatch, capsys):
    """The check itself, without a training (the slow test above trains through it)."""
    monkeypatch.setattr(speed, "cpu_bf16_slowdown", lambda: 75.0)
    speed.warn_if_slow_bf16("bf16", torch.device("cpu"))
    says(capsys.readouterr().err, "75x", "--precision fp32")
    speed.warn_if_slow_bf16("fp32", torch.device("cpu"))
    speed.warn_if_slow_bf16("bf16", torch.device("cuda"))
    assert capsys.readouterr().err == ""
