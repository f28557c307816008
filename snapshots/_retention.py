"""Retention: which snapshots vacuum keeps.  Pure: snapshots in, commit numbers out.

WHAT IS ALWAYS KEPT: every labelled snapshot, every branch tip (SNAPSHOTS
entries ``{"op": "branch", "name", "tip"}``; the last entry for a name wins, a
tip of null drops the branch), and the head.

THE POLICY (``imago vacuum IMAGE --keep POLICY``) is a comma-separated list of
``name=count`` items; items left out keep their defaults::

    boots=N     the newest N boot snapshots, whatever their status   (10)
    daily=N     the newest snapshot of each of the last N days       (7)
    weekly=N    the newest snapshot of each of the last N weeks      (4)
    monthly=N   the newest snapshot of each of the last N 30-day periods (0)
    all         every snapshot (vacuum reclaims only versions no snapshot names)

e.g. ``boots=10,daily=7,weekly=4`` (the default), ``boots=3,daily=0,weekly=0``
(the leanest: labels, tips, head and three boots).  Periods count back from
``now``: period k holds the snapshots whose age is in [k, k+1) periods; a
snapshot from the future (a clock set back) counts as age 0.

INVARIANT (check_retained(), which the tests call): the result is a subset of
the snapshot ids plus the head and tips, and holds every label, tip and the head.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

DAY = 86400.0
PERIODS = {"daily": DAY, "weekly": 7 * DAY, "monthly": 30 * DAY}
MAX_COUNT = 1_000_000   # a count beyond this is a typo, not a policy


@dataclass(frozen=True)
class Policy:
    """How many of each kind to keep (see the module docstring)."""
    boots: int = 10
    daily: int = 7
    weekly: int = 4
    monthly: int = 0
    keep_all: bool = False

    def describe(self) -> str:
        if self.keep_all:
            return "all"
        return f"boots={self.boots},daily={self.daily},weekly={self.weekly},monthly={self.monthly}"


DEFAULT = Policy()


def parse_policy(text: str | None) -> Policy:
    """A Policy from a POLICY string; ValueError (one line) when it is not one."""
    if text is None or not text.strip():
        return DEFAULT
    fields = {"boots": DEFAULT.boots, "daily": DEFAULT.daily, "weekly": DEFAULT.weekly,
              "monthly": DEFAULT.monthly}
    keep_all = False
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            keep_all = True
            continue
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--keep: {item!r} is not one of boots=N, daily=N, weekly=N, "
                             f"monthly=N, all")
        if not value.isdigit() or int(value) > MAX_COUNT:
            raise ValueError(f"--keep: {name} needs a count from 0 to {MAX_COUNT}, not {value!r}")
        fields[name] = int(value)
    return Policy(keep_all=keep_all, **fields)


def branch_tips(entries: Iterable[dict]) -> dict[str, int]:
    """{branch name: tip commit} from the snapshot log's entries."""
    tips: dict[str, int] = {}
    for e in entries:
        if e.get("op") != "branch" or not isinstance(e.get("name"), str):
            continue
        tip = e.get("tip")
        if isinstance(tip, int) and not isinstance(tip, bool) and tip >= 0:
            tips[e["name"]] = tip
        else:
            tips.pop(e["name"], None)
    return tips


def retained(snapshots: Iterable, *, head: int, tips: Iterable[int] = (),
             policy: Policy = DEFAULT, now: float | None = None) -> set[int]:
    """The commit numbers to keep: labels, tips, the head, and what the policy keeps.
    snapshots: objects with id, time, kind and labels (snapshots.Snapshot)."""
    snaps = list(snapshots)
    now = time.time() if now is None else now
    keep = {head, *tips}
    if policy.keep_all:
        return keep | {s.id for s in snaps}
    keep |= {s.id for s in snaps if s.kind == "label" or s.labels}
    boots = sorted((s for s in snaps if s.kind == "boot"), key=lambda s: (s.time, s.id))
    if policy.boots:
        keep |= {s.id for s in boots[-policy.boots:]}
    for name, seconds in PERIODS.items():
        keep |= _newest_per_period(snaps, getattr(policy, name), seconds, now)
    return keep


def _newest_per_period(snaps: list, count: int, seconds: float, now: float) -> set[int]:
    newest: dict[int, object] = {}
    for s in snaps:
        period = max(0, int((now - s.time) // seconds))
        if period < count:
            best = newest.get(period)
            if best is None or (s.time, s.id) > (best.time, best.id):
                newest[period] = s
    return {s.id for s in newest.values()}


def check_retained(kept: set[int], snapshots: Iterable, head: int, tips: Iterable[int]) -> None:
    """The module's invariant; raises AssertionError when it fails."""
    snaps = list(snapshots)
    tips = set(tips)
    assert kept <= {s.id for s in snaps} | {head} | tips
    assert head in kept and tips <= kept
    assert {s.id for s in snaps if s.kind == "label" or s.labels} <= kept
