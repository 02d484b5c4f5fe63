import csv
import multiprocessing
import os

import pytest

from records import append_row, atomic_write, read_csv

WRITERS, ROWS_EACH = 4, 40


def _append_many(path, writer):
    for i in range(ROWS_EACH):
        # Long fields make a torn or interleaved write visible as a broken row.
        append_row(path, {"run_name": f"w{writer}_r{i}", "payload": "x" * 2000, "value": i * 0.5})


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
