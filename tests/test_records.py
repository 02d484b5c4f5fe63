"""records.py: results files that stay whole (locked appends, atomic writes, a full disk), damaged
checkpoints named, links and odd files handled."""
import csv
import multiprocessing
import os
import re

import pytest

import records
import train
from records import ResultsFileError, append_row, atomic_write, read_csv
from tiny import TINY, says


WRITERS, ROWS_EACH = 4, 40


def _append_many(path, writer):
    for i in range(ROWS_EACH):
        # Long fields make a torn or interleaved write visible as a broken row.
        append_row(path, {"run_name": f"w{writer}_r{i}", "payload": "x" * 2000, "value": i * 0.5})


@pytest.mark.slow
def test_concurrent_appends_leave_every_row_whole(tmp_path):
    path = str(tmp_path / "final_data.csv")
    procs = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, w))
             for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["run_name", "payload", "value"]
    body = lines[1:]
    assert len(body) == WRITERS * ROWS_EACH
    assert all(len(row) == 3 and row[1] == "x" * 2000 for row in body)
    assert sorted(row[0] for row in body) == sorted(f"w{w}_r{i}" for w in range(WRITERS)
                                                    for i in range(ROWS_EACH))


def test_new_columns_widen_the_file_and_keep_old_rows(tmp_path):
    path = str(tmp_path / "final_data.csv")
    append_row(path, {"run_name": "a", "N": 1})
    append_row(path, {"run_name": "b", "N": 2, "val_loss": 0.5})
    append_row(path, {"N": 3, "run_name": "c"})
    assert read_csv(path) == [{"run_name": "a", "N": "1", "val_loss": ""},
                              {"run_name": "b", "N": "2", "val_loss": "0.5"},
                              {"run_name": "c", "N": "3", "val_loss": ""}]


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    class Boom:
        def __str__(self):
            raise RuntimeError("disk full")
    with pytest.raises(TypeError):
        atomic_write(str(path), Boom())  # fails inside the write
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]  # no temp file left behind


def test_a_failed_atomic_write_names_its_file(tmp_path, monkeypatch):
    path = str(tmp_path / "fits.json")

    def full(fd):
        raise OSError(28, os.strerror(28))  # as write() and fsync() raise it: no file named
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as failed:
        atomic_write(path, "{}")
    assert failed.value.errno == 28 and failed.value.filename == path  # was: None
    assert os.listdir(tmp_path) == []


def test_append_text_on_a_full_disk_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    from records import append_text
    path = tmp_path / "benchmarks.md"
    append_text(str(path), "| a |\n")
    assert path.read_text() == "\n| a |\n"

    def full(fd):
        raise OSError(28, os.strerror(28))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as failed:
        append_text(str(path), "| b |\n" * 1000)
    assert failed.value.filename == str(path) and path.read_text() == "\n| a |\n"  # no half table
    assert sorted(os.listdir(tmp_path)) == ["benchmarks.md", "benchmarks.md.lock"]


def test_a_device_is_not_a_file_to_append_tables_to():
    from records import writable_file_error
    assert writable_file_error("/dev/full", "--notes") == \
        "--notes '/dev/full' is not a regular file"  # was: read without end, then killed


def test_append_after_a_missing_final_newline_keeps_the_file_readable(tmp_path):
    path = tmp_path / "final_data.csv"
    path.write_text("run_name,N\na,1")  # an editor saved it without the last newline
    append_row(str(path), {"run_name": "b", "N": 2})
    assert read_csv(str(path)) == [{"run_name": "a", "N": "1"}, {"run_name": "b", "N": "2"}]


def test_append_after_a_torn_row_is_refused_and_the_file_left_alone(tmp_path):
    path = tmp_path / "final_data.csv"
    path.write_text("run_name,N,loss\na,1,0.5\nb,2")  # a write cut off by a crash
    with pytest.raises(ResultsFileError, match=r"final_data.csv: line 3 .*not a whole row"):
        append_row(str(path), {"run_name": "c", "N": 3, "loss": 0.1})
    assert path.read_text() == "run_name,N,loss\na,1,0.5\nb,2"


@pytest.mark.parametrize("damage", ["truncated", "random", "empty",
                                    pytest.param("architecture", marks=pytest.mark.slow), "flipped"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(data_dir, tmp_path, damage):
    cfg = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path),
                          "resume": True, "keep_checkpoints": True})
    ckpt = tmp_path / "runs" / f"{train.run_name(cfg)}.ckpt.pt"
    ckpt.parent.mkdir(parents=True)
    if damage in ("architecture", "flipped"):
        model = "resnet8" if damage == "architecture" else cfg.model
        other = train.Config(**{**TINY, "data_dir": data_dir, "results_dir": str(tmp_path / "o"),
                                "model": model, "keep_checkpoints": True})
        train.train(other)
        blob = bytearray((tmp_path / "o" / "runs" / f"{train.run_name(other)}.ckpt.pt").read_bytes())
        if damage == "flipped":  # bits flipped inside torch's zip: it would still load
            middle = len(blob) // 2
            blob[middle:middle + 64] = bytes(b ^ 0x5A for b in blob[middle:middle + 64])
        ckpt.write_bytes(bytes(blob))
    else:
        ckpt.write_bytes({"truncated": b"PK\x03\x04" + b"\0" * 20, "random": os.urandom(500),
                          "empty": b""}[damage])
    why = "belongs to another run .it was saved by run resnet8_.*move it away" \
        if damage == "architecture" else "is damaged.*delete it"
    with pytest.raises(train.ConfigError, match=f"checkpoint {re.escape(str(ckpt))} {why}"):
        train.train(cfg)


def test_a_notes_file_behind_a_symbolic_link_is_appended_through_it(tmp_path):
    target, link = tmp_path / "notes.md", tmp_path / "link.md"
    target.write_text("# kept\n")
    link.symlink_to(target)
    records.append_text(str(link), "| a |\n")
    assert link.is_symlink() and target.read_text() == "# kept\n\n| a |\n"  # was: link replaced


def test_a_loop_of_links_is_refused_as_a_file_and_as_a_results_folder(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    says(records.writable_file_error(str(loop), "--notes"), "--notes", str(loop), "loop of links")
    with pytest.raises(SystemExit) as exit_:
        train.parse_config(["--results_dir", str(loop)])  # was: an OSError traceback when training
    assert exit_.value.code == 2 and f"{loop}" in capsys.readouterr().err


def test_a_results_file_a_spreadsheet_saved_with_a_byte_order_mark_is_still_appended_to(tmp_path):
    path = tmp_path / "final_data.csv"
    path.write_bytes(b"\xef\xbb\xbfrun_name,N\r\na,1\r\n")
    assert records.csv_append_error(str(path), "run_name") is None  # was: "no run_name column"
    append_row(str(path), {"run_name": "b", "N": "2"}, key="run_name")
    assert [(r["run_name"], r["N"]) for r in read_csv(str(path))] == [("a", "1"), ("b", "2")]


def test_a_diverged_summary_may_stop_before_the_epochs_its_name_says():
    # a diverged run stops at the epoch that turned non-finite: fewer epochs than its name's
    summary = dict(run_name="cnn_w2_d1_D200_e4_s0_0123456789", N=546, D=200, epochs=1, seed=0,
                   status="diverged")
    assert records.summary_value_error(summary) is None
    assert "epochs" in records.summary_value_error({**summary, "epochs": 5})
    assert "epochs" in records.summary_value_error({**summary, "status": "finished"})
