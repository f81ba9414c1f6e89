"""``features_only=True``: a model pruned to the layers that feed the requested feature maps.

Like timm's ``FeatureGetterNet``, the wrapped model (attribute ``model``, so converter paths gain a
``model.`` prefix exactly as timm's state_dict keys do) is cut after the deepest requested layer and loses
its final norm and head; calling the wrapper returns a list of NHWC maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


class FeatureGetter(nnx.Module):
    def __init__(self, model: nnx.Module, out_indices: int | Sequence[int]):
        self.out_indices = tuple(model.prune_intermediate_layers(out_indices))
        self.feature_info = [model.feature_info[i] for i in self.out_indices]
        self.model = model

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        return self.model.forward_intermediates(x, self.out_indices)

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]
