"""timm ``MaxxVit`` (MaxViT, MaxxViT, CoAtNet): vitjax mirrors timm's paths; timm's 1x1 convolutions are vitjax
Linear layers, mapped here with ``CONV1X1_AS_LINEAR``.

Which layers timm builds as 1x1 convs:

* always: MBConv ``conv1_1x1`` / ``conv3_1x1`` / SE ``fc1`` ``fc2``, ConvNeXt ``mlp.fc1`` / ``mlp.fc2`` and conv
  ``shortcut``, every ``Downsample2d`` ``expand``, and the T blocks' ``Attention2d`` ``qkv`` / ``proj`` and
  ``ConvMlp``;
* with ``transformer_cfg.use_nchw_attn``: the window/grid attention blocks' ``qkv``, ``proj`` and MLP
  (``PartitionAttention2d``), family ``maxxvit+nchw_attn``;
* with a ``NormMlpClassifierHead`` and ``global_pool=''``: ``head.pre_logits.fc`` and ``head.fc``, family
  ``maxxvit+conv_head``.

:func:`tables` picks the table from the model's config; one is built per combination.

timm's ``features_only=True`` model (``FeatureListNet``) stores the stages flattened as ``stages_{s}.*`` with no
prefix; each family has a second table with that naming, which ``converters.from_torch`` picks for such a
checkpoint (the one explaining the most keys). ``to_torch`` always writes the full model's naming
(``model.``-prefixed for a vitjax features model, the layout of its ``FeatureGetter``).
"""

from __future__ import annotations

from converters.engine import Rule, Table
from converters.transforms import CONV1X1_AS_LINEAR

_BLOCK = "stages.{s}.blocks.{b}"
_CONV_HOSTS = ("", ".conv", ".conv.{c}")  # C / T blocks, an M block's conv, a PM block's convs
_CONV_1X1 = (
    "shortcut",
    "shortcut.expand",
    "conv1_1x1",
    "conv3_1x1",
    "se.fc1",
    "se.fc2",
    "se_early.fc1",
    "se_early.fc2",
    "mlp.fc1",
    "mlp.fc2",
)
_ATTN_2D = ("attn.qkv", "attn.proj")  # T blocks (Attention2d); an M block's partitions only with use_nchw_attn
_PARTITION = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _modules(nchw_attn: bool, conv_head: bool) -> list[str]:
    """vitjax module paths (templates) whose timm weight is a 1x1 conv."""
    mods = [f"{_BLOCK}{host}.{m}" for host in _CONV_HOSTS for m in _CONV_1X1]
    mods += [f"{_BLOCK}.{m}" for m in _ATTN_2D]
    if nchw_attn:
        mods += [f"{_BLOCK}.{part}.{m}" for part in ("attn_block", "attn_grid") for m in _PARTITION]
    if conv_head:
        mods += ["head.pre_logits.fc", "head.fc"]
    return mods


def _table(name: str, nchw_attn: bool, conv_head: bool, features: bool) -> Table:
    stage = "stages_{s}" if features else "stages.{s}"
    rules = [
        Rule(f"{m}.kernel", (m.replace("stages.{s}", stage) + ".weight",), CONV1X1_AS_LINEAR)
        for m in _modules(nchw_attn, conv_head)
    ]
    return Table(name + ("-features" if features else ""), renames=[("stages.{s}", stage)] if features else [],
                 rules=rules)  # fmt: skip


def _layout(nchw_attn: bool, conv_head: bool) -> str:
    return "maxxvit" + ("+nchw_attn" if nchw_attn else "") + ("+conv_head" if conv_head else "")


_TABLES = {
    (n, h): [_table(f"timm-{_layout(n, h)}", n, h, f) for f in (False, True)]
    for n in (False, True)
    for h in (False, True)
}
TIMM = _TABLES[(False, False)][0]


def tables(cfg) -> list[Table]:
    """The timm tables (full model, then features_only naming) for a ``MaxxVitConfig``: timm's weight layout
    depends on ``transformer_cfg.use_nchw_attn`` and on a ``NormMlpClassifierHead`` without pooling
    (``head_hidden_size`` set, ``global_pool=""``)."""
    nchw_attn = bool(cfg.transformer_cfg.use_nchw_attn)
    conv_head = bool(cfg.head_hidden_size) and not cfg.global_pool
    return _TABLES[(nchw_attn, conv_head)]
