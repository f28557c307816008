"""Vacuum an image by its snapshot log, and report what each snapshot holds back.

The pager cleans segments given the commits to keep (pager/_vacuum.py); this
module decides them: the retention policy (_retention.py) applied to the
SnapshotLog's snapshots and branch tips.  A snapshot whose version was
vacuumed before (a log entry naming a commit no longer on disk) is reported
as gone, never an error.

WHAT A VACUUM DROPS IS WRITTEN DOWN FIRST (invariant 5 of _log.py): every
snapshot the policy does not retain is marked "vacuumed" in the log, with one
fsync, before the pager is asked to delete any segment.  The order is the
crash-safe one: a crash after the mark and before the deletion leaves
snapshots marked vacuumed whose pages are still there (no longer offered,
which is what the policy asked), whereas the other order could leave a
snapshot listed as bootable with its pages gone.  Its pages may stay on disk
after the pass too (their segment was not worth cleaning); the mark says the
policy released it, and a later vacuum reclaims them.  Snapshots already
marked vacuumed are left out of the retention policy (they cannot be kept:
keeping them would only count them against the newest N boots).

    vacuum_image(path, policy, dry_run)  -> (VacuumReport, {id: held-back bytes})
    held_back(path)                      -> {snapshot id: bytes only it keeps on disk}
"""
from __future__ import annotations

import os

from pager import PageStore
from snapshots._log import VACUUMED, Snapshot, SnapshotLog
from snapshots._retention import DEFAULT, Policy, branch_tips, check_retained, retained


def keep_set(store: PageStore, log: SnapshotLog, policy: Policy = DEFAULT,
             now: float | None = None) -> set[int]:
    """The commits the policy retains in this image (head and tips included)."""
    snaps = _living(log)
    tips = set(branch_tips(log.entries()).values())
    kept = retained(snaps, head=store.head, tips=tips, policy=policy, now=now)
    check_retained(kept, snaps, store.head, tips)
    return kept


def held_back(path: str | os.PathLike) -> dict[int, int]:
    """{snapshot id: bytes on disk that only that snapshot's version reaches},
    among the snapshots still on disk (and the head, which every image keeps)."""
    path = os.fspath(path)
    with PageStore.open(path, readonly=True) as store:
        ids = {s.id for s in _living(SnapshotLog(path))}
        return store.held_back(ids)


def _living(log: SnapshotLog) -> list[Snapshot]:
    """The snapshots no vacuum has dropped."""
    return [s for s in log.snapshots() if s.status != VACUUMED]


def check_marked(log: SnapshotLog, keep: set[int]) -> None:
    """Invariant 5 of _log.py before a vacuum deletes: every snapshot the pass
    may drop (not in keep) is marked vacuumed.  Raises AssertionError."""
    unmarked = [s.id for s in _living(log) if s.id not in keep]
    assert not unmarked, f"snapshots a vacuum may drop, not marked vacuumed: {unmarked}"


def vacuum_image(path: str | os.PathLike, policy: Policy = DEFAULT, dry_run: bool = False,
                 now: float | None = None):
    """Vacuum the image at path (it must not be open for writing elsewhere).
    Returns the pager's VacuumReport and the held-back report after it."""
    path = os.fspath(path)
    log = SnapshotLog(path)
    with PageStore.open(path) as store:
        keep = keep_set(store, log, policy, now)
        if not dry_run:
            log.mark_vacuumed(s.id for s in _living(log) if s.id not in keep)
            check_marked(log, keep)
        report = store.vacuum(keep, dry_run=dry_run)
        ids = {s.id for s in _living(log)}
        held = store.held_back(ids & set(report.retained) | {store.head})
    return report, held
