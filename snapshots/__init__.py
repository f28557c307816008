"""snapshots: boot snapshots, labels, time travel, branches, retention, vacuum,
bundles and the changes journal.

Being built (the snapshots issue).  What exists:

    SnapshotLog(image_path)     the snapshot log beside the segments (_log.py):
        .take(commit, kind, label), .mark(id, status), .snapshots(), .newest_good()
    Image.snapshots() / Image.snapshot(label)   the same from an open image
        (this package registers them with image.provide when imported: the
        image layer does not import the layers above it)
    Image.at(id)                a read-only view of a snapshot (its id is its commit)
    Image.rewind(id)            go on from an older snapshot (a branch)

Not built yet: the boot menu, named branches, history and diff, replay,
retention and vacuum, export and import, fsck.
"""
from __future__ import annotations

import image

from snapshots._log import KINDS, Snapshot, SnapshotLog

__all__ = ["KINDS", "Snapshot", "SnapshotLog", "log_of"]


def log_of(img: image.Image) -> SnapshotLog:
    """The snapshot log of an open image."""
    return SnapshotLog(img.path)


def _snapshots(self: image.Image) -> list[Snapshot]:
    """Every snapshot of this image, oldest first."""
    return log_of(self).snapshots(session_running=not self.readonly)


def _snapshot(self: image.Image, label: str) -> Snapshot:
    """Labels the current version (the newest commit) as a snapshot."""
    return log_of(self).take(self.base, "label", str(label))


image.provide("snapshots", _snapshots)
image.provide("snapshot", _snapshot)
