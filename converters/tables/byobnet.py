"""timm ``ByobNet`` (the ``byoanet`` family): vitjax mirrors timm's paths, so beyond the leaf renames the table
only re-lays out the few convs that vitjax runs as other ops on NHWC maps:

* 1x1 convs used as projections (self-attention ``q``/``kv``/``qkv``, SE ``fc1``/``fc2``) are Linear layers:
  ``(out, in, 1, 1)`` <-> ``(in, out)``;
* ECA's channel conv is a 1-D ``nnx.Conv``: ``(1, 1, k)`` <-> ``(k, 1, 1)``;
* the lambda layer's ``conv_lambda`` is a 3-D ``nnx.Conv``: ``(K, 1, r, r, 1)`` <-> ``(r, r, 1, 1, K)``.

Two namings: :data:`TIMM`, the model's own ``state_dict``; :data:`TIMM_FEATURES`, timm's ``features_only``
model (a ``FeatureListNet`` that flattens the stem and stage containers: ``stem_conv1.*``, ``stages_0.*``).
``converters.from_torch`` picks whichever explains the checkpoint; ``to_torch`` writes the model naming.
"""

from __future__ import annotations

from converters.engine import Rule, Table
from converters.transforms import CONV1X1_AS_LINEAR, Transform

CONV1D = Transform("conv1d", lambda w: w.transpose(2, 1, 0), lambda k: k.transpose(2, 1, 0))
CONV3D = Transform("conv3d", lambda w: w.transpose(2, 3, 4, 1, 0), lambda k: k.transpose(4, 3, 0, 1, 2))

_BLOCK_RULES = (
    ("self_attn.q.kernel", CONV1X1_AS_LINEAR),
    ("self_attn.kv.kernel", CONV1X1_AS_LINEAR),
    ("self_attn.qkv.kernel", CONV1X1_AS_LINEAR),
    ("self_attn.conv_lambda.kernel", CONV3D),
    ("attn.fc1.kernel", CONV1X1_AS_LINEAR),
    ("attn.fc2.kernel", CONV1X1_AS_LINEAR),
    ("attn.conv.kernel", CONV1D),
    ("attn_last.fc1.kernel", CONV1X1_AS_LINEAR),
    ("attn_last.fc2.kernel", CONV1X1_AS_LINEAR),
    ("attn_last.conv.kernel", CONV1D),
)


def _rules(stage: str) -> list[Rule]:
    leaf = lambda name: name.rsplit(".", 1)[0] + ".weight"  # noqa: E731
    return [
        Rule(f"stages.{{s}}.{{b}}.{name}", (f"{stage}.{{b}}.{leaf(name)}",), transform)
        for name, transform in _BLOCK_RULES
    ]


TIMM = Table("timm-byobnet", rules=_rules("stages.{s}"))
TIMM_FEATURES = Table(
    "timm-byobnet-features",
    renames=[("stem.conv{i}", "stem_conv{i}"), ("stages.{s}", "stages_{s}")],
    rules=_rules("stages_{s}"),
)
