"""Which version of an index entry a completed checkpoint includes.

Every write batch gets increasing write ids (on Kafka, the changelog offsets of
its records). An entry keeps the id of its last write with the value before
that write (`before`, None when absent) and after it (`after`, None when
deleted). A checkpoint's mark names the highest id it includes (`upto`) and the
void ranges: ids written by checkpoints that never completed. A range `(a, b)`
voids the ids `a < id <= b`. Pure functions only; no I/O.
"""

from __future__ import annotations

VoidRanges = list[tuple[int, int]]


def is_void(write_id: int, void: VoidRanges) -> bool:
    return any(low < write_id <= high for low, high in void)


def resolve(
    write_id: int, before: bytes | None, after: bytes | None, upto: int, void: VoidRanges
) -> bytes | None:
    """The value a reader sees: `after` if a completed checkpoint includes the write.

    Otherwise the records that caused the write will be folded again, and seeing
    their effect already applied would count them twice, so the reader gets the
    value from before it.
    """
    if write_id <= upto and not is_void(write_id, void):
        return after
    return before


def add_void(void: VoidRanges, *, upto: int, written: int) -> VoidRanges:
    """`void` with the ids a restore from the mark `upto` must not trust, `(upto, written]`.

    `written` is the highest id the store or its changelog holds. Ranges that
    overlap or touch are merged: a range stands for every id in it, whichever
    crash left them.
    """
    ranges = sorted([*void, (upto, written)] if written > upto else void)
    merged: VoidRanges = []
    for low, high in ranges:
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged
