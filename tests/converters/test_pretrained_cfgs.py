"""The pretrained configs stored in vitjax (vitjax/pretrained_cfgs.json) are timm's and transformers'."""

from __future__ import annotations

import timm

import vitjax
from converters.gen_pretrained import stale_names
from vitjax.pretrained import get_pretrained_cfg, list_pretrained, pretrained_tags, split_name_tag


def test_stored_cfgs_match_the_installed_timm():
    assert stale_names() == [], "run `python -m converters.gen_pretrained` to regenerate vitjax/pretrained_cfgs.json"


def test_default_tags_and_hub_ids_are_timms():
    for name in ["vit_base_patch16_224", "vit_medium_patch16_reg4_gap_256", "vit_relpos_base_patch16_clsgap_224"]:
        theirs = timm.models.get_pretrained_cfg(name)
        ours = get_pretrained_cfg(name)
        assert (ours["tag"], ours["hf_hub_id"]) == (theirs.tag, theirs.hf_hub_id)
        assert pretrained_tags(name)[0] == theirs.tag


def test_registered_classifier_sizes_match_the_default_tags():
    """create_model(name) has the classifier of the name's default weights, as timm's create_model does."""
    for name in vitjax.list_models():
        cfg = get_pretrained_cfg(name)
        if "num_classes" in cfg and "/" not in name:
            assert vitjax.get_spec(name).config().num_classes == cfg["num_classes"], name


def test_name_tag_helpers():
    assert split_name_tag("vit_base_patch16_224.augreg_in21k") == ("vit_base_patch16_224", "augreg_in21k")
    assert split_name_tag("google/vit-base-patch16-224-in21k") == ("google/vit-base-patch16-224-in21k", None)
    assert "vit_base_patch16_224.augreg2_in21k_ft_in1k" in list_pretrained("vit_base_patch16_224.*")
    assert get_pretrained_cfg("google/vit-base-patch16-224-in21k")["hf_hub_id"] == "google/vit-base-patch16-224-in21k"
