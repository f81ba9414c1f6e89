"""``train.heap``: the launchers' glibc heap. The kept heap stops the page faults that XLA:CPU's per-call
temporaries cause; the huge-page mode faults them in huge pages where the kernel gives them; an unknown
``VITJAX_HEAP`` is an error naming it; the program re-executes only where JAX will run on the CPU. The page size
and the transparent-huge-page mode are read from this machine."""

from __future__ import annotations

import fnmatch
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from train import heap
from train.heap import HEAP_TUNABLES, HUGE_PAGE_TUNABLES, heap_mode, keep_freed_memory

TEMPORARY = 4096 * 4096 * 4  # bytes of the program's temporary (a @ a.T below): 64 MiB

_FAULTS_PER_CALL = """
import os, resource, sys
from train.heap import keep_freed_memory
keep_freed_memory()
import jax, jax.numpy as jnp
a = jnp.ones((4096, 256))
# each call holds a 64 MiB temporary (a @ a.T), above glibc's largest mmap threshold
f = jax.jit(lambda a: jnp.sum((a @ a.T) @ a[:, :8]))
f(a).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(a).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4
print("RESULT", repr(os.environ.get("GLIBC_TUNABLES", "")), faults)
"""


def _faults_per_call(**env_extra) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VITJAX_HEAP", "XLA_FLAGS")}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_CALL],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    _, tunables, faults = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")).split()
    return tunables.strip("'"), float(faults)


def _transparent_huge_pages() -> str:
    """The kernel's THP mode (always, madvise or never); never where the kernel has no THP."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0]


def _huge_page_size() -> int:
    try:
        return int(Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").read_text())
    except OSError:
        return 2 << 20


def test_keep_freed_memory_reexecutes_without_page_faults_per_call():
    tunables, kept = _faults_per_call()
    assert tunables.split(":") == list(HEAP_TUNABLES)
    default_tunables, default = _faults_per_call(VITJAX_HEAP="default")
    assert default_tunables == ""
    # glibc unmaps the temporary after each call and the next call faults it in again (in huge pages where the
    # kernel's THP mode is always); with the tunables the re-executed process reuses it
    page = _huge_page_size() if _transparent_huge_pages() == "always" else resource.getpagesize()
    assert default > 0.9 * TEMPORARY / page
    assert kept < default / 10


def test_huge_page_mode_replaces_the_kept_heap_and_faults_huge_pages():
    # another program's tunable stays; the kept mode's are replaced
    other, kept_key = "glibc.malloc.tcache_count=9", "glibc.malloc.mmap_max=0"
    tunables, huge = _faults_per_call(VITJAX_HEAP="hugepages", GLIBC_TUNABLES=f"{other}:{kept_key}")
    assert tunables.split(":") == [other, *HUGE_PAGE_TUNABLES]
    small_pages = TEMPORARY / resource.getpagesize()
    if _transparent_huge_pages() == "never":
        # glibc's madvise has no effect: the temporary is faulted in small pages on every call
        assert huge > 0.9 * small_pages
    else:
        # mapped anew on every call, in huge pages
        assert huge < small_pages / 20


def test_unknown_heap_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("VITJAX_HEAP", "huge")
    with pytest.raises(ValueError, match="VITJAX_HEAP='huge': expected one of kept, hugepages, default"):
        keep_freed_memory()
    monkeypatch.setenv("VITJAX_HEAP", "hugepages")
    assert heap_mode() == "hugepages"


@pytest.mark.parametrize(
    "platforms, nodes, reexecutes",
    [("cpu", ["/dev/accel0"], True), ("tpu", [], False), ("cuda,cpu", [], False), (None, [], True)]
    + [(None, ["/dev/accel0"], False), (None, ["/dev/nvidia0"], False), (None, ["/dev/vfio/0"], False)],
)
def test_keep_freed_memory_acts_only_where_jax_runs_on_the_cpu(monkeypatch, platforms, nodes, reexecutes):
    if platforms is None:
        monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    else:
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.delenv("VITJAX_HEAP", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.setattr(heap.glob, "glob", lambda pattern: fnmatch.filter(nodes, pattern))
    calls = []
    monkeypatch.setattr(heap.os, "execv", lambda *args: calls.append(args))
    keep_freed_memory()
    assert bool(calls) == reexecutes
    assert (os.environ["GLIBC_TUNABLES"] == ":".join(HEAP_TUNABLES)) == reexecutes
