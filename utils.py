"""Small helpers shared by the scripts: seeding, code version, and safe results files.

Results files are shared by many processes (a sweep finishes runs concurrently) and hold days of
GPU time, so: every write happens under a file lock, a row is written whole in one call, a file
that must change shape is replaced atomically (temp file + rename), and nothing is truncated.
"""
import argparse
import csv
import dataclasses
import io
import os
import random
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np
import torch
from filelock import FileLock


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG; with `deterministic`, make CUDA kernels reproducible (the brief's default)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; read when CUDA first initialises.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # An op without a deterministic kernel raises (train.py names it) instead of silently making
    # a run irreproducible.
    torch.use_deterministic_algorithms(deterministic)


def git_version() -> str:
    """Commit of the code that produced a result, '+dirty' when it had uncommitted changes."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=here, capture_output=True,
                                           text=True, timeout=5, check=True).stdout.strip()
        return run("rev-parse", "--short=12", "HEAD") + ("+dirty" if run("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def atomic_write(path: str, data, mode: str = "w") -> None:
    """Write a whole file or nothing: readers see the old or the new version, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _csv_text(rows, columns, header=True) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="raise")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str, rows: list, columns: list) -> None:
    atomic_write(path, _csv_text(rows, columns))


def read_csv(path: str) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def file_lock(path: str) -> FileLock:
    return FileLock(path + ".lock")


class ResultsFileError(RuntimeError):
    """A results CSV that cannot be appended to safely; the message names the file and line."""


def csv_tail_error(path: str):
    """Why appending a row to the CSV at `path` would corrupt it, or None. A last line without
    its newline (a hand edit, a crash mid-write) would have the next row glued onto it."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    if os.path.isdir(path) or not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not a writable file"
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return None
    with open(path, newline="") as f:
        text = f.read()
    lines = list(csv.reader(io.StringIO(text)))
    if len(lines) > 1 and len(lines[-1]) != len(lines[0]):
        return (f"{path}: line {text.count(chr(10)) + 1} (the last) is not a whole row "
                f"({len(lines[-1])} of {len(lines[0])} fields), probably a write cut off by a "
                f"crash. Delete that line (python sweep.py collect rebuilds the file from "
                f"runs/*.json), then run again")
    return None


def append_row(path: str, row: dict, key: str = None) -> None:
    """Append one row to a CSV shared by many processes.

    The header is written once. A row with columns the file does not have yet (the code gained a
    field) makes the file be rewritten atomically with the union of columns, old rows kept; so
    does a row whose `key` column matches an existing row's, which it replaces (a rerun of one
    configuration keeps one row). A last line missing its newline gets it; a torn last row is
    refused (ResultsFileError) rather than glued onto."""
    with file_lock(path):
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            return write_csv(path, [row], list(row))
        error = csv_tail_error(path)
        if error:
            raise ResultsFileError(error)
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        with open(path, newline="") as f:
            columns = next(csv.reader(f))
        new = [k for k in row if k not in columns]
        old = read_csv(path) if new or key else None
        if new or (key and any(r.get(key) == str(row[key]) for r in old)):
            kept = [r for r in old if not key or r.get(key) != str(row[key])]
            return write_csv(path, kept + [row], columns + new)
        line = _csv_text([row], columns, header=False)
        with open(path, "a") as f:
            f.write(line)  # one call, whole row
            f.flush()
            os.fsync(f.fileno())


def parser_from_dataclass(cls, description: str = "") -> argparse.ArgumentParser:
    """One flag per field of a hyperparameter dataclass whose fields carry help/choices metadata
    (train.hp): the dataclass stays the single table and the CLI is derived from it. A bool field
    X gets --X and --no_X (and a hidden --no-X); a tuple field takes as many values as its
    default has."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        m = f.metadata
        if f.type is bool:
            parser.add_argument(f"--{f.name}", action="store_true", default=f.default, help=m["help"])
            parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false",
                                default=argparse.SUPPRESS, help=f"switch --{f.name} off")
            parser.add_argument(f"--no-{f.name}", dest=f.name, action="store_false",
                                help=argparse.SUPPRESS)
        elif f.type is tuple:
            parser.add_argument(f"--{f.name}", type=type(f.default[0]), nargs=len(f.default),
                                default=f.default, help=m["help"])
        else:
            parser.add_argument(f"--{f.name}", type=f.type, default=f.default,
                                choices=m["choices"], help=m["help"])
    return parser


def given_args(parser: argparse.ArgumentParser, argv, names) -> dict:
    """Only the flags given on the command line, without defaults: a dest absent from the
    namespace argparse is handed gets its default, one already there does not."""
    unset = object()
    namespace = parser.parse_args(argv, namespace=argparse.Namespace(**{n: unset for n in names}))
    return {k: v for k, v in vars(namespace).items() if v is not unset}


# Set by sweep.py in the environment of each training it launches: the sweep's process id.
PARENT_PID_ENV = "SCALING_LAB_PARENT_PID"


def exit_with_parent(poll_s: float = 1.0) -> None:
    """End this process (by SIGTERM, which train.py turns into a clean stop) once the sweep that
    launched it is gone, even when the sweep was SIGKILLed and could not stop it: an orphaned
    run would keep its configuration locked and the GPU busy."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not parent.isdigit() or os.name != "posix":
        return

    def watch():
        while os.getppid() == int(parent):
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True, name="exit_with_parent").start()
