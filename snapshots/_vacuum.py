"""Vacuum an image by its snapshot log, and report what each snapshot holds back.

The pager cleans segments given the commits to keep (pager/_vacuum.py); this
module decides them: the retention policy (_retention.py) applied to the
SnapshotLog's snapshots and branch tips.  A snapshot whose version was
vacuumed before (a log entry naming a commit no longer on disk) is reported
as gone, never an error.

    vacuum_image(path, policy, dry_run)  -> (VacuumReport, {id: held-back bytes})
    held_back(path)                      -> {snapshot id: bytes only it keeps on disk}
"""
from __future__ import annotations

import os

from pager import PageStore
from snapshots._log import SnapshotLog
from snapshots._retention import DEFAULT, Policy, branch_tips, check_retained, retained


def keep_set(store: PageStore, log: SnapshotLog, policy: Policy = DEFAULT,
             now: float | None = None) -> set[int]:
    """The commits the policy retains in this image (head and tips included)."""
    snaps = log.snapshots()
    tips = set(branch_tips(log.entries()).values())
    kept = retained(snaps, head=store.head, tips=tips, policy=policy, now=now)
    check_retained(kept, snaps, store.head, tips)
    return kept


def held_back(path: str | os.PathLike) -> dict[int, int]:
    """{snapshot id: bytes on disk that only that snapshot's version reaches},
    among the snapshots still on disk (and the head, which every image keeps)."""
    path = os.fspath(path)
    with PageStore.open(path, readonly=True) as store:
        ids = {s.id for s in SnapshotLog(path).snapshots()}
        return store.held_back(ids)


def vacuum_image(path: str | os.PathLike, policy: Policy = DEFAULT, dry_run: bool = False,
                 now: float | None = None):
    """Vacuum the image at path (it must not be open for writing elsewhere).
    Returns the pager's VacuumReport and the held-back report after it."""
    path = os.fspath(path)
    log = SnapshotLog(path)
    with PageStore.open(path) as store:
        keep = keep_set(store, log, policy, now)
        report = store.vacuum(keep, dry_run=dry_run)
        ids = {s.id for s in log.snapshots()}
        held = store.held_back(ids & set(report.retained) | {store.head})
    return report, held
