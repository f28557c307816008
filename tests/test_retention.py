"""Retention (snapshots/_retention.py): the POLICY string, what is always kept,
the newest boots, and thinning by day, week and month.  Tables of cases, and a
seeded random check of the module's invariant."""
from __future__ import annotations

import random

import pytest

from snapshots._log import Snapshot
from snapshots._retention import (DAY, DEFAULT, Policy, branch_tips, check_retained,
                                  parse_policy, retained)

NOW = 1_800_000_000.0


def snap(id_: int, age_days: float, kind: str = "auto", label: str | None = None) -> Snapshot:
    return Snapshot(id_, NOW - age_days * DAY, kind, label, "main",
                    labels=[label] if label else [])


class TestParsePolicy:
    """parse_policy: the --keep POLICY grammar."""

    @pytest.mark.parametrize("text, expected", [
        (None, DEFAULT),
        ("", DEFAULT),
        ("boots=3", Policy(boots=3)),
        ("boots=10,daily=7,weekly=4", Policy(10, 7, 4, 0)),
        (" daily=0 , weekly=0 ", Policy(boots=10, daily=0, weekly=0)),
        ("monthly=12", Policy(monthly=12)),
        ("all", Policy(keep_all=True)),
    ])
    def test_valid(self, text, expected):
        """Items set their counts; the rest keep their defaults."""
        assert parse_policy(text) == expected

    @pytest.mark.parametrize("text, message", [
        ("hourly=3", "is not one of"),
        ("boots", "is not one of"),
        ("boots=-1", "needs a count"),
        ("boots=ten", "needs a count"),
        ("daily=99999999", "needs a count"),
    ])
    def test_invalid(self, text, message):
        """A bad item is a one-line ValueError naming it."""
        with pytest.raises(ValueError, match=message) as info:
            parse_policy(text)
        assert "\n" not in str(info.value)

    def test_describe_round_trips(self):
        """describe() is a POLICY string that parses back to the same policy."""
        for policy in (DEFAULT, Policy(1, 2, 3, 4), Policy(keep_all=True)):
            assert parse_policy(policy.describe()) == policy


class TestAlwaysKept:
    """Labels, branch tips and the head survive any policy."""

    def test_labels_tips_and_head(self):
        """With every count at zero, only labels, tips and the head remain."""
        snaps = [snap(1, 400, "label", "v1"), snap(2, 300, "boot"), snap(3, 200)]
        kept = retained(snaps, head=9, tips=[5], policy=Policy(0, 0, 0, 0), now=NOW)
        assert kept == {1, 5, 9}

    def test_a_snapshot_labelled_later_counts_as_labelled(self):
        """A boot snapshot that also carries a label is kept as a label."""
        s = snap(4, 100, "boot")
        s.labels.append("good one")
        assert 4 in retained([s], head=9, policy=Policy(0, 0, 0, 0), now=NOW)

    def test_keep_all(self):
        """'all' keeps every snapshot."""
        snaps = [snap(i, i * 10) for i in range(1, 20)]
        assert retained(snaps, head=50, policy=Policy(keep_all=True), now=NOW) == \
            set(range(1, 20)) | {50}


class TestBoots:
    """boots=N: the newest N boot snapshots."""

    def test_newest_boots(self):
        """Of 15 boots, boots=10 keeps the 10 newest (by time, then id)."""
        snaps = [snap(i, 100 - i, "boot") for i in range(1, 16)]
        kept = retained(snaps, head=99, policy=Policy(boots=10, daily=0, weekly=0), now=NOW)
        assert kept == set(range(6, 16)) | {99}

    def test_fewer_boots_than_asked(self):
        """boots=10 with three boots keeps all three."""
        snaps = [snap(i, 50, "boot") for i in range(1, 4)]
        assert retained(snaps, head=9, policy=Policy(boots=10, daily=0, weekly=0),
                        now=NOW) == {1, 2, 3, 9}


class TestThinning:
    """daily, weekly, monthly: the newest snapshot of each period."""

    @pytest.mark.parametrize("policy, expected", [
        (Policy(0, daily=2, weekly=0), {11, 21}),
        (Policy(0, daily=0, weekly=2), {11, 41}),
        (Policy(0, daily=0, weekly=0, monthly=2), {11, 51}),
        (Policy(0, daily=1, weekly=0), {11}),
    ])
    def test_newest_per_period(self, policy, expected):
        """Each period keeps its newest snapshot; older periods beyond the count go."""
        snaps = [snap(10, 0.5), snap(11, 0.1),       # today: 11 is newer
                 snap(20, 1.9), snap(21, 1.2),       # yesterday: 21
                 snap(40, 8.0), snap(41, 7.5),       # last week: 41
                 snap(50, 40.0), snap(51, 35.0)]     # last month: 51
        assert retained(snaps, head=11, policy=policy, now=NOW) == expected

    def test_a_snapshot_from_the_future_counts_as_today(self):
        """A clock set back does not drop the snapshot: its age is 0."""
        kept = retained([snap(7, -3)], head=1, policy=Policy(0, daily=1, weekly=0), now=NOW)
        assert 7 in kept


class TestBranchTips:
    """branch_tips: the last entry of each name wins; a null tip drops the branch."""

    def test_entries(self):
        entries = [{"op": "branch", "name": "a", "tip": 3}, {"op": "snapshot", "id": 4},
                   {"op": "branch", "name": "b", "tip": 5}, {"op": "branch", "name": "a", "tip": 8},
                   {"op": "branch", "name": "b", "tip": None}, {"op": "branch", "name": 7}]
        assert branch_tips(entries) == {"a": 8}


def test_invariant_holds_on_random_logs():
    """Seeded random logs and policies: check_retained holds for every result."""
    rng = random.Random(11)
    for _ in range(200):
        snaps = [snap(i, rng.uniform(-1, 90), rng.choice(["boot", "label", "auto"]),
                      "x" if rng.random() < 0.1 else None) for i in range(rng.randint(0, 60))]
        tips = rng.sample(range(100), rng.randint(0, 3))
        policy = Policy(*(rng.randint(0, 12) for _ in range(4)), keep_all=rng.random() < 0.1)
        kept = retained(snaps, head=100, tips=tips, policy=policy, now=NOW)
        check_retained(kept, snaps, 100, tips)
