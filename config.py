"""The lab's settings: one typed, commented table (`Config`), from which train.py's flags, the
CSV columns and the run name are derived (through flags.py), so a new knob is one line; the
presets (config/NAME.yaml); validation of every value before anything runs; a run's identity
(config_id, run_name, the configuration an --experiment_name belongs to).

    python train.py --help            # every setting, its default and range
    python train.py --list_presets    # the presets, as the flags they stand for
"""
import argparse
import dataclasses
import functools
import glob
import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, fields

import torch

import data
from flags import (NO_NEUTRAL, ConfigFileError, config_yaml, field_errors, hp, parse_settings,
                   parser_from_dataclass, read_config_file, settings_given)
from model import MODELS, num_params, size_error
from records import atomic_write, csv_append_error, file_lock, unwritable_folder
from utils import ConfigError

DESCRIPTION = "Train one configuration of the scaling study and log it under results/."
MAX_SEED = 2 ** 32 - 1  # numpy's seed range (set_seed seeds numpy too)
# A million epochs of even 1,000 images outlast any study; more is a typo or a plan's overflow
# (a compute budget of 1e300), which would otherwise start a run that never ends.
MAX_EPOCHS = 1_000_000
# An experiment name becomes a folder name under runs/: no separators, no hidden or parent folders.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# A plan tag is a CSV field analysis.py splits on ':' and '+': names of plans, nothing else.
PLAN_TAG = re.compile(r"([A-Za-z0-9_.-]+:)?[A-Za-z0-9_.-]+(\+[A-Za-z0-9_.-]+)*")

# The lab's other studies are config files: config/NAME.yaml holds the settings `--preset NAME`
# sets (its first line, a comment, says what it is). Flags given on the command line override them;
# width, depth and dataset_size left unset take the model's defaults.
PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
NO_PRESET = ("none", "the scaling study's recipe: Config's defaults")


# Flags that mean something only beside another setting: given without it, they are refused.
ONLY_WITH = {"momentum": ("optimizer", "sgd"), "betas": ("optimizer", "adamw"),
             "num_workers": ("loader", "torchvision")}


@dataclass
class Config:
    # --- what is trained: the scaling knobs ---
    model: str = hp("cnn", "network family (model.py)", choices=sorted(MODELS))
    width: int = hp(32, "channels of the first stage; stage s has width*2**s (unset: the "
                        "model's default, cnn 32, resnet8 16, simplecnn 32)", min=1)
    depth: int = hp(2, "blocks per stage (unset: the model's default, cnn 2, resnet8 1, "
                       "simplecnn 1)", min=1)
    bn: bool = hp(False, "BatchNorm in simplecnn (cnn and resnet8 always have it)")
    dataset_size: int = hp(50_000, "D: training images, the first D of the subset_seed "
                                   "permutation (nested across D; unset with --val_size: all "
                                   "that the split leaves)", min=1, max=data.NUM_TRAIN)
    val_size: float = hp(0.0, "validation images carved off the 50,000 before subsetting: a "
                              "count, or a fraction < 1 (0.1 = 5,000); test set untouched",
                         min=0.0, max=data.NUM_TRAIN - 1)
    subset_seed: int = hp(0, "seed of the fixed permutation that picks the D (and validation) "
                             "images", min=0, max=MAX_SEED)
    seed: int = hp(0, "seed of init, data order and augmentation", min=0, max=MAX_SEED)
    augment: bool = hp(True, "RandomCrop(32, padding 4) + horizontal flip of training images "
                             "(--no_augment: none)")
    normalize: bool = hp(False, "per-channel (x - mean) / std of CIFAR-10 (ResNet-8 study); the "
                                "scaling recipe uses pixels in [0, 1]")
    # --- how it is trained: SGD + cosine, the scaling recipe ---
    num_epochs: int = hp(100, "epochs; a cosine schedule reaches 0 at the end", min=1,
                         max=MAX_EPOCHS)
    batch_size: int = hp(256, "images per step", min=1)
    optimizer: str = hp("sgd", "sgd (the scaling recipe's) or adamw", choices=["sgd", "adamw"])
    lr: float = hp(0.1, "peak learning rate (epoch 0)", min=0.0)
    # cosine steps once per epoch (the scaling recipe's), so a 2-epoch run trains its 2nd epoch at
    # lr/2 and never anneals; cosine_step reaches ~0 by the last step of any schedule, so runs of
    # different lengths are the same recipe cut to length (Hoffmann et al. 2022 match the cosine
    # to each run's length for the same reason).
    scheduler: str = hp("cosine", "cosine: annealed to 0 over num_epochs, stepped per epoch; "
                                  "cosine_step: annealed over every optimiser step of the run; "
                                  "none: constant", choices=["cosine", "cosine_step", "none"])
    momentum: float = hp(0.9, "SGD momentum (sgd only)", min=0.0, max=1.0)
    betas: tuple = hp((0.9, 0.999), "AdamW's beta1 beta2 (adamw only)", min=0.0, max=0.999999)
    weight_decay: float = hp(5e-4, "weight decay: SGD's coupled L2, AdamW's decoupled", min=0.0)
    # --- how fast: levers that change speed, not what a run should converge to ---
    loader: str = hp("tensor", "tensor: uint8 data on the device, batched crop/flip; "
                               "torchvision: the literal DataLoader pipeline (reference)",
                     choices=["tensor", "torchvision"])
    precision: str = hp("fp32", "fp32, or bf16 autocast (CUDA, or a CPU with AVX-512 BF16 or "
                                "AMX; changes the losses by about 1 percent)",
                        choices=["fp32", "bf16"])
    channels_last: bool = hp(False, "NHWC memory format (faster convolutions: bf16 on a GPU, "
                                    "fp32 from width 8 on a CPU)")
    compile: str = hp("off", "torch.compile the model; reduce-overhead also captures it in CUDA "
                             "graphs (one launch per step instead of dozens)",
                      choices=["off", "default", "max-autotune-no-cudagraphs", "reduce-overhead"])
    deterministic: bool = hp(True, "cudnn.deterministic and deterministic algorithms: runs "
                                   "bit-reproducible from --seed")
    # --- evaluation and bookkeeping: cannot change what is learned ---
    test_freq: int = hp(5, "evaluate on the 10,000 test images every this many epochs (and at "
                           "each of the last 5)", min=1, result=False)
    eval_batch_size: int = hp(1000, "images per evaluation batch", min=1, result=False)
    budget: float = hp(0.0, "the IsoFLOP budget C = N*D*epochs the run was planned for (sweep.py "
                            "sets it; recorded so analysis.py groups a budget's runs exactly, not "
                            "by nearby C; 0: none)", min=0.0, result=False)
    plan: str = hp("", "the sweep plan this run was planned for, as STUDY:SUBPLAN+SUBPLAN or PLAN "
                       "(sweep.py sets it; analysis.py reads a study's plans from it instead of "
                       "guessing them from N, D and epochs)", result=False)
    num_workers: int = hp(0, "DataLoader workers (--loader torchvision only)", min=0, result=False)
    data_dir: str = hp("data", "holds cifar-10-batches-py/ (downloaded there if absent)", result=False)
    results_dir: str = hp("results", "where runs/ and final_data.csv go", result=False)
    device: str = hp("auto", "auto (cuda if available), cpu, cuda, cuda:N, mps", result=False)
    resume: bool = hp(False, "continue this configuration's checkpoint quietly (a killed run's "
                             "checkpoint is continued anyway, with a line saying so)", result=False)
    force: bool = hp(False, "retrain a configuration that already has a summary (replacing its "
                            "row), or start a killed one over (without --resume); without it "
                            "a finished run is skipped", result=False)
    keep_checkpoints: bool = hp(False, "keep the per-epoch checkpoint after the run finishes", result=False)
    log_grad_norms: bool = hp(False, "per-layer gradient norms (mean over the epoch's steps) as "
                                     "grad_norm_<layer> columns of the per-epoch CSV", result=False)
    save_model: bool = hp(False, "final weights and metrics.json under runs/<run_name>/ "
                                 "(runs/<experiment_name>/ when named)", result=False)
    experiment_name: str = hp("", "a name of your choice for this run (the ResNet-8 study's "
                                  "sgd_seed42): recorded in the summary, names the folder of "
                                  "--save_model; one name, one configuration", result=False)
    trackio: str = hp("", "trackio project to log per-epoch metrics to (pip install trackio; "
                          "stored under $TRACKIO_DIR; trackio show opens the dashboard)", result=False)
    preset: str = hp("none", "defaults of a study: config/NAME.yaml (--list_presets); explicit "
                             "flags override", result=False)
    quiet: bool = hp(False, "no progress bar or summary line", result=False)


def validate(cfg, errors=()) -> None:
    """Refuse bad input before any data is read or any file written: each value against its
    field's type and range (any hp dataclass: airbench.py's too), then Config's combinations, the
    device and the results folder."""
    errors = list(errors) + field_errors(cfg)
    if isinstance(cfg, Config) and not errors:  # combinations assume each value is in range
        errors += _combination_errors(cfg) + _results_file_errors(cfg.results_dir)
    errors += device_errors(cfg.device) + _writable_errors(cfg.results_dir)
    if errors:
        raise invalid_configuration(errors)


def invalid_configuration(errors: list) -> ConfigError:
    """Every bad setting in one line, as any other refusal (a block of lines scrolls its start
    away in a sweep's log)."""
    return ConfigError("invalid configuration: " + "; ".join(errors))


def _combination_errors(cfg: Config) -> list:
    errors = []
    if cfg.bn and cfg.model != "simplecnn":
        errors.append(f"--bn is a switch of --model simplecnn; {cfg.model} always has BatchNorm")
    errors += [e for e in [size_error(cfg.model, cfg.width, cfg.depth, cfg.bn),
                           data.data_dir_error(cfg.data_dir)] if e]
    if cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size):
        errors.append(f"--val_size must be a whole number of images or a fraction < 1, got {cfg.val_size}")
    num_val = data.val_count(cfg.val_size, data.NUM_TRAIN)
    if num_val >= data.NUM_TRAIN:  # 0.999999 rounds to all of them
        errors.append(f"--val_size {cfg.val_size} asks for {num_val:,} validation images and "
                      f"leaves none of the {data.NUM_TRAIN:,} to train on")
    elif cfg.dataset_size + num_val > data.NUM_TRAIN:
        errors.append(f"--dataset_size {cfg.dataset_size} + --val_size {num_val} images exceed the "
                      f"{data.NUM_TRAIN:,} training images; use --dataset_size <= "
                      f"{data.NUM_TRAIN - num_val} (or leave it unset)")
    if cfg.experiment_name and not EXPERIMENT_NAME.fullmatch(cfg.experiment_name):
        errors.append(f"--experiment_name must be letters, digits, _ . - (a folder name under "
                      f"runs/), got {cfg.experiment_name!r}")
    if cfg.plan and not PLAN_TAG.fullmatch(cfg.plan):
        errors.append(f"--plan must be PLAN or STUDY:SUBPLAN+SUBPLAN (letters, digits, _ . -), "
                      f"got {cfg.plan!r}")
    C = num_params(cfg.model, cfg.width, cfg.depth, cfg.bn) * cfg.dataset_size * cfg.num_epochs
    if cfg.budget and abs(C - cfg.budget) >= cfg.budget:
        # sweep.py plans each run within --tolerance < 100% of its budget: this one is not its
        errors.append(f"--budget {cfg.budget:g} is not this run's budget: its C = N*D*epochs is "
                      f"{C:.4g} (a run is planned within 100% of its budget)")
    if cfg.trackio and importlib.util.find_spec("trackio") is None:
        errors.append("--trackio needs the trackio package, which is not installed: "
                      "pip install trackio (or drop --trackio)")
    return errors


def device_errors(name: str) -> list:
    if name == "auto":
        return []
    try:
        device = torch.device(name)
    except RuntimeError:
        return [f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"]
    if device.type == "cuda" and not torch.cuda.is_available():
        return [f"--device {name}: CUDA is not available on this machine"]
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return [f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)"]
    if device.type == "mps" and not torch.backends.mps.is_available():
        return [f"--device {name}: MPS is not available on this machine"]
    if device.type not in ("cpu", "cuda", "mps"):
        return [f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps"]
    return []


def _writable_errors(path: str) -> list:
    if not path.strip():  # "" would write runs/ and final_data.csv into the working folder
        return [f"--results_dir must name a folder, got {path!r}"]
    blocked = unwritable_folder(path)
    return [f"--results_dir {path!r} is not writable ({blocked} is not a writable folder)"] \
        if blocked else []


def _results_file_errors(results_dir: str) -> list:
    """runs/ and final_data.csv are written only after training: check them before it."""
    runs, final = os.path.join(results_dir, "runs"), os.path.join(results_dir, "final_data.csv")
    errors = []
    if os.path.exists(runs) and (not os.path.isdir(runs) or not os.access(runs, os.W_OK | os.X_OK)):
        errors.append(f"--results_dir: {runs} is not a writable folder")
    if os.path.exists(final):
        tail = csv_append_error(final, key="run_name")
        errors += [f"--results_dir: {tail}"] if tail else []
    return errors


def config_id(cfg: Config) -> str:
    """Hash of every setting that can change what is learned, except the seed: rows sharing it
    are seeds of one configuration."""
    keys = {f.name: getattr(cfg, f.name) for f in fields(type(cfg))
            if f.metadata["result"] and f.name != "seed"
            and getattr(cfg, f.name) != f.metadata.get("neutral", NO_NEUTRAL)}
    if getattr(cfg, "loader", None) == "torchvision":  # workers draw the transforms' random stream
        keys["num_workers"] = cfg.num_workers
    if keys.get("val_size", 0) > 0:   # --val_size 5000 is the split of 0.1 of the 50,000: hashed
        # as the share it carves (0.1 stays 0.1, so the presets' run names do not change)
        keys["val_size"] = data.val_count(keys["val_size"], data.NUM_TRAIN) / data.NUM_TRAIN
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]


def run_name(cfg: Config) -> str:
    """Readable and unique: the same configuration always gets the same name."""
    optimizer = "" if cfg.optimizer == "sgd" else f"_{cfg.optimizer}"
    return (f"{cfg.model}_w{cfg.width}_d{cfg.depth}_D{cfg.dataset_size}_e{cfg.num_epochs}"
            f"_s{cfg.seed}{optimizer}_{config_id(cfg)}")


def saved_by_another_run(saved: dict, cfg) -> str:
    """Why a checkpoint's saved settings are not this run's ("" when they are, or when they are
    too old to tell): a copied or misplaced checkpoint would otherwise be resumed as this run."""
    known = {f.name for f in fields(type(cfg))}
    try:  # settings this code no longer has are left out, as run names leave them out
        theirs = run_name(dataclasses.replace(cfg, **{k: v for k, v in saved.items()
                                                      if k in known}))
    except (TypeError, ValueError):
        return ""
    return "" if theirs == run_name(cfg) else f"it was saved by run {theirs}"


def make_config(given: dict) -> Config:
    """The Config of the settings a user gave: the preset fills what was not given, then the
    model's default width and depth, then (with a validation split) dataset_size = all that the
    split leaves, then Config's defaults. Validated; flags that need another setting are refused."""
    unknown = set(given) - {f.name for f in fields(Config)}
    if unknown:
        raise ConfigError(f"unknown options {sorted(unknown)}; see python train.py --help")
    preset = given.get("preset", "none")
    if preset not in presets():
        raise ConfigError(f"--preset must be one of {sorted(presets())} (config/*.yaml), got "
                          f"{preset!r}")
    values = {**presets()[preset][1], **given}
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    model = values.get("model", Config.model)
    if model in MODELS:
        values.setdefault("width", MODELS[model][1])
        values.setdefault("depth", MODELS[model][2])
    val_size = values.get("val_size")
    if isinstance(val_size, (int, float)) and math.isfinite(val_size) and "dataset_size" not in values:
        values["dataset_size"] = max(1, data.NUM_TRAIN - data.val_count(val_size, data.NUM_TRAIN))
    cfg = Config(**values)
    errors = [f"--{flag} applies only with --{key} {needed}, not --{key} {getattr(cfg, key)}"
              for flag, (key, needed) in ONLY_WITH.items()
              if flag in given and getattr(cfg, key) != needed]
    validate(cfg, errors)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = parser_from_dataclass(Config, DESCRIPTION)
    parser.add_argument("--list_presets", action="store_true", help="show the presets and exit")
    return parser


def config_text(cfg: Config) -> str:
    """The resolved Config as a --config file, without settings that do not apply (momentum
    under AdamW), which make_config would refuse when the file is fed back."""
    return config_yaml(cfg, skip=[flag for flag, (key, needed) in ONLY_WITH.items()
                                  if getattr(cfg, key) != needed])


def as_flag(name: str, value) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no_{name}"
    return f"--{name} {' '.join(map(str, value)) if isinstance(value, tuple) else value}"


@functools.lru_cache
def presets() -> dict:
    """{name: (what it is, {setting: value})}: "none" and each config/NAME.yaml."""
    found = {NO_PRESET[0]: (NO_PRESET[1], {})}
    for path in sorted(glob.glob(os.path.join(PRESET_DIR, "*.yaml"))):
        with open(path) as f:
            about = f.readline().lstrip("#").strip()
        found[os.path.basename(path)[:-len(".yaml")]] = (about, read_config_file(path, Config))
    return found


def presets_text() -> str:
    flags = lambda values: " ".join(as_flag(k, v) for k, v in values.items()) or "(no flags)"
    return "\n".join(f"{name}: {about}\n    {flags(values)}"
                     for name, (about, values) in presets().items())


def typed_flags(argv) -> tuple:
    """({field: value} of argv's --config file, {field: value} typed in argv), without defaults;
    print_config and list_presets among the typed under their own names when given."""
    from_file, typed, print_config, _ = settings_given(build_parser(), argv, Config, ["list_presets"])
    return from_file, {**typed, **({"print_config": True} if print_config else {})}


def parse_config(argv=None) -> Config:
    return parse_settings(build_parser(), argv, Config, _config_of, config_text, ["list_presets"])


def _config_of(from_file: dict, typed: dict) -> Config:
    if typed.pop("list_presets", False):
        print(presets_text())
        raise SystemExit(0)
    if from_file and "preset" in typed:  # two recipes: the merge would be neither, unlabelled
        raise ConfigError(f"--preset {typed['preset']} and a --config file both give a recipe; "
                          f"give one: a file names its base itself (preset: NAME), and flags "
                          f"change either")
    # A file's setting that needs one the command line changed (the file's momentum, a typed
    # --optimizer adamw) no longer applies, as a preset's would not.
    from_file = {k: v for k, v in from_file.items() if not (
        k in ONLY_WITH and ONLY_WITH[k][0] in typed and typed[ONLY_WITH[k][0]] != ONLY_WITH[k][1])}
    return make_config({**from_file, **typed})


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
