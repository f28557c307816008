"""pager: imago's append-only, crash-safe page store.

It owns the bytes of an image: fixed-size logical pages (4 KiB by default, a
power of two from 1 KiB to 64 KiB, fixed at creation) kept in an image
directory ``NAME.image/`` of segment files, and the commit protocol that makes
changes to them atomic and durable.  Format details live in _format.py; the
page table and page access live in the C core (native/core.c).

Public API::

    PageStore.create(path, page_size=4096)  PageStore.open(path, readonly=False)
    store.read / write / free / commit / rollback / head / commits / view
    store.refresh (readers) / check / close
    store.read_bytes / write_bytes / read_word / write_word   (logical addresses)
    errors: PagerError > CorruptImage, ImageLocked, StoreFailed, CommitFailed,
            ReadOnlyStore; RecoveryWarning when opening dropped a record

HOW A COMMIT IS MADE ATOMIC (the invariants, each checked where named)

 1. A byte that a committed state can reach is never overwritten.  The active
    segment grows pages upward from its start and records downward from its
    end; new bytes go only between the two cursors (_Tail), past everything
    committed.  Sealed segments are never written again.
 2. A commit writes its pages, page-table nodes and record, then fdatasyncs
    once; it is acknowledged (commit() returns) only after that sync returned.
    The record holds a checksum of every page it wrote, so a torn commit is
    detected (the newest record's pages are verified when opening).
 3. A record is valid only where the log expects it: its checksum covers the
    previous record's checksum and its commit number, and its pages must begin
    where the previous commit's ended (_Tail.follows).  Opening therefore reads
    the log from the top of the newest segment down (a backward scan from the
    segment's end, in file terms) and stops at the first record that is not a
    valid continuation: stale bytes of an interrupted commit are never trusted.
 4. The first record of every segment is a checkpoint (the page-table root and
    the per-segment usage), and every record names its segment's newest
    checkpoint, so opening any commit replays only within one segment.
 5. A record whose parent is not its predecessor carries a checkpoint.
 6. If a sync fails, the store enters the terminal FAILED state: the kernel may
    have dropped the pages it could not write, so a retry could "succeed"
    without them.  Every later call raises StoreFailed; reopen to recover.
 7. Segment files appear whole: zero-filled, headed and fsynced under a
    temporary name, renamed, then the directory is fsynced.
 8. Every page and page-table node is checked against its checksum before its
    bytes are first used in a process (native/core.c, invariant 1).

STATES (PageStore._state; _verify_state() checks each, check() calls it)

    create/open(readonly=False) --> WRITER --commit, rollback, write--> WRITER
    open(readonly=True) ---------> READER --refresh--> READER
    WRITER --a sync fails--> FAILED (terminal: everything raises StoreFailed)
    any --close()--> CLOSED

    A failed write (ENOSPC, EIO on pwrite) is not a state change: the commit
    raises CommitFailed, nothing was acknowledged, and the uncommitted pages are
    kept so the caller may commit again or roll back.

RECOVERY is what opening does: find the newest valid record (invariant 3),
verify its pages (a failure drops it, with a RecoveryWarning), load its
segment's checkpoint and replay the records after it.  Bytes past the log's
end that are not zeros mean a record was damaged or cut short; that is always
reported (RecoveryWarning, and store.recovery_notes), never silent, because a
damaged record may have been acknowledged.  If a valid newer record lies beyond
the damage, opening refuses with CorruptImage rather than drop it.  The writer
then saves the damaged bytes to ``damaged-*.bin`` and zeroes them.

READERS take no lock.  A reader sees the newest record that is whole and
valid; the writer writes a commit's pages before its record, so a reader that
sees the record also sees the pages.  Concurrency: one thread per store.

OPEN QUESTIONS: every segment is mapped at open (vm.max_map_count bounds an
image to about 65,000 segments, 4 TiB at the default 64 MiB); lazily mapping
them is the next step if that bites.  Vacuum (segment cleaning) arrives with
the snapshots issue; the per-segment usage table in checkpoints is its input.
"""
from pager._errors import (CommitFailed, CorruptImage, ImageLocked, PagerError, ReadOnlyStore,
                           RecoveryWarning, StoreFailed)
from pager._store import CommitInfo, PageStore, PageView

__all__ = [
    "CommitFailed", "CommitInfo", "CorruptImage", "ImageLocked", "PageStore", "PageView",
    "PagerError", "ReadOnlyStore", "RecoveryWarning", "StoreFailed",
]
