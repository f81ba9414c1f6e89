"""Test settings: 8 fake CPU devices (set before jax is imported), rank promotion raises, fp32 matmuls at
full precision for parity."""

import os

# appended to whatever XLA_FLAGS the environment already has (setdefault would drop the 8 devices then)
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# libtpu (the `tpu` extra, for train.aot's ahead-of-time TPU compiles) makes every jax process probe for a TPU;
# tests run on the CPU and reach TPU topologies through get_topology_desc, which needs no TPU backend
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

_PARITY: dict = {}


@pytest.fixture(scope="session")
def parity_results() -> dict:
    return _PARITY


def pytest_terminal_summary(terminalreporter):
    if not _PARITY:
        return
    tr = terminalreporter
    tr.section("parity: worst error per family (max|jax - ref| / max(1, max|ref|))")
    for fam, r in sorted(_PARITY.items()):
        tr.write_line(f"{fam:32s} {r['worst']:.2e}  ({r['n']} checks; worst: {r['model']})")
