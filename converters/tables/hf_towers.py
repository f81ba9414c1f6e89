"""transformers' image towers (``vitjax.models.hf_towers``): DINOv2 (+ registers), CLIP and SigLIP vision models.

DINOv2: transformers 5 names the DINOv2 attention ``attention.q_proj`` ...; checkpoints saved by transformers 4 (the
hub's files) use ``attention.attention.query`` ... and ``attention.output.dense``; both are tables here.
The giant's SwiGLU is vitjax's packed one: ``mlp.fc1`` = ``[gate; up]`` = transformers 4's ``mlp.weights_in``
(transformers 5 splits it into ``gate_proj`` / ``up_proj``). Separate q/k/v projections are fused into timm's
``qkv`` layout (rows ``[q; k; v]``).
"""

from converters.engine import Fused, Rule, Table
from converters.transforms import IDENTITY, LINEAR, Transform, concat_bias, concat_linear


def _dinov2(name: str, v4: bool, swiglu: bool) -> Table:
    layer = "encoder.layer.{i}"
    attn = "attention.attention." if v4 else "attention."
    q, k, v = (f"{layer}.{attn}{p}" for p in (("query", "key", "value") if v4 else ("q_proj", "k_proj", "v_proj")))
    out = f"{layer}.attention.output.dense" if v4 else f"{layer}.attention.o_proj"
    renames = [
        ("cls_token", "embeddings.cls_token"),
        ("reg_token", "embeddings.register_tokens"),
        ("mask_token", "embeddings.mask_token"),
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj", "embeddings.patch_embeddings.projection"),
        ("blocks.{i}", layer),  # norm1, norm2 (and the plain MLP's fc1, fc2) keep their names
        ("blocks.{i}.attn.proj", out),
        ("norm", "layernorm"),
    ]
    rules = [
        Rule("blocks.{i}.attn.qkv.kernel", (f"{q}.weight", f"{k}.weight", f"{v}.weight"), concat_linear(3)),
        Rule("blocks.{i}.attn.qkv.bias", (f"{q}.bias", f"{k}.bias", f"{v}.bias"), concat_bias(3)),
        Rule("blocks.{i}.ls1.gamma", (f"{layer}.layer_scale1.lambda1",), IDENTITY),
        Rule("blocks.{i}.ls2.gamma", (f"{layer}.layer_scale2.lambda1",), IDENTITY),
    ]
    if swiglu and v4:
        renames += [
            ("blocks.{i}.mlp.fc1", f"{layer}.mlp.weights_in"),
            ("blocks.{i}.mlp.fc2", f"{layer}.mlp.weights_out"),
        ]
    elif swiglu:
        gate, up = f"{layer}.mlp.gate_proj", f"{layer}.mlp.up_proj"
        renames += [("blocks.{i}.mlp.fc2", f"{layer}.mlp.down_proj")]
        rules += [
            Rule("blocks.{i}.mlp.fc1.kernel", (f"{gate}.weight", f"{up}.weight"), concat_linear(2)),
            Rule("blocks.{i}.mlp.fc1.bias", (f"{gate}.bias", f"{up}.bias"), concat_bias(2)),
        ]
    return Table(name, renames=renames, rules=rules)


DINOV2 = _dinov2("hf-dinov2", v4=False, swiglu=False)
DINOV2_V4 = _dinov2("hf-dinov2-v4", v4=True, swiglu=False)
DINOV2_SWIGLU = _dinov2("hf-dinov2-swiglu", v4=False, swiglu=True)
DINOV2_SWIGLU_V4 = _dinov2("hf-dinov2-swiglu-v4", v4=True, swiglu=True)


def dinov2_tables(cfg) -> list[Table]:
    """The giant's packed SwiGLU has other torch names than the plain MLP at the same vitjax paths."""
    if cfg.mlp_layer == "swiglu_packed":
        return [DINOV2_SWIGLU, DINOV2_SWIGLU_V4]
    return [DINOV2, DINOV2_V4]


# -- CLIP and SigLIP ----------------------------------------------------------------------------------------------
# nn.Embedding tables and CLIP's class embedding are stored without the batch axes vitjax's tokens have
AS_ROWS = Transform("as_rows", lambda w: w[None], lambda a: a[0])  # (N, C) <-> (1, N, C)
AS_TOKEN = Transform("as_token", lambda w: w.reshape(1, 1, -1), lambda a: a.reshape(-1))  # (C,) <-> (1, 1, C)
# keys of a full CLIPModel / SiglipModel checkpoint (the hub's files) that belong to the text tower
_TEXT_SIDE = (r"text_model\..*", r"(visual|text)_projection\..*", r"logit_(scale|bias)")


def _clip_siglip(name: str, kind: str, prefix: str) -> Table:
    emb, layer = f"{prefix}embeddings", f"{prefix}encoder.layers.{{i}}"
    qkv = tuple(f"{layer}.self_attn.{p}_proj" for p in "qkv")
    renames = [
        ("patch_embed.proj", f"{emb}.patch_embedding"),
        ("blocks.{i}", layer),  # mlp.fc1, mlp.fc2 keep their names
        ("blocks.{i}.norm1", f"{layer}.layer_norm1"),
        ("blocks.{i}.norm2", f"{layer}.layer_norm2"),
        ("blocks.{i}.attn.proj", f"{layer}.self_attn.out_proj"),
    ]
    rules = [
        Rule("pos_embed", (f"{emb}.position_embedding.weight",), AS_ROWS),
        Rule("blocks.{i}.attn.qkv.kernel", tuple(f"{p}.weight" for p in qkv), concat_linear(3)),
        Rule("blocks.{i}.attn.qkv.bias", tuple(f"{p}.bias" for p in qkv), concat_bias(3)),
    ]
    fused = []
    if kind == "clip":
        renames += [("norm_pre", f"{prefix}pre_layrnorm"), ("fc_norm", f"{prefix}post_layernorm")]
        rules += [Rule("cls_token", (f"{emb}.class_embedding",), AS_TOKEN)]
    else:  # SigLIP: the final norm on every token, then the MAP head (nn.MultiheadAttention's fused in_proj)
        head = f"{prefix}head"
        renames += [
            ("norm", f"{prefix}post_layernorm"),
            ("attn_pool.proj", f"{head}.attention.out_proj"),
            ("attn_pool.norm", f"{head}.layernorm"),
            ("attn_pool.mlp", f"{head}.mlp"),
        ]
        w, b = f"{head}.attention.in_proj_weight", f"{head}.attention.in_proj_bias"
        rules += [
            Rule("attn_pool.latent", (f"{head}.probe",), IDENTITY),
            Rule("attn_pool.q.kernel", (f"{w}[q]",), LINEAR),
            Rule("attn_pool.q.bias", (f"{b}[q]",), IDENTITY),
            Rule("attn_pool.kv.kernel", (f"{w}[k]", f"{w}[v]"), concat_linear(2)),
            Rule("attn_pool.kv.bias", (f"{b}[k]", f"{b}[v]"), concat_bias(2)),
        ]
        fused = [Fused(w, (f"{w}[q]", f"{w}[k]", f"{w}[v]")), Fused(b, (f"{b}[q]", f"{b}[k]", f"{b}[v]"))]
    return Table(name, renames=renames, rules=rules, fused=fused, ignore=_TEXT_SIDE if prefix else ())


# transformers 5's CLIPVisionModel / SiglipVisionModel keys; transformers 4's (and the hub's full CLIPModel /
# SiglipModel files, whose text tower is left aside) carry `vision_model.`
CLIP = _clip_siglip("hf-clip", "clip", "")
CLIP_V4 = _clip_siglip("hf-clip-v4", "clip", "vision_model.")
SIGLIP = _clip_siglip("hf-siglip", "siglip", "")
SIGLIP_V4 = _clip_siglip("hf-siglip-v4", "siglip", "vision_model.")
