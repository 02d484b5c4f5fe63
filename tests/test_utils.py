"""utils.py: the parser that takes negative values, and a stop while a script loads torch."""
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO


def test_values_are_joined_to_their_flag_only_before_a_double_dash():
    from utils import ArgumentParser
    parser = ArgumentParser()
    parser.add_argument("--lr", type=float)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(["--lr", "-1e-3", "--quiet", "--", "--lr", "-2e3"])
    assert args.lr == -1e-3 and args.quiet and args.rest == ["--lr", "-2e3"]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "sweep.py", "worker.py", "airbench.py", "bench.py",
                                    "model.py"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_a_script_loads_torch_is_one_line(tmp_path, script, signum):
    proc = subprocess.Popen([sys.executable, script, *{"sweep.py": ["width"], "worker.py": [
        "plan.json"]}.get(script, [])], cwd=REPO, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing torch takes a second or more
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signum, err  # was: a KeyboardInterrupt traceback; no word
    assert err == f"{script}: stopped by {signum.name} while starting; nothing was done\n", err
