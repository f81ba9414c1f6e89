"""timm's training augmentations (train.augment) against timm itself: every op's pixels at several magnitudes,
the magnitude-to-argument rules, the policies and ``--aa`` parsing, the random draws (as distributions against
timm's own draws, or replayed through the same uniforms), colour jitter against torchvision, AugMix's mixing,
random erasing's boxes and fills, and the random-resized crop."""

from __future__ import annotations

import random
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as taa
from timm.data import random_erasing as tre
from timm.data import transforms as ttf
from torchvision.transforms import ColorJitter

from train import augment as A

SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESAMPLES = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _image(size=SIZE, seed=0) -> Image.Image:
    """A photo-like test image: smooth gradients, an edge, and noise, not using the full 0..255 range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([60 + 120 * x, 40 + 150 * y, 90 + 80 * (x * y)], -1)
    base[size // 3 : size // 2, size // 4 :] += 40
    base += rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base, 20, 230).astype(np.uint8))


def _hparams(img_size=SIZE):
    return {"translate_const": int(img_size * 0.45), "img_mean": tuple(min(255, round(255 * x)) for x in MEAN)}


def _timm_args(name, magnitude, hparams, negate):
    fn = taa.LEVEL_TO_ARG[name]
    if fn is None:
        return ()
    with mock.patch.object(taa.random, "random", return_value=0.9 if negate else 0.1):
        return fn(magnitude, hparams)


def test_op_table_covers_timm():
    assert set(A.OPS) == set(taa.NAME_TO_OP) == set(taa.LEVEL_TO_ARG)


@pytest.mark.parametrize("name", sorted(taa.NAME_TO_OP))
def test_op_pixels_and_arguments_match_timm(name):
    img = _image()
    hp = _hparams()
    fill = hp["img_mean"]
    signed = A.OPS[name][2]
    # timm's level function reads a sign coin exactly when ours is marked as drawing one
    assert (_timm_args(name, 7, hp, True) != _timm_args(name, 7, hp, False)) == signed
    for magnitude in (0, 2.5, 7, 10):
        assert A.op_args(name, magnitude, {**hp, "translate_pct": 0.3}) == _timm_args(
            name, magnitude, {**hp, "translate_pct": 0.3}, False
        )
        for negate in (False, True) if signed else (False,):
            args = A.op_args(name, magnitude, hp, negate)
            assert args == _timm_args(name, magnitude, hp, negate), (name, magnitude, negate)
            if name == "GaussianBlurRand":  # the radius is drawn inside the op: uniform(0.1, 2 * level)
                radius = 0.1 + 0.7 * (2.0 * args[0] - 0.1)
                with mock.patch.object(taa.random, "uniform", return_value=radius) as u:
                    ref = taa.NAME_TO_OP[name](img, *args, fillcolor=fill, resample=RESAMPLES[0])
                assert u.call_args.args == (0.1, 2.0 * args[0])
                args = (radius,)
                ours = A.apply_op(img, name, args, fill, RESAMPLES[0])
                np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
                continue
            for resample in RESAMPLES:
                ours = A.apply_op(img.copy(), name, args, fill, resample)
                if name.startswith("Posterize") and args == (0,):  # Pillow >= 11 refuses 0 bits; before: black
                    with pytest.raises(ValueError, match="bits"):
                        taa.NAME_TO_OP[name](img.copy(), *args, fillcolor=fill, resample=resample)
                    assert ours.mode == img.mode and not np.asarray(ours).any()
                    continue
                ref = taa.NAME_TO_OP[name](img.copy(), *args, fillcolor=fill, resample=resample)
                assert ours.size == ref.size and ours.mode == ref.mode
                np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref), err_msg=f"{name} m={magnitude}")


def _ops_of(t):
    if isinstance(t, (taa.AutoAugment,)):
        return [[(o.name, o.prob, o.magnitude) for o in sub] for sub in t.policy]
    return [(o.name, o.prob, o.magnitude) for o in t.ops]


def _timm_aa(spec, interpolation="random", img_size=SIZE):
    """timm's transform for ``spec`` with the hyper-parameters its train transform (transforms_factory) gives."""
    hp = _hparams(img_size)
    if interpolation != "random":
        hp["interpolation"] = ttf.str_to_pil_interp(interpolation)
    if spec.startswith("rand"):
        return taa.rand_augment_transform(spec, hp)
    if spec.startswith("augmix"):
        return taa.augment_and_mix_transform(spec, {**hp, "translate_pct": 0.3})
    return taa.auto_augment_transform(spec, hp)


def _same_hparams(ours: A.AugmentOp, theirs: taa.AugmentOp):
    keys = ("translate_const", "img_mean", "magnitude_std", "magnitude_max", "translate_pct")
    assert {k: ours.hparams.get(k) for k in keys} == {k: theirs.hparams.get(k) for k in keys}
    interp = ours.hparams.get("interpolation")
    assert (A.RESAMPLE[interp] if interp else A.RANDOM_RESAMPLE) == theirs.kwargs["resample"]
    assert ours.hparams["img_mean"] == theirs.kwargs["fillcolor"]


@pytest.mark.parametrize(
    "spec",
    [
        "rand-m9-mstd0.5-inc1",
        "rand-m9-mstd0.5",
        "rand-m7-n3-mstd101-inc1-p0.7",
        "rand-m12-mmax15-n1",
        "rand-m6-tweights",
        "rand-m10-n3-t3aw",
        "rand-m5-t3a",
        "v0",
        "v0r",
        "original-mstd0.5",
        "originalr",
        "3a",
        "augmix-m5-w4-d2",
        "augmix-m3-mstd0.5-a0.5-b1",
        "augmix-m9-w2-d-1",
    ],
)
@pytest.mark.parametrize("interpolation", ["random", "bilinear"])
def test_aa_strings_build_timm_policies(spec, interpolation):
    if spec == "augmix-m9-w2-d-1":  # timm splits on '-', so a negative depth cannot be written; ours refuses it
        with pytest.raises(ValueError, match="augmix-m9-w2-d-1"):
            A.aa_transform(spec)
        return
    ours, theirs = A.aa_transform(spec, SIZE, MEAN, interpolation), _timm_aa(spec, interpolation)
    if isinstance(theirs, taa.AutoAugment):
        assert [[(o.name, o.prob, o.magnitude) for o in sub] for sub in ours.policy] == _ops_of(theirs)
        pairs = [(o, t) for so, st in zip(ours.policy, theirs.policy, strict=True) for o, t in zip(so, st, strict=True)]
    else:
        assert [(o.name, o.prob, o.magnitude) for o in ours.ops] == _ops_of(theirs)
        pairs = list(zip(ours.ops, theirs.ops, strict=True))
    for o, t in pairs:
        _same_hparams(o, t)
    if isinstance(theirs, taa.RandAugment):
        assert ours.num_layers == theirs.num_layers
        if theirs.choice_weights is None:
            assert ours.weights is None
        else:
            np.testing.assert_allclose(ours.weights, theirs.choice_weights, rtol=1e-12)
    if isinstance(theirs, taa.AugMixAugment):
        assert (ours.alpha, ours.width, ours.depth, ours.blended) == (
            theirs.alpha,
            theirs.width,
            theirs.depth,
            theirs.blended,
        )


@pytest.mark.parametrize("spec", ["rand-m9-q3", "rand-mx", "v1", "v0-m3", "augmix-z2", "rand-tnope", "randaug"])
def test_bad_aa_strings_are_refused(spec):
    with pytest.raises(ValueError, match="augmentation"):
        A.aa_transform(spec)


def _timm_draws(op: taa.AugmentOp, n: int, seed=0):
    """What timm's op passes to its image function over ``n`` calls (None: skipped)."""
    random.seed(seed)
    seen = []
    op.aug_fn = lambda img, *args, **kw: seen.append((args, kw["resample"])) or img
    out = []
    for _ in range(n):
        before = len(seen)
        op(None)
        out.append(seen[-1] if len(seen) > before else None)
    return out


@pytest.mark.parametrize(
    "name,prob,magnitude,extra",
    [
        ("Rotate", 0.5, 9, {"magnitude_std": 0.5}),
        ("ShearX", 0.7, 6, {"magnitude_std": float("inf")}),
        ("TranslateXRel", 1.0, 12, {"magnitude_std": 2.0, "magnitude_max": 15}),
        ("BrightnessIncreasing", 0.5, 10, {"magnitude_std": 1.0}),
        ("SolarizeAdd", 1.0, 5, {"magnitude_std": 3.0}),
    ],
)
def test_op_draws_follow_timms_rule(name, prob, magnitude, extra):
    """Skip probability, magnitude noise and clipping, the sign coin and the interpolation choice: our draws and
    timm's (each from its own generator) agree in distribution."""
    n = 6000
    hp = {**_hparams(), **extra}
    theirs = _timm_draws(taa.AugmentOp(name, prob, magnitude, hp), n)
    op = A.AugmentOp(name, prob, magnitude, hp)
    rng = np.random.default_rng(0)
    ours = [op.draw(rng) for _ in range(n)]

    def stats(draws):
        kept = [d for d in draws if d is not None]
        v = np.array([d[0][0] for d in kept], np.float64)
        bicubic = np.mean([d[1] == Image.Resampling.BICUBIC for d in kept])
        return len(kept) / n, v.mean(), v.std(), np.mean(v < 0), np.abs(v).max(), bicubic

    # timm passes both interpolations on and its image function picks one with random.choice: half each
    assert all(d is None or d[1] == A.RANDOM_RESAMPLE for d in theirs)
    theirs = [d if d is None else (d[0], Image.Resampling.BICUBIC * (k % 2)) for k, d in enumerate(theirs)]

    s_ours, s_theirs = stats(ours), stats(theirs)
    print(f"\n{name}: ours {np.round(s_ours, 4)}\n      timm {np.round(s_theirs, 4)}")
    assert s_ours[0] == pytest.approx(s_theirs[0], abs=0.03)  # applied fraction
    scale = max(s_theirs[2], 1e-3)
    assert abs(s_ours[1] - s_theirs[1]) < 0.1 * scale + 1e-9  # mean argument
    assert s_ours[2] == pytest.approx(s_theirs[2], rel=0.06)  # spread
    assert s_ours[3] == pytest.approx(s_theirs[3], abs=0.03)  # sign
    bound = abs(A.op_args(name, hp.get("magnitude_max") or 10, hp)[0])  # magnitudes clip to [0, mmax or 10]
    assert s_theirs[4] <= bound + 1e-12 and s_ours[4] <= bound + 1e-12
    assert s_ours[4] >= 0.97 * s_theirs[4]
    assert s_ours[5] == pytest.approx(s_theirs[5], abs=0.03)


def test_blur_radius_draw_is_timms_rule():
    """GaussianBlurRand (the '3a' policy): level 10 * M / 10, radius uniform in [0.1, 2 * level] (timm draws it
    inside the op; its call is checked in the pixel test)."""
    op = A.AugmentOp("GaussianBlurRand", 1.0, 8, _hparams())
    rng = np.random.default_rng(0)
    r = np.array([op.draw(rng)[0][0] for _ in range(4000)])
    assert 0.1 <= r.min() < 0.12 and 1.58 < r.max() <= 1.6 and abs(r.mean() - 0.85) < 0.02


def test_rand_augment_choice_follows_timm():
    """Uniform with replacement; weighted ('tweights') without replacement: the frequency of every op in a
    draw, ours against timm's numpy draws."""
    n = 4000
    for spec in ("rand-m9-n2", "rand-m9-n3-tweights"):
        ours, theirs = A.aa_transform(spec, SIZE), _timm_aa(spec)
        rng = np.random.default_rng(1)
        np.random.seed(1)
        k = len(ours.ops)
        f_ours = np.zeros(k)
        f_theirs = np.zeros(k)
        index = {id(o): i for i, o in enumerate(theirs.ops)}
        for _ in range(n):
            pick = ours.choose(rng)
            f_ours[pick] += 1
            if ours.weights is not None:
                assert len(set(pick.tolist())) == len(pick)
            chosen = np.random.choice(
                theirs.ops, theirs.num_layers, replace=theirs.choice_weights is None, p=theirs.choice_weights
            )
            for o in chosen:
                f_theirs[index[id(o)]] += 1
        np.testing.assert_allclose(f_ours / n, f_theirs / n, atol=0.035)


def test_augmix_mixing_matches_timm():
    """Given the chains and the Dirichlet / Beta draws, the mix is timm's pixel for pixel (both modes)."""
    img = _image()
    op = taa.AugmentOp("Equalize", 1.0, 3)
    for blended in (False, True):
        mixer = taa.AugMixAugment([op], alpha=1.0, width=3, depth=1, blended=blended)
        rng = np.random.default_rng(3)
        weights = np.float32(rng.dirichlet([1.0] * 3))
        m = np.float32(rng.beta(1.0, 1.0))
        ref = (mixer._apply_blended if blended else mixer._apply_basic)(img, weights, m)
        chains = [A.apply_op(img, "Equalize", ())] * 3
        ours = (A.mix_blended if blended else A.mix_chains)(img, chains, weights, m)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    out = A.aa_transform("augmix-m3-w3", SIZE)(img, np.random.default_rng(0))
    assert out.size == img.size and not np.array_equal(np.asarray(out), np.asarray(img))


def test_color_jitter_matches_torchvision():
    img = _image()
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.1)
    rng = np.random.default_rng(0)
    for _ in range(6):
        order, factors = A.color_jitter_draw((0.4, 0.4, 0.4, 0.1), rng)
        with mock.patch.object(ColorJitter, "get_params", return_value=(torch.as_tensor(order), *factors)):
            ref = jitter(img)
        np.testing.assert_array_equal(np.asarray(A.color_jitter_apply(img, order, factors)), np.asarray(ref))
    draws = [A.color_jitter_draw((0.4, 0.0, 0.3), rng) for _ in range(2000)]
    b = np.array([f[0] for _, f in draws])
    s = np.array([f[2] for _, f in draws])
    assert all(f[1] is None and f[3] is None for _, f in draws)
    assert 0.6 <= b.min() < 0.62 and 1.38 < b.max() <= 1.4 and abs(b.mean() - 1) < 0.02
    assert 0.7 <= s.min() and s.max() <= 1.3
    firsts = np.bincount([o[0] for o, _ in draws], minlength=4) / len(draws)
    np.testing.assert_allclose(firsts, 0.25, atol=0.04)


class _Replay:
    """Feeds the same uniform numbers to our generator calls and to Python's ``random`` calls of timm."""

    def __init__(self, seed):
        self.u = np.random.default_rng(seed).random(10000).tolist()
        self.i = 0

    def random(self):
        self.i += 1
        return self.u[self.i - 1]

    def uniform(self, a, b):
        return a + (b - a) * self.random()

    def integers(self, lo, hi):
        return lo + int(self.random() * (hi - lo))

    def randint(self, lo, hi):
        return self.integers(lo, hi + 1)


def test_crop_box_is_timms_rule():
    for seed in range(40):
        w, h = 40 + seed, 60 - seed
        scale, ratio = ((0.08, 1.0), (3 / 4, 4 / 3)) if seed % 2 else ((0.9, 1.0), (0.2, 0.3))
        ours = A.crop_box(w, h, scale, ratio, _Replay(seed))
        theirs = _Replay(seed)
        with mock.patch.multiple(ttf.random, uniform=theirs.uniform, randint=theirs.randint):
            top, left, ch, cw = ttf.RandomResizedCropAndInterpolation.get_params(Image.new("RGB", (w, h)), scale, ratio)
        assert ours == (left, top, left + cw, top + ch)


def test_random_resized_crop_pixels_match_timm():
    """Given the box and the interpolation, our crop is timm's ``RandomResizedCropAndInterpolation`` output."""
    img = _image(80).crop((0, 5, 80, 65))  # 80 x 60
    for interp in ("bilinear", "bicubic", "lanczos", "random"):
        for seed in range(3):
            aug = A.TrainAugment(SIZE, hflip=0.0, interpolation=interp, color_jitter=None)
            ours = aug(img, np.random.default_rng(seed))
            rng = np.random.default_rng(seed)  # replay our draws: the box, then the interpolation
            left, top, right, bottom = A.crop_box(80, 60, aug.scale, aug.ratio, rng)
            mode = A.RANDOM_RESAMPLE[int(rng.integers(2))] if interp == "random" else A.RESAMPLE[interp]
            t = ttf.RandomResizedCropAndInterpolation(SIZE, interpolation=interp)
            with (
                mock.patch.object(t, "get_params", return_value=(top, left, bottom - top, right - left)),
                mock.patch.object(ttf.random, "choice", return_value=mode),
            ):
                ref = np.asarray(t(img))
            np.testing.assert_array_equal(ours, ref, err_msg=f"{interp} seed {seed}")


def test_erase_boxes_are_timms_rule():
    for seed in range(40):
        count = 1 + seed % 3
        height, width = (48, 40) if seed % 2 else (40, 5)  # narrow: boxes as wide as the image are refused
        ours = A.erase_boxes(height, width, _Replay(seed), prob=0.7, max_count=count)
        theirs = _Replay(seed)
        eraser = tre.RandomErasing(0.7, mode="const", max_count=count, device="cpu")
        x = torch.ones(3, height, width)
        with mock.patch.multiple(tre.random, random=theirs.random, uniform=theirs.uniform, randint=theirs.randint):
            eraser(x)
        mask = np.zeros((height, width), bool)
        for top, left, h, w in ours:
            mask[top : top + h, left : left + w] = True
        np.testing.assert_array_equal(mask, (x[0] == 0).numpy())
        assert (len(ours) > 0) == bool(mask.any())


def test_erase_fills_in_normalised_units():
    arr = np.asarray(_image())
    rng = np.random.default_rng(0)
    for mode in ("const", "rand", "pixel"):
        out = A.erase(arr, rng, 1.0, mode, 1, MEAN, STD)
        changed = (out != arr).any(-1)
        assert changed.any()
        rows, cols = np.nonzero(changed)
        patch = out[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.float64)
        z = (patch / 255.0 - np.asarray(MEAN)) / np.asarray(STD)  # what the device's normalisation gives
        if mode == "const":
            assert np.abs(z).max() < 0.5 / 255 / min(STD) + 1e-12
        elif mode == "rand":
            assert (patch == patch[:1, :1]).all()
        else:
            assert z.std() > 0.8 and abs(z.mean()) < 0.1 and len(np.unique(patch[..., 0])) > 20
    assert np.array_equal(A.erase(arr, rng, 0.0, "pixel", 1, MEAN, STD), arr)


def test_train_augment_is_a_function_of_the_generator():
    img = _image(80)
    aug = A.TrainAugment(
        SIZE, aa="rand-m9-mstd0.5-inc1", reprob=0.5, remode="pixel", recount=2, vflip=0.5, mean=MEAN, std=STD
    )
    outs = []
    for seed in range(8):  # Python's and numpy's global states differ between the two calls: they must not matter
        random.seed(seed), np.random.seed(seed)
        a = aug(img, np.random.default_rng(seed))
        random.seed(seed + 100), np.random.seed(seed + 100)
        np.testing.assert_array_equal(aug(img, np.random.default_rng(seed)), a)
        outs.append(a)
    assert outs[0].shape == (SIZE, SIZE, 3) and outs[0].dtype == np.uint8
    assert len({o.tobytes() for o in outs}) == len(outs)
    # colour jitter runs without --aa and after a '3a' policy, not after the others (timm's rule)
    for aa, jittered in ((None, True), ("rand-m9-n2", False), ("3a", True), ("rand-m9-t3a", True)):
        with_j, without = (A.TrainAugment(SIZE, aa=aa, color_jitter=cj) for cj in ((0.4, 0.4, 0.4), None))
        differ = any(not np.array_equal(with_j(img, np.random.default_rng(s)), without(img, np.random.default_rng(s)))
                     for s in range(3))  # fmt: skip
        assert differ == jittered, aa
    with pytest.raises(ValueError, match="--remode"):
        A.TrainAugment(SIZE, remode="zero")
    with pytest.raises(ValueError, match="--aa"):
        A.TrainAugment(SIZE, aa="rand-m9-z")
