"""A run's records, kept safe on disk: the lock that lets one process train a configuration, the
experiment-name claim, finished summaries (and the repair of what a kill left), the --force
set-aside, checkpoints written atomically after every epoch, saved models, and what a full disk
means. train.py and worker.py write through these, so a run is resumable by either."""
import contextlib
import errno
import io
import json
import os
import shutil
from dataclasses import asdict

import torch
from filelock import Timeout

from config import Config, ConfigError, config_text, run_name
from utils import (ConfigFileError, append_row, atomic_write, file_lock, read_config_file, read_csv,
                   read_summary, remove_rows)

# Where --force keeps the old summary until the retrain has its own; not *.json, which sweep.py
# reads as summaries.
REPLACED = ".json.replaced"


@contextlib.contextmanager
def run_lock(stem: str, name: str):
    """Hold one configuration's lock (two processes on it would interleave its files), or
    ConfigError. The lock file is removed while held, so none is left behind."""
    lock = file_lock(stem)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{name} is already being trained by another process") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock.lock_file)
        lock.release()


def claim_experiment(cfg: Config, runs_dir: str, name: str) -> None:
    """runs/<experiment_name>/ holds one configuration: the first run given the name writes its
    config.yaml there; a later run under that name with another run_name is refused before it
    trains (a rerun or resume of the same configuration is welcome), unless the name's run never
    trained (refused, out of memory): then the name passes to this one."""
    if not cfg.experiment_name:
        return
    folder = os.path.join(runs_dir, cfg.experiment_name)
    path = os.path.join(folder, "config.yaml")
    with file_lock(folder):
        owner = None
        if os.path.exists(path):
            try:
                owner = run_name(Config(**read_config_file(path, Config)))
            except ConfigFileError as e:
                raise ConfigError(f"--experiment_name {cfg.experiment_name}: {e}") from None
        trained = owner and any(os.path.exists(os.path.join(runs_dir, owner + ending))
                                for ending in (".json", ".csv", ".ckpt.pt", ".lock"))
        if owner != name and trained:
            raise ConfigError(
                f"--experiment_name {cfg.experiment_name} already names run {owner} ({path}); "
                f"this configuration ({name}) would overwrite its saved model and metrics: "
                f"choose another name")
        if owner != name:
            atomic_write(path, config_text(cfg))


def finished_summary(cfg: Config, stem: str):
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


def set_aside(cfg: Config, stem: str) -> None:
    """--force, under the run's lock: the old summary becomes <stem>.json.replaced and its row
    leaves final_data.csv, so that until the retrain writes its own summary the run counts as
    unfinished: a retrain that is killed is continued by --resume (or a sweep) like any other run.
    The old run's checkpoint is dropped: the retrain starts afresh."""
    remove_rows(os.path.join(cfg.results_dir, "final_data.csv"), "run_name", run_name(cfg))
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
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write(os.path.join(stem, "model.pt"), buf.getvalue(), mode="wb")
    atomic_write(os.path.join(stem, "metrics.json"),
                 json.dumps(dict(summary=summary, config=asdict(cfg)), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# Checkpoints: written atomically after every epoch, so a killed run loses at most one epoch.
# The schedule and the data order are functions of the epoch, so model + optimizer + rows are
# the whole state.


def save_checkpoint(path, model, optimizer, rows, cfg):
    buf = io.BytesIO()
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), rows=rows,
                    config=asdict(cfg)), buf)
    atomic_write(path, buf.getvalue(), mode="wb")


def load_checkpoint(path, model, optimizer) -> list:
    try:
        state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return list(state["rows"])
    except Exception as e:  # truncated, random bytes, empty, another architecture, ...
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"checkpoint {path} is damaged or belongs to another configuration "
                          f"({type(e).__name__}: {detail}); delete it to train this run from its "
                          f"first epoch, or run without --resume") from None


DISK_FULL_EXIT = 28  # ENOSPC's number: tells sweep.py to launch nothing more


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(e: OSError, folder: str) -> str:
    """One line for a full disk: which file, how much is free where the results go."""
    where = f" writing {e.filename}" if e.filename else f" writing under {folder}"
    return f"no space left on the device{where} ({free_mib(folder):,.1f} MiB free there)"


def free_mib(folder: str) -> float:
    """Free space where folder is (0 for a folder that could not even be created)."""
    return shutil.disk_usage(folder).free / 2 ** 20 if os.path.isdir(folder) else 0.0
