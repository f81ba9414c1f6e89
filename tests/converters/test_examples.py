"""The example scripts (examples/) run on a bundled photo with a local checkpoint and agree with timm by value
(top-5 probabilities, embeddings, feature maps against timm on the same photo and weights)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import timm.data
import torch
from PIL import Image

from tests.converters.helpers import save_sd
from tests.parity.reference import FP32_TOL, nhwc, randomize, rel_err

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ref = randomize(timm.create_model(NAME).eval(), seed=21)
    return ref, save_sd(ref.state_dict(), tmp_path_factory.mktemp("ex") / "tiny.safetensors")


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return lambda name: importlib.import_module(name)


def _timm_input(ref, *photos: str) -> torch.Tensor:
    t = timm.data.create_transform(**timm.data.resolve_model_data_config(ref))
    return torch.stack([t(Image.fromarray(getattr(skimage.data, p)())) for p in photos])


def test_classify(checkpoint, examples, capsys):
    ref, path = checkpoint
    top = examples("classify").main(["--model", NAME, "--checkpoint", str(path)])
    with torch.no_grad():
        probs = ref(_timm_input(ref, "chelsea")).softmax(-1)[0].numpy()
    want = np.argsort(-probs)[:5]
    assert [i for i, _, _ in top] == list(want)
    assert np.allclose([p for _, _, p in top], probs[want], atol=1e-5)
    info = timm.data.ImageNetInfo("imagenet-1k")
    assert [n for _, n, _ in top] == [info.index_to_description(int(i)) for i in want]
    assert top[0][1] in capsys.readouterr().out


def test_embed(checkpoint, examples):
    ref, path = checkpoint
    emb = examples("embed").main(["--model", NAME, "--checkpoint", str(path)])
    with torch.no_grad():
        x = _timm_input(ref, "chelsea", "astronaut", "coffee")
        want = ref.forward_head(ref.forward_features(x), pre_logits=True).numpy()
    assert emb.shape == (3, 192)
    assert rel_err(emb, want) <= FP32_TOL["vision_transformer"], rel_err(emb, want)


def test_features(checkpoint, examples):
    """The maps by value: timm's block outputs (its ``forward_intermediates``, what its ``features_only`` ViT
    returns) on the photo through timm's own transform."""
    ref, path = checkpoint
    maps = examples("features").main(["--model", NAME, "--checkpoint", str(path), "--out-indices", "3", "11"])
    assert [m.shape for m in maps] == [(1, 14, 14, 192)] * 2
    with torch.no_grad():
        want = ref.forward_intermediates(_timm_input(ref, "chelsea"), indices=[3, 11], intermediates_only=True)
    errs = [rel_err(m, nhwc(w)) for m, w in zip(maps, want, strict=True)]
    assert max(errs) <= FP32_TOL["vision_transformer"], errs


def test_runs_as_a_script(checkpoint):
    _, path = checkpoint
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "classify.py"), "--model", NAME, "--checkpoint", str(path), "--top", "3"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert len([line for line in r.stdout.splitlines() if "%" in line]) == 3
