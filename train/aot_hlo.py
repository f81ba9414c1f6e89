"""What ``python -m train.aot`` reads from the text of a compiled program: its collectives, any traffic with the host,
its while loops, and the memory an out-of-memory refusal asked for.

The TPU executable gives its memory and FLOPs through ``memory_analysis()`` and ``cost_analysis()``; what it does not
count (which collectives run, how much each moves, whether the step calls back to the host) is read here from the
optimised HLO text, ``compiled.as_text()``. Pure functions of strings: they are tested on hand-written HLO.
"""

from __future__ import annotations

import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4}
_DTYPE_BYTES |= {"f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 1, "u4": 1}
_OP = re.compile(
    r"=\s*(?P<type>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(",
)
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) \(.*\) -> (?P<result>.*) \{$")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
# anything that would move data between the device and the host inside the step
_HOST = re.compile(
    r"\b(send|recv|send-done|recv-done|infeed|outfeed)\(|custom_call_target=\"[^\"]*(callback|host)[^\"]*\"",
    re.IGNORECASE,
)


def _type_bytes(text: str, arrays_only: bool = False) -> list[int]:
    """Bytes of each array in an HLO type (a tuple gives several); ``arrays_only`` leaves out scalars."""
    out = []
    for dtype, dims in _ARRAY.findall(text):
        if arrays_only and not dims:
            continue
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        out.append(n * _DTYPE_BYTES.get(dtype, 4))
    return out


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """``{op: {"count": n, "bytes": result bytes per device}}`` for each collective of the optimised HLO text.

    Async ``*-start`` ops count once (their result tuple holds the operands, then the results, then scalar
    context such as a collective-permute's u32 sync flags, which is left out). The TPU compiler
    writes a reduce-scatter as an all-reduce fused with a dynamic slice, in a computation named
    ``all-reduce-scatter*``: that counts as one reduce-scatter with the computation's (sliced) result. Ops inside
    a loop body (gradient accumulation) are counted once."""
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    in_rs = False
    for line in hlo.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            in_rs = head["name"].startswith("all-reduce-scatter")
            if in_rs:
                out["reduce-scatter"]["count"] += 1
                out["reduce-scatter"]["bytes"] += sum(_type_bytes(head["result"]))
            continue
        m = _OP.search(line)
        if not m or (in_rs and m["op"] == "all-reduce"):
            continue
        sizes = _type_bytes(m["type"], arrays_only=bool(m["start"]))
        if m["start"] and m["op"] in ("all-gather", "collective-permute", "all-to-all") and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2 :]
        out[m["op"]]["count"] += 1
        out[m["op"]]["bytes"] += sum(sizes)
    return out


def host_transfers(hlo: str) -> list[str]:
    """The HLO lines that would call back to or transfer with the host."""
    return [line.strip()[:160] for line in hlo.splitlines() if _HOST.search(line)]


def while_loops(hlo: str) -> int:
    """The number of while loops: the executable's cost analysis counts each loop body once, so a step whose
    matmuls the compiler turned into loops (FSDP's collective matmuls) reports fewer FLOPs than it runs."""
    return len(re.findall(r"\bwhile\(", hlo))


def oom_bytes(message: str) -> int:
    """The memory the TPU compiler said it needed, from its out-of-memory error (-1 when not stated)."""
    m = re.search(r"required for [^(]*\((?P<n>[\d.]+)(?P<u>[KMGT])\)", message)
    if not m:
        return -1
    return int(float(m["n"]) * 1024 ** "KMGT".index(m["u"]) * 1024)
