"""Small helpers shared by the scripts: seeding, code version, safe results files, and the
command line and YAML files derived from a hyperparameter dataclass.

Results files are shared by many processes (a sweep finishes runs concurrently) and hold days of
GPU time, so: every write happens under a file lock, a row is written whole in one call, a file
that must change shape is replaced atomically (temp file + rename), and nothing is truncated.
"""
import argparse
import csv
import dataclasses
import io
import json
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np
import yaml
from filelock import FileLock


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG; with `deterministic`, make CUDA kernels reproducible (the default)."""
    import torch  # here, so that analysis.py reads results without loading torch
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
    try:
        torn = torn_last_row(path)
    except (UnicodeDecodeError, csv.Error) as e:
        return (f"{path} is not a CSV text file ({type(e).__name__}); move it aside (python "
                f"sweep.py collect rebuilds it from runs/*.json), then run again")
    if torn:
        return (f"{torn}. Delete that line (python sweep.py collect rebuilds the file from "
                f"runs/*.json), then run again")
    return None


def torn_last_row(path: str):
    """A sentence naming the last line of the CSV at `path` when it is not a whole row (no
    newline at its end and fewer fields than the header: a write cut off), else None."""
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
                f"crash")
    return None


def read_summary(path: str) -> dict:
    """A run's summary (runs/<run_name>.json). A damaged one (a crash mid-write, a hand edit) is
    named with the way out rather than met with a traceback."""
    reason = None
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        reason = f"{type(e).__name__}: {e}"
    else:
        if not isinstance(summary, dict) or "run_name" not in summary:
            reason = "no run_name"
        elif summary["run_name"] != os.path.basename(path).split(".json")[0]:  # also .json.replaced
            reason = f"it holds the summary of {summary['run_name']} (a copy or a restore?)"
    if reason:
        raise ResultsFileError(f"{path} is not a readable run summary ({reason}); delete it, or "
                               f"pass --force, to train that run again")
    return summary


def append_row(path: str, row: dict, key: str = None) -> None:
    """Append one row to a CSV shared by many processes.

    The header is written once. A row with columns the file does not have yet (the code gained a
    field) makes the file be rewritten atomically with the union of columns, old rows kept; so
    does a row whose `key` column matches an existing row's, which it replaces (a rerun of one
    configuration keeps one row). A last line missing its newline gets it; a torn last row is
    refused (ResultsFileError) rather than glued onto."""
    with file_lock(path):
        columns = _checked_header(path)
        if columns is None:
            return write_csv(path, [row], list(row))
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
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


def remove_rows(path: str, key: str, value: str) -> None:
    """Drop the rows whose `key` column is `value` from a CSV shared by many processes; a torn last
    row is refused (ResultsFileError), as append_row refuses it."""
    with file_lock(path):
        columns = _checked_header(path)
        if columns is None:
            return
        rows = read_csv(path)
        kept = [r for r in rows if r.get(key) != value]
        if len(kept) < len(rows):
            write_csv(path, kept, columns)


def _checked_header(path: str):
    """The columns of a shared CSV about to be changed (its lock held), or None when it has no
    header yet; a torn last row is refused (ResultsFileError)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    error = csv_tail_error(path)
    if error:
        raise ResultsFileError(error)
    with open(path, newline="") as f:
        return next(csv.reader(f))


def parser_from_dataclass(cls, description: str = "") -> argparse.ArgumentParser:
    """One flag per field of a hyperparameter dataclass whose fields carry help/choices metadata
    (config.hp): the dataclass stays the single table and the CLI is derived from it. A bool field
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


# ---------------------------------------------------------------------------------------------
# Config files: a YAML mapping of a hyperparameter dataclass's fields (the ResNet-8 study's habit)


class ConfigFileError(ValueError):
    """A config file that cannot be applied; the message names the file and the key."""


# PyYAML reads YAML 1.1, where `1e-3` (no dot) is a string, not a float: accept such numbers.
_FLOAT_TEXT = re.compile(r"[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _field_value(value, kind, where):
    """value converted to kind (bool, int, float, str), or ConfigFileError naming `where`."""
    if kind is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value.replace("_", ""))
    ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))
          or kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        hint = " (quote it for a string)" if isinstance(value, bool) else ""
        raise ConfigFileError(f"{where} must be {kind.__name__}, got {value!r} "
                              f"({type(value).__name__}){hint}")
    return float(value) if kind is float else value  # 1 and 1.0 must hash to one config_id


class AmbiguousYAML(yaml.constructor.ConstructorError):
    """A value or key that YAML 1.1 would read one way and its writer may have meant another."""


class StrictLoader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, minus its guesses: a repeated key (it keeps the last), yes/no/
    on/off as booleans, 010 as octal 8, 0x/0b/0o numbers and 1:30 as 90 (sexagesimal) are errors,
    each naming its line, so a hand-written config file means one thing."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise AmbiguousYAML(
                    None, None, f"key {key!r} is given twice (which one is meant?)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_bool(self, node):
        if node.value.lower() not in ("true", "false"):
            raise AmbiguousYAML(
                None, None, f"{node.value!r} is a boolean only by YAML 1.1's guess: write true or "
                f"false (or quote it for a string)", node.start_mark)
        return node.value.lower() == "true"

    def construct_yaml_int(self, node):
        digits = node.value.replace("_", "").lstrip("+-")
        if ":" in digits or (len(digits) > 1 and digits[0] == "0"):
            raise AmbiguousYAML(
                None, None, f"{node.value!r} is read by YAML 1.1 as octal, hexadecimal, binary or "
                f"base 60: write the number in decimal without leading zeros", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        if ":" in node.value:
            raise AmbiguousYAML(
                None, None, f"{node.value!r} is read by YAML 1.1 as base 60: write it in decimal",
                node.start_mark)
        return super().construct_yaml_float(node)


StrictLoader.add_constructor("tag:yaml.org,2002:bool", StrictLoader.construct_yaml_bool)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


def read_config_file(path: str, cls) -> dict:
    """{field: value} of a YAML mapping of cls's fields, each converted to its field's type
    (lists to tuples, ints to floats where the field is a float) so the dataclass built from it
    equals the one built from the same flags. Ranges and combinations are left to the caller's
    validation, as for flags."""
    try:
        with open(path) as f:
            loaded = yaml.load(f, Loader=StrictLoader)
    except OSError as e:
        raise ConfigFileError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigFileError(f"config file {path} is not a text file") from None
    except AmbiguousYAML as e:
        raise ConfigFileError(f"config file {path} is ambiguous: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigFileError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        got = "an empty file" if loaded is None else f"a {type(loaded).__name__}"
        raise ConfigFileError(f"config file {path} must be a mapping of settings (key: value), "
                              f"got {got}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in loaded if k not in known)
    if unknown:
        raise ConfigFileError(f"config file {path}: unknown key(s) {unknown}; valid keys are the "
                              f"flags of --help: {sorted(known)}")
    values = {}
    for key, value in loaded.items():
        f, where = known[key], f"config file {path}: key '{key}'"
        if f.type is tuple:
            n, kind = len(f.default), type(f.default[0])
            if not isinstance(value, (list, tuple)) or len(value) != n:
                raise ConfigFileError(f"{where} must be a list of {n} {kind.__name__}s, got {value!r}")
            values[key] = tuple(_field_value(v, kind, where) for v in value)
        else:
            values[key] = _field_value(value, f.type, where)
    return values


def config_yaml(cfg, skip=()) -> str:
    """cfg as a YAML mapping in field order, each line commented with its help: read back by
    read_config_file it gives the same values. `skip`: fields to leave out."""
    lines = []
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        value = getattr(cfg, f.name)
        value = list(value) if isinstance(value, tuple) else value
        text = yaml.safe_dump({f.name: value}, default_flow_style=True, width=10 ** 6).strip()
        lines.append(f"{text[1:-1]}  # {f.metadata['help']}")  # strip the flow mapping's braces
    return "\n".join(lines) + "\n"


def add_config_file_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--config and --print_config. Not fields of the table: they say where settings come from,
    not what they are."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of settings (keys "
                        "are these flags' names), applied after --preset and before the flags "
                        "typed on the command line")
    parser.add_argument("--print_config", action="store_true", help="print the resolved "
                        "configuration as a --config file and exit (nothing runs)")
    return parser


def settings_given(parser, argv, cls, extra=()) -> tuple:
    """(file's settings, typed settings, print_config, config path or None); the typed win when
    merged, defaults are left out. Adds --config and --print_config to parser; a bad file exits
    via parser.error."""
    add_config_file_flags(parser)
    given = given_args(parser, argv, [f.name for f in dataclasses.fields(cls)] +
                       ["config", "print_config", *extra])
    print_config, path = given.pop("print_config", False), given.pop("config", None)
    try:
        from_file = read_config_file(path, cls) if path else {}
    except ConfigFileError as e:
        parser.error(str(e))
    return from_file, given, print_config, path
