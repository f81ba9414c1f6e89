"""transformers' former Flax checkpoints (``flax_model.msgpack``) as torch-named state_dicts.

``FlaxViTModel.save_pretrained`` wrote the module's parameter tree with ``flax.serialization``: nested dicts
such as ``encoder/layer/0/attention/attention/query/kernel``, with ``vit/`` in front for
``FlaxViTForImageClassification``. Its module names are transformers-4's torch names, only the leaves and
layouts are Flax's: ``kernel`` ``[in, out]`` (Dense) or ``[kh, kw, in, out]`` (Conv), LayerNorm ``scale`` and
``nn.Embed``'s ``embedding``. So a msgpack file becomes the state_dict the torch model would have saved, and
the ordinary HF table loads it. The same holds for ``FlaxDinov2Model`` (``encoder/layer/{i}/...``) and
``FlaxCLIPVisionModel`` / ``FlaxCLIPModel`` (``vision_model/...``, CLIP's text tower beside it), whose files
the transformers-4 tables of :mod:`converters.tables.hf_towers` read. (transformers had no Flax SigLIP.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from converters.io import CheckpointError


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = np.asarray(v)
    return out


def flax_to_torch_layout(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A nested Flax parameter tree -> ``{torch key: array in torch layout}``."""
    sd = {}
    for key, value in _flatten(params).items():
        module, _, leaf = key.rpartition(".")
        if leaf == "kernel":
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)  # kh, kw, in, out -> out, in, kh, kw
            elif value.ndim == 2:
                value = value.T  # in, out -> out, in
            leaf = "weight"
        elif leaf in ("scale", "embedding"):  # LayerNorm scale, nn.Embed table (same layout as torch's)
            leaf = "weight"
        sd[f"{module}.{leaf}" if module else leaf] = np.ascontiguousarray(value)
    return sd


def load_msgpack(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``flax_model.msgpack`` file as a torch-layout state_dict (HF transformers-4 names)."""
    from flax import serialization

    path = Path(path)
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise CheckpointError(f"{path}: not a Flax msgpack checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"{path}: not a Flax msgpack checkpoint (found {type(tree).__name__})")
    if set(tree) == {"params"} and isinstance(tree["params"], Mapping):  # a variables dict, not its params
        tree = tree["params"]
    try:
        flat = _flatten(tree)
    except (RecursionError, ValueError, TypeError) as e:  # nested too deeply, ragged or odd leaves
        raise CheckpointError(f"{path}: not a Flax msgpack checkpoint ({type(e).__name__}: {e})") from None
    for key, value in flat.items():
        if value.dtype.kind not in "biuf" or value.dtype.hasobject:
            raise CheckpointError(f"{path}: {key} is not an array of numbers (found {value.dtype})")
    return flax_to_torch_layout(flat)
