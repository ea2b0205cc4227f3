"""Distributed merge sort: a primary splits a list, two workers sort the halves.

``sort_remotely`` is a two-role choreography (a ``boss`` hands a list to a ``helper``, who
sorts it and hands it back). ``merge_sort`` reuses it twice with ``ch.call``, mapping
``boss`` to ``primary`` and ``helper`` to ``worker1`` and then to ``worker2``; finally the
primary merges the sorted halves. Sub-choreographies compose like functions, and the role
mapping says who plays which part.

The workers run a plain local merge sort; the sort is stable, so equal keys keep their order.
"""

from __future__ import annotations

import accompanist as ac

__all__ = ["Boss", "Helper", "Primary", "Worker1", "Worker2", "merge", "merge_sort", "sort_remotely"]

Boss, Helper = ac.roles("boss", "helper")
Primary, Worker1, Worker2 = ac.roles("primary", "worker1", "worker2")


def merge(left: list[int], right: list[int]) -> list[int]:
    """Merge two sorted lists into one sorted list."""
    out: list[int] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if right[j] < left[i]:
            out.append(right[j])
            j += 1
        else:
            out.append(left[i])
            i += 1
    return out + left[i:] + right[j:]


def local_sort(items: list[int]) -> list[int]:
    """A plain, single-machine merge sort: what each worker runs."""
    if len(items) <= 1:
        return list(items)
    middle = len(items) // 2
    return merge(local_sort(items[:middle]), local_sort(items[middle:]))


def halves(items: list[int]) -> tuple[list[int], list[int]]:
    """Split a list in two (the first half is the shorter one for odd lengths)."""
    middle = len(items) // 2
    return items[:middle], items[middle:]


@ac.choreography("sort-remotely", roles=(Boss, Helper))
async def sort_remotely(ch: ac.Choreo, items: ac.Located[list[int]]) -> ac.Located[list[int]]:
    """The boss has the helper sort ``items`` and gets the sorted list back."""
    at_helper = await ch.comm(Boss, Helper, items)
    done = await ch.locally(Helper, local_sort, at_helper)
    return await ch.comm(Helper, Boss, done)


@ac.choreography("merge-sort", roles=(Primary, Worker1, Worker2))
async def merge_sort(ch: ac.Choreo, items: ac.Located[list[int]]) -> ac.Located[list[int]]:
    """Sort ``items``: each worker sorts half, the primary merges."""
    split = await ch.locally(Primary, halves, items)
    left = await ch.locally(Primary, lambda parts: parts[0], split)
    right = await ch.locally(Primary, lambda parts: parts[1], split)
    left_sorted = await ch.call(sort_remotely, left, roles={Boss: Primary, Helper: Worker1})
    right_sorted = await ch.call(sort_remotely, right, roles={Boss: Primary, Helper: Worker2})
    return await ch.locally(Primary, merge, left_sorted, right_sorted)
