"""flags.py: config files read strictly, each refusal naming the file, the key and the value."""
import argparse
import dataclasses

import pytest

import flags
from tiny import parse_fails, says


# What each refusal must name besides the file: the key, what it must be, the value, the fix.
@pytest.mark.parametrize("text,parts", [
    ("lrr: 0.1\n", ["unknown key", "lrr"]),
    ("lr: fast\n", ["'lr'", "float", "fast"]),
    ("width: 8.5\n", ["'width'", "int", "8.5"]),
    ("augment: 1\n", ["'augment'", "bool", "1"]),
    ("compile: false\n", ["'compile'", "str", "False", "quote it"]),
    # YAML 1.1's guesses, refused with the line named (were: the last key kept, 010 read as 8)
    ("compile: off\n", ["ambiguous", "'off'", "true or false"]),
    ("augment: yes\n", ["ambiguous", "'yes'", "true or false"]),
    ("width: 8\nlr: 0.1\nwidth: 16\n", ["ambiguous", "'width'", "twice", "line 3"]),
    ("width: 010\n", ["ambiguous", "'010'", "octal", "decimal"]),
    ("width: 0x10\n", ["ambiguous", "'0x10'", "hexadecimal", "decimal"]),
    ("num_epochs: 1:30\n", ["'1:30'", "line 1, column 13"]),
    ("betas: [0.9]\n", ["'betas'", "list of 2 floats", "[0.9]"]),
    ("optimizer:\n  type: sgd\n", ["'optimizer'", "str", "{'type': 'sgd'}"]),
    ("- lr\n- 0.1\n", ["mapping of settings", "a list"]),
    ("", ["mapping of settings", "an empty file"]),
    ("lr: [0.1\n", ["not valid YAML"]),
])
def test_bad_config_files_are_refused_naming_file_and_key(text, parts, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    err = parse_fails(["--config", str(path)], capsys)
    says(err, f"config file {path}", *parts)


def test_missing_config_file_and_bad_values_are_refused_clearly(tmp_path, capsys):
    err = parse_fails(["--config", str(tmp_path / "none.yaml")], capsys)
    says(err, str(tmp_path / "none.yaml"), "No such file")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00lr")
    assert "is not a text file" in parse_fails(["--config", str(tmp_path / "binary.yaml")], capsys)
    path = tmp_path / "c.yaml"
    path.write_text("lr: -1\noptimizer: adamw\nmomentum: 0.9\n")  # ranges and combinations as flags
    err = parse_fails(["--config", str(path)], capsys)
    says(err, "--lr", ">= 0.0", "--momentum", "--optimizer sgd")
    assert f"settings from {path}" in err


def test_any_hp_dataclass_gets_flags_a_config_file_and_its_ranges_checked(tmp_path):
    """The machinery knows nothing of the lab's Config: a two-field table is enough."""
    @dataclasses.dataclass
    class Table:
        rate: float = flags.hp(0.5, "a rate", min=0.0, max=1.0)
        fast: bool = flags.hp(False, "a switch")

    path = tmp_path / "t.yaml"
    path.write_text(flags.config_yaml(Table(rate=0.25, fast=True)))
    assert flags.read_config_file(str(path), Table) == dict(rate=0.25, fast=True)
    parser = flags.parser_from_dataclass(Table)
    assert parser.parse_args(["--rate", "0.75", "--no_fast"]) == argparse.Namespace(rate=0.75, fast=False)
    (error,) = flags.field_errors(Table(rate=2.0))
    says(error, "--rate", "0.0..1.0", "2.0")
