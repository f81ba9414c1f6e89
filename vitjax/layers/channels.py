"""Channel-count arithmetic shared by the conv families (timm ``layers/helpers.py`` ``make_divisible`` and
``models/byobnet.py`` ``num_groups``)."""

from __future__ import annotations


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``, default ``divisor``), stepping
    up one multiple when rounding lost more than ``1 - round_limit`` of ``v``."""
    min_value = min_value or divisor
    out = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if out < round_limit * v:
        out += divisor
    return out


def num_groups(group_size: int | None, channels: int) -> int:
    """Groups of a grouped conv from its group size: 0/None is a dense conv, 1 depthwise."""
    if not group_size:
        return 1
    if channels % group_size:
        raise ValueError(f"{channels} channels cannot be split into groups of {group_size}")
    return channels // group_size
