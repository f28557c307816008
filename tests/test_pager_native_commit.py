"""The commit in one C call (native/core.c, "a whole commit in one call").

With the real file system, PageStore.commit builds, writes, syncs and
finishes a commit in one call into C; with any other Vfs (the crash and
fault shims) it makes the same steps in Python, through the Vfs.  Checked
here, for the C path:

- it makes the same log: commits reopen to the pages written, across
  checkpoints and a change of segment (where it hands over to the Vfs path),
  and check() passes after each;
- a failed write raises CommitFailed: nothing is committed, the store stays a
  writer with its uncommitted pages, and commits them once the fault is gone;
- a failed sync raises StoreFailed and the store refuses every call until it
  is reopened, which finds the last acknowledged commit whole.

Faults: the C path writes to the store's segment descriptor, past the Vfs, so
the tests put a descriptor that fails there (read-only: the write fails;
/dev/null: the write passes and the sync fails), then restore it.
"""
from __future__ import annotations

import os
import random

import pytest

from pager import CommitFailed, PageStore, StoreFailed
from pager._vfs import Vfs

PAGE = 1024
SEGMENT = 64 << 10   # 64 slots: a few dozen small commits fill a segment


class CountingVfs(Vfs):
    """The real file system, counting the commit writes and syncs."""

    def __init__(self) -> None:
        self.pwrites = 0
        self.syncs = 0

    def pwrite(self, fd, data, offset) -> None:
        self.pwrites += 1
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd) -> None:
        self.syncs += 1
        super().fdatasync(fd)


def _write_random(store: PageStore, rng: random.Random, pages: dict[int, bytes], n: int) -> None:
    for page_no in rng.sample(range(40), n):
        data = rng.randbytes(PAGE)
        store.write(page_no, data)
        pages[page_no] = data


def _swap_segment_fd(store: PageStore, fd: int) -> int:
    """Put fd where the C path writes; returns the one it replaced."""
    old, store._seg_fd = store._seg_fd, fd
    return old


# -- which path runs ------------------------------------------------------------

def test_the_real_file_system_takes_the_c_path(tmp_path):
    """A store on the real Vfs commits in C; a Vfs subclass sees every write and sync."""
    with PageStore.create(tmp_path / "a.image") as store:
        assert store._native_io
    vfs = CountingVfs()
    with PageStore.create(tmp_path / "b.image", _vfs=vfs) as store:
        assert not store._native_io
        before = (vfs.pwrites, vfs.syncs)
        store.write(3, b"x" * 10)
        store.commit()
        assert (vfs.pwrites - before[0], vfs.syncs - before[1]) == (1, 1)


# -- the log it makes ---------------------------------------------------------------

def test_commits_reopen_to_their_pages_across_checkpoints_and_segments(tmp_path, monkeypatch):
    """Many small commits (checkpoints every 8 records, several segments) read
    back the same from the writer, after reopening, and from views."""
    import pager._store as store_module
    monkeypatch.setattr(store_module, "CHECKPOINT_RECORDS", 8)
    path = tmp_path / "log.image"
    rng = random.Random(7)
    pages: dict[int, bytes] = {}
    history: dict[int, dict[int, bytes]] = {}
    with PageStore.create(path, page_size=PAGE, segment_size=SEGMENT) as store:
        for i in range(120):
            _write_random(store, rng, pages, 1 + i % 3)
            number = store.commit(f"commit {i}".encode())
            history[number] = dict(pages)
            assert store.head == number and store.head_meta == f"commit {i}".encode()
            if i % 20 == 0:
                store.check()
        assert len(os.listdir(path)) > 4   # several segments were started
        stats = store.check()
        assert stats["head"] == store.head
    with PageStore.open(path) as store:
        assert all(store.read(p) == data for p, data in pages.items())
        for number in (min(history), max(history) // 2, max(history)):
            with store.view(number) as view:
                assert all(view.read(p) == data for p, data in history[number].items())
        store.check()


def test_the_tail_follows_the_builder(tmp_path):
    """After each C commit the store's idea of the log's end is the builder's."""
    with PageStore.create(tmp_path / "t.image", page_size=PAGE, segment_size=SEGMENT) as store:
        for i in range(30):
            store.write(i % 5, bytes([i]) * PAGE)
            store.commit()
            c = store._commit_args
            assert (store._tail.segno, store._tail.slot, store._tail.seq) == (c.segno, c.slot,
                                                                              c.seq - 1)
            store._verify_state()


# -- faults ----------------------------------------------------------------------------

def test_a_failed_write_commits_nothing_and_keeps_the_pages(tmp_path):
    """EBADF on the write: CommitFailed, the head stays, the pages stay
    uncommitted; with the descriptor back, the same commit goes through."""
    path = tmp_path / "w.image"
    with PageStore.create(path, page_size=PAGE, segment_size=SEGMENT) as store:
        store.write(1, b"a" * PAGE)
        head = store.commit()
        store.write(1, b"b" * PAGE)
        store.write(2, b"c" * PAGE)
        read_only = os.open(store._image.seg_path(store._active), os.O_RDONLY)
        good = _swap_segment_fd(store, read_only)
        try:
            with pytest.raises(CommitFailed, match="could not be written"):
                store.commit()
        finally:
            os.close(_swap_segment_fd(store, good))
        assert store.head == head and store.dirty_pages == 2
        assert store.read(1) == b"b" * PAGE
        store.check()
        assert store.commit() == head + 1
    with PageStore.open(path) as store:
        assert store.head == head + 1
        assert (store.read(1), store.read(2)) == (b"b" * PAGE, b"c" * PAGE)
        store.check()


def test_a_failed_sync_is_terminal_and_reopening_finds_the_last_commit(tmp_path):
    """EINVAL from fdatasync: StoreFailed, every later call refuses, and the
    image reopens at the last acknowledged commit."""
    path = tmp_path / "s.image"
    store = PageStore.create(path, page_size=PAGE, segment_size=SEGMENT)
    store.write(1, b"a" * PAGE)
    head = store.commit()
    store.write(1, b"b" * PAGE)
    null = os.open(os.devnull, os.O_RDWR)   # takes the write, refuses the sync
    good = _swap_segment_fd(store, null)
    try:
        with pytest.raises(StoreFailed, match="a sync failed"):
            store.commit()
    finally:
        os.close(_swap_segment_fd(store, good))
    for call in (store.commit, lambda: store.read(1), lambda: store.write(1, b"x")):
        with pytest.raises(StoreFailed):
            call()
    store.close()
    with PageStore.open(path) as store:
        assert store.head == head
        assert store.read(1) == b"a" * PAGE
        store.check()


# -- an interruption just after the commit ------------------------------------------

class _Interrupted(KeyboardInterrupt):
    """Ctrl-C, surfacing as the C call returns (where CPython checks signals)."""


def _interrupt_after_commit(monkeypatch) -> None:
    import pager._store as store_module
    real = store_module._ic_commit_write

    def commit_then_interrupt(*args):
        real(*args)
        raise _Interrupted()

    monkeypatch.setattr(store_module, "_ic_commit_write", commit_then_interrupt)


def test_an_interrupt_after_a_durable_commit_leaves_the_store_at_it(tmp_path, monkeypatch):
    """The commit stands: head, meta and tail move to it, the store stays a
    writer, the next commit follows it, and reopening finds both."""
    path = tmp_path / "i.image"
    with PageStore.create(path, page_size=PAGE, segment_size=SEGMENT) as store:
        store.write(1, b"a" * PAGE)
        head = store.commit(b"first")
        store.write(1, b"b" * PAGE)
        with monkeypatch.context() as patch:
            _interrupt_after_commit(patch)
            with pytest.raises(_Interrupted):
                store.commit(b"second")
        assert (store.head, store.head_meta, store.dirty_pages) == (head + 1, b"second", 0)
        store.check()
        store.write(2, b"c" * PAGE)
        assert store.commit(b"third") == head + 2
    with PageStore.open(path) as store:
        assert store.head == head + 2
        assert (store.read(1), store.read(2)) == (b"b" * PAGE, b"c" * PAGE)
        assert [c.meta for c in store.commits()[-3:]] == [b"first", b"second", b"third"]


def test_an_interrupt_after_a_durable_append_keeps_it_in_the_image(tmp_path, monkeypatch):
    """image: the autocommitted append stands (no rollback of a durable
    commit), the heap agrees with the store, and the image goes on."""
    import image
    path = tmp_path / "m.image"
    with image.open(path) as img:
        img.root["inbox"] = []
        inbox = img.root["inbox"]
        inbox.append({"subject": "one"})
        with monkeypatch.context() as patch:
            _interrupt_after_commit(patch)
            with pytest.raises(_Interrupted):
                inbox.append({"subject": "two", "body": "x" * 500})
        assert [m["subject"] for m in inbox] == ["one", "two"]
        inbox.append({"subject": "three"})
        img.check()
    with image.open(path) as img:
        assert [m["subject"] for m in img.root["inbox"]] == ["one", "two", "three"]
        img.check()
