"""timm ``VisionTransformer`` / ``VisionTransformerRelPos``: vitjax mirrors timm's paths, so only the leaves
change (``kernel`` -> ``weight`` with its transpose, ``scale`` -> ``weight``); no renames are needed."""

from converters.engine import Table

TIMM = Table("timm-vit")
