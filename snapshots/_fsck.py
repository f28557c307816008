"""fsck: verify every retained version of an image, not only the newest.

`imago check` verifies the head's page table and heap and every record of the
log.  A snapshot is a promise that an older version can be booted, so fsck
keeps that promise honest: for every snapshot in the snapshot log, and for
the head, it opens a read-only view of that commit and verifies

  1. the page table it reaches: every node and page re-hashed against its
     checksum, no slot reachable twice, the per-segment accounting exact
     (PageView.check, the C core's ic_tree_check);
  2. its object memory: the heap verifier and every blob's keyed hash
     (image.Image.check over the view).

A page only an old snapshot reaches (overwritten since) is checked by that
snapshot alone; damage there fails that snapshot and no other.

Each version gets a VersionResult (ok, or the one-line error that stopped
its verification); a fault in one never stops the others.  The report is
FAILED if any version failed; the CLI then exits with status 1.  Only
opening the image at all (its head must be found) can raise.

A snapshot the log marks "vacuumed" (a vacuum's policy dropped it, _log.py
invariant 5) is not verified: its pages may be gone, and that is no damage.
It is listed with vacuumed=True and counts as passed.  Every other snapshot
is a promise, so one whose version is not on disk FAILS ("commit N was
vacuumed" for a snapshot the log still offers is a lost version).

INVARIANT (FsckReport.check): one result per version, ascending by commit,
the head among them; a result holds an error or its counts, never both; a
vacuumed result holds neither and is never the head.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import image
from pager import PagerError, PageStore
from snapshots._log import VACUUMED, SnapshotLog


@dataclass(frozen=True)
class VersionResult:
    """What verifying one version found."""
    id: int                  # the commit (a snapshot's id is its commit)
    kind: str                # "head", or the snapshot's kind: boot, label, auto
    label: str | None
    error: str | None        # None: every check passed (or, vacuumed, none was made)
    pages: int = 0
    nodes: int = 0
    objects: int = 0
    blobs: int = 0
    vacuumed: bool = False   # a vacuum dropped it: not verified, not a failure

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FsckReport:
    path: str
    head: int
    results: tuple[VersionResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[VersionResult]:
        return [r for r in self.results if not r.ok]

    def check(self) -> None:
        """The report's invariant (module docstring), asserted."""
        ids = [r.id for r in self.results]
        assert ids == sorted(set(ids)), ids
        assert self.head in ids, (self.head, ids)
        for r in self.results:
            assert (r.error is None) or (r.pages, r.nodes, r.objects, r.blobs) == (0, 0, 0, 0), r
            assert not r.vacuumed or (r.error is None and r.id != self.head
                                      and (r.pages, r.nodes, r.objects, r.blobs) == (0, 0, 0, 0)), r

    @property
    def vacuumed(self) -> list[VersionResult]:
        return [r for r in self.results if r.vacuumed]


def fsck(path: str | os.PathLike) -> FsckReport:
    """Verifies the head and every snapshot of the image at path (read-only:
    a running session may go on)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no image at {path}")
    with PageStore.open(path, readonly=True) as store:
        versions = _versions(path, store.head)
        results = tuple(_vacuumed(commit, kind, label) if dropped and commit != store.head
                        else _verify_version(store, commit, kind, label)
                        for commit, (kind, label, dropped) in sorted(versions.items()))
        report = FsckReport(path, store.head, results)
    report.check()
    return report


def _versions(path: str, head: int) -> dict[int, tuple[str, str | None, bool]]:
    """commit -> (kind, label, vacuumed) for every snapshot, and the head."""
    versions = {s.id: (s.kind, s.labels_text or None, s.status == VACUUMED)
                for s in SnapshotLog(path).snapshots()}
    versions.setdefault(head, ("head", None, False))
    return versions


def _vacuumed(commit: int, kind: str, label: str | None) -> VersionResult:
    return VersionResult(commit, kind, label, None, vacuumed=True)


def _verify_version(store: PageStore, commit: int, kind: str, label: str | None) -> VersionResult:
    try:
        counts = _verify(store, commit)
    except KeyError as exc:    # store.view: the commit is no longer on disk
        return VersionResult(commit, kind, label, str(exc.args[0] if exc.args else exc))
    except Exception as exc:   # noqa: BLE001 - damage surfaces in many types; record, go on
        return VersionResult(commit, kind, label, _one_line(exc))
    return VersionResult(commit, kind, label, None, **counts)


def _verify(store: PageStore, commit: int) -> dict:
    view = store.view(commit)
    try:
        tree = view.check()
        img = image.Image(view)     # the view becomes the image's store
    except BaseException:
        view.close()
        raise
    with img:
        heap = img.check()
    return {"pages": tree["pages"], "nodes": tree["nodes"], "objects": heap["objects"],
            "blobs": heap["blobs"]}


def _one_line(exc: Exception) -> str:
    """The error as a user reads it: its message, its type when the type is
    not one of ours (it then says more than the message)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    ours = (image.ImageError, PagerError, ValueError, OSError)
    return text if isinstance(exc, ours) else f"{type(exc).__name__}: {text}"
