"""``python -m train --model NAME --data digits|PATH --workdir DIR [flags]``: see ``python -m train --help``."""

from __future__ import annotations

import sys

from train.config import parse_args
from train.heap import keep_freed_memory
from train.loop import NonFiniteError, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        result = run(cfg)
    except NonFiniteError as e:
        print(f"[train] stopped: {e}", file=sys.stderr)
        return 3
    return 0 if result.preempted or result.steps_done == result.total_steps else 1


if __name__ == "__main__":
    keep_freed_memory()  # re-executes once with glibc's heap kept between steps (train.heap)
    sys.exit(main())
