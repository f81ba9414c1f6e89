"""Converters on bad input: one error naming every offender, nothing changed, nothing half-written."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import timm
import torch

import converters
import vitjax
from converters.io import CheckpointError, load_state_dict, save_safetensors

NAME = "vit_small_patch16_224"
SMALL = dict(depth=2)  # two blocks keep these tests fast; the naming is the same at any depth


@pytest.fixture(scope="module")
def timm_sd():
    return {k: v.clone() for k, v in timm.create_model(NAME, **SMALL).state_dict().items()}


def weights_of(model):
    return {k: np.array(v.get_value()) for k, v in converters.engine.weights(model).items()}


def test_every_offender_listed_and_model_untouched(timm_sd):
    sd = dict(timm_sd)
    del sd["blocks.1.mlp.fc2.bias"]  # missing
    sd["blocks.7.attn.qkv.weight"] = torch.zeros(3, 3)  # unexpected
    sd["head.weight"] = torch.zeros(10, 384)  # mis-shaped
    sd["pos_embed"] = torch.zeros(1, 50, 384)  # mis-shaped
    model = vitjax.create_model(NAME, **SMALL)
    before = weights_of(model)
    with pytest.raises(converters.ConversionError) as e:
        converters.from_torch(model, sd)
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 2 mis-shaped" in msg
    assert "missing    blocks.1.mlp.fc2.bias (384)" in msg
    assert "unexpected blocks.7.attn.qkv.weight (3, 3)" in msg
    assert "head.weight: checkpoint (10, 384), model needs (1000, 384)" in msg
    assert "pos_embed: checkpoint (1, 50, 384), model needs (1, 197, 384)" in msg
    after = weights_of(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a failed conversion changed the model"


def test_checkpoint_of_another_model_is_named():
    sd = timm.create_model("vit_tiny_patch16_224").state_dict()
    model = vitjax.create_model("vit_small_patch16_224", abstract=True)
    with pytest.raises(converters.ConversionError, match="looks like vit_tiny_patch16_224, not vit_small_patch16_224"):
        converters.from_torch(model, sd)


def test_wrong_family_naming_is_refused():
    model = vitjax.create_model(NAME, abstract=True, **SMALL)
    with pytest.raises(converters.ConversionError, match="no 'hf' naming for vision_transformer"):
        converters.from_torch(model, {}, source="hf")


def test_safetensors_and_pth_files_load_the_same(tmp_path, timm_sd):
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_safetensors({k: v.numpy() for k, v in timm_sd.items()}, st)
    torch.save(timm_sd, pth)
    a = converters.from_torch(vitjax.create_model(NAME, abstract=True, **SMALL), st)
    b = converters.from_torch(vitjax.create_model(NAME, abstract=True, **SMALL), pth)
    wa, wb = weights_of(a), weights_of(b)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert all(
        np.array_equal(v, converters.to_torch(a)[k]) for k, v in {k: t.numpy() for k, t in timm_sd.items()}.items()
    )


def test_truncated_safetensors(tmp_path, timm_sd):
    path = tmp_path / "w.safetensors"
    save_safetensors({k: v.numpy() for k, v in timm_sd.items()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"w\.safetensors: truncated safetensors file"):
        load_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    txt = tmp_path / "notes.safetensors"
    txt.write_text("these are not weights\n" * 10)
    with pytest.raises(CheckpointError, match="notes.safetensors: not a safetensors file"):
        load_state_dict(txt)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(CheckpointError, match="junk.pth: not a PyTorch checkpoint, or truncated"):
        load_state_dict(junk)
    with pytest.raises(CheckpointError, match="missing.pth: no such checkpoint file"):
        load_state_dict(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint format '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        load_state_dict(tmp_path / "a.txt")


class Payload:
    """Any class: unpickling it would run code of the file's choosing; weights_only must refuse."""


def test_pth_is_loaded_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pth: refused to load"):
        load_state_dict(path)


def test_truncated_pth(tmp_path, timm_sd):
    path = tmp_path / "w.pth"
    torch.save(timm_sd, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="w.pth: not a PyTorch checkpoint, or truncated"):
        load_state_dict(path)


def test_failed_write_leaves_existing_file_and_no_temp(tmp_path):
    path = tmp_path / "out.safetensors"
    save_safetensors({"a": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017  (safetensors refuses object arrays)
        save_safetensors({"a": np.ones(3, np.float32), "b": np.array([object()])}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_written_file_has_the_permissions_of_a_plain_write(tmp_path):
    """The atomic write goes through a private temporary file; the result must not stay private."""
    old = os.umask(0o022)
    try:
        save_safetensors({"a": np.ones(3, np.float32)}, tmp_path / "out.safetensors")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((tmp_path / name).stat().st_mode)  # noqa: E731
    assert mode("out.safetensors") == mode("plain") == 0o644
