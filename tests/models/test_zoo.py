"""Every name of timm's vision_transformer.py and deit.py is a row of the ViT config, and each row is the one timm
builds.

Default suite: the registered name sets equal timm's (less the documented exceptions), and every row equals the
arguments timm's entrypoint passes to ``VisionTransformer`` (read by stopping timm's constructor: no weights are
made), translated to vitjax's field names. Slow: the parameter names and shapes of every name after conversion
equal timm's model's (built on the meta device).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import timm
import torch
from timm.layers import mlp as timm_mlp
from timm.models import vision_transformer as timm_vit

import vitjax
from converters.engine import expected_torch_shapes
from converters.tables import tables_for
from vitjax.models.vit import ViTConfig

FAMILIES = {"vision_transformer": "vision_transformer", "deit": "deit"}  # vitjax family -> timm module
# timm names not registered, and why: the four test_vit* models (optional in the issue; timm's own smoke
# tests), and the rows waiting for a model switch another branch of issue 26 adds (h26a: MAP head, QuickGELU,
# SwiGLU, RmsNorm, the patch-embedding norm, scale norms, parallel-things and qk-norm parallel blocks, the DeiT
# distillation token). Nothing else may be missing.
_SIGLIP_MAP = [f"vit_base_patch16_siglip_{s}" for s in (224, 256, 384, 512)] + [
    "vit_base_patch32_siglip_256",
    *(f"vit_large_patch16_siglip_{s}" for s in (256, 384, 512)),
    *(f"vit_so400m_patch14_siglip_{s}" for s in (224, 378, 384)),
    *(f"vit_so400m_patch16_siglip_{s}" for s in (256, 384, 512)),
    "vit_giantopt_patch16_siglip_256",
    "vit_giantopt_patch16_siglip_384",
    "vit_so150m_patch16_reg4_map_256",
]
_QUICK_GELU = [
    "vit_base_patch32_clip_quickgelu_224",
    "vit_base_patch16_clip_quickgelu_224",
    "vit_large_patch14_clip_quickgelu_224",
    "vit_large_patch14_clip_quickgelu_336",
    "vit_huge_patch14_clip_quickgelu_224",
    "vit_huge_patch14_clip_quickgelu_378",
    "vit_gigantic_patch14_clip_quickgelu_224",
]
_AIMV2 = [f"aimv2_{w}_patch14_{s}" for w in ("large", "huge", "1b", "3b") for s in (224, 336, 448)]
_OTHER = [
    *(f"beit3_{n}" for n in ("base_patch16_224", "large_patch16_224", "giant_patch14_224", "giant_patch14_336")),
    *(f"vit_{n}_xp_224" for n in ("base_patch16", "large_patch14", "huge_patch14")),
    "vit_small_patch16_18x2_224",
    "vit_base_patch16_18x2_224",
    "vit_giant_patch14_dinov2",
    "vit_giant_patch14_reg4_dinov2",
    "vit_giant_patch14_reg1_tipsv2",
]
_DISTILLED = [
    f"deit_{n}_distilled_patch16_{s}" for n, s in (("tiny", 224), ("small", 224), ("base", 224), ("base", 384))
]
AWAITING = set(_SIGLIP_MAP + _QUICK_GELU + _AIMV2 + _OTHER + _DISTILLED)
EXCEPTIONS = {"test_vit", "test_vit2", "test_vit3", "test_vit4"} | AWAITING


def test_registered_names_are_timms():
    for family, module in FAMILIES.items():
        want = set(timm.list_models(module=module)) - EXCEPTIONS
        got = set(vitjax.list_models(family=family))
        assert got == want, f"{family}: missing {sorted(want - got)}, not in timm {sorted(got - want)}"


class _Stop(Exception):
    pass


def timm_arguments(name: str) -> tuple[str, dict[str, Any]]:
    """(timm's model class, the keyword arguments its builder passes to the constructor) for a timm name."""

    def stop(self, *args, **kw):
        raise _Stop(type(self).__name__, args, kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timm_vit.VisionTransformer, "__init__", stop)
        try:
            timm.create_model(name)
        except _Stop as e:
            cls, args, kw = e.args
            assert not args, args
            return cls, kw
    raise AssertionError(f"timm built {name} without calling VisionTransformer.__init__")


_BLOCKS = {
    "ResPostBlock": "res_post",
    "ParallelScalingBlock": "parallel",
    "DiffParallelScalingBlock": "diff_parallel",
    "ParallelThingsBlock": "parallel_things",
}
_IGNORED = {"device", "dtype", "in_chans", "weight_init"}  # in_chans: always 3 here; weight_init: no weights made


def _layer_name(v: Any) -> str:
    return v if isinstance(v, str) else v.__name__


def _norm(v: Any) -> tuple[str, float]:
    """(layer name, eps) of a timm norm_layer argument: a name, a class or a partial with eps (timm's 1e-6
    otherwise)."""
    if isinstance(v, functools.partial):
        return _layer_name(v.func).lower(), v.keywords.get("eps", 1e-6)
    return _layer_name(v).lower(), 1e-6


def to_vitjax(cls: str, kw: dict[str, Any]) -> dict[str, Any]:
    """timm's constructor arguments as ViTConfig fields (the contract's names; timm's where they are the same)."""
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if k in _IGNORED:
            continue
        if k == "img_size":
            out[k] = v if isinstance(v, int) else (v[0] if v[0] == v[1] else tuple(v))
        elif k == "act_layer":
            out["act"] = {"SiLU": "silu", "GELU": "gelu"}.get(_layer_name(v), _layer_name(v))
        elif k == "norm_layer":
            out["norm_layer"], out["norm_eps"] = _norm(v)
        elif k == "embed_norm_layer":
            # vitjax's embed_norm is a norm of the blocks' kind: timm's rows must agree
            assert _norm(v) == _norm(kw.get("norm_layer", "layernorm")), (v, kw.get("norm_layer"))
            out["embed_norm"] = True
        elif k == "mlp_layer":
            if isinstance(v, functools.partial) and v.func is timm_mlp.GluMlp and v.keywords.get("gate_last") is False:
                out["mlp_layer"] = "swiglu_packed"
            elif v is timm_mlp.SwiGLU:
                out["mlp_layer"] = "swiglu"
            else:
                raise AssertionError(f"unknown mlp_layer {v}")
        elif k == "block_fn":
            out["block"] = _BLOCKS[_layer_name(v)]
        else:
            out[k] = v
    if out.get("norm_layer") == "layernorm":  # the default
        del out["norm_layer"]
    if cls == "VisionTransformerDistilled":
        out["dist_token"] = True
    return out


def _names() -> list[str]:
    return [n for fam in FAMILIES for n in vitjax.list_models(family=fam)]


def test_rows_are_timms_arguments():
    """Each registered row builds the config timm's entrypoint asks for: every field, compared exactly (floats
    such as mlp_ratio 48 / 11 included)."""
    wrong = []
    for name in _names():
        cls, kw = timm_arguments(name)
        want = ViTConfig(**to_vitjax(cls, kw))
        got = vitjax.get_spec(name).config()
        if got != want:
            diff = {f: (getattr(got, f), getattr(want, f)) for f in want.__dataclass_fields__}
            wrong.append((name, {f: d for f, d in diff.items() if d[0] != d[1]}))
    assert not wrong, f"rows that differ from timm (ours, timm's): {wrong}"


def _shapes_of_timm(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        ref = timm.create_model(name)
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_name_has_timms_parameters(family):
    """Abstract vitjax model (no initialisation) -> the torch names and shapes the converter reads and writes,
    equal to timm's state_dict on the meta device, for every registered name of the family."""
    wrong = []
    for name in vitjax.list_models(family=family):
        model = vitjax.create_model(name, abstract=True)
        ours = expected_torch_shapes(model, tables_for(model, "timm")[0])
        theirs = _shapes_of_timm(name)
        if ours != theirs:
            keys = sorted(set(ours) ^ set(theirs))[:6]
            shapes = [(k, ours[k], theirs[k]) for k in set(ours) & set(theirs) if ours[k] != theirs[k]][:6]
            wrong.append((name, keys, shapes))
    assert not wrong, wrong
