"""The committed studies' fits.md against a fresh analysis on the current code: each study under
Notes/ that has a fits.md is analysed again with the command its README.md gives (the one line
`python analysis.py ... --out Notes/STUDY`), into a temporary folder, and the markdown tables of
the two reports must be equal. Only the tables are compared: the prose around them names paths
and counts that a rerun elsewhere may word differently, and a report has no timings to compare.
When a change to the analysis changes these numbers on purpose, the committed outputs are
regenerated with that same command, so a failure here means they were not."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = sorted(os.path.relpath(os.path.dirname(path), REPO)
                 for path in glob.glob(os.path.join(REPO, "Notes", "*", "fits.md")))


def documented_command(study: str) -> list:
    """The arguments of the README's `python analysis.py ... --out STUDY` line."""
    with open(os.path.join(REPO, study, "README.md")) as f:
        lines = [line.strip() for line in f]
    found = [shlex.split(line) for line in lines
             if re.match(r"^python analysis\.py .*--out\s+" + re.escape(study) + r"/?$", line)]
    assert len(found) == 1, f"{study}/README.md: expected one `python analysis.py ... --out " \
                            f"{study}` line (the command that wrote fits.md), found {len(found)}"
    return found[0][2:]


def tables(markdown: str) -> list:
    """The markdown tables of a report, each as its list of lines (runs of lines starting '|')."""
    found, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            found.append(current)
            current = []
    return found


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_committed_fits_match_a_fresh_analysis(study, tmp_path):
    args = documented_command(study)
    out = args.index("--out") + 1
    args[out] = str(tmp_path / "out")
    done = subprocess.run([sys.executable, "analysis.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(REPO, study, "fits.md")) as f:
        committed = tables(f.read())
    fresh = tables((tmp_path / "out" / "fits.md").read_text())
    assert committed, f"{study}/fits.md has no tables"
    assert len(fresh) == len(committed), f"{study}: {len(fresh)} tables now, " \
                                         f"{len(committed)} committed"
    for i, (new, old) in enumerate(zip(fresh, committed)):
        changed = [(a, b) for a, b in zip(old, new) if a != b]
        assert new == old, (f"{study}/fits.md table {i + 1} ({old[0][:80]}...) differs from a "
                            f"fresh analysis: first changed row committed {changed[:1]}; "
                            f"regenerate with the README's command")


def test_every_committed_study_names_its_command():
    """The cheap half, outside the slow subset: each fits.md has a command to reproduce it."""
    assert STUDIES, "no Notes/*/fits.md found"
    for study in STUDIES:
        args = documented_command(study)
        assert "--out" in args and args[0].endswith(".csv")
