"""transformers' image towers (``vitjax.models.hf_towers``): DINOv2 (+ registers), CLIP and SigLIP vision models.

transformers 5 names the DINOv2 attention ``attention.q_proj`` ...; checkpoints saved by transformers 4 (the
hub's files) use ``attention.attention.query`` ... and ``attention.output.dense``; both are tables here.
Separate q/k/v projections are fused into timm's ``qkv`` layout (rows ``[q; k; v]``).
"""

from converters.engine import Rule, Table
from converters.transforms import IDENTITY, concat_bias, concat_linear


def _dinov2(name: str, q: str, k: str, v: str, out: str) -> Table:
    layer = "encoder.layer.{i}"
    return Table(
        name,
        renames=[
            ("cls_token", "embeddings.cls_token"),
            ("reg_token", "embeddings.register_tokens"),
            ("mask_token", "embeddings.mask_token"),
            ("pos_embed", "embeddings.position_embeddings"),
            ("patch_embed.proj", "embeddings.patch_embeddings.projection"),
            ("blocks.{i}", layer),  # norm1, norm2, mlp.fc1, mlp.fc2 keep their names
            ("blocks.{i}.attn.proj", f"{layer}.{out}"),
            ("norm", "layernorm"),
        ],
        rules=[
            Rule("blocks.{i}.attn.qkv.kernel", tuple(f"{layer}.{p}.weight" for p in (q, k, v)), concat_linear(3)),
            Rule("blocks.{i}.attn.qkv.bias", tuple(f"{layer}.{p}.bias" for p in (q, k, v)), concat_bias(3)),
            Rule("blocks.{i}.ls1.gamma", (f"{layer}.layer_scale1.lambda1",), IDENTITY),
            Rule("blocks.{i}.ls2.gamma", (f"{layer}.layer_scale2.lambda1",), IDENTITY),
        ],
    )


DINOV2 = _dinov2("hf-dinov2", "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")
DINOV2_V4 = _dinov2(
    "hf-dinov2-v4",
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
)
