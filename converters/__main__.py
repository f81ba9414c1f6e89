"""Command line: ``python -m converters {demo,verify,to-jax,to-torch} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import resource
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_PARITY, EXIT_USAGE, EXIT_CHECKPOINT = 0, 1, 2, 3

EPILOG = """\
exit codes:
  0  success (verify/demo: every model within tolerance)
  1  verify/demo: a parity check failed
  2  bad command line (argparse)
  3  the checkpoint could not be read or does not fit the model (the message lists every offending key)

examples:
  python -m converters to-jax --model vit_base_patch16_224 --src model.safetensors --out ckpt/vit_b16
  python -m converters to-jax --model vit_base_patch16_224 --out ckpt/vit_b16      # the hub's default tag
  python -m converters to-torch --src ckpt/vit_b16 --out vit_b16.safetensors
  python -m converters to-torch --src runs/finetune --ema --out finetuned.safetensors   # a python -m train run
  python -m converters verify --model vit_base_patch16_224 --src ckpt/vit_b16
"""

SRC_HELP = (
    "where the weights are: a .safetensors/.pth/.bin file (weights only), an original ViT .npz, a transformers "
    "flax_model.msgpack, a vitjax checkpoint directory, a hub repo id (org/name), or NAME.TAG for one of the "
    "model's pretrained tags"
)


def _img_size(text: str) -> int | tuple[int, int]:
    """``384`` or ``384x512`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m converters",
        description="Convert weights between timm / transformers / original ViT files and vitjax, and check parity.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="convert the seed models from randomly initialised reference weights and print the parity table"
    )
    demo.add_argument("--models", nargs="*", default=None, help="names to check (default: the seed models)")

    ver = sub.add_parser(
        "verify",
        help="print a parity table (features, logits, pre-logits; max error; pass/fail)",
        description="Run vitjax and the reference library (timm / transformers) on the same weights and the same "
        "random batch, and print the largest relative differences. Exit code 1 if any exceeds the tolerance.",
    )
    ver.add_argument("--model", required=True, help="a name from vitjax.list_models()")
    ver.add_argument("--src", default=None, help=SRC_HELP + "; default: random reference weights")
    ver.add_argument("--batch", type=int, default=2, help="batch size of the random input (default 2)")

    tj = sub.add_parser(
        "to-jax",
        help="convert a checkpoint into a vitjax checkpoint directory",
        description="Read a checkpoint tensor by tensor (safetensors are memory-mapped), convert it into the "
        "model's layout, and write a vitjax checkpoint directory (orbax) that "
        "vitjax.create_model(NAME, pretrained=DIR) loads. The directory is written beside --out and moved into "
        "place only when complete.",
    )
    tj.add_argument("--model", required=True, help="the vitjax model name (vitjax.list_models())")
    tj.add_argument("--src", default=None, help=SRC_HELP + "; default: the model's default tag on the hub")
    tj.add_argument("--out", required=True, type=Path, help="the checkpoint directory to write (replaced if it exists)")
    tj.add_argument(
        "--img-size",
        type=_img_size,
        default=None,
        help="build the model for this input size (N or HxW); position embeddings and patch kernels are resampled",
    )
    tj.add_argument(
        "--num-classes", type=int, default=None, help="classifier size (another size gets a fresh head; 0: none)"
    )

    tt = sub.add_parser(
        "to-torch",
        help="export a vitjax checkpoint directory as a timm / transformers .safetensors state_dict",
        description="Write the model's weights under timm's names (or transformers' for the HF ids), loadable "
        "with load_state_dict(strict=True). Tensors are converted and written one at a time; the file is "
        "renamed into place only when complete.",
    )
    tt.add_argument(
        "--src",
        required=True,
        type=Path,
        help="a vitjax checkpoint directory (from to-jax) or a python -m train run directory (its latest step)",
    )
    tt.add_argument("--ema", action="store_true", help="a run's EMA weights (not its raw ones)")
    tt.add_argument("--step", type=int, default=None, help="a run's checkpoint of this step (default: the latest)")
    tt.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    tt.add_argument(
        "--model", default=None, help="the model name; default and checked against: the one the checkpoint records"
    )
    tt.add_argument(
        "--naming",
        choices=("timm", "hf"),
        default=None,
        help="the state_dict naming (default: the family's: hf for the HF ids, else timm)",
    )
    return parser


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _count(model) -> int:
    from converters.engine import weights

    return sum(int(v.get_value().size) for v in weights(model).values())


@contextlib.contextmanager
def _writing(out: Path):
    """Report a failed write (a full disk, a file size limit, a read-only or missing directory) as a
    CheckpointError naming ``out``; the writers leave the earlier ``out`` in place and no temporary behind."""
    from converters.engine import ConversionError
    from converters.io import CheckpointError

    try:
        yield
    except (CheckpointError, ConversionError):
        raise
    except Exception as e:  # OSError, or orbax's / tensorstore's own errors for the same causes
        raise CheckpointError(
            f"{out}: could not be written ({type(e).__name__}: {e}); an earlier {out.name} is left as it was"
        ) from e


def _to_jax(args) -> int:
    import vitjax
    from converters import orbax_io
    from converters.hub import load_pretrained

    start = time.perf_counter()
    overrides = {}
    if args.img_size is not None:
        overrides["img_size"] = args.img_size
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    model = vitjax.create_model(args.model, abstract=True, **overrides)
    load_pretrained(model, args.src if args.src is not None else True, progress=True)
    loaded = time.perf_counter()
    with _writing(args.out):
        out = orbax_io.save(model, args.out, extra={"converted_from": model.pretrained_cfg.get("source", "")})
    done = time.perf_counter()
    print(
        f"to-jax: {args.model} ({_count(model):,} weights) from {model.pretrained_cfg.get('source')}\n"
        f"  wrote {out}\n"
        f"  {done - start:.1f}s (read+convert {loaded - start:.1f}s, write {done - loaded:.1f}s), "
        f"peak RSS {_peak_rss_mib():,.0f} MiB"
    )
    return EXIT_OK


def _to_torch(args) -> int:
    import vitjax
    from converters import orbax_io
    from converters.io import CheckpointError
    from converters.runs import is_run_dir, read_run, run_model
    from converters.stream import save_torch
    from converters.tables import sources_for

    start = time.perf_counter()
    if is_run_dir(args.src):  # a python -m train run
        run = read_run(args.src, step=args.step, ema=args.ema)
        name = run.model
        if args.model and args.model != name:
            raise CheckpointError(f"{args.src} trained {name!r}, not {args.model!r}")
        model = run_model(run)
    else:
        if args.ema or args.step is not None:
            raise CheckpointError(f"{args.src}: --ema and --step apply to a python -m train run directory only")
        meta = orbax_io.read_meta(args.src)
        name = args.model or meta["model"]
        if args.model and args.model != meta["model"]:
            raise CheckpointError(f"{args.src} holds {meta['model']!r}, not {args.model!r}")
        model = vitjax.create_model(name, abstract=True, **orbax_io._overrides_from_json(meta["overrides"]))
        orbax_io.restore(model, args.src)
    loaded = time.perf_counter()
    naming = args.naming or sources_for(model.family)[0]
    with _writing(args.out):
        out = save_torch(model, args.out, naming, metadata={"format": "pt", "vitjax_model": name}, progress=True)
    done = time.perf_counter()
    print(
        f"to-torch: {name} ({_count(model):,} weights, {naming} naming)\n"
        f"  wrote {out} ({out.stat().st_size / 2**20:,.1f} MiB)\n"
        f"  {done - start:.1f}s (read {loaded - start:.1f}s, convert+write {done - loaded:.1f}s), "
        f"peak RSS {_peak_rss_mib():,.0f} MiB"
    )
    return EXIT_OK


def _verify(args) -> int:
    import vitjax
    from converters.verify import SEED_MODELS, format_table, verify

    if args.command == "demo":
        names = args.models or [n for n in SEED_MODELS if n in vitjax.list_models()]
        missing = [n for n in (args.models or SEED_MODELS) if n not in vitjax.list_models()]
        if missing:
            print(f"not registered (yet): {missing}", file=sys.stderr)
    else:
        names = [args.model]
    reports = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        kwargs = {"src": args.src, "batch": args.batch} if args.command == "verify" else {}
        reports.append(verify(name, **kwargs))
        print(f"    {reports[-1].seconds:.1f}s, worst error {reports[-1].worst:.2e}", file=sys.stderr, flush=True)
    print(format_table(reports))
    failed = [r.name for r in reports if not r.ok]
    print(
        f"summary: {len(reports) - len(failed)} of {len(reports)} within tolerance"
        + (f"; FAILED {failed}" if failed else "")
    )
    return EXIT_OK if not failed else EXIT_PARITY


def skip_absent_tpu() -> None:
    """Keep JAX from probing for a TPU on a machine that has none, for command-line tools to start quietly.

    The ``tpu`` extra installs libtpu (``python -m train.aot`` compiles for TPUs with it), and JAX then tries a
    TPU backend at start-up: without a TPU, libtpu prints errors about host bounds and worker hostnames before
    JAX falls back to the CPU. With no TPU chip, no NVIDIA GPU and no other JAX plugin on the machine, this
    selects the CPU backend (``jax_platforms="cpu"``) before any backend starts. An explicit ``JAX_PLATFORMS`` is
    respected. The TPU compiler stays at hand: ``train.aot`` loads libtpu through JAX's TPU topology API,
    which needs no TPU backend.
    """
    import jax

    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms:
        return
    try:
        from importlib.metadata import entry_points

        from jax._src import hardware_utils

        if hardware_utils.num_available_tpu_chips_and_device_id()[0] or hardware_utils.has_visible_nvidia_gpu():
            return
        if list(entry_points(group="jax_plugins")) or importlib.util.find_spec("jax_plugins") is not None:
            return
    except (ImportError, AttributeError):  # a JAX without these helpers: leave its platform choice alone
        return
    jax.config.update("jax_platforms", "cpu")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    skip_absent_tpu()
    from converters.engine import ConversionError
    from converters.io import CheckpointError

    commands = {"demo": _verify, "verify": _verify, "to-jax": _to_jax, "to-torch": _to_torch}
    try:
        return commands[args.command](args)
    except (CheckpointError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except ValueError as e:  # unknown model names and tags
        if "unknown model" in str(e) or "pretrained tag" in str(e):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
