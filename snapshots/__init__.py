"""snapshots: boot snapshots, labels, time travel, branches, retention, vacuum,
bundles and the changes journal.

What is built:

    SnapshotLog(image_path)     the snapshot log beside the segments (_log.py):
        .take(commit, kind, label, branch), .mark(id, status), .snapshots(),
        .newest_good(), .record_branch(name, tip, from), .branch_entries()
    Image.snapshots() / Image.snapshot(label)   the same from an open image
        (this package registers them with image.provide when imported: the
        image layer does not import the layers above it)
    Image.at(id)                a read-only view of a snapshot (its id is its commit)
    Image.rewind(id)            go on from an older snapshot

  Branches (_branches.py: the model and its invariants):
    current_branch(img), branches(img) -> [Branch(name, tip, from_commit, current)]
    create_branch(img, name, from_commit=None), switch(img, name)
    rewind_keeping_line(img, commit)   booting an older snapshot: the line left
                                       is kept as the branch "<branch>~<tip>"
  Booting without a menu (_boot.py): boot_target(img, log) -> the newest good
    snapshot of the current line if its last session crashed, else None (the head)
  Versions (_versions.py: the journal, fingerprints):
    journal(img) / changes(img, since, branch) -> [Change(n, commit, time, form)]
    history(img, name) -> [Version(commit, time, how, forms)]
    diff(img, older, newer) -> Diff(added, removed, changed)
    replay_source(img, since, branch=None) -> (Branch, [Change])   what replay reads
    fingerprint(value)          a bounded digest of a value's content

  Bundles (_bundle.py: the format and its checks):
    export(image_or_path, commit, out_path) -> BundleInfo   one zstd bundle of a version
    import_bundle(bundle_path, image_path) -> BundleInfo    a new image from a bundle
    verify(bundle_path) -> BundleInfo                       check a bundle without importing
  fsck (_fsck.py):
    fsck(path) -> FsckReport    verify every snapshot's pages, page table and heap

  Retention and vacuum (_retention.py, _vacuum.py; the pager's side: pager/_vacuum.py):
    parse_policy("boots=10,daily=7,weekly=4") -> Policy; retained(snapshots, policy, ...)
    vacuum_image(path, policy) reclaims what no retained snapshot reaches
    held_back(path) -> {snapshot id: bytes on disk only that snapshot keeps}

Replaying forms needs the Scheme layer: `imago replay` (browser) runs the
entries replay_source() finds.
"""
from __future__ import annotations

import image

from snapshots._boot import boot_target
from snapshots._branches import (DEFAULT_BRANCH, Branch, branches, create_branch, current_branch,
                                 rewind_keeping_line, switch)
from snapshots._bundle import BundleError, BundleInfo, export, import_bundle, verify
from snapshots._fsck import FsckReport, VersionResult, fsck
from snapshots._log import KINDS, Snapshot, SnapshotLog
from snapshots._retention import Policy, parse_policy, retained
from snapshots._vacuum import held_back, vacuum_image
from snapshots._versions import (Change, Diff, Version, changes, diff, fingerprint, history, journal,
                                 replay_source)

__all__ = ["Branch", "BundleError", "BundleInfo", "Change", "DEFAULT_BRANCH", "Diff", "FsckReport",
           "KINDS", "Policy", "Snapshot", "SnapshotLog", "Version", "VersionResult", "boot_target",
           "branches", "changes", "create_branch", "current_branch", "diff", "export",
           "fingerprint", "fsck", "held_back", "history", "import_bundle", "journal", "log_of",
           "parse_policy", "replay_source", "retained", "rewind_keeping_line", "switch",
           "vacuum_image", "verify"]


def log_of(img: image.Image) -> SnapshotLog:
    """The snapshot log of an open image."""
    return SnapshotLog(img.path)


def _snapshots(self: image.Image) -> list[Snapshot]:
    """Every snapshot of this image, oldest first."""
    return log_of(self).snapshots(session_running=not self.readonly)


def _snapshot(self: image.Image, label: str) -> Snapshot:
    """Labels the current version (the writer's state) as a snapshot, on the current branch."""
    from snapshots._branches import version_of
    return log_of(self).take(version_of(self), "label", str(label), current_branch(self))


image.provide("snapshots", _snapshots)
image.provide("snapshot", _snapshot)
