"""timm ``VisionTransformer`` / ``VisionTransformerRelPos`` / deit's ``VisionTransformerDistilled``: vitjax
mirrors timm's paths, so only the leaves change (``kernel`` -> ``weight`` with its transpose, ``scale`` ->
``weight``); no renames are needed. That holds for every switch: the MAP pool (``attn_pool.{latent,q,kv,proj,
norm,mlp}``), SwiGLU (``mlp.fc1_g`` / ``mlp.fc1_x``), the packed GLU (``mlp.fc1``, twice the width of
``mlp.fc2``'s input), the scale norms (``attn.norm``, ``mlp.norm``), the patch-embedding norm
(``patch_embed.norm``), parallel-things branches (``attns.{i}.{norm,attn,ls}``, ``ffns.{i}.{norm,mlp,ls}``) and
the distillation token and head (``dist_token``, ``head_dist``)."""

from converters.engine import Table

TIMM = Table("timm-vit")
