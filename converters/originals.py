"""The original checkpoint formats of the ViT towers timm converts, read as timm-named state_dicts.

timm's ``vision_transformer.checkpoint_filter_fn`` recognises a few layouts that are not its own and rewrites
them to its names before loading; :func:`to_timm` does the same (by a table of names, so that a key can be
named in the original spelling when it is missing or mis-shaped), and :func:`converters.adapt.load_state_dict_into`
calls it before the timm table fills the model. The formats, the key that identifies each, and what is left out:

========================  ==========================================  ==============================================
format                    identified by                               left out
========================  ==========================================  ==============================================
OpenAI CLIP / open_clip   ``visual.class_embedding`` (or under        everything outside ``visual.``: the text tower,
(``visual.conv1``, ...)   ``module.``, a DDP-trained open_clip file)  ``logit_scale`` (``logit_bias``)
open_clip, timm trunk     ``visual.trunk.pos_embed`` or               everything outside ``visual.``
                          ``visual.trunk.blocks.0.norm1.weight``
Meta DINOv2 ``.pth``      ``mask_token``                              ``mask_token`` (masked-image training only)
TIPSv2 (DINOv2 inside)    ``vision_encoder.mask_token``               everything outside ``vision_encoder.``
AIMv2                     ``preprocessor.patchifier.proj.weight``     nothing
========================  ==========================================  ==============================================

Value changes, as timm makes them: CLIP's ``class_embedding`` ``(D,)`` becomes ``cls_token`` ``(1, 1, D)``, its
``positional_embedding`` ``(N, D)`` gains the batch axis, and its projection ``proj`` ``(D, E)`` becomes the
classifier ``head`` (transposed, bias zero; open_clip's ``visual.head.proj`` likewise, its bias used when the
file has one, where timm sets zeros). DINOv2 with registers stores the class token's position in
``pos_embed[:, 0]``; timm's model has no position for prefix tokens (``no_embed_class``), so that row is added
to ``cls_token`` and dropped from ``pos_embed``. Keys inside a format's scope that its table does not know are
kept under their own names, so the strict check reports them as unexpected.

Export goes to timm's names (:func:`converters.to_torch`), which timm reads directly; writing these original
layouts back is not offered (big_vision's ``.npz`` is, :mod:`converters.npz`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.engine import ConversionError
from converters.io import to_numpy

_log = logging.getLogger(__name__)

FAMILIES = ("vision_transformer",)  # the vitjax families whose timm checkpoint filter reads these formats


def _compile(template: str) -> re.Pattern[str]:
    """A name template as a regex: ``{i}`` is one run of digits; a template ending in ``.`` (or empty) is a
    module prefix and matches the start of a key, any other template a whole key."""
    parts, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        parts += [re.escape(template[pos : m.start()]), f"(?P<{m.group(1)}>\\d+)"]
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    prefix = template == "" or template.endswith(".")
    return re.compile("^" + "".join(parts) + ("" if prefix else "$"))


def _rename(key: str, pairs: list[tuple[re.Pattern[str], str]]) -> str | None:
    """``key`` through the longest matching template (None if none matches)."""
    hits = [(m, dst) for pat, dst in pairs if (m := pat.match(key))]
    if not hits:
        return None
    m, dst = max(hits, key=lambda h: h[0].end())
    return dst.format(**m.groupdict()) + key[m.end() :]


@dataclass(frozen=True)
class Format:
    """One original layout: the key that identifies it, its scope (keys outside it belong to other towers and
    are left out; ``""``: none), the ``(original, timm)`` name templates relative to the scope (``""`` -> ``""``
    keeps every other key under the scope as it is), keys dropped by name, and the value changes made after
    renaming (on the timm-named state_dict)."""

    name: str
    markers: tuple[str, ...]
    scope: str
    names: tuple[tuple[str, str], ...]
    drop: tuple[str, ...] = ()
    fix: Callable[[MutableMapping[str, Any], str], None] | None = None

    def __post_init__(self):
        object.__setattr__(self, "_fwd", [(_compile(o), t) for o, t in self.names])
        object.__setattr__(self, "_inv", [(_compile(t), o) for o, t in self.names])

    def timm_key(self, key: str) -> str | None:
        """The timm name of an original key (None: outside the scope, or dropped)."""
        if not key.startswith(self.scope) or key in self.drop:
            return None
        return _rename(key[len(self.scope) :], self._fwd) or key

    def original_key(self, timm_key: str) -> str:
        """The original name of a timm key, for messages (the timm name where the format has no such key)."""
        rel = _rename(timm_key, self._inv)
        return timm_key if rel is None else self.scope + rel


def _clip_values(sd: MutableMapping[str, Any], what: str) -> None:
    if "cls_token" in sd:
        v = to_numpy(sd["cls_token"])
        sd["cls_token"] = v.reshape(1, 1, -1) if v.ndim == 1 else v
    if "pos_embed" in sd:
        v = to_numpy(sd["pos_embed"])
        sd["pos_embed"] = v[None] if v.ndim == 2 else v
    if "head.weight" in sd:
        w = to_numpy(sd["head.weight"])
        if w.ndim != 2:
            raise ConversionError(f"{what}: visual.proj has shape {w.shape}, not (width, embedding size)")
        sd["head.weight"] = np.ascontiguousarray(w.T)  # E, D
        sd["head.bias"] = np.zeros(w.shape[1], w.dtype)


def _open_clip_trunk_values(sd: MutableMapping[str, Any], what: str) -> None:
    if "head.weight" in sd and "head.bias" not in sd:  # a projection without bias: the classifier's is zero
        w = to_numpy(sd["head.weight"])
        sd["head.bias"] = np.zeros(w.shape[0], w.dtype)


def _dinov2_values(sd: MutableMapping[str, Any], what: str) -> None:
    if "reg_token" not in sd:
        return
    if "cls_token" not in sd or "pos_embed" not in sd:
        raise ConversionError(f"{what}: a DINOv2 checkpoint with register_tokens needs cls_token and pos_embed")
    cls, pos = to_numpy(sd["cls_token"]), to_numpy(sd["pos_embed"])
    if cls.ndim != 3 or pos.ndim != 3 or cls.shape[::2] != (1, pos.shape[2]) or pos.shape[:1] != (1,):
        raise ConversionError(
            f"{what}: cls_token {cls.shape} and pos_embed {pos.shape} do not fit together (want (1, 1, D) and "
            "(1, 1 + patches, D))"
        )
    sd["cls_token"] = cls + pos[:, :1]  # 1, 1, D: the class token's position, as timm's no_embed_class wants
    sd["pos_embed"] = np.ascontiguousarray(pos[:, 1:])  # 1, patches, D


_CLIP_NAMES = (
    ("conv1.", "patch_embed.proj."),
    ("class_embedding", "cls_token"),
    ("positional_embedding", "pos_embed"),
    ("ln_pre.", "norm_pre."),
    ("ln_post.", "norm."),
    ("transformer.resblocks.{i}.ln_1.", "blocks.{i}.norm1."),
    ("transformer.resblocks.{i}.ln_2.", "blocks.{i}.norm2."),
    ("transformer.resblocks.{i}.attn.in_proj_weight", "blocks.{i}.attn.qkv.weight"),
    ("transformer.resblocks.{i}.attn.in_proj_bias", "blocks.{i}.attn.qkv.bias"),
    ("transformer.resblocks.{i}.attn.out_proj.", "blocks.{i}.attn.proj."),
    ("transformer.resblocks.{i}.mlp.c_fc.", "blocks.{i}.mlp.fc1."),
    ("transformer.resblocks.{i}.mlp.c_proj.", "blocks.{i}.mlp.fc2."),
    ("proj", "head.weight"),
)
_TRUNK_NAMES = (("trunk.", ""), ("head.proj.weight", "head.weight"), ("head.proj.bias", "head.bias"))
_DINOV2_NAMES = (
    ("", ""),
    ("register_tokens", "reg_token"),
    ("blocks.{i}.mlp.w12.", "blocks.{i}.mlp.fc1."),  # the giant's packed SwiGLU
    ("blocks.{i}.mlp.w3.", "blocks.{i}.mlp.fc2."),
)
_AIMV2_NAMES = (
    ("", ""),
    ("preprocessor.patchifier.", "patch_embed."),
    ("preprocessor.pos_embed", "pos_embed"),
    ("trunk.blocks.{i}.", "blocks.{i}."),
    ("trunk.blocks.{i}.norm_1.", "blocks.{i}.norm1."),
    ("trunk.blocks.{i}.norm_2.", "blocks.{i}.norm2."),
    ("trunk.blocks.{i}.mlp.fc1.", "blocks.{i}.mlp.fc1_g."),  # SwiGLU: fc1 gates, fc3 is the value branch
    ("trunk.blocks.{i}.mlp.fc3.", "blocks.{i}.mlp.fc1_x."),
    ("trunk.post_trunk_norm.", "norm."),
)

# in the order timm's checkpoint_filter_fn tests them
FORMATS = (
    Format("OpenAI CLIP", ("visual.class_embedding",), "visual.", _CLIP_NAMES, fix=_clip_values),
    Format("OpenAI CLIP (DDP)", ("module.visual.class_embedding",), "module.visual.", _CLIP_NAMES, fix=_clip_values),
    Format("Meta DINOv2", ("mask_token",), "", _DINOV2_NAMES, drop=("mask_token",), fix=_dinov2_values),
    Format(
        "TIPSv2",
        ("vision_encoder.mask_token",),
        "vision_encoder.",
        _DINOV2_NAMES,
        drop=("vision_encoder.mask_token",),
        fix=_dinov2_values,
    ),
    Format(
        "open_clip (timm trunk)",
        ("visual.trunk.pos_embed", "visual.trunk.blocks.0.norm1.weight"),
        "visual.",
        _TRUNK_NAMES,
        fix=_open_clip_trunk_values,
    ),
    Format(
        "open_clip (timm trunk, DDP)",
        ("module.visual.trunk.pos_embed",),
        "module.visual.",
        _TRUNK_NAMES,
        fix=_open_clip_trunk_values,
    ),
    Format("AIMv2", ("preprocessor.patchifier.proj.weight",), "", _AIMV2_NAMES),
)


def detect(keys) -> Format | None:
    """The original format of a state_dict with these keys (None: none of them, e.g. timm's own names)."""
    keys = set(keys)
    return next((f for f in FORMATS if keys.intersection(f.markers)), None)


def to_timm(sd, family: str, what: str = "checkpoint") -> Format | None:
    """Rename ``sd`` (a :class:`converters.adapt.StateDictView`, edited in place, tensors read only where a
    value changes) from its original format to timm's names; returns the format, or None when ``sd`` is in none
    of them or ``family`` is not one whose timm filter reads them."""
    if family not in FAMILIES:
        return None
    fmt = detect(sd.keys())
    if fmt is None:
        return None
    left_out = [k for k in sd if fmt.timm_key(k) is None]
    for k in left_out:
        del sd[k]
    try:
        sd.rename(lambda k: fmt.timm_key(k) or k)
    except ConversionError as e:
        raise ConversionError(f"{what} ({fmt.name} format): {e}") from None
    if fmt.fix is not None:
        fmt.fix(sd, what)
    _log.info(f"{what}: a {fmt.name} state_dict, read with timm's names; left out: {len(left_out)} keys")
    return fmt


_PROBLEM = re.compile(r"^(  (?:missing|unexpected|shape) +)(\S+?)(:?)( .*)$")


def explain(message: str, fmt: Format) -> str:
    """A strict-check message about the renamed state_dict, with each key in its original spelling."""
    lines = []
    for line in message.splitlines():
        m = _PROBLEM.match(line)
        if m and fmt.original_key(m[2]) != m[2]:
            line = f"{m[1]}{fmt.original_key(m[2])}{m[3]}{m[4]} (timm: {m[2]})"
        lines.append(line)
    return "\n".join(lines) + f"\n  (the checkpoint is in the {fmt.name} format, read with timm's names)"
