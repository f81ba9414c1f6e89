"""Parity with the CPU kernels off (``VITJAX_CPU_KERNELS=0``, :func:`vitjax.set_cpu_kernels`): one test of each
family's parity suite (transformers' ViT shares timm ViT's layers), run with the CPU compiling the program other
backends get. Together they cover every kernel's reference path (2-D views, attention's softmax, depthwise
convolutions, pools, BatchNorm's train mode). Figures are recorded per family with a ``(kernels off)``
suffix."""

from __future__ import annotations

import pytest

import vitjax
from tests.parity import test_byoanet, test_maxxvit, test_vit


@pytest.fixture
def kernels_off(parity_results):
    results: dict = {}
    vitjax.set_cpu_kernels(False)
    try:
        yield results
    finally:
        vitjax.set_cpu_kernels(True)
        for family, r in results.items():
            parity_results[f"{family} (kernels off)"] = r


def test_vit_parity(kernels_off):
    test_vit.test_parity("vit_tiny_patch16_224", kernels_off)


def test_maxxvit_parity(kernels_off):
    test_maxxvit.test_parity_reduced_size("test_coatnet", kernels_off)


def test_byoanet_train_mode(kernels_off):
    """Train-mode forward and running statistics (BatchNorm, max pooling). The train-mode gradient in float32 is
    too ill-conditioned with every tensor randomised to compare kernel paths against timm (JAX's derivative
    lands 1.2e-2 from timm on one tensor, timm's own channels-last gradient 4.4e-3): it is compared in float64
    by ``test_byoanet``'s gradient test where that runs in float64."""
    test_byoanet.test_train_mode_batch_norm_update("lambda_resnet26t", kernels_off)


def test_byoanet_train_mode_gradients(kernels_off):
    """The float64 train-mode gradient against timm with the kernels off: the reference paths' derivatives
    (BatchNorm's batch statistics, depthwise and 1x1 convolutions, pools) through the default autodiff."""
    test_byoanet.test_train_mode_gradients("lambda_resnet26t", kernels_off)
