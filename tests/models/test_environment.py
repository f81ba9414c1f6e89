"""The test environment itself: conftest's 8 fake CPU devices survive an XLA_FLAGS already set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[2]


def test_eight_devices():
    assert jax.device_count() == 8


def test_eight_devices_with_other_xla_flags_set():
    """conftest appends its device count to XLA_FLAGS instead of leaving any existing value alone."""
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_use_thunk_runtime=true", PYTHONPATH=str(ROOT))
    code = "import tests.conftest, jax, os; print(jax.device_count(), os.environ['XLA_FLAGS'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    count, flags = out.stdout.strip().split(" ", 1)
    assert count == "8", out.stdout
    assert "--xla_cpu_use_thunk_runtime=true" in flags
