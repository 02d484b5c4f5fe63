"""Results kept safe on disk. Results files are shared by many processes (a sweep finishes runs
concurrently) and hold days of compute, so every write happens under a file lock, a row is written
whole in one call, a file that must change shape is replaced atomically (temp file + rename), and
nothing is truncated. On top of that store, a run's records: the lock that lets one process train
a configuration, finished summaries (and the repair of what a kill left), the --force set-aside,
checkpoints written atomically after every epoch, saved models, and what a full disk means.
train.py and worker.py write through these, so a run is resumable by either.

torch is imported only where a checkpoint is written or read: analysis.py reads results through
this module without loading it."""
import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
from dataclasses import asdict

from filelock import FileLock, Timeout

from utils import ConfigError

# ---------------------------------------------------------------------------------------------
# The locked CSV store


def atomic_write(path: str, data, mode: str = "w") -> None:
    """Write a whole file or nothing: readers see the old or the new version, never a torn one.
    An OSError names `path` (a failed write() names no file, mkstemp its temp file). A symbolic
    link is written through, as an append would: the rename would replace the link itself."""
    path = os.path.realpath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from collaborators
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename != path:
            raise OSError(e.errno, e.strerror, path) from e
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
    with open(path, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark
        return list(csv.DictReader(f))


def writable_file_error(path: str, flag: str):
    """Why a file could not be created or appended to at `path` (`flag` names the setting), or
    None: checked before the work whose result it would keep."""
    if os.path.isdir(path):
        return f"{flag} {path!r} is a folder, not a file"
    if os.path.islink(path) and not os.path.exists(path):
        return f"{flag} {path!r} is a symbolic link to nothing (or a loop of links)"
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/full would be read forever
        return f"{flag} {path!r} is not a regular file"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"{flag} {path!r} is not a writable file"
    blocked = unwritable_folder(os.path.dirname(os.path.abspath(path)))
    return f"{flag} {path!r}: {blocked} is not a writable folder" if blocked else None


def text_file_error(path: str, flag: str):
    """writable_file_error, and whether a file already there reads as text: append_text reads it
    whole before adding its table, so bytes that are not UTF-8 are found before the work, not
    after it."""
    error = writable_file_error(path, flag)
    if error or not os.path.isfile(path):
        return error
    try:
        with open(path, encoding="utf-8") as f:
            f.read()
    except UnicodeDecodeError as e:
        return (f"{flag} {path!r} is not a UTF-8 text file (byte {e.start}); give another {flag}, "
                f"or move the file aside, then run again")
    return None


def unwritable_folder(folder: str):
    """The nearest existing folder at or above `folder` (which makedirs would create below it)
    when it is not a writable folder, else None."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        if os.path.islink(probe):  # to nothing, or a loop: makedirs cannot create it
            return probe
        probe = os.path.dirname(probe)
    return None if os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK) else probe


def file_lock(path: str) -> FileLock:
    return FileLock(path + ".lock")


class ResultsFileError(RuntimeError):
    """A results CSV that cannot be appended to safely; the message names the file and line."""


def csv_append_error(path: str, key: str = None, fix: str = None):
    """Why appending a row to the CSV at `path` would corrupt it, or None: a last line without
    its newline (a hand edit, a crash mid-write) would have the next row glued onto it; a row
    longer than the header (an edited header, another file's) could not be read back under it;
    a file without the `key` column (run_name) is not one the writers made. `fix` says what to do
    (by default: results files are rebuilt by sweep.py collect)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    if os.path.isdir(path) or not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not a writable file"
    rebuild = fix or "move it aside (python sweep.py collect rebuilds it from runs/*.json), then run again"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)  # every line: a stray binary byte anywhere fails every reader
            header = next(reader)
            longer = next(((number, len(fields)) for number, fields in enumerate(reader, 2)
                           if len(fields) > len(header)), None)
        torn = torn_last_row(path)
    except (UnicodeDecodeError, csv.Error) as e:
        return f"{path} is not a CSV text file ({type(e).__name__}); {rebuild}"
    if longer:
        return (f"{path}: line {longer[0]} has {longer[1]} fields, more than the header line's "
                f"{len(header)} (an edited header, or another file's rows); {rebuild}")
    if key and key not in header:
        return f"{path} has no {key} column in its header line: not a results file; {rebuild}"
    if torn:
        return f"{torn}. " + (fix or "Delete that line (python sweep.py collect rebuilds the file "
                              "from runs/*.json), then run again")
    return None


def ends_with_newline(path: str) -> bool:
    """Whether a non-empty file's last byte is a newline, as every whole CSV written here ends."""
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def torn_last_row(path: str):
    """A sentence naming the last line of the CSV at `path` when it is not a whole row (no
    newline at its end and fewer fields than the header: a write cut off), else None."""
    if ends_with_newline(path):
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
        else:
            reason = summary_value_error(summary)
    if reason:
        raise ResultsFileError(f"{path} is not a readable run summary ({reason}); delete it, or "
                               f"pass --force, to train that run again")
    return summary


def summary_value_error(summary: dict):
    """What a hand edit broke in a summary's identity columns (N and D positive numbers, status
    finished or diverged), or None; collect would copy it into final_data.csv."""
    for key in ("N", "D"):
        value = summary.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            return f"{key} is {value!r}, not a positive number"
    if summary.get("status", "finished") not in ("finished", "diverged"):
        return f"status is {summary['status']!r}, not finished or diverged"
    named = NAMED_SIZES.search(str(summary.get("run_name", "")))
    for key, value in zip(("D", "epochs", "seed"), named.groups() if named else ()):
        if key == "epochs" and summary.get("status") == "diverged" and \
                _at_most(summary.get(key), value):  # a diverged run stops before its last epoch
            continue
        if key in summary and not _same_number(summary[key], value):  # train.py skips by name
            return f"{key} is {summary[key]!r}, but its run name says {value}"
    for pair in (("final_test_loss_avg_last5", "final_test_acc_avg_last5"),
                 ("final_test_loss", "final_test_acc")):  # always written together
        present = [key for key in pair if key in summary]
        for key in present:
            if isinstance(summary[key], bool) or \
                    not isinstance(summary[key], (int, float, type(None))):
                return f"{key} is {summary[key]!r}, not a number"
        if len(present) == 1:
            missing = next(key for key in pair if key not in summary)
            return f"{missing} is missing, though {present[0]} is there"
    return None


NAMED_SIZES = re.compile(r"_D(\d+)_e(\d+)_s(\d+)")  # train.py's and airbench.py's run names


def _at_most(value, text: str) -> bool:
    try:
        return not isinstance(value, bool) and 0 <= float(value) <= float(text)
    except (TypeError, ValueError):
        return False


def _same_number(value, text: str) -> bool:
    try:
        return not isinstance(value, bool) and float(value) == float(text)
    except (TypeError, ValueError):
        return False


def append_text(path: str, text: str) -> None:
    """Add a blank line and `text` (a markdown table) at the end of the file, whole or not at all:
    a full disk leaves the file as it was, not a table cut in half."""
    with file_lock(path):
        old = ""
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:  # as text_file_error checked it
                old = f.read()
        atomic_write(path, old + "\n" + text)


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


def append_rows(path: str, rows: list) -> None:
    """Append rows to a CSV, all of them or none (a full disk leaves the file as it was), with the
    union of the file's columns and theirs; a torn last row is refused (ResultsFileError)."""
    with file_lock(path):
        header = _checked_header(path) or []
        old = read_csv(path) if header else []
        columns = dict.fromkeys([*header, *(k for row in rows for k in row)])
        write_csv(path, old + rows, list(columns))


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
    error = csv_append_error(path)
    if error:
        raise ResultsFileError(error)
    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f))


# ---------------------------------------------------------------------------------------------
# A run's records

# Where --force keeps the old summary until the retrain has its own; not *.json, which sweep.py
# reads as summaries.
REPLACED = ".json.replaced"


HELD_EXIT = 3   # the exit status of a run (and a sweep) left to another process that holds it


class RunHeld(ConfigError):
    """Another process (another sweep on the same results folder) is training this run."""


@contextlib.contextmanager
def run_lock(stem: str, name: str):
    """Hold one configuration's lock (two processes on it would interleave its files), or
    ConfigError. The lock file is removed while held, so none is left behind."""
    lock = file_lock(stem)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunHeld(f"{name} is already being trained by another process (another sweep or "
                      f"train.py on this results folder?); it is left to that one") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock.lock_file)
        lock.release()


def finished_summary(cfg, stem: str):
    """The summary of a run that finished (or diverged) earlier, or None (also with cfg.force).
    Repairs what a kill between the summary and the clean-up left: the row in final_data.csv, the
    checkpoint and the summary --force set aside."""
    if not os.path.exists(stem + ".json"):
        return None
    if cfg.force:
        set_aside(cfg, stem)
        return None
    summary = read_summary(stem + ".json")
    final = os.path.join(cfg.results_dir, "final_data.csv")
    if not os.path.exists(final) or summary["run_name"] not in {r.get("run_name") for r in read_csv(final)}:
        append_row(final, summary, key="run_name")
    clean_up(cfg, stem)
    if not cfg.quiet:
        print(f"{summary['run_name']}: already {summary['status']} ({stem}.json), skipped; "
              f"--force retrains it")
    return summary


def set_aside(cfg, stem: str) -> None:
    """--force, under the run's lock: the old summary becomes <stem>.json.replaced and its row
    leaves final_data.csv, so that until the retrain writes its own summary the run counts as
    unfinished: a retrain that is killed is continued by --resume (or a sweep) like any other run.
    The old run's checkpoint is dropped: the retrain starts afresh."""
    remove_rows(os.path.join(cfg.results_dir, "final_data.csv"), "run_name", os.path.basename(stem))
    os.replace(stem + ".json", stem + REPLACED)  # second: a kill between the two is repaired
    with contextlib.suppress(FileNotFoundError):
        os.remove(stem + ".ckpt.pt")


def clean_up(cfg, stem) -> None:
    """What a run with a summary no longer needs: the old summary --force set aside, and the
    checkpoint unless kept."""
    for leftover in [REPLACED] + ([] if cfg.keep_checkpoints else [".ckpt.pt"]):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stem + leftover)


def save_model(stem, model, summary, cfg):
    """<stem>/model.pt (the state_dict) and metrics.json (summary + configuration); stem is
    runs/<run_name> or runs/<experiment_name>."""
    import torch
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write(os.path.join(stem, "model.pt"), buf.getvalue(), mode="wb")
    atomic_write(os.path.join(stem, "metrics.json"),
                 json.dumps(dict(summary=summary, config=asdict(cfg)), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Checkpoints: written atomically after every epoch, so a killed run loses at most one epoch.
# The schedule and the data order are functions of the epoch, so model + optimizer + rows are
# the whole state.


# A checkpoint starts with this and the SHA-256 of the rest: flipped bits inside torch's zip
# (a failing disk, a bad copy) would otherwise load as wrong weights and a silently wrong run.
# Checkpoints written before the header existed load without the check.
CHECKSUM_HEADER = b"scaling-lab checkpoint sha256 "


def save_checkpoint(path, model, optimizer, rows, cfg):
    import torch
    buf = io.BytesIO()
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), rows=rows,
                    config=asdict(cfg)), buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write(path, CHECKSUM_HEADER + digest + b"\n" + payload, mode="wb")


def checked_payload(blob: bytes) -> bytes:
    """torch.save's bytes of a checkpoint file, or ValueError when they are not the ones written."""
    if not blob.startswith(CHECKSUM_HEADER):
        return blob
    digest, _, payload = blob[len(CHECKSUM_HEADER):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("its SHA-256 does not match the one written with it: the file changed "
                         "after it was saved")
    return payload


def read_checkpoint(path, device="cpu") -> dict:
    """The checkpoint's state (model, optimizer, rows, config), its checksum verified."""
    import torch
    with open(path, "rb") as f:
        payload = checked_payload(f.read())
    return torch.load(io.BytesIO(payload), map_location=device, weights_only=False)


def load_checkpoint(path, model, optimizer, another_run=lambda saved: "") -> list:
    """The rows of a checkpoint, its weights and optimiser state loaded; another_run(its saved
    settings) says why it is not this run's, or ""."""
    try:
        state = read_checkpoint(path, next(model.parameters()).device)
        why = another_run(state.get("config") or {})
        if not why:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            return list(state["rows"])
    except Exception as e:  # truncated, flipped bits, empty, another architecture, ...
        detail = textwrap.shorten(" ".join(str(e).split()), 200, placeholder=" ...")
        raise ConfigError(f"checkpoint {path} is damaged or belongs to another configuration "
                          f"({type(e).__name__}: {detail}); delete it to train this run from its "
                          f"first epoch, or run without --resume") from None
    raise ConfigError(f"checkpoint {path} belongs to another run ({why}): move it away to train "
                      f"this run from its first epoch, or run without --resume")


DISK_FULL_EXIT = 28  # ENOSPC's number: tells sweep.py to launch nothing more


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(e: OSError, folder: str) -> str:
    """One line for a full disk: which file, how much is free where the results go."""
    where = f" writing {e.filename}" if e.filename else f" writing under {folder}"
    return f"no space left on the device{where} ({free_mib(folder):,.1f} MiB free there)"


def disk_full_exit_code(e: OSError, folder: str, left: str, file=None) -> int:
    """Say in one line that the disk is full and what `left` is on it (as utils.stopped_exit_code
    says what a stop left); the exit status for it. file: standard error unless given."""
    print(f"error: {disk_full_message(e, folder)}; {left}", file=file or sys.stderr, flush=True)
    return DISK_FULL_EXIT


def free_mib(folder: str) -> float:
    """Free space where folder is (0 for a folder that could not even be created)."""
    return shutil.disk_usage(folder).free / 2 ** 20 if os.path.isdir(folder) else 0.0
