"""vitjax.data's eval preprocessing against timm's and transformers' own transforms on real photos
(scikit-image's bundled samples). Both are bit-exact: the max difference is asserted to be 0."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import timm
import timm.data
import torch
from PIL import Image
from transformers import ViTImageProcessor

import vitjax
import vitjax.data as vd

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # 512x512, 300x451, 400x600, 427x640


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS}


def _timm_model(name: str):
    """timm's model only for its pretrained_cfg: built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return timm.create_model(name)


def _max_diff(ours, theirs, photos) -> float:
    return max(float(np.abs(ours(im) - theirs(im)).max()) for im in photos.values())


@pytest.mark.parametrize(
    "name",
    [
        "vit_base_patch16_224",  # crop_pct 0.9, inception mean/std
        "vit_medium_patch16_reg4_gap_256",  # crop_pct 0.95
        "vit_relpos_base_patch16_clsgap_224",
        "vit_base_patch16_384",  # crop_pct 1.0
    ],
)
def test_model_config_and_transform_match_timm(name, photos):
    ref_model = _timm_model(name)
    ref_cfg = timm.data.resolve_model_data_config(ref_model)
    ref = timm.data.create_transform(**ref_cfg)
    cfg = vd.resolve_model_data_config(vitjax.create_model(name, abstract=True))
    assert cfg == ref_cfg
    ours = vd.create_transform(**cfg)
    assert _max_diff(ours, lambda im: ref(im).permute(1, 2, 0).numpy(), photos) == 0.0


@pytest.mark.parametrize(
    "args",
    [
        {"crop_mode": "squash"},
        {"crop_mode": "border"},  # pads with the mean colour
        {"input_size": (3, 200, 300)},  # non-square: ResizeKeepRatio
        {"input_size": (3, 600, 700), "crop_pct": 1.0},  # larger than the photos: zero padding
        {"interpolation": "bilinear", "crop_pct": 0.5},
        {"interpolation": "lanczos", "mean": (0.2,), "std": (0.3,)},
    ],
)
def test_args_override_like_timm(args, photos):
    ref_cfg = timm.data.resolve_data_config(args, model=_timm_model("vit_tiny_patch16_224"))
    cfg = vd.resolve_data_config(args, model=vitjax.create_model("vit_tiny_patch16_224", abstract=True))
    assert cfg == ref_cfg
    ref = timm.data.create_transform(**ref_cfg)
    ours = vd.create_transform(**cfg)
    assert _max_diff(ours, lambda im: ref(im).permute(1, 2, 0).numpy(), photos) == 0.0


def test_hf_ids_use_the_vit_image_processor(photos):
    model = vitjax.create_model("google/vit-base-patch16-224-in21k", abstract=True)
    cfg = vd.resolve_model_data_config(model)
    assert cfg["crop_mode"] == "squash" and cfg["interpolation"] == "bilinear"
    ours = vd.create_transform(**cfg)
    proc = ViTImageProcessor()
    diff = _max_diff(ours, lambda im: proc(im, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0), photos)
    assert diff == 0.0


def test_uint8_resize_matches_torchvision_at_odd_sizes():
    from torchvision.transforms.v2 import functional as F

    img = skimage.data.chelsea()
    for size in [(17, 33), (300, 500), (1000, 700), (300, 100)]:
        ref = F.resize(torch.from_numpy(img).permute(2, 0, 1), list(size), antialias=True).permute(1, 2, 0).numpy()
        assert np.array_equal(vd.resize_uint8_bilinear(img, size), ref), size


def test_batches_arrays_and_grey_images(photos):
    t = vd.create_transform(**vd.resolve_model_data_config(vitjax.create_model("vit_tiny_patch16_224", abstract=True)))
    batch = t(list(photos.values()))
    assert batch.shape == (len(photos), 224, 224, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], t(np.asarray(photos["chelsea"])))
    grey = photos["coffee"].convert("L")
    np.testing.assert_array_equal(t(grey), t(grey.convert("RGB")))
    with pytest.raises(ValueError, match="eval preprocessing only"):
        vd.create_transform(is_training=True)
