"""Speed and device machinery, each lever a small named function, so that train.py's loop reads as
the recipe: the device a run uses, honest (synchronised) timers, the CPU allocator, the bf16
check, torch.compile and its limits, autocast and the memory format. None of them changes what a
run computes in fp32, the default.
"""
import ctypes
import functools
import sys
import time

import torch


def resolve_device(name: str) -> torch.device:
    """--device auto: CUDA when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args):
    """(fn's result, GPU-synchronised seconds it took)."""
    sync(device)
    start = time.perf_counter()
    out = fn(*args)
    sync(device)
    return out, time.perf_counter() - start


# glibc's mallopt options (malloc.h) and the values keep_freed_memory gives them
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEPT_MEMORY = {M_MMAP_THRESHOLD: 32 * 2 ** 20, M_TRIM_THRESHOLD: 2 ** 30, M_TOP_PAD: 256 * 2 ** 20}


def keep_freed_memory() -> None:
    """glibc hands a freed block above its mmap threshold (a few MiB: one evaluation batch's
    activations) back to the system and faults it in again at the next batch: 4.3 million page
    faults in a 45 s CPU benchmark. Blocks up to 32 MiB stay on the heap and the heap keeps up
    to 1 GiB free instead; no arithmetic changes, so neither does any result. A no-op where the C
    library is not glibc. Called by the command-line entry points, once per process."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option, value in KEPT_MEMORY.items():
        libc.mallopt(option, value)


@functools.cache
def cpu_bf16_slowdown() -> float:
    """How many times longer this CPU takes to multiply in bf16 than in fp32 (256x256 products,
    ~0.1 s at worst): below 1 with AVX-512 BF16 or AMX, ~50-90 on an AVX2-only EPYC, where torch
    emulates bf16 (1.3 GFLOP/s against 180 in fp32)."""
    return best_matmul_s(256, torch.bfloat16) / best_matmul_s(256, torch.float32)


def best_matmul_s(size: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """The fastest of `repeats` CPU products of two random size x size matrices, after one
    untimed."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    return min(timed(torch.device("cpu"), torch.matmul, a, b)[1] for _ in range(repeats))


def warn_if_slow_bf16(precision: str, device: torch.device) -> None:
    """bf16 autocast on a CPU without native bf16 is slower than fp32, not faster: say so."""
    if precision == "bf16" and device.type == "cpu" and cpu_bf16_slowdown() > 4:
        print(f"warning: this CPU multiplies bf16 {cpu_bf16_slowdown():.0f}x slower than fp32 "
              f"(no AVX-512 BF16 or AMX, so torch emulates it): --precision fp32 is faster here",
              file=sys.stderr)


def memory_format(cfg):
    """--channels_last: NHWC activations and weights, faster convolutions where the kernels
    are (bf16 on a GPU, fp32 from width 8 on a CPU)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def prepared(model, cfg):
    """The module the loop steps: `model` in the run's memory format (in place: the optimizer's
    parameters stay the ones it holds), compiled when --compile asks."""
    model.to(memory_format=memory_format(cfg))
    return compiled(model, cfg)


def compiled(model, cfg):
    if cfg.compile == "off":
        return model
    allow_recompiles()
    return torch.compile(model, mode=cfg.compile)


def allow_recompiles() -> None:
    """Every model a process compiles (bench.py's pipelines, the worker's shapes) recompiles the one
    model.forward: past dynamo's per-function limit (8) later models would silently run eagerly,
    as a bench.py run on an H200 did (its "fast" row timed eager code)."""
    import torch._dynamo
    limits = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(limits, name):
            setattr(limits, name, max(getattr(limits, name), 256))


def on_device(x, y, cfg, device):
    """A batch on the device in the run's memory layout (non-blocking: the copy overlaps the
    previous step's kernels)."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x.contiguous(memory_format=memory_format(cfg)), y


def autocast(cfg, device):
    """--precision bf16: bf16 autocast (matmuls and convolutions in bf16, losses in fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def training_step(cfg, device):
    """The context of one training step's forward pass: tells CUDA-graph trees (--compile
    reduce-overhead) that a new step begins, so the previous step's graph outputs may be
    overwritten, then autocast."""
    if cfg.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()
    return autocast(cfg, device)
