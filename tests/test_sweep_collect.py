"""`sweep.py collect`: final_data.csv rebuilt from the run summaries without losing what the old
file held (its bytes in a backup whatever the file is, columns added by hand), and refused with
one line where it cannot be."""
import json
import os

import pytest

import sweep
from records import read_csv


def summary(folder, name, loss=1.0):
    runs = folder / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    row = dict(run_name=name, config_id=name[-4:], status="finished", N=100, D=1000, epochs=1,
               seed=0, final_test_loss=loss, final_test_acc=0.5, final_test_loss_avg_last5=loss,
               final_test_acc_avg_last5=0.5, timestamp="2026-12-06T00:00:00+0000")
    (runs / f"{name}.json").write_text(json.dumps(row))
    return row


def test_collect_through_a_symlink_keeps_the_old_bytes_in_its_backup(tmp_path):
    """results/final_data.csv a link to a file elsewhere: the backup holds the old file's bytes
    (a hard link to the link itself followed the rewrite), and the rows it says are left out are
    in it."""
    results = tmp_path / "results"
    summary(results, "cnn_a_0001")
    real = tmp_path / "elsewhere.csv"
    real.write_text("run_name,final_test_loss\ncnn_a_0001,1.0\ncnn_hand_9999,2.0\n")
    old = real.read_bytes()
    (results / "final_data.csv").symlink_to(real)
    count, backup, orphans, _ = sweep.collect(str(results))
    assert count == 1 and orphans == ["cnn_hand_9999"]
    assert open(backup, "rb").read() == old
    assert "cnn_hand_9999" in open(backup).read()
    assert [r["run_name"] for r in read_csv(str(results / "final_data.csv"))] == ["cnn_a_0001"]


def test_collect_keeps_a_column_added_by_hand_and_says_so(tmp_path, capsys):
    results = tmp_path / "results"
    summary(results, "cnn_a_0001")
    summary(results, "cnn_b_0002", loss=0.8)
    (results / "final_data.csv").write_text("run_name,final_test_loss,my_notes\n"
                                            "cnn_a_0001,1.0,looks odd\n")
    sweep.main(["collect", "--results_dir", str(results)])
    rows = {r["run_name"]: r for r in read_csv(str(results / "final_data.csv"))}
    assert rows["cnn_a_0001"]["my_notes"] == "looks odd" and rows["cnn_b_0002"]["my_notes"] == ""
    assert "my_notes" in capsys.readouterr().err


def test_collect_refuses_a_folder_where_final_data_csv_should_be(tmp_path, capsys):
    results = tmp_path / "results"
    summary(results, "cnn_a_0001")
    (results / "final_data.csv").mkdir()
    with pytest.raises(SystemExit) as stop:
        sweep.main(["collect", "--results_dir", str(results)])
    message = str(stop.value.code)
    assert "final_data.csv" in message and "folder" in message
    assert os.path.isdir(results / "final_data.csv")   # nothing moved or removed


def test_a_validation_fraction_and_its_count_are_one_configuration(tmp_path, capsys):
    """--val_size 0.1 carves the same 5,000 images as --val_size 5000: one config_id, and a grid
    of both is refused as a repeat instead of training the split twice."""
    import train
    fraction, count = (train.parse_config(["--val_size", v, "--dataset_size", "1000"])
                       for v in ("0.1", "5000"))
    assert train.config_id(fraction) == train.config_id(count)
    assert train.run_name(fraction) == train.run_name(count)
    assert train.config_id(train.parse_config(["--val_size", "0.2", "--dataset_size", "1000"])) \
        != train.config_id(count)
    with pytest.raises(SystemExit) as stop:
        sweep.main(["grid", "--val_size", "0.1,5000", "--dry_run", "--results_dir", str(tmp_path),
                    "--", "--dataset_size=1000"])
    assert stop.value.code == 2 and "repeats" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["60000", "0"])
def test_a_minimum_dataset_size_beyond_the_data_is_refused_naming_the_flag(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sweep.main(["compute", "--min_dataset_size", value, "--dry_run", "--results_dir",
                    str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--min_dataset_size" in err and "50,000" in err
