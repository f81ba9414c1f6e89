"""``python -m train --model NAME --data digits|PATH --workdir DIR [flags]``: see ``python -m train --help``."""

from __future__ import annotations

import sys

from converters.__main__ import skip_absent_tpu
from converters.io import CheckpointError
from train.checkpoint import WorkdirError
from train.config import parse_args
from train.data import ImageError
from train.heap import keep_freed_memory
from train.loop import NonFiniteError, run


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    skip_absent_tpu()
    try:
        result = run(cfg)
    except NonFiniteError as e:
        print(f"[train] stopped: {e}", file=sys.stderr)
        return 3
    except (ImageError, CheckpointError, WorkdirError) as e:
        print(f"[train] error: {e}", file=sys.stderr)
        return 2
    return 0 if result.preempted or result.steps_done == result.total_steps else 1


if __name__ == "__main__":
    keep_freed_memory()  # re-executes once with glibc's heap kept between steps (train.heap)
    sys.exit(main())
