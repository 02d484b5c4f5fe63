"""Flags and YAML config files derived from a hyperparameter dataclass, so that the dataclass
stays the one table of settings: each field, declared with `hp`, carries its default, help,
choices and range; `parser_from_dataclass` makes one flag per field, `read_config_file` reads a
strict YAML mapping of fields, `config_yaml` writes one back, and `parse_settings` merges
defaults < --config FILE.yaml < the flags typed. Used by config.py (train.py's Config) and
airbench.py.
"""
import argparse
import dataclasses
import math
import re
from dataclasses import field

import yaml

from utils import ArgumentParser, ConfigError

NO_NEUTRAL = object()


def hp(default, help, *, min=None, max=None, choices=None, result=True, neutral=NO_NEUTRAL):
    """One hyperparameter. result=False marks settings that cannot change what is learned (paths,
    logging); they are left out of the run name and config_id. A setting added to the lab after
    its first results exist gives `neutral`, the value that behaves as the lab did before it:
    config_id hashes it only when it differs, so runs made before it keep their names."""
    return field(default=default, metadata=dict(help=help, min=min, max=max, choices=choices,
                                                result=result, neutral=neutral))


def field_errors(cfg) -> list:
    """Each value of an hp dataclass against its field's type, choices and range, as messages
    naming the flag."""
    errors = []
    for f in dataclasses.fields(cfg):
        value, m = getattr(cfg, f.name), f.metadata
        if not isinstance(value, f.type) or (f.type is int and isinstance(value, bool)):
            if not (f.type is float and isinstance(value, int) and not isinstance(value, bool)):
                errors.append(f"--{f.name} must be {f.type.__name__}, got {value!r}")
                continue
        if m["choices"] and value not in m["choices"]:
            errors.append(f"--{f.name} must be one of {m['choices']}, got {value!r}")
        lo, hi = m["min"], m["max"]
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, float) and not math.isfinite(v):  # NaN passes every comparison
                errors.append(f"--{f.name} must be a finite number, got {value!r}")
                break
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                bounds = f">= {lo}" if hi is None else f"in {lo}..{hi}"
                errors.append(f"--{f.name} must be {bounds}, got {value!r}")
                break
    return errors


def parser_from_dataclass(cls, description: str = "") -> argparse.ArgumentParser:
    """One flag per field of a hyperparameter dataclass whose fields carry help/choices metadata
    (hp): the dataclass stays the single table and the CLI is derived from it. A bool field
    X gets --X and --no_X (and a hidden --no-X); a tuple field takes as many values as its
    default has."""
    parser = ArgumentParser(description=description,
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


def parse_settings(parser, argv, cls, make, text=config_yaml, extra=()):
    """Defaults < --config FILE.yaml < the flags typed in argv, made into a configuration by
    make(file's settings, typed settings), which validates it; a bad setting exits via
    parser.error naming it (and the file), --print_config prints text(configuration) and exits."""
    from_file, typed, print_config, path = settings_given(parser, argv, cls, extra)
    try:
        cfg = make(from_file, typed)
    except ConfigError as e:
        parser.error(f"{e} (settings from {path} and the command line)" if path else str(e))
    if print_config:
        print(text(cfg), end="")
        parser.exit()
    return cfg
