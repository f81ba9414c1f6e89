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

How they are adapted (:func:`load_state_dict_into`), mirroring timm's ``load_pretrained``: the state_dict's
naming (timm / transformers) is detected from its keys, the family's filter (``converters.resample``) resamples
position embeddings and patch kernels for another ``img_size`` / ``patch_size``, and a classifier whose shape
differs from the model's (another ``num_classes``, or none) is dropped and the model keeps a freshly
initialised one. Everything else must fit exactly (``converters.from_torch``'s strict check).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jax
from flax import nnx

from converters import from_torch, other_classifier
from converters.engine import ConversionError, expected_torch_shapes, plan, weights
from converters.io import CheckpointError, load_state_dict, shapes_of
from converters.resample import Resize, Target, apply_filter
from converters.tables import sources_for, tables_for

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


def _unwrap(model: nnx.Module) -> tuple[nnx.Module, str]:
    inner = getattr(model, "model", None)
    if isinstance(inner, nnx.Module) and hasattr(inner, "family"):
        return inner, "model."
    if not hasattr(model, "family"):
        raise ConversionError("load_pretrained works on models made by vitjax.create_model")
    return model, ""


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

    inner, _ = _unwrap(model)
    name, family = inner.model_name, inner.family
    default_cfg = dict(getattr(inner, "pretrained_cfg", None) or get_pretrained_cfg(name, tag))
    files = HF_FILES if family == "hf_vit" else TIMM_FILES
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
        path = download(repo, HF_FILES if family == "hf_vit" else (*TIMM_FILES, "flax_model.msgpack"))
        return Source(_kind_of_file(path), path, default_cfg, f"hub {repo}/{path.name}")
    raise CheckpointError(
        f"{spec}: no such file or directory; not a tag of {name} (its tags: {pretrained_tags(name)}) "
        "and not a hub repo id (org/name)"
    )


class StateDictView(MutableMapping[str, Any]):
    """A state_dict with edits (renamed, replaced or dropped keys) over a lazy base such as
    :class:`~converters.io.SafetensorsDict`: base tensors are read only when accessed, so a checkpoint is
    streamed tensor by tensor into the model."""

    def __init__(self, base: Mapping[str, Any]):
        self._base = base
        self._keys: dict[str, str | None] = {k: k for k in base}  # our key -> base key (None: overridden)
        self._over: dict[str, Any] = {}

    def rename(self, fn: Callable[[str], str]) -> StateDictView:
        new = {}
        for k, src in self._keys.items():
            nk = fn(k)
            if nk in new:
                raise ConversionError(f"two checkpoint keys map to {nk}")
            new[nk] = src
            if src is None:
                self._over[nk] = self._over.pop(k)
        self._keys = new
        return self

    def __getitem__(self, key: str) -> Any:
        src = self._keys[key]
        return self._over[key] if src is None else self._base[src]

    def __setitem__(self, key: str, value: Any) -> None:
        self._keys[key] = None
        self._over[key] = value

    def __delitem__(self, key: str) -> None:
        del self._keys[key]
        self._over.pop(key, None)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shapes(self) -> dict[str, tuple[int, ...]]:
        base = shapes_of(self._base)
        return {k: tuple(self._over[k].shape) if src is None else base[src] for k, src in self._keys.items()}


# -- adapting a torch-named state_dict to the model --------------------------------------------------------------
def _detect_naming(inner: nnx.Module, keys) -> str:
    sources = sources_for(inner.family)
    if not sources:
        raise ConversionError(f"no converter tables for the {inner.family} family")
    if len(sources) == 1:
        return sources[0]
    keys = set(keys)
    return max(sources, key=lambda s: len(keys & set(expected_torch_shapes(inner, tables_for(inner.family, s)[0]))))


def _table_for(inner: nnx.Module, naming: str, keys) -> Any:
    tables = tables_for(inner.family, naming)
    if len(tables) == 1:
        return tables[0]
    keys = set(keys)
    return max(tables, key=lambda t: len(keys & set(expected_torch_shapes(inner, t))))


def _classifier_prefixes(cfg: Mapping[str, Any], naming: str) -> tuple[str, ...]:
    c = cfg.get("classifier") or ("classifier" if naming == "hf" else "head")
    return tuple(f"{x}." for x in ((c,) if isinstance(c, str) else c))


def fresh_weights(init: Callable[[], nnx.Module], paths: list[str]) -> dict[str, jax.Array]:
    """The initial values of some weights of a model, computed without materialising the others (the model is
    built inside ``jax.jit``; XLA drops every initialiser whose result is not returned)."""

    def subset():
        inner, _ = _unwrap(init())
        w = weights(inner)
        return {p: w[p].get_value() for p in paths}

    return jax.jit(subset)()


def load_state_dict_into(
    model: nnx.Module,
    sd: Mapping[str, Any],
    *,
    pretrained_cfg: Mapping[str, Any] | None = None,
    init: Callable[[], nnx.Module] | None = None,
    resize: Resize | None = None,
    naming: str | None = None,
    what: str = "checkpoint",
    progress: bool = False,
) -> nnx.Module:
    """Fill ``model`` from a timm / transformers state_dict made for this architecture at any size.

    ``pretrained_cfg`` describes the checkpoint (its ``input_size`` locates the source position grid, its
    ``classifier`` names the head). ``init`` rebuilds the model concretely, for weights that are not taken
    from the checkpoint (default: the model's class on its config, seed 0). ``resize`` overrides the family's
    resampling (timm: bicubic with antialias)."""
    inner, prefix = _unwrap(model)
    cfg = dict(pretrained_cfg or getattr(inner, "pretrained_cfg", {}) or {})
    sd = StateDictView(sd)
    if prefix:  # timm's features_only checkpoints carry `model.`
        sd.rename(lambda k: k.removeprefix("model."))
    naming = naming or _detect_naming(inner, sd.keys())
    if naming == "hf":  # ViTForImageClassification: `vit.*` (+ `classifier.*`) around ViTModel's keys
        sd.rename(lambda k: k.removeprefix("vit."))
    table = _table_for(inner, naming, sd.keys())
    steps = plan(inner, table)
    want = {k: s for st in steps for k, s in zip(st.torch_keys, st.torch_shapes, strict=True)}
    src_size = tuple(cfg["input_size"][-2:]) if cfg.get("input_size") else None
    sd = apply_filter(inner.family, naming, sd, Target(getattr(inner, "cfg", None), src_size, want), resize)

    keep: list[str] = []
    if not prefix:  # a features_only model takes what it needs and has no classifier
        heads = _classifier_prefixes(cfg, naming)
        have = shapes_of(sd)
        ck = {k: tuple(s) for k, s in have.items() if k.startswith(heads)}
        mk = {k: tuple(s) for k, s in want.items() if k.startswith(heads)}
        if other_classifier(ck, mk, what):  # another num_classes (or none): drop the checkpoint's head
            for k in ck:
                del sd[k]
            keep = [st.jax_key for st in steps if set(st.torch_keys) & set(mk)]
        if keep:
            if init is None:
                cls, mcfg = type(inner), inner.cfg

                def init():
                    m = cls(mcfg, rngs=nnx.Rngs(params=0, dropout=1))
                    m.model_name, m.family = inner.model_name, inner.family
                    return m

            targets = weights(inner)
            for p, v in fresh_weights(init, keep).items():
                targets[p].set_value(v)
    try:
        from_torch(model, sd, source=naming, keep=keep, progress=progress)
    except ConversionError as e:
        msg = f"{what}: {e}"
        if naming == "hf" and "missing    pooler.dense" in msg:
            msg += (
                "\n  (a checkpoint without the pooler, such as ViTForImageClassification's: build the model with "
                "representation_size=None and num_classes=<its classes>)"
            )
        raise ConversionError(msg) from None
    return model


def read_state_dict(source: Source) -> Mapping[str, Any]:
    """A torch-layout state_dict from a torch / Flax-msgpack file (lazy for safetensors)."""
    if source.kind == "torch" and source.path.suffix == ".safetensors":
        from converters.stream import SafetensorsReader

        return SafetensorsReader(source.path)
    if source.kind == "torch":
        return load_state_dict(source.path)
    if source.kind == "hf_flax":
        from converters.hf_flax import load_msgpack

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
    inner, _ = _unwrap(model)
    source = resolve(model, pretrained, tag)
    if source.kind == "vitjax":
        from converters import orbax_io

        orbax_io.restore(model, source.path, init=init, progress=progress)
        cfg = orbax_io.read_meta(source.path).get("pretrained_cfg") or source.pretrained_cfg
    elif source.kind == "run":
        from converters.runs import load_run_into

        cfg = load_run_into(model, source.path, init=init, progress=progress)
    elif source.kind == "npz":
        from converters import npz

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
