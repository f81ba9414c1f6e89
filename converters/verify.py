"""Numerical parity of a vitjax model against its reference library (timm / transformers), as a table.

Used by ``python -m converters verify`` / ``demo`` and by the parity tests: the reference model is built by
timm or transformers themselves, every float tensor of its state_dict is randomised (so that no mapping bug
hides behind zeros, ones or repeated values), the weights are converted with :func:`converters.from_torch`,
and outputs are compared. Needs torch and the reference library (the ``test`` extra).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import converters
import vitjax

SEED_MODELS = (
    "vit_relpos_base_patch16_clsgap_224",
    "vit_medium_patch16_reg4_gap_256",
    "google/vit-large-patch16-224-in21k",
    "halonet50ts",
    "maxxvitv2_rmlp_base_rw_224",
)
# Error = max|jax - ref| / max(1, max|ref|)
TOLERANCE = 1e-4


def source_of(name: str) -> str:
    return "hf" if vitjax.get_spec(name).family.startswith("hf_") else "timm"


def randomize(module, seed: int = 0):
    """Give every float tensor of a torch module's state_dict a random value (parameters and persistent
    buffers such as BatchNorm running statistics; derived non-persistent buffers keep theirs).

    Scales keep activations sane through deep nets (otherwise softmaxes saturate and fp32 noise dominates):
    matrices ~ N(0, 1/fan_in), running variances ~ U(0.5, 1.5), one-initialised vectors (norm weights) ~
    N(1, 0.2), everything else (biases, gammas, tokens, position tables, running means) ~ N(0, 0.2).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if key.endswith("running_var"):
                new = torch.rand(t.shape, generator=gen) + 0.5
            elif t.ndim >= 2 and key.endswith("weight"):
                new = torch.randn(t.shape, generator=gen) * t[0].numel() ** -0.5
            elif t.ndim <= 1 and t.numel() > 0 and bool((t == 1).all()):
                new = 1.0 + 0.2 * torch.randn(t.shape, generator=gen)
            else:
                new = 0.2 * torch.randn(t.shape, generator=gen)
            t.copy_(new.to(t.dtype))
    return module


def hf_config(name: str, **overrides: Any):
    """The transformers ``ViTConfig`` of a registered HF id (hub configs cannot be fetched offline; these are
    the published in21k architectures, the same numbers as vitjax's table)."""
    from transformers import ViTConfig

    cfg = vitjax.get_spec(name).config(**overrides)
    return ViTConfig(
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.mlp_hidden,
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.in_chans,
        layer_norm_eps=cfg.norm_eps,
        qkv_bias=cfg.qkv_bias,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


_HF_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def hf_tower(name: str, **overrides: Any):
    """transformers' DINOv2 / CLIP / SigLIP vision model for a registered tower id, its config taken from
    vitjax's row (``mlp_ratio`` / ``swiglu`` of a DINOv2 row are transformers' own fields)."""
    import transformers

    spec = vitjax.get_spec(name)
    cfg, args = spec.config(**overrides), {**spec.args, **overrides}
    common = dict(
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.in_chans,
        layer_norm_eps=cfg.norm_eps,
    )
    if spec.family == "hf_dinov2":
        swiglu = bool(args.get("swiglu"))  # its SwiGLU is SiLU whatever hidden_act says; the hub's configs say gelu
        kw = dict(common, mlp_ratio=args.get("mlp_ratio", 4), use_swiglu_ffn=swiglu, qkv_bias=cfg.qkv_bias)
        kw |= dict(layerscale_value=cfg.init_values, hidden_act="gelu" if swiglu else _HF_ACTS[cfg.act])
        if cfg.reg_tokens:
            reg = transformers.Dinov2WithRegistersConfig(**kw, num_register_tokens=cfg.reg_tokens)
            return transformers.Dinov2WithRegistersModel(reg)
        return transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    kw = dict(common, intermediate_size=cfg.mlp_hidden, hidden_act=_HF_ACTS[cfg.act])
    if spec.family == "hf_clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**kw))
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**kw))


def reference_model(name: str, **overrides: Any):
    """The reference torch model for a registered name, built by timm or transformers, in eval mode."""
    if vitjax.get_spec(name).family != "hf_vit" and source_of(name) == "hf":
        return hf_tower(name, **overrides).eval()
    if source_of(name) == "hf":
        from transformers import ViTModel

        return ViTModel(hf_config(name, **overrides), add_pooling_layer=True).eval()
    import timm

    return timm.create_model(name, pretrained=False, **overrides).eval()


def input_size(name: str, **overrides: Any) -> tuple[int, int]:
    cfg = vitjax.get_spec(name).config(**overrides)
    size = cfg.img_size
    return (size, size) if isinstance(size, int) else tuple(size)


def rel_err(got, ref) -> float:
    ref = np.asarray(ref, dtype=np.float32)
    got = np.asarray(got, dtype=np.float32)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape} != reference {ref.shape}")
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


@dataclass
class Report:
    name: str
    params: int
    errors: dict[str, float] = field(default_factory=dict)
    round_trip: bool | None = False  # None: the checkpoint is not a state_dict in the reference's naming
    seconds: float = 0.0

    @property
    def worst(self) -> float:
        return max(self.errors.values())

    @property
    def ok(self) -> bool:
        return self.round_trip is not False and self.worst <= TOLERANCE


def reference_outputs(ref, name: str, x) -> dict[str, np.ndarray]:
    """features / logits (or HF's pooler) / pre-logits of the reference on an NCHW batch."""
    import torch

    with torch.no_grad():
        if source_of(name) == "hf":
            out = ref(pixel_values=x)
            return {"features": out.last_hidden_state.numpy(), "pooled": out.pooler_output.numpy()}
        feats = ref.forward_features(x)
        return {
            "features": _nhwc(feats).numpy(),
            "logits": ref.forward_head(feats).numpy(),
            "pre_logits": ref.forward_head(feats, pre_logits=True).numpy(),
        }


def _nhwc(t):
    return t.permute(0, 2, 3, 1) if t.ndim == 4 else t


def jax_outputs(model, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    feats = model.forward_features(x)
    if source_of(name) == "hf":
        return {"features": feats, "pooled": model.forward_head(feats)}
    return {
        "features": feats,
        "logits": model.forward_head(feats),
        "pre_logits": model.forward_head(feats, pre_logits=True),
    }


def _file_round_trip(src: str | Path, back: dict[str, np.ndarray]) -> bool | None:
    """Whether ``back`` equals the checkpoint file bit for bit (None if the file is not a state_dict in the
    same naming: an .npz, a msgpack, transformers-4 names, a vitjax directory, a hub id)."""
    path = Path(src)
    if not path.is_file() or path.suffix not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        return None
    sd = converters.load_state_dict(path)
    if set(sd) != set(back):
        return None
    return all(np.array_equal(back[k], np.asarray(converters.io.to_numpy(sd[k]))) for k in sd)


def verify(name: str, *, src: str | Path | None = None, batch: int = 2, seed: int = 0) -> Report:
    """Compare a vitjax model with its reference on one random batch.

    Without ``src`` the reference's weights are randomised and converted. With ``src`` (anything
    ``create_model(pretrained=...)`` takes: a file, a vitjax checkpoint directory, a hub id or ``name.tag``)
    vitjax loads it and the reference loads vitjax's export of it (``strict=True``), so both run the same
    weights; the round trip column then says whether that export equals the file itself."""
    import torch

    start = time.perf_counter()
    source = source_of(name)
    ref = reference_model(name)
    if src is not None:
        model = vitjax.create_model(name, pretrained=src)
        back = converters.to_torch(model, target=source)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
        exact = _file_round_trip(src, back)
    else:
        randomize(ref, seed)
        sd = ref.state_dict()
        model = vitjax.create_model(name, abstract=True)
        converters.from_torch(model, sd, source=source)
        back = converters.to_torch(model, target=source)
        exact = set(back) == set(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
    h, w = input_size(name)
    if vitjax.get_spec(name).family == "hf_dinov2":  # as transformers' DINOv2 preprocessing: 224 px
        h, w = model.pretrained_cfg.get("input_size", (3, h, w))[1:]
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    want = reference_outputs(ref, name, x)
    got = jax_outputs(model, name, x.permute(0, 2, 3, 1).numpy())
    errors = {k: rel_err(got[k], want[k]) for k in want}
    params = sum(p.numel() for p in ref.parameters())
    return Report(name, params, errors, exact, time.perf_counter() - start)


def format_table(reports: list[Report]) -> str:
    head = (
        f"{'model':40s} {'params':>12s} {'features':>10s} {'logits*':>10s} {'pre-logits':>10s} {'round trip':>10s}  ok"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        e = r.errors
        logits = e.get("logits", e.get("pooled"))
        pre = e.get("pre_logits", e.get("pooled"))
        lines.append(
            f"{r.name:40s} {r.params:12,d} {e['features']:10.2e} {logits:10.2e} {pre:10.2e} "
            f"{ {True: 'bit-exact', False: 'DIFFERS', None: 'n/a'}[r.round_trip]:>10s}  {'PASS' if r.ok else 'FAIL'}"
        )
    lines.append(
        f"* logits; for HF ViTModel the pooler output. Error = max|jax - ref| / max(1, max|ref|), "
        f"pass at <= {TOLERANCE:g}"
    )
    return "\n".join(lines)
