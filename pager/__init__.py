"""pager: imago's append-only, crash-safe page store.

It owns the bytes of an image: fixed-size logical pages (4 KiB by default, a
power of two from 1 KiB to 64 KiB, fixed at creation) kept in an image
directory ``NAME.image/`` of segment files, and the commit protocol that makes
changes to them atomic and durable.  Format details live in _format.py; the
page table and page access live in the C core (native/core.c).

Public API::

    PageStore.create(path, page_size=4096)  PageStore.open(path, readonly=False)
    store.read / write / free / commit / rollback / head / commits / view
    store.rewind(n) / base: the writer goes on from an older commit (a branch)
    store.refresh (readers) / check / close
    store.vacuum(keep) / store.held_back(commits): segment cleaning (_vacuum.py);
            VacuumReport; a view of a commit vacuum dropped is KeyError "... vacuumed"
    store.read_bytes / write_bytes / read_word / write_word   (logical addresses)
    store.head_meta, view.meta: the caller metadata of the head / viewed commit
    errors: PagerError > CorruptImage, ImageLocked, StoreFailed, CommitFailed,
            ReadOnlyStore; RecoveryWarning when opening dropped a record

HOW A COMMIT IS MADE ATOMIC (the invariants, each checked where named)

 1. A byte that a committed state can reach is never overwritten, and no
    commit writes into a slot an earlier commit used.  A segment is a row of
    page-sized slots; commits follow one another, each [record][pages][nodes],
    and new bytes go only past the log's end (_Tail), into zeros.  So a torn
    write can damage only the commit being made (no reliance on the disk
    writing sectors atomically).  Sealed segments are never written again.
 2. A commit is one contiguous write (its record, pages and page-table nodes,
    then a zeroed slot unless the slot past it already reads as zeros) and one
    fdatasync; it is acknowledged (commit()
    returns) only after that sync returned.  The record holds a checksum of
    every page it wrote, so a torn commit is detected (the newest record's
    pages are verified when opening).
 3. A record is valid only where the log expects it: it names its own slot and
    segment, its checksum covers the previous record's checksum and its commit
    number, and it starts in the slot where the previous commit ended
    (_Tail.follows).  Opening reads the log forward from a checkpoint and stops
    at the first record that is not a valid continuation: stale bytes of an
    interrupted commit are never trusted.  In every acknowledged state the
    slot past the log's end is zero (each commit zeroes it, or checks that it
    reads as zeros: zeros another writer left unsynced in the page cache are
    made durable by this commit's own fdatasync), so anything there at open
    is an interrupted commit or damage.
 4. The first record of every segment is a checkpoint (the page-table root and
    the per-segment usage); every record names its segment's newest
    checkpoint, and every checkpoint the one before it.  Opening replays from
    the newest checkpoint (named by the HINT file when valid, else found by
    reading the segment from slot 1); a view of an old commit walks back the
    checkpoint chain, then replays within one segment.
 5. A record whose parent is not its predecessor carries a checkpoint.
 6. If a sync fails, the store enters the terminal FAILED state: the kernel may
    have dropped the pages it could not write, so a retry could "succeed"
    without them.  Every later call raises StoreFailed; reopen to recover.
 7. Segment files appear whole: reading as zeros past what they hold (written
    zeros; a vacuum group's segment leaves a hole with its blocks reserved,
    or, in a deleted segment's file that vacuum reuses, zeroes that range with
    fallocate ZERO_RANGE), headed and fsynced under a temporary name, renamed,
    then the directory is fsynced.
 8. Every page and page-table node is checked against its checksum before its
    bytes are first used in a process (native/core.c, invariant 1).
 9. The log's state (the head) is that of its newest record without FLAG_SIDE.
    A side record is a vacuum's stand-in for an older commit (a checkpoint of
    that commit's content, written copy-on-write, naming it in stands_for); a
    vacuum writes its stand-ins between two checkpoints of the head's content
    in one write, so in every acknowledged state the newest record is not a
    side record.  After a crash that left side records last, the next commit
    is a checkpoint (invariant 5), and opening verifies every record of the
    trailing vacuum group, not only the newest (_settle_group).  A segment is
    deleted only after the stand-ins that replace it are durable, so a
    retained commit always resolves to records on disk (pager/_vacuum.py).

STATES (PageStore._state; _verify_state() checks each, check() calls it)

    create/open(readonly=False) --> WRITER --commit, rollback, write--> WRITER
    open(readonly=True) ---------> READER --refresh--> READER
    WRITER --a sync fails-----------------------------> FAILED
    WRITER --interrupted while its write runs---------> FAILED (Ctrl-C, MemoryError)
    WRITER --a failed write whose bytes cannot be cleared--> FAILED
    any --close()--> CLOSED

    FAILED is terminal: everything raises StoreFailed until the image is
    reopened, which recovers whatever the disk holds.  A failed write (ENOSPC,
    EIO on pwrite) is otherwise not a state change: the commit raises
    CommitFailed, nothing was acknowledged, any bytes it left are cleared so
    that no one takes them for a commit, and the uncommitted pages are kept so
    the caller may commit again or roll back.

    An interruption (Ctrl-C) leaves the store agreeing with the disk
    (PageStore._catch_up).  On the real file system (the plain Vfs) a
    commit's build, write, sync and finish are one C call (ic_commit_write)
    with the GIL released, so an interruption lands before it (nothing
    happened) or as it returns (the commit stands and the store catches up
    with it).  A Vfs subclass (the fault shims of the tests) makes the steps
    in Python: interrupted before the write, the build is undone and the
    store stays a WRITER with its changes; while the write runs, FAILED (what
    landed is unknown); once the write returned whole, in or after the sync,
    the sync is completed (an interruption is no failed sync: invariant 6
    does not forbid it) and the commit stands.  Either way the interruption
    then goes on up, and the caller finds the new head.

RECOVERY is what opening does: find the newest valid record (invariant 3),
verify its pages (a failure drops it, with a RecoveryWarning; only the newest
can be torn, so the one before it is trusted), load its checkpoint and replay
the records after it.  A slot past the log's end that is not zeros means a
record was damaged or cut short; that is always reported (RecoveryWarning, and
store.recovery_notes), never silent, because a damaged record may have been
acknowledged.  If a valid newer record lies beyond the damage, opening refuses
with CorruptImage rather than drop it.  A gap in the segment numbers is a
vacuumed segment: the log goes on from the next segment's first checkpoint.  The writer then saves the non-zero
slots past the end to ``damaged-*.bin`` and zeroes them.

READERS take no lock; each registers the commits it uses (its head, its open
views) in readers/<pid>-<token>, held with flock, so that vacuum keeps them.  A reader sees the newest record that is whole and
valid; the writer writes a commit's pages before its record, so a reader that
sees the record also sees the pages.  Concurrency: one thread per store.

COSTS: a one-page commit appends two slots (record and page) plus its share of
checkpoints, and costs one contiguous write and one fdatasync (measured at
parity with SQLite in WAL mode, and 1.5x LMDB; bench/README.md).  Commits
spread over a large image dirty a page-table leaf each, which the next
checkpoint writes: about 3.2 pages a commit over 10 GiB.  Opening costs one
checkpoint plus at most CHECKPOINT_RECORDS records and CHECKPOINT_PAGES pages
replayed, plus mapping each segment (one C call each, core.c ic_store_attach:
about 28 us on this VM, nearly all of it the five system calls).  The zero slot of invariant 3 is written only when the
slot past a commit does not read as zeros, which after a clean open or in a
segment this process made is never (strace of 500 durable inbox appends:
500 pwrites of record + pages, no zero slot), so dropping it would save
nothing.  Nor do bytes cost much on the disks measured: pwrite + fdatasync of
8, 12 and 16 KiB into written zeros ran at the same rate (about 5,500/s,
fdatasync about 120 us), and RWF_DSYNC or O_DSYNC writes were no faster than
pwrite + fdatasync: a durable commit costs its one sync.

OPEN QUESTIONS: every segment is mapped at open (vm.max_map_count bounds an
image to about 65,000 segments, 4 TiB at the default 64 MiB, and at 28 us a
segment such an image opens in 2 s); lazily mapping them is the next step.
Vacuum (segment cleaning, _vacuum.py) copies what retained versions reach out
of mostly-dead segments and writes stand-ins for the versions whose trees
pointed there; its throughput is bounded by resolving the retained versions
(Python record decoding), a group's fixed costs and the stand-ins' path nodes,
and by the file system freeing a deleted segment's blocks, which a thread does
after the call (figures: bench/README.md; one deleted segment's file is
kept and reused for the next new segment, so a pass frees and allocates one
segment less).  A pass holds at most one segment of disk
beyond the image (pager/_vacuum.py, V4): a victim whose copies and stand-ins
(a record slot at least per retained version reaching it) would pass that is
kept, and reported (VacuumReport.refused).
"""
from pager._errors import (CommitFailed, CorruptImage, ImageLocked, PagerError, ReadOnlyStore,
                           RecoveryWarning, StoreFailed)
from pager._store import CommitInfo, PageStore, PageView, WrittenPages

__all__ = [
    "CommitFailed", "CommitInfo", "CorruptImage", "ImageLocked", "PageStore", "PageView",
    "PagerError", "ReadOnlyStore", "RecoveryWarning", "StoreFailed", "WrittenPages",
]
