"""The end-to-end demo: timm -> vitjax -> train on digits on every local device -> timm again.

    python -m train.demo [--workdir runs/demo] [--steps 240] [--checkpoint timm_weights.safetensors]

1. builds a timm relative-position ViT (``vit_relpos_small_patch16_224``'s family at 32 px with a reduced
   width and depth, so that it trains in about a minute on two CPU cores; random init, or ``--checkpoint``),
   converts it with ``converters.from_torch`` and prints its parity against timm's own forward pass;
2. trains it on the embedded ``digits`` data with ``train.loop`` over a mesh of all local devices;
3. exports the trained weights with ``converters.to_torch``, loads them into a fresh timm model
   (``strict=True``) and checks that timm gives the same predictions on the test images;
4. prints the test accuracy (the demo fails if it is below 90%, or if the predictions differ).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from converters.__main__ import skip_absent_tpu

MODEL = "vit_relpos_small_patch16_224"
ARCH = dict(img_size=32, patch_size=8, embed_dim=192, depth=4, num_heads=3, num_classes=10)


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", help="timm state_dict to start from instead of timm's random init")
    args = p.parse_args(argv)
    skip_absent_tpu()
    t0 = time.perf_counter()

    import jax
    import timm
    import torch

    import converters
    import vitjax
    from train import data as data_lib
    from train.config import TrainConfig
    from train.loop import run

    workdir = Path(args.workdir)
    shutil.rmtree(workdir / "run", ignore_errors=True)  # a fresh run, not a resume of an earlier demo
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    # 1. timm -> vitjax, with parity
    say(f"[1/4] timm {MODEL} with {ARCH} ({'weights ' + args.checkpoint if args.checkpoint else 'random init'})")
    tm = timm.create_model(MODEL, pretrained=False, **ARCH).eval()
    if args.checkpoint:
        tm.load_state_dict({k: torch.as_tensor(v) for k, v in converters.load_state_dict(args.checkpoint).items()})
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    init_path = converters.save_safetensors(sd, workdir / "timm_init.safetensors")
    jm = converters.from_torch(vitjax.create_model(MODEL, abstract=True, **ARCH), sd, source="timm")
    x = np.random.default_rng(args.seed).standard_normal((4, 32, 32, 3), dtype=np.float32)  # B, H, W, C
    with torch.no_grad():
        ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()  # B, C, H, W in; B, K out
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jm(x))
    parity = float(np.abs(out - ref).max() / max(1.0, np.abs(ref).max()))
    say(
        f"      converted {sum(v.size for v in sd.values()) / 1e6:.2f}M parameters; parity vs timm: "
        f"max|jax - timm| / max(1, max|timm|) = {parity:.1e}"
    )
    if parity > 1e-4:
        say("      FAIL: conversion parity above 1e-4")
        return 1

    # 2. train on digits across every local device
    say(
        f"[2/4] training on digits: {args.steps} steps of {args.batch_size} on {jax.local_device_count()} "
        f"{jax.devices()[0].platform} device(s)"
    )
    cfg = TrainConfig(
        model=MODEL,
        pretrained=str(init_path),
        model_args={k: v for k, v in ARCH.items() if k != "img_size"},
        img_size=ARCH["img_size"],
        data="digits",
        workdir=str(workdir / "run"),
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        warmup_steps=args.steps // 10,
        min_lr=1e-5,
        weight_decay=0.05,
        label_smoothing=0.1,
        seed=args.seed,
        log_every=20,
        eval_every=max(args.steps // 3, 1),
        ckpt_every=0,
        keep_ckpts=1,
    )
    result = run(cfg)
    say(
        f"      trained to step {result.steps_done}: test top-1 {result.final_eval['top1']:.2f}% (vitjax); "
        f"logs in {cfg.workdir}"
    )

    # 3. vitjax -> timm: same predictions
    say("[3/4] exporting to timm and reloading (strict)")
    model = result.model()
    exported = converters.to_torch(model, "timm")
    out_path = converters.save_safetensors(exported, workdir / "timm_trained.safetensors")
    tm2 = timm.create_model(MODEL, pretrained=False, **ARCH).eval()
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    data = data_lib.digits(ARCH["img_size"])
    images = np.stack([data_lib.eval_image(data.val, i, ARCH["img_size"], True) for i in range(len(data.val))])
    mean, std = np.asarray(result.mean, np.float32), np.asarray(result.std, np.float32)
    xs = ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)  # N, H, W, C
    with jax.default_matmul_precision("highest"):
        logits_jax = np.asarray(jax.jit(lambda a: model(a))(xs))
    with torch.no_grad():
        logits_timm = tm2(torch.from_numpy(xs.transpose(0, 3, 1, 2))).numpy()  # N, C, H, W in
    same = float((logits_jax.argmax(-1) == logits_timm.argmax(-1)).mean())
    diff = float(np.abs(logits_jax - logits_timm).max() / max(1.0, np.abs(logits_timm).max()))
    say(
        f"      wrote {out_path}; timm vs vitjax on {len(xs)} test images: same top-1 prediction on "
        f"{100 * same:.1f}%, max logit error {diff:.1e}"
    )

    # 4. accuracy
    acc = 100.0 * float((logits_timm.argmax(-1) == data.val.labels).mean())
    say(
        f"[4/4] test accuracy (timm, exported weights): {acc:.2f}% on {len(xs)} digits; "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    ok = same == 1.0 and diff <= 1e-4 and acc >= 90.0
    say("demo: OK" if ok else "demo: FAILED (needs identical predictions and >= 90% accuracy)")
    return 0 if ok else 1


if __name__ == "__main__":
    from train.heap import keep_freed_memory

    keep_freed_memory()  # re-executes once with glibc's heap kept between steps
    sys.exit(main())
