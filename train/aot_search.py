"""The largest global batch whose train step fits a TPU chip's memory, found in few compiles (``--find-batch`` of
``python -m train.aot``; the story of the searches behind the TPU table is in ``train/AOT.md``).

A compile of a real model for a TPU topology takes minutes, so the search spends compiles with care. Per-device
memory is roughly affine in the batch (parameter and optimizer shards, plus activations per example), so the
first guesses follow the line through the compiles so far (a secant). The TPU compiler's memory is only nearly
affine (its scheduling and rematerialisation change with the shapes, by a few percent, and not even monotonically),
so after four guesses the search gallops up from the largest batch that fits and then bisects, which ends whatever
the memory does. The compile is a parameter: :func:`train.aot.find_batch` passes the TPU compile, the tests a rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from train.aot_report import Report, gib
from train.config import TrainConfig

# The guesses aim a little under the HBM: the compiler's memory is not exactly affine in the batch (its scheduling
# and fusion change with the shapes), and v5e refuses programs above 15.75 of 16 GiB.
AIM = 0.97
SECANT_GUESSES = 4  # guesses along the memory line before galloping and bisecting


class ResumeError(ValueError):
    """A --find-batch report that cannot be continued with these settings."""


def check_resumable(r: Report, settings: dict) -> None:
    """A search is resumed only from a batch that fits, compiled with the same ``settings`` (model, topology, mesh
    and options: what ``train.aot.settings`` returns)."""
    have = {key: getattr(r, key) for key in settings}
    if have != settings:
        diff = ", ".join(
            f"{key} {have[key]!r} (now {settings[key]!r})" for key in settings if have[key] != settings[key]
        )
        raise ResumeError(f"cannot resume a search made with other settings: {diff}")
    if not r.fits or not r.search:
        raise ResumeError("cannot resume: the report is not of a batch that fits, with its search")


def search_batch(
    cfg: TrainConfig,
    compile_report: Callable[[TrainConfig], Report],
    *,
    unit: int,
    settings: dict,
    limit: int = 1 << 16,
    granularity: int = 0,
    log=print,
    progress: Callable[[int, Report], None] | None = None,
    resume: Report | None = None,
) -> tuple[int, Report]:
    """The largest global batch that fits, a multiple of ``unit`` (data x fsdp x grad-accum), where
    ``compile_report(cfg with the batch)`` says whether a batch fits and at what memory.

    The next batch tried is where the line through the two latest compiles that fit meets ``AIM`` of the HBM (the
    first guess scales ``cfg.batch_size`` by HBM / memory). A guess inside a bracket keeps a quarter of it on each
    side; a guess at or below the largest that fits aims at the full HBM, else tries the next batch. After
    ``SECANT_GUESSES`` guesses the search gallops up from the largest batch that fits (when no batch has failed yet)
    and bisects. It stops when the bracket between the largest batch that fits and the smallest that does not is no
    wider than ``granularity`` examples (default: one unit), or at ``limit``.

    Returns the batch (0 when not even one unit fits) and the report of the largest batch that fits (else the
    smallest tried), its ``search`` listing every compile; ``progress`` gets the same pair after every compile, so
    that a search cut short still leaves its best result. ``resume`` (such a report of a batch that fits, made with
    the same ``settings``) continues that search from its compiles, or returns it when that search was complete."""
    step = max(1, -(-granularity // unit)) if granularity else 1
    top = max(1, limit // unit)  # the largest multiple of the unit allowed
    tried: dict[int, Report] = {}

    def compile_at(k: int) -> Report:
        r = compile_report(dataclasses.replace(cfg, batch_size=k * unit))
        tried[k] = r
        need = gib(r.total_bytes) if r.total_bytes >= 0 else "refused by the compiler (no size stated)"
        log(f"  batch {k * unit}: {need} of {gib(r.hbm_bytes)} -> {'fits' if r.fits else 'no'}")
        return r

    def guess(lo: int, hi: int, aim: float) -> int:
        """Where memory reaches ``aim`` of the HBM on the line through the two latest compiles that fit (else the
        two latest that state their memory; an out-of-memory refusal states only what the compiler wanted)."""
        known = [(k, r.total_bytes, r.hbm_bytes * aim) for k, r in tried.items() if r.total_bytes > 0]
        fitting = [p for p in known if tried[p[0]].fits]
        known = fitting if len(fitting) >= 2 else known
        if not known:
            return 2 * lo if lo else hi // 2
        if len(known) == 1:
            k, total, target = known[0]
            return int(k * target / total)
        (k0, t0, target), (k1, t1, _) = known[-2:]
        slope = (t1 - t0) / (k1 - k0)
        if slope <= 0:
            return 2 * lo if lo else hi // 2
        return int(k1 + (target - t1) / slope)

    def result() -> tuple[int, Report]:
        best = tried[lo] if lo else tried[min(tried)]
        best.search = [[k * unit, r.total_bytes, r.fits] for k, r in tried.items()]
        return lo * unit, best

    def next_k() -> int:
        nonlocal secant, gallop
        if secant > 0:
            secant -= 1
            k = guess(lo, hi, AIM)
            if k <= lo:  # aiming at the full HBM, else the next batch, to close the bracket
                k = max(guess(lo, hi, 1.0), lo + step)
            elif hi <= top and lo:  # inside a bracket: keep a quarter of it on each side, so it shrinks anyway
                margin = max(1, (hi - lo) // 4)
                k = min(max(k, lo + margin), hi - margin)
            return max(lo + 1, min(k, hi - 1))
        if hi <= top:
            return (lo + hi) // 2
        gallop += 1  # no upper bound yet: gallop up from the largest that fits
        return min(top, lo + step * 2 ** (gallop - 1))

    def done() -> bool:
        return hi - lo <= (step if lo else 1)

    lo, hi = 0, top + 1  # largest k known to fit, smallest known not to (top + 1: beyond the limit)
    secant, gallop = SECANT_GUESSES, 0
    if resume is None:
        k = min(top, max(1, cfg.batch_size // unit))
    else:
        check_resumable(resume, settings)
        for batch, total, fits in resume.search:
            tried[batch // unit] = (
                resume
                if batch == resume.global_batch
                else dataclasses.replace(resume, global_batch=batch, total_bytes=total, fits=fits)
            )  # a stand-in that carries only what the search reads: memory and fit
        lo = resume.global_batch // unit
        hi = min((k for k, r in tried.items() if not r.fits and k > lo), default=top + 1)
        secant = max(0, secant + 1 - len(tried))  # the first compile was not a guess
        log(f"  resuming from {len(tried)} compiles: {lo * unit} fits, {hi * unit if hi <= top else '-'} does not")
        if done() or resume.search_done:  # a complete search is only reported again
            return result()
        k = next_k()
    while True:
        if compile_at(k).fits:
            lo = k
        else:
            hi = k
        if progress:
            progress(*result())
        if done():
            break
        k = next_k()
    return result()
