"""glibc's heap for XLA:CPU processes: the launchers' (``python -m train``, ``train/demo.py``, ``python -m
benchmarks``) first call, :func:`keep_freed_memory`.

XLA:CPU allocates a program's temporary buffer with ``malloc`` on every call and frees it at the end. glibc serves
such a large block with ``mmap`` and returns it with ``munmap`` (or trims it off the heap), so every call faults
each of its pages in again: for a ViT training step that is hundreds of thousands of page faults, a tenth of the
step. glibc's tunables (``GLIBC_TUNABLES``, read once when a process starts) can keep freed memory for reuse, so
:func:`keep_freed_memory` re-executes the program with them; it is the launcher's business, never the model
library's (``vitjax`` does not touch the process).

``VITJAX_HEAP`` picks the mode:

* ``kept`` (the default, :data:`HEAP_TUNABLES`): large blocks come from the heap (never ``mmap``), the heap is
  never trimmed and there is one arena (XLA's worker threads would otherwise ``mmap`` large blocks from arenas of
  their own, whatever ``mmap_max`` says). No page faults remain per call. The cost: the process keeps its peak
  memory until it exits, and the one heap can fragment (a large block that finds no hole of its size extends it).
* ``hugepages`` (:data:`HUGE_PAGE_TUNABLES`): bounded memory instead. Blocks of 32 MiB and more are mapped for
  each call and handed back after it, in transparent huge pages (glibc's ``hugetlb=1``; the kernel's THP mode
  must be ``madvise`` or ``always``), 1/512 of the faults of 4 KiB pages; smaller blocks stay on heaps that are
  never trimmed.
* ``default``: glibc's own settings.

The re-execution happens only on Linux with glibc and only where JAX's default backend will be the CPU (on a TPU
or GPU host the host's heap is not XLA:CPU's to tune).
"""

from __future__ import annotations

import glob
import os
import platform
import sys

# a heap that is never trimmed (64 GiB): both modes keep what they do not map
_NEVER_TRIM = "glibc.malloc.trim_threshold=68719476736"
# large blocks from the heap (never mmap), a heap that is never trimmed, one arena
HEAP_TUNABLES = ("glibc.malloc.mmap_max=0", _NEVER_TRIM, "glibc.malloc.arena_max=1")
# blocks of 32 MiB and more (glibc's largest threshold) mmapped and handed back after every call, in transparent
# huge pages; smaller blocks from heaps that are never trimmed
HUGE_PAGE_TUNABLES = ("glibc.malloc.hugetlb=1", "glibc.malloc.mmap_threshold=33554432", _NEVER_TRIM)
HEAP_MODES: dict[str, tuple[str, ...]] = {"kept": HEAP_TUNABLES, "hugepages": HUGE_PAGE_TUNABLES, "default": ()}


def heap_mode() -> str:
    """``VITJAX_HEAP``: ``kept`` (unset: :data:`HEAP_TUNABLES`), ``hugepages`` (:data:`HUGE_PAGE_TUNABLES`) or
    ``default`` (glibc's own settings); ``ValueError`` naming the variable otherwise."""
    mode = os.environ.get("VITJAX_HEAP", "kept")
    if mode not in HEAP_MODES:
        raise ValueError(f"VITJAX_HEAP={mode!r}: expected one of {', '.join(HEAP_MODES)}")
    return mode


# device nodes of accelerators JAX runs on: TPU (accel, or vfio on newer TPU VMs), NVIDIA GPU, AMD GPU
_ACCELERATOR_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def runs_on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU, judged before any backend starts: the first platform in
    ``JAX_PLATFORMS`` where it is set, otherwise the absence of TPU and GPU device nodes (a GPU without JAX's CUDA
    plugin counts as an accelerator: the heap is then left as glibc has it)."""
    platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    return not any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES)


def keep_freed_memory() -> None:
    """Re-execute this Python program (its interpreter, options and arguments) with the tunables of
    :func:`heap_mode` added to ``GLIBC_TUNABLES`` (replacing any of the other mode's). Call it first thing in a
    launcher: it does not return when it re-executes. Does nothing off Linux/glibc, when JAX will not run on the
    CPU (:func:`runs_on_cpu`), when the tunables are already set (so also after the re-execution), or when
    ``VITJAX_HEAP=default``; raises ``ValueError`` for an unknown ``VITJAX_HEAP``."""
    wanted = HEAP_MODES[heap_mode()]
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or not wanted or not runs_on_cpu():
        return
    current = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t]
    if all(t in current for t in wanted):
        return
    ours = {t.split("=")[0] for mode in HEAP_MODES.values() for t in mode}
    tunables = [t for t in current if t.split("=")[0] not in ours] + list(wanted)
    os.environ["GLIBC_TUNABLES"] = ":".join(tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
