"""The training configuration: one frozen dataclass, filled from the command line and/or a YAML/JSON file.

Flag names follow timm's ``train.py`` where it has one (``--opt``, ``--lr``, ``--weight-decay``, ``--momentum``,
``--sched``, ``--epochs``, ``--warmup-epochs``, ``--cooldown-epochs``, ``--warmup-lr``, ``--min-lr``,
``--warmup-prefix``, ``--decay-epochs``, ``--decay-milestones``, ``--decay-rate``, ``--sched-on-updates``,
``--clip-grad``, ``--layer-decay``, ``--model-ema-decay``, ``--bce-loss``, ``--bce-target-thresh``, ``--mixup``,
``--cutmix``, ``--drop-path``; ``--smoothing`` is spelled ``--label-smoothing``); ``--warmup-steps`` is a
warmup in updates. A config file (``--config run.yaml``) may set any field by its name; flags given on the
command line win over the file. A value outside a field's choices is a command-line error, from a flag or
from the file.
The augmentation flags are timm's (``--aa``, ``--reprob``, ``--remode``, ``--recount``, ``--color-jitter``,
``--train-interpolation``, ``--hflip``, ``--vflip``, ``--aug-repeats``, ``--crop-pct``; see ``train.augment``),
except that ``--scale`` / ``--ratio`` take a comma-separated pair (``--scale 0.08,1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from train.augment import ERASE_MODES, INTERPOLATIONS, aa_transform
from train.augment import check as check_augment

MESH_AXES = ("data", "fsdp", "tensor")
# Architecture overrides that may be given as flags; each is passed to ``vitjax.create_model``.
MODEL_FLAGS = {
    "num_classes": int,
    "drop_path": float,
    "drop_rate": float,
    "embed_dim": int,
    "depth": int,
    "num_heads": int,
    "patch_size": int,
    "mlp_ratio": float,
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # model
    model: str
    # anything vitjax.create_model(pretrained=...) takes ('True': the default hub tag), or a python -m train run
    pretrained: str | None = None
    pretrained_ema: bool = False  # with a run directory: its EMA weights
    img_size: int | None = None  # None: the model's default
    model_args: dict[str, Any] = field(default_factory=dict)  # overrides for vitjax.create_model
    # data
    data: str = "digits"  # 'digits', an ImageFolder root with train/ and val/, or a packed dir (train.records)
    workdir: str = "runs/default"
    batch_size: int = 64  # global, over all processes and devices
    eval_batch_size: int | None = None  # None: batch_size
    steps: int | None = None
    epochs: float | None = None  # used when steps is None
    scale: tuple[float, float] | None = None  # random-resized-crop area range; None: dataset default
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float | None = None  # None: dataset default (0.5; 0 for digits)
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    workers: int = 0  # data processes decoding and augmenting records (train.data.Batches); 0: in this process
    data_workers: int = 0  # grain read threads in each reading process (0: one)
    skip_bad_images: bool = False  # count and skip unreadable images (train.data.BadImages) instead of stopping
    # augmentation, timm's train.py flags (train.augment); None: the dataset's default
    aa: str | None = None  # rand-m9-mstd0.5-inc1, original, v0, augmix-m3-w3, ...
    reprob: float = 0.0  # random erasing probability
    remode: Literal["const", "rand", "pixel"] = "pixel"
    recount: int = 1
    color_jitter: float | None = None  # None: 0.4 (ImageFolder), 0 (digits); off with --aa (but '3a'), as timm
    train_interpolation: Literal["random", "nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"] | None = None
    vflip: float = 0.0
    aug_repeats: float = 0  # repeated augmentation: each example this many times per epoch, over processes
    crop_pct: float | None = None  # eval centre-crop fraction; None: the model's
    # optimisation
    opt: Literal["adamw", "nadamw", "lamb", "sgd", "nesterov", "momentum", "lion"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    opt_betas: tuple[float, float] | None = None  # None: the optimizer's (timm's) default
    opt_eps: float | None = None  # None: the optimizer's (timm's) default
    warmup_steps: int = 0  # a linear warmup over this many updates before the schedule (a prefix)
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    # losses, optimizers and schedules as timm's train.py (issue 24)
    bce_loss: bool = False  # binary cross-entropy on the (mixed, smoothed) targets, as timm's BinaryCrossEntropy
    bce_target_thresh: float | None = None  # targets above it become 1, the rest 0
    momentum: float = 0.9  # sgd / nesterov / momentum
    sched: Literal["cosine", "step", "multistep", "poly", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    cooldown_epochs: float = 0.0  # at min_lr after the schedule (added to --epochs)
    warmup_prefix: bool | None = None  # None: True with --warmup-steps, else timm's False
    decay_epochs: float = 90.0  # step: the interval of decays
    decay_milestones: tuple[float, ...] = (90.0, 180.0, 270.0)  # multistep: the epochs of decays
    decay_rate: float = 0.1  # step / multistep: the factor of each decay; poly: the power
    sched_on_updates: bool | None = None  # lr per update, not per epoch; None: per update unless --epochs is given
    keep_best: int = 0  # keep the weights of the N best evaluations (by eval_metric) in <workdir>/best/
    eval_metric: Literal["top1", "top5", "eval_loss", "top1_ema", "top5_ema", "eval_loss_ema"] = "top1"
    clip_grad: float | None = 1.0
    layer_decay: float | None = None
    model_ema_decay: float = 0.0  # 0: no EMA
    model_ema_warmup: bool = True
    grad_accum_steps: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    remat: bool = False
    nan_policy: Literal["stop", "skip"] = "stop"
    fast_compile: bool = False  # XLA backend optimisation level 0: quicker compiles, slower steps (tests, CPU)
    # parallelism
    mesh: dict[str, int] = field(default_factory=dict)  # data/fsdp/tensor sizes; missing data = the rest
    sharding: Literal["auto", "dp", "fsdp", "tp"] = "auto"
    fsdp_min_size: int = 0  # parameters with fewer elements are not split over fsdp (0: all are)
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: at the end only
    ckpt_every: int = 0  # 0: at the end (and on SIGTERM) only
    keep_ckpts: int = 3
    progress: bool = True

    def __post_init__(self):
        for name, allowed in choices().items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{_flag(name)}: {getattr(self, name)!r} is not one of {list(allowed)}")
        if self.steps is None and self.epochs is None:
            raise ValueError("give --steps or --epochs")
        if self.grad_accum_steps < 1:
            raise ValueError("--grad-accum-steps must be >= 1")
        bad = set(self.mesh) - set(MESH_AXES)
        if bad:
            raise ValueError(f"unknown mesh axes {sorted(bad)}; use {MESH_AXES}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError("--layer-decay must be in (0, 1]")
        _check_augmentation(self)
        for name in ("workers", "data_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")

    def model_overrides(self) -> dict[str, Any]:
        args = dict(self.model_args)
        if self.img_size is not None:
            args["img_size"] = self.img_size
        if "drop_path" in args:
            args["drop_path_rate"] = args.pop("drop_path")
        return args

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


@cache
def choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every field typed ``Literal[...]``."""
    hints = get_type_hints(TrainConfig)
    return {name: get_args(t) for name, t in hints.items() if get_origin(t) is Literal}


def _check_augmentation(cfg: TrainConfig) -> None:
    check_augment(cfg.aa, cfg.train_interpolation or "random", cfg.remode, cfg.reprob, cfg.recount)
    if cfg.aug_repeats and cfg.aug_repeats < 1:
        raise ValueError(f"--aug-repeats {cfg.aug_repeats} must be 0 (off) or >= 1")
    if cfg.crop_pct is not None and not 0 < cfg.crop_pct <= 1:
        raise ValueError(f"--crop-pct {cfg.crop_pct} not in (0, 1]")
    for name in ("vflip", "hflip"):
        v = getattr(cfg, name)
        if v is not None and not 0 <= v <= 1:
            raise ValueError(f"--{name} {v} not in [0, 1]")


def _aug_flag(check):
    """An argparse type that reports a value ``check`` refuses as a command-line error."""

    def conv(text: str):
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return conv


def _aa(text: str) -> str:
    aa_transform(text)
    return text


def _among(*choices: str):
    def conv(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} not in {choices}")
        return text

    return conv


AUG_FLAGS = {
    "aa": _aug_flag(_aa),
    "remode": _aug_flag(_among(*ERASE_MODES)),
    "train_interpolation": _aug_flag(_among(*INTERPOLATIONS)),
}


def parse_mesh(text: str) -> dict[str, int]:
    """``'data=2,fsdp=4'`` -> ``{'data': 2, 'fsdp': 4}``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, n = part.partition("=")
        if name not in MESH_AXES or not n.isdigit():
            raise argparse.ArgumentTypeError(f"bad mesh entry {part!r}; expected e.g. data=2,fsdp=2,tensor=2")
        out[name] = int(n)
    return out


def _pair(text: str) -> tuple[float, float]:
    a, b = (float(v) for v in text.split(","))
    return a, b


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _count(text: str) -> int:
    """A non-negative integer (a number of processes or threads), else a command-line error."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description="Train a vitjax model (sharded, resumable).")
    p.add_argument("--config", help="YAML or JSON file setting any field by name; flags override it")
    kinds = {f.name: f for f in dataclasses.fields(TrainConfig)}
    special = {
        "mesh": parse_mesh,
        "scale": _pair,
        "ratio": _pair,
        "opt_betas": _pair,
        "decay_milestones": _floats,
        "workers": _count,
        "data_workers": _count,
        **AUG_FLAGS,
    }
    allowed = choices()
    for name, f in kinds.items():
        if name == "model_args":
            continue
        if name in allowed:
            p.add_argument(_flag(name), choices=allowed[name], default=None)
        elif name in special:
            p.add_argument(_flag(name), type=special[name], default=None)
        elif f.type in ("bool", "bool | None"):
            p.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=None)
        else:
            conv = int if f.type.startswith("int") else float if f.type.startswith("float") else str
            p.add_argument(_flag(name), type=conv, default=None)
    for name, conv in MODEL_FLAGS.items():
        p.add_argument(_flag(name), type=conv, default=None, dest=f"model__{name}")
    return p


class ConfigError(ValueError):
    """A ``--config`` file that cannot be read, or does not hold a mapping of known field names."""


def load_file(path: str) -> dict[str, Any]:
    """The fields a YAML (plain data only: no Python tags, no aliases) or JSON config file sets."""
    import yaml

    class Loader(yaml.SafeLoader):  # safe_load without aliases: "billion laughs" would expand exponentially
        def compose_node(self, parent, index):
            if self.check_event(yaml.events.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases are not accepted", self.peek_event().start_mark)
            return super().compose_node(parent, index)

    try:
        text = Path(path).read_text()
        values = yaml.load(text, Loader) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:  # ValueError: JSON, UTF-8
        raise ConfigError(f"{path}: not a readable config file ({type(e).__name__}: {e})") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of field names, not a {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigError(f"{path}: unknown fields {unknown} (python -m train --help lists them)")
    if not isinstance(values.get("model_args", {}), dict):
        raise ConfigError(f"{path}: model_args is not a mapping")
    return values


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    where = args.pop("config", None)
    try:
        values: dict[str, Any] = load_file(where) if where else {}
    except ConfigError as e:
        raise SystemExit(f"python -m train: {e}") from None
    for name, allowed in choices().items():
        if name in values and values[name] not in allowed:
            parser.error(f"{where}: {name}: invalid choice {values[name]!r} (choose from {list(allowed)})")
    model_args = dict(values.pop("model_args", {}))
    for key in list(args):
        if key.startswith("model__"):
            v = args.pop(key)
            if v is not None:
                model_args[key.removeprefix("model__")] = v
    values.update({k: v for k, v in args.items() if v is not None})
    for k in ("scale", "ratio", "opt_betas", "decay_milestones"):
        if isinstance(values.get(k), list):
            values[k] = tuple(values[k])
    if "model" not in values:
        raise SystemExit("python -m train: --model is required")
    return TrainConfig(**values, model_args=model_args)
