"""Which agent consumes which partition: a pure function of the last assignment and the members.

The assignment lives in the group's KV bucket next to the members. When the members change,
any member computes the next assignment from the current one with :func:`rebalance` and
writes it with a compare-and-set on the key's revision (so one write wins, the others re-read).
A partition stays with its member unless that member left or holds more than an even share:
a change moves only the partitions it must (a third of them going from 2 to 3 members).

>>> rebalance({}, 4, ["b", "a"])
{0: 'a', 1: 'a', 2: 'b', 3: 'b'}
>>> rebalance({0: 'a', 1: 'a', 2: 'b', 3: 'b'}, 4, ["a", "b", "c"])
{0: 'a', 1: 'a', 2: 'b', 3: 'c'}
>>> rebalance({0: 'a', 1: 'a', 2: 'b', 3: 'c'}, 4, ["a", "c"])
{0: 'a', 1: 'a', 2: 'c', 3: 'c'}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def rebalance(previous: Mapping[int, str], partitions: int, members: Sequence[str]) -> dict[int, str]:
    """Partition -> member for partitions 0 .. partitions - 1, moving as few as an even spread allows."""
    names = sorted(set(members))
    if not names:
        return {}
    held: dict[str, list[int]] = {m: [] for m in names}
    for p in range(partitions):
        owner = previous.get(p)
        if owner in held:
            held[owner].append(p)
    base, extra = divmod(partitions, len(names))
    # The `extra` members allowed one more than the base share: those holding most already.
    by_load = sorted(names, key=lambda m: (-len(held[m]), m))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_load)}
    free: list[int] = [p for p in range(partitions) if previous.get(p) not in held]
    for m in names:
        while len(held[m]) > quota[m]:
            free.append(held[m].pop())
    free.sort()
    for m in names:
        while len(held[m]) < quota[m]:
            held[m].append(free.pop(0))
    return dict(sorted((p, m) for m in names for p in held[m]))


def owned_by(assignment: Mapping[int, str], member: str) -> set[int]:
    return {p for p, m in assignment.items() if m == member}


def moved(before: Mapping[int, str], after: Mapping[int, str]) -> set[int]:
    """Partitions whose member differs between two assignments."""
    return {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
