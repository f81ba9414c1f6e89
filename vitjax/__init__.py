"""vitjax: timm's vision models in JAX / Flax NNX (NHWC inputs)."""

from vitjax import data, pretrained, xla_cpu
from vitjax.layers.attention import set_fused_attention, use_fused_attention
from vitjax.pretrained import list_pretrained
from vitjax.registry import create_model, get_spec, list_models
from vitjax.xla_cpu import set_cpu_kernels, use_cpu_kernels

__version__ = "0.1.0"
__all__ = [
    "create_model",
    "data",
    "get_spec",
    "list_models",
    "list_pretrained",
    "pretrained",
    "set_cpu_kernels",
    "set_fused_attention",
    "use_cpu_kernels",
    "use_fused_attention",
    "xla_cpu",
]
