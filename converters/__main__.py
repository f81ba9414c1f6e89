"""Command line: ``python -m converters {demo,verify} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys

import vitjax


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters",
        description="Convert weights between timm / transformers and vitjax, and check their parity.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="convert the seed models from randomly initialised reference weights and print the parity table"
    )
    demo.add_argument("--models", nargs="*", default=None, help="names to check (default: the seed models)")
    ver = sub.add_parser("verify", help="print a parity table (features, logits, pre-logits; max error; pass/fail)")
    ver.add_argument("--model", required=True, help="a name from vitjax.list_models()")
    ver.add_argument(
        "--src",
        default=None,
        help="checkpoint (.safetensors/.pth/.bin) loaded into both sides; default: random reference weights",
    )
    ver.add_argument("--batch", type=int, default=2, help="batch size of the random input (default 2)")
    args = parser.parse_args(argv)

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
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
