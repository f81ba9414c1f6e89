"""``create_model(name, pretrained=...)``: find the weights, read them, adapt them to the model, fill it.

Where the weights come from (:func:`resolve`):

* ``True`` (or a tag): the hub repo of the name's pretrained config (``vitjax.pretrained``): timm's
  ``timm/<name>.<tag>`` repos (``model.safetensors``, else ``pytorch_model.bin``), or for the Hugging Face ids
  the transformers repo (``model.safetensors``, else ``pytorch_model.bin``, else ``flax_model.msgpack``).
  Downloads go through ``huggingface_hub`` and its cache, so ``HF_HUB_OFFLINE=1`` works from the cache.
* a path: ``.safetensors`` / ``.pth`` / ``.bin`` (weights only), ``.npz`` (the original Google ViT layout),
  ``.msgpack`` (transformers' Flax layout), a vitjax checkpoint directory (``python -m converters to-jax``), a
  ``python -m train`` run directory (its latest checkpoint; ``converters.runs``), or a directory holding one of
  the hub file names.
* ``"hf-hub:org/name"`` or ``"org/name"``: any hub repo with one of those files.

The state_dict is then fitted to the model by :func:`converters.adapt.load_state_dict_into` (naming detection,
resampling, classifier replacement); ``.npz`` files by :mod:`converters.npz`, vitjax directories by
:mod:`converters.orbax_io`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flax import nnx

from converters import npz, orbax_io
from converters.adapt import load_state_dict_into
from converters.engine import unwrap
from converters.hf_flax import load_msgpack
from converters.io import CheckpointError, load_state_dict

TIMM_FILES = ("model.safetensors", "pytorch_model.bin")
HF_FILES = ("model.safetensors", "pytorch_model.bin", "flax_model.msgpack")
NPZ_SUFFIXES = (".npz",)
TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
VITJAX_META = "vitjax.json"  # marks a vitjax (orbax) checkpoint directory

Kind = Literal["torch", "npz", "hf_flax", "vitjax", "run"]


@dataclass(frozen=True)
class Source:
    """A resolved checkpoint: what kind of file, where, and the pretrained config describing it."""

    kind: Kind
    path: Path
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # how it was found, for messages


def _kind_of_file(path: Path) -> Kind:
    if path.suffix in NPZ_SUFFIXES:
        return "npz"
    if path.suffix == ".msgpack":
        return "hf_flax"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    raise CheckpointError(
        f"{path}: unknown checkpoint format {path.suffix!r} (use .safetensors, .pth, .bin, .npz, .msgpack, "
        "or a vitjax checkpoint directory)"
    )


def _local(path: Path, cfg: dict[str, Any]) -> Source:
    if path.is_dir():
        if (path / VITJAX_META).is_file():
            return Source("vitjax", path, cfg, f"vitjax checkpoint {path}")
        from converters.runs import is_run_dir

        if is_run_dir(path):  # a python -m train run: its latest checkpoint
            return Source("run", path, cfg, f"training run {path}")
        for fname in HF_FILES:
            if (path / fname).is_file():
                return Source(_kind_of_file(path / fname), path / fname, cfg, str(path / fname))
        raise CheckpointError(
            f"{path}: a directory with neither a vitjax checkpoint ({VITJAX_META}) nor any of {list(HF_FILES)}"
        )
    return Source(_kind_of_file(path), path, cfg, str(path))


def download(repo_id: str, filenames: tuple[str, ...]) -> Path:
    """The first of ``filenames`` that the hub repo (or, offline, the local hub cache) has."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    missing = []
    for fname in filenames:
        try:
            return Path(hf_hub_download(repo_id, fname))
        except EntryNotFoundError:  # also raised offline for a file that is not in the cache
            missing.append(fname)
        except LocalEntryNotFoundError:
            missing.append(fname)
    raise CheckpointError(
        f"hub repo {repo_id!r} has none of {missing} (or, with HF_HUB_OFFLINE=1, the cache does not hold them)"
    )


def resolve(model: nnx.Module, pretrained: bool | str | os.PathLike, tag: str | None = None) -> Source:
    """Where the weights for ``model`` are, following :func:`vitjax.create_model`'s ``pretrained`` rules."""
    from vitjax.pretrained import get_pretrained_cfg, pretrained_tags, split_name_tag

    inner, _ = unwrap(model)
    name, family = inner.model_name, inner.family
    default_cfg = dict(getattr(inner, "pretrained_cfg", None) or get_pretrained_cfg(name, tag))
    files = HF_FILES if family.startswith("hf_") else TIMM_FILES
    if pretrained is True:
        cfg = get_pretrained_cfg(name, tag)
        if not cfg.get("hf_hub_id"):
            with_weights = [t for t in pretrained_tags(name) if get_pretrained_cfg(name, t).get("hf_hub_id")]
            what = f"{name}.{cfg['tag']}" if cfg.get("tag") else name
            raise CheckpointError(
                f"{what} has no pretrained weights on the hub"
                + (f"; tags with weights: {with_weights}" if with_weights else "")
            )
        fname = cfg.get("hf_hub_filename")
        path = download(cfg["hf_hub_id"], (fname,) if fname else files)
        return Source(_kind_of_file(path), path, cfg, f"hub {cfg['hf_hub_id']}/{path.name}")
    if not isinstance(pretrained, str | os.PathLike):
        raise TypeError(f"pretrained must be a bool, a tag, a path or a hub repo id, not {type(pretrained).__name__}")
    spec = os.fspath(pretrained)
    if Path(spec).exists():
        return _local(Path(spec), default_cfg)
    base, spec_tag = split_name_tag(spec)
    if base == name and spec_tag:  # "name.tag"
        return resolve(model, True, spec_tag)
    repo = spec.removeprefix("hf-hub:")
    parts = repo.split("/")
    if len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")):
        path = download(repo, HF_FILES if family.startswith("hf_") else (*TIMM_FILES, "flax_model.msgpack"))
        return Source(_kind_of_file(path), path, default_cfg, f"hub {repo}/{path.name}")
    raise CheckpointError(
        f"{spec}: no such file or directory; not a tag of {name} (its tags: {pretrained_tags(name)}) "
        "and not a hub repo id (org/name)"
    )


def read_state_dict(source: Source) -> Mapping[str, Any]:
    """A torch-layout state_dict from a torch / Flax-msgpack file (lazy for safetensors: each tensor is read
    when the conversion reaches it, :class:`~converters.io.SafetensorsFile`)."""
    if source.kind == "torch":
        return load_state_dict(source.path)
    if source.kind == "hf_flax":
        return load_msgpack(source.path)
    raise CheckpointError(f"{source.path}: a {source.kind} checkpoint is not a state_dict")


def load_pretrained(
    model: nnx.Module,
    pretrained: bool | str | os.PathLike = True,
    *,
    tag: str | None = None,
    init: Callable[[], nnx.Module] | None = None,
    progress: bool = False,
) -> nnx.Module:
    """Fill ``model`` (from :func:`vitjax.create_model`, abstract or not) with pretrained weights; see the
    module docstring for what ``pretrained`` may be. Sets ``model.pretrained_cfg`` to the weights' config."""
    inner, _ = unwrap(model)
    source = resolve(model, pretrained, tag)
    if source.kind == "vitjax":
        orbax_io.restore(model, source.path, init=init, progress=progress)
        cfg = orbax_io.read_meta(source.path).get("pretrained_cfg") or source.pretrained_cfg
    elif source.kind == "run":
        from converters.runs import load_run_into

        cfg = load_run_into(model, source.path, init=init, progress=progress)
    elif source.kind == "npz":
        npz.load_npz(model, source.path, init=init)
        cfg = source.pretrained_cfg
    else:
        sd = read_state_dict(source)
        load_state_dict_into(
            model, sd, pretrained_cfg=source.pretrained_cfg, init=init, what=source.origin, progress=progress
        )
        cfg = source.pretrained_cfg
    inner.pretrained_cfg = {**dict(cfg), "source": source.origin}
    return model
