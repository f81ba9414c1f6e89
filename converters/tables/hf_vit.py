"""transformers ``ViTModel``: separate q/k/v projections are fused into timm's ``qkv`` layout (rows
``[q; k; v]``), and the pooler is vitjax's ``pre_logits``.

transformers 5 names its modules ``layers.{i}.attention.q_proj`` ...; checkpoints saved by transformers 4
(most hub files) use ``encoder.layer.{i}.attention.attention.query`` ...; both are tables here.
"""

from converters.engine import Rule, Table
from converters.transforms import concat_bias, concat_linear

_EMBED = [
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj", "embeddings.patch_embeddings.projection"),
    ("norm", "layernorm"),
    ("pre_logits.fc", "pooler.dense"),
    ("head", "classifier"),  # ViTForImageClassification's classifier (on the post-norm class token)
]


def _table(name: str, layer: str, q: str, k: str, v: str, out: str, fc1: str, fc2: str) -> Table:
    return Table(
        name,
        renames=[
            *_EMBED,
            ("blocks.{i}.norm1", f"{layer}.layernorm_before"),
            ("blocks.{i}.norm2", f"{layer}.layernorm_after"),
            ("blocks.{i}.attn.proj", f"{layer}.{out}"),
            ("blocks.{i}.mlp.fc1", f"{layer}.{fc1}"),
            ("blocks.{i}.mlp.fc2", f"{layer}.{fc2}"),
        ],
        rules=[
            Rule("blocks.{i}.attn.qkv.kernel", tuple(f"{layer}.{p}.weight" for p in (q, k, v)), concat_linear(3)),
            Rule("blocks.{i}.attn.qkv.bias", tuple(f"{layer}.{p}.bias" for p in (q, k, v)), concat_bias(3)),
        ],
    )


HF5 = _table(
    "hf-vit",
    "layers.{i}",
    "attention.q_proj",
    "attention.k_proj",
    "attention.v_proj",
    "attention.o_proj",
    "mlp.fc1",
    "mlp.fc2",
)
HF4 = _table(
    "hf-vit-v4",
    "encoder.layer.{i}",
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
