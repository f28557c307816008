"""I/O errors at the page store's file boundary (tests/faults.FaultVfs).

The contract (pager/__init__.py, invariant 6 and STATES):

- a failed write (the commit's one pwrite, whole or short, and the writes,
  open or rename of a new segment) makes commit() raise CommitFailed; nothing
  was acknowledged, the store stays a writer with its uncommitted pages, and
  once the fault is gone the same store commits them, durably, under the next
  commit number, whether the commit goes on in the same segment or a new one;
- a store closed after a failed commit write reopens at its last commit; what
  a short write left is reported (its record is whole, its pages are not), and
  the next commit's zero slot keeps the open after it silent;
- a failed sync (fdatasync of a commit, fsync of a new segment, fsync of the
  directory) makes commit() raise StoreFailed, and every later call raises
  StoreFailed until the image is reopened; a sync is never retried;
- either way nothing committed before is lost: reopening with the real Vfs
  finds every earlier commit's pages and check() passes.  After a failed sync
  the commit in flight may or may not be there (its bytes may have reached the
  disk), but only whole;
- opening clears a torn commit (saves the dirty slots to damaged-*.bin, then
  one pwrite of zeros and an fdatasync); if any step fails, open raises and
  the next open finds what is left, reports and saves it;
- create() on a failing disk raises and leaves no half-made image directory.
"""
from __future__ import annotations

import errno
import os
import random
import warnings

import pytest

from faults import CrashVfs, FaultVfs, SimulatedCrash, abandon, commit_write, fates
from pager import CommitFailed, PagerError, PageStore, RecoveryWarning, StoreFailed

PAGE = 1024
SEGMENT = 64 << 10              # 64 slots of 1 KiB: a 60-page commit cannot fit beside others
ROLLOVER_PAGES = 60
ERRNOS = [errno.ENOSPC, errno.EIO]


class Image:
    """A store on a FaultVfs, and the pages each of its commits holds."""

    def __init__(self, path: str, vfs: FaultVfs) -> None:
        self.path = path
        self.vfs = vfs
        self.store = PageStore.create(path, page_size=PAGE, segment_size=SEGMENT, _vfs=vfs)
        self.rng = random.Random(1)
        self.committed: dict[int, bytes] = {}
        self.history: dict[int, dict[int, bytes]] = {0: {}}
        self.staged: dict[int, bytes] = {}

    def stage(self, pages: int = 3) -> None:
        """Write full random pages, some over committed ones."""
        for page_no in self.rng.sample(range(2 * ROLLOVER_PAGES), pages):
            data = self.rng.randbytes(PAGE)
            self.store.write(page_no, data)
            self.staged[page_no] = data

    def commit(self) -> int:
        seq = self.store.commit(f"commit {len(self.history)}".encode())
        assert seq == max(self.history) + 1
        self.committed = {**self.committed, **self.staged}
        self.staged = {}
        self.history[seq] = self.committed
        return seq

    def commit_some(self, n: int = 3) -> None:
        for _ in range(n):
            self.stage()
            self.commit()

    @property
    def head(self) -> int:
        return max(self.history)

    def expect(self, store: PageStore, pages: dict[int, bytes]) -> None:
        for page_no in range(2 * ROLLOVER_PAGES):
            assert store.read(page_no) == pages.get(page_no, bytes(PAGE)), f"page {page_no}"

    def reopen_and_verify(self, in_flight_may_survive: bool = False) -> PageStore:
        """Open with the real Vfs; every acknowledged commit is intact."""
        store = PageStore.open(self.path)
        if in_flight_may_survive and store.head == self.head + 1:
            self.committed = {**self.committed, **self.staged}
            self.history[store.head] = self.committed
        assert store.head == self.head
        self.expect(store, self.history[store.head])
        for seq in self.history:
            with store.view(seq) as view:
                for page_no in self.history[seq]:
                    assert view.read(page_no) == self.history[seq][page_no]
        assert store.check()["head"] == store.head
        return store


@pytest.fixture
def image(tmp_path):
    img = Image(str(tmp_path / "faulty.image"), FaultVfs())
    yield img
    img.store.close()


def failed_calls_raise_store_failed(store: PageStore) -> None:
    """Every later call of a FAILED store raises StoreFailed (invariant 6)."""
    calls = [lambda: store.write(1, b"x"), lambda: store.commit(), lambda: store.read(1),
             lambda: store.rollback(), lambda: store.read_bytes(0, 8), lambda: store.free(1),
             lambda: store.write_word(0, 1), lambda: store.read_word(0), lambda: store.check(),
             lambda: store.commits(), lambda: store.view(0)]
    for call in calls:
        with pytest.raises(StoreFailed):
            call()


SAME_SEGMENT, NEW_SEGMENT = 5, ROLLOVER_PAGES
SEGMENT_CASES = {"argvalues": [SAME_SEGMENT, NEW_SEGMENT], "ids": ["same-segment", "new-segment"]}


class TestFailedWrite:
    @pytest.mark.parametrize("err", ERRNOS)
    @pytest.mark.parametrize("partial", [False, True], ids=["whole", "short"])
    @pytest.mark.parametrize("pages", **SEGMENT_CASES)
    def test_commit_raises_and_can_be_retried(self, image, err, partial, pages):
        """A failed or short commit write raises CommitFailed; a retry commits the pages durably."""
        image.commit_some()
        image.stage(pages)
        image.vfs.arm("pwrite", 1, err, partial=partial, when=commit_write)
        with pytest.raises(CommitFailed, match=os.strerror(err)):
            image.store.commit()
        assert image.vfs.failures == 1
        assert image.store.head == image.head
        assert image.store.dirty_pages == pages
        image.expect(image.store, {**image.committed, **image.staged})
        image.vfs.disarm()
        assert image.commit() == image.head
        assert image.store.check()["head"] == image.head
        image.commit_some(2)
        image.store.close()
        image.reopen_and_verify().close()

    @pytest.mark.parametrize("partial", [False, True], ids=["whole", "short"])
    @pytest.mark.parametrize("pages", **SEGMENT_CASES)
    def test_failed_commit_then_reopen(self, image, partial, pages):
        """A store closed after a failed commit write reopens at its last commit; a short
        write's bytes are reported as a dropped commit, and a later one opens silently."""
        image.commit_some()
        image.stage(pages)
        image.vfs.arm("pwrite", 1, errno.EIO, partial=partial, when=commit_write)
        with pytest.raises(CommitFailed):
            image.store.commit()
        image.store.close()
        image.staged = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            image.store = image.reopen_and_verify()
        # Half a commit write holds its whole record (it comes first) and some
        # pages; the store zeroes the record's first block once the write fails,
        # so reopening finds at most an incomplete record past the end (silence
        # when the rest of the record's slot was padding), never a commit.
        messages = [str(w.message) for w in caught]
        assert len(messages) <= partial, messages
        assert all("damaged or incomplete" in m and "dropped" not in m
                   for m in messages), messages
        image.commit_some(2)
        image.store.close()
        image.reopen_and_verify().close()               # warnings are errors: none expected

    @pytest.mark.parametrize("reopen", [False, True], ids=["same-store", "reopened"])
    def test_short_write_then_a_commit_in_a_new_segment(self, image, reopen):
        """A short commit write followed by a commit in a new segment leaves no trace in
        the history: commits() lists only what commit() returned, and check() passes."""
        image.commit_some()
        image.stage(3)
        image.vfs.arm("pwrite", 1, errno.ENOSPC, partial=True, when=commit_write)
        with pytest.raises(CommitFailed):
            image.store.commit(b"failed")               # its record lands whole, its pages not
        image.vfs.disarm()
        image.stage(ROLLOVER_PAGES)
        seq = image.commit()
        assert image.store._tail.segno == 2             # the retry went to segment 2
        if reopen:
            image.store.close()
            image.store = PageStore.open(image.path)
        assert [c.meta for c in image.store.commits()] == \
            [b""] + [f"commit {n}".encode() for n in range(1, seq + 1)]
        assert image.store.check()["head"] == seq

    @pytest.mark.parametrize("err", ERRNOS)
    def test_full_disk_fails_every_commit_until_space_returns(self, image, err):
        """While every write fails, commits raise CommitFailed and lose nothing, then resume."""
        image.commit_some()
        image.vfs.arm("pwrite", 1, err, persist=True)
        image.stage(4)
        for _ in range(3):
            with pytest.raises(CommitFailed):
                image.store.commit()
        image.stage(ROLLOVER_PAGES)            # a commit that needs a new segment fails too
        with pytest.raises(CommitFailed):
            image.store.commit()
        assert image.store.head == image.head
        image.vfs.disarm()
        image.commit()
        image.commit_some(2)
        image.store.close()
        image.reopen_and_verify().close()

    @pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
    def test_short_write_that_cannot_be_cleared_is_terminal(self, image, err):
        """A short commit write whose record cannot then be cleared (every write fails)
        leaves the store FAILED, and reopening never brings that commit back."""
        image.commit_some()
        image.stage(4)
        image.vfs.arm("pwrite", 1, err, persist=True, partial=True)
        with pytest.raises(StoreFailed):
            image.store.commit()
        with pytest.raises(StoreFailed):
            image.store.read(0)
        image.vfs.disarm()
        image.store.close()
        image.staged = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecoveryWarning)
            reopened = image.reopen_and_verify()
        assert reopened.head == image.head
        reopened.close()

    @pytest.mark.parametrize("pages", [30, NEW_SEGMENT], ids=["same-segment", "new-segment"])
    def test_rollback_after_a_failed_commit(self, image, pages):
        """After a short write fails a commit, rollback and new commits leave a clean image."""
        image.commit_some()
        image.stage(pages)
        image.vfs.arm("pwrite", 1, errno.ENOSPC, partial=True, when=commit_write)
        with pytest.raises(CommitFailed):
            image.store.commit(bytes(range(256)) * 4)     # a record of several blocks
        assert image.vfs.failures == 1
        image.store.rollback()
        image.staged = {}
        assert image.store.dirty_pages == 0
        image.expect(image.store, image.committed)
        image.vfs.disarm()
        image.commit_some(2)                            # smaller: they end inside the torn bytes
        image.store.close()
        image.reopen_and_verify().close()               # warnings are errors: none expected

    @pytest.mark.parametrize("err", ERRNOS)
    @pytest.mark.parametrize("op,nth", [("pwrite", 1), ("pwrite", 2), ("open", 1), ("open", 2),
                                        ("open", 3), ("rename", 1)],
                             ids=["zero-fill", "header", "open-temp", "open-attach",
                                  "open-append", "rename"])
    def test_new_segment_failure_can_be_retried(self, image, err, op, nth):
        """A commit whose new segment cannot be made raises CommitFailed; a retry succeeds."""
        image.commit_some()
        image.stage(ROLLOVER_PAGES)
        before = dict(image.vfs.calls)
        image.vfs.arm(op, nth, err, partial=True)
        with pytest.raises(CommitFailed, match=os.strerror(err)):
            image.store.commit()
        assert image.vfs.failures == 1, (before, image.vfs.calls)
        image.vfs.disarm()
        image.expect(image.store, {**image.committed, **image.staged})
        image.commit()
        image.commit_some(2)
        assert image.store.check()["head"] == image.head
        image.store.close()
        image.reopen_and_verify().close()
        assert not [n for n in os.listdir(image.path) if n.endswith(".tmp")]

    def test_new_segment_failure_then_reopen(self, image):
        """A store abandoned after a failed segment creation reopens at its head and commits on."""
        image.commit_some()
        image.stage(ROLLOVER_PAGES)
        image.vfs.arm("open", 3, errno.EIO)     # the segment exists, mapped, but not opened
        with pytest.raises(CommitFailed):
            image.store.commit()
        image.store.close()
        image.staged = {}
        store = image.reopen_and_verify()
        image.store = store
        image.commit_some(2)
        store.close()
        image.reopen_and_verify().close()


class TestFailedSync:
    @pytest.mark.parametrize("err", ERRNOS)
    @pytest.mark.parametrize("op,rollover", [("fdatasync", False), ("fdatasync", True),
                                             ("fsync", True), ("fsync_dir", True)])
    def test_store_refuses_all_work_after_a_failed_sync(self, image, err, op, rollover):
        """A failed sync raises StoreFailed, as does every later call; reopening loses nothing."""
        image.commit_some()
        image.stage(ROLLOVER_PAGES if rollover else 3)
        image.vfs.arm(op, 1, err)
        with pytest.raises(StoreFailed, match=os.strerror(err)):
            image.store.commit()
        image.vfs.disarm()                       # the disk is fine again: still no retry
        failed_calls_raise_store_failed(image.store)
        image.store.close()
        image.store = image.reopen_and_verify(in_flight_may_survive=(op == "fdatasync"))
        image.staged = {}
        image.commit_some(2)
        image.store.close()
        image.reopen_and_verify().close()

    def test_failed_sync_is_never_retried(self, image):
        """After a failed fdatasync the store makes no further sync or write, even when asked to."""
        image.commit_some()
        image.stage(2)
        image.vfs.arm("fdatasync", 1, errno.EIO)
        with pytest.raises(StoreFailed):
            image.store.commit()
        calls = dict(image.vfs.calls)
        for _ in range(3):
            with pytest.raises(StoreFailed):
                image.store.commit()
        assert dict(image.vfs.calls) == calls


class TestOpenFaults:
    @pytest.mark.parametrize("err", ERRNOS)
    def test_failed_open_releases_everything(self, image, err):
        """An open failing at any file it opens raises, leaks no descriptor and frees the LOCK."""
        image.commit_some(2)
        image.stage(ROLLOVER_PAGES)
        image.commit()                           # two segments
        image.store.close()
        counter = FaultVfs()
        PageStore.open(image.path, _vfs=counter).close()
        fds = len(os.listdir("/dev/fd"))
        for nth in range(1, counter.calls["open"] + 1):
            vfs = FaultVfs()
            vfs.arm("open", nth, err)
            with pytest.raises(OSError):
                PageStore.open(image.path, _vfs=vfs)
            assert len(os.listdir("/dev/fd")) == fds, f"open #{nth} leaked"
        image.store = image.reopen_and_verify()

    @pytest.mark.parametrize("op,nth,partial,zeroed", [
        ("open", 1, False, 0), ("pwrite", 1, False, 0), ("fsync", 1, False, 0),
        ("pwrite", 2, False, 0), ("pwrite", 2, True, 1), ("fdatasync", 1, False, 2)],
        ids=["open-saved", "save", "sync-saved", "zero", "zero-short", "sync-zeros"])
    def test_failure_while_clearing_a_torn_tail(self, image, op, nth, partial, zeroed):
        """If saving or zeroing a torn commit at open fails, open raises, and a later open
        reports what is left, saves it and recovers."""
        image.commit_some()
        image.store.close()
        crash = CrashVfs(random.Random(3), crash_at_sync=1,
                         force=fates(record="sectors:01", pages="keep"))
        store = PageStore.open(image.path, _vfs=crash)
        store.write(1, b"in flight")
        with pytest.raises(SimulatedCrash):
            store.commit(b"x" * 600)                  # a record of two sectors, the first lost
        abandon(store)
        commit = crash.report.commit()
        start, ps = commit.offset, commit.file.page_size
        # (no zero slot: the slot past the commit already reads as zeros)
        assert [r.kind for r in commit.layout.regions] == ["record", "page"]
        torn = commit.file.after[start - commit.file.lo:][:2 * ps]   # the record and the page
        assert torn[:512] == bytes(512) and torn[512:ps] != bytes(ps - 512)
        vfs = FaultVfs()
        when = (lambda path, *_: "damaged-" in path) if op == "open" else None
        vfs.arm(op, nth, errno.EIO, partial=partial, when=when)
        with warnings.catch_warnings(record=True), \
                pytest.raises(StoreFailed if op == "fdatasync" else OSError):
            warnings.simplefilter("always", RecoveryWarning)
            PageStore.open(image.path, _vfs=vfs)
        assert vfs.failures == 1
        with open(os.path.join(image.path, "seg-000001"), "rb") as f:
            left = f.read()[start:start + 2 * ps]
        assert left == bytes(zeroed * ps) + torn[zeroed * ps:]   # the slots it did zero
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            image.store = PageStore.open(image.path)
        # what the failed open zeroed (a failed fdatasync came after the zeros were written)
        # is gone; whatever is left in the torn commit's first slot is reported and saved
        assert len(caught) == (left[:ps] != bytes(ps))
        if caught:
            with open(os.path.join(image.path, f"damaged-seg-000001-{start // ps}.bin"),
                      "rb") as f:
                assert f.read() == left
        image.expect(image.store, image.committed)
        image.commit_some(1)
        image.store.close()
        image.reopen_and_verify().close()


class TestCreate:
    OPS = ["pwrite", "fdatasync", "fsync", "fsync_dir", "open", "rename", "mkdir"]

    @pytest.mark.parametrize("err", ERRNOS)
    @pytest.mark.parametrize("op", OPS)
    def test_failed_create_leaves_no_half_image(self, tmp_path, op, err):
        """create() failing at any call of op raises OSError or PagerError; no half image stays."""
        counter = FaultVfs()
        PageStore.create(str(tmp_path / "count.image"), page_size=PAGE, segment_size=SEGMENT,
                         _vfs=counter).close()
        assert counter.calls[op] >= 1
        wrong = []
        for nth in range(1, counter.calls[op] + 1):
            path = str(tmp_path / f"{op}-{nth}.image")
            vfs = FaultVfs()
            vfs.arm(op, nth, err, partial=True)
            with pytest.raises(Exception) as info:
                PageStore.create(path, page_size=PAGE, segment_size=SEGMENT, _vfs=vfs)
            if not isinstance(info.value, (OSError, PagerError)):
                wrong.append(f"#{nth}: {type(info.value).__module__}."
                             f"{type(info.value).__qualname__}: {info.value}")
            assert vfs.failures == 1
            assert_whole_or_absent(path)
        assert not [n for n in os.listdir(tmp_path) if ".creating-" in n]
        assert not wrong, f"create() let a private exception escape when {op} failed: {wrong}"

    def test_full_disk(self, tmp_path):
        """With no space at all, create() raises ENOSPC and leaves nothing behind."""
        vfs = FaultVfs()
        vfs.arm("pwrite", 1, errno.ENOSPC, persist=True, partial=True)
        with pytest.raises(OSError) as info:
            PageStore.create(str(tmp_path / "full.image"), page_size=PAGE, segment_size=SEGMENT,
                             _vfs=vfs)
        assert info.value.errno == errno.ENOSPC
        assert os.listdir(tmp_path) == []


def assert_whole_or_absent(path: str) -> None:
    """No image at path, or one that opens empty, passes check() and takes a commit."""
    if not os.path.lexists(path):
        return
    with PageStore.open(path) as store:
        assert store.head == 0
        assert store.check()["commits"] == 1
        store.write(0, b"still works")
        assert store.commit() == 1
