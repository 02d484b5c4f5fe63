"""Small helpers shared by the scripts: seeding, the code version, the error every script reports
as a bad setting, a command-line parser that takes negative values, mean ± std of repeated
measurements, a stop by SIGTERM or Ctrl-C said in one line, and the watchdog that stops a
training whose sweep is gone."""
import argparse
import os
import random
import signal
import statistics
import sys
import subprocess
import threading
import time


class ConfigError(ValueError):
    """Invalid configuration; the message names each bad flag and its valid range."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that `--flag -1e9` or `--slice -1/2` reach the flag's own check
    (argparse takes only plain negative numbers such as -4 or -0.5 as values; anything else
    starting with "-" is read as an unknown flag, and the flag before it as missing its value)."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        takes_one = {s for a in self._actions if a.nargs is None and a.option_strings
                     for s in a.option_strings}
        joined, i = [], 0
        while i < len(args) and args[i] != "--":  # after "--" every token is a positional
            value = args[i + 1] if i + 1 < len(args) else ""
            if args[i] in takes_one and value[:1] == "-" and value[1:2] in set("0123456789."):
                joined.append(f"{args[i]}={value}")
                i += 2
            else:
                joined.append(args[i])
                i += 1
        return super().parse_known_args(joined + args[i:], namespace)

    def error(self, message):
        """One line naming the problem: argparse's usage block (train.py's is 40 lines) would
        push it off the screen."""
        self.exit(2, f"{self.prog}: error: {message} (--help lists every option)\n")


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG; with `deterministic`, make CUDA kernels reproducible (the default)."""
    import numpy as np  # here, so that a script's stop_while_loading comes before numpy loads
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


def mean_pm_std(values: list, digits: int = 4) -> str:
    """"mean ± sample std" of repeated measurements (seeds, runs); the mean alone for one."""
    std = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{std}"


class Stopped(BaseException):
    """SIGTERM (kill, timeout, Slurm, a stopping sweep) raised in the main thread by
    raise_stopped, so that a script stops as on Ctrl-C: files closed, temp files of atomic writes
    removed, what was finished kept, one line said."""


def stop_while_loading(who: str) -> None:
    """For a script's first lines, before its libraries load (torch, pandas, scipy: a second or
    more): SIGTERM or Ctrl-C then exits with one line instead of a traceback or no word. Once a
    function of the script runs (its main), SIGINT raises KeyboardInterrupt as Python's own
    handler does and SIGTERM ends the process as by default, unless main installs its own."""
    def stop(signum, frame):
        if not _script_running(frame):
            print(f"{who}: stopped by {signal.Signals(signum).name} while starting; nothing was "
                  f"done", file=sys.stderr)
            os._exit(128 + signum)  # nothing is open yet; an exception here prints a traceback
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _script_running(frame) -> bool:
    """Whether a function of the __main__ script is on the stack: loading is over."""
    while frame is not None:
        if frame.f_globals.get("__name__") == "__main__" and frame.f_code.co_name != "<module>":
            return True
        frame = frame.f_back
    return False


def raise_stopped(signum, frame):
    raise Stopped(signum)


def stopped_signal(e: BaseException) -> signal.Signals:
    """The signal behind a stop (KeyboardInterrupt or Stopped)."""
    return signal.Signals(e.args[0] if isinstance(e, Stopped) else signal.SIGINT)


def stopped_exit_code(e: BaseException, who: str, left=None) -> int:
    """Say what a stop (KeyboardInterrupt or Stopped) left behind; the exit status for it."""
    signum = stopped_signal(e)
    left = left or ("the epochs it finished are in its checkpoint: rerun with --resume to "
                    "continue")
    print(f"{who}: stopped by {signum.name}; {left}", file=sys.stderr)
    return 128 + signum
