"""Regressions found by review: each test is a reproduction that once crashed
the process, corrupted state, or left the store believing something untrue."""
import array
import errno
import gc
import os
import warnings

import pytest

from native import PageReader
from pager import (CommitFailed, CorruptImage, PageStore, PagerError, RecoveryWarning,
                   StoreFailed)
from pager._native import NativeStore, Tree, make_loc
from pager._vfs import Vfs

SEGMENT = 1 << 20


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "r.image")


def slot_of(store: PageStore, page_no: int) -> tuple[str, int]:
    loc = store._tree.entry(page_no)[0]
    return os.path.join(store.path, f"seg-{loc >> 32:06d}"), loc & 0xFFFFFFFF


class TestNativeReaderSafety:
    def test_read_through_a_dropped_view(self, path):
        """A view's bound read stays valid after the view itself is gone."""
        with PageStore.create(path, segment_size=SEGMENT) as s:
            s.write(0, b"hello")
            s.commit()
            read = s.view(s.head).read
            gc.collect()
            assert read(0)[:5] == b"hello"

    def test_too_many_arguments(self, path):
        """Extra arguments to a native read are a TypeError, not an overrun."""
        with PageStore.create(path, segment_size=SEGMENT) as s:
            with pytest.raises(TypeError):
                s.read(0, 0, 0)
            with pytest.raises(TypeError):
                s.read_bytes(0, 1, 2, 3, 4)

    def test_reader_without_init(self):
        """A PageReader made without __init__ raises instead of calling NULL."""
        with pytest.raises(RuntimeError, match="before __init__"):
            PageReader.__new__(PageReader).read(0)

    def test_huge_read_is_a_range_error(self, path):
        """A read of an absurd length is refused before anything is allocated."""
        with PageStore.create(path, segment_size=SEGMENT) as s:
            with pytest.raises(ValueError):
                s.read_bytes(0, 2 ** 60)


class TestCloseAndInterrupts:
    def test_close_survives_a_failing_close(self, path):
        """When closing a descriptor fails, the store is still closed and safe to touch."""
        class FailingClose(Vfs):
            armed = False

            def close(self, fd):
                super().close(fd)
                if self.armed:
                    raise OSError(errno.EIO, "injected")

        vfs = FailingClose()
        s = PageStore.create(path, segment_size=SEGMENT, _vfs=vfs)
        vfs.armed = True
        with pytest.raises(OSError):
            s.close()
        with pytest.raises(PagerError, match="closed"):
            s.read(0)
        vfs.armed = False
        PageStore.open(path).close()   # the lock was released


class _ScriptedSync(Vfs):
    """A real file system whose next fdatasync calls do what `script` says:
    "interrupt" (Ctrl-C before the sync), "sync-interrupt" (Ctrl-C as the sync
    returns), "eio" (the sync fails); an empty script syncs."""

    def __init__(self) -> None:
        self.script: list[str] = []

    def fdatasync(self, fd):
        step = self.script.pop(0) if self.script else "sync"
        if step == "interrupt":
            raise KeyboardInterrupt
        if step == "eio":
            raise OSError(errno.EIO, "injected")
        super().fdatasync(fd)
        if step == "sync-interrupt":
            raise KeyboardInterrupt


def _interrupted_commit(path, script=(), **patches):
    """A store with commit AAAA, then BBBB committed under the script or the
    patched methods (each raises KeyboardInterrupt once, then runs as usual);
    returns the store and the exception the second commit raised."""
    vfs = _ScriptedSync()
    s = PageStore.create(path, segment_size=SEGMENT, _vfs=vfs)
    s.write(0, b"AAAA")
    s.commit(b"first")
    s.write(0, b"BBBB")
    vfs.script = list(script)
    for name, when in patches.items():
        setattr(s, name, _interrupt_once(getattr(s, name), when))
    with pytest.raises(BaseException) as caught:
        s.commit(b"second")
    for name in patches:
        delattr(s, name)
    return s, caught.value


def _interrupt_once(method, when: str):
    armed = [True]

    def interrupting(*args, **kwargs):
        if armed[0] and when == "before":
            armed[0] = False
            raise KeyboardInterrupt
        result = method(*args, **kwargs)
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
        return result
    return interrupting


def _assert_second_commit_stands(s, path):
    """The interrupted commit stands: the session sees it, goes on after it,
    and reopening finds the same."""
    assert (s.head, s.head_meta, s.dirty_pages, s.read(0)[:4]) == (2, b"second", 0, b"BBBB")
    s.check()
    s.write(1, b"CCCC")
    assert s.commit(b"third") == 3
    s.close()
    with PageStore.open(path) as again:
        assert [c.meta for c in again.commits()[1:]] == [b"first", b"second", b"third"]
        assert (again.read(0)[:4], again.read(1)[:4]) == (b"BBBB", b"CCCC")
        again.check()


def _assert_failed_then_disk_decides(s, path, why: str, head: int):
    """The store is FAILED (the commit's fate is unknown to it); reopening
    finds what the disk holds, whole: here `head` (2 when the bytes reached
    the page cache whole, 1 when a torn commit is dropped, with a warning)."""
    with pytest.raises(StoreFailed, match=why):
        s.read(0)
    s.close()
    with warnings.catch_warnings(record=True) as noted:
        warnings.simplefilter("always", RecoveryWarning)
        again = PageStore.open(path)
    with again:
        assert (again.head, again.read(0)[:4]) == (head, b"AAAA" if head == 1 else b"BBBB")
        assert bool(noted) == (head == 1)
        again.check()


class TestInterruptedCommits:
    """Ctrl-C (KeyboardInterrupt) anywhere in a commit on the Vfs path: the
    store agrees with the disk afterwards (PageStore._catch_up)."""

    def test_an_interrupt_inside_the_sync_completes_the_commit(self, path):
        """Ctrl-C while the sync runs: the sync is completed and the commit stands."""
        s, exc = _interrupted_commit(path, ["interrupt"])
        assert isinstance(exc, KeyboardInterrupt)
        _assert_second_commit_stands(s, path)

    def test_an_interrupt_as_the_sync_returns_keeps_the_commit(self, path):
        """Ctrl-C surfacing right after the sync returned: the commit stands."""
        s, exc = _interrupted_commit(path, ["sync-interrupt"])
        assert isinstance(exc, KeyboardInterrupt)
        _assert_second_commit_stands(s, path)

    def test_an_interrupt_before_the_bookkeeping_keeps_the_commit(self, path):
        """Ctrl-C after the sync, before the store finished the commit: it stands."""
        s, exc = _interrupted_commit(path, _finish="before")
        assert isinstance(exc, KeyboardInterrupt)
        _assert_second_commit_stands(s, path)

    def test_an_interrupt_inside_the_bookkeeping_keeps_the_commit(self, path):
        """Ctrl-C after C finished a checkpoint commit, before the tail moved: it stands once."""
        vfs = _ScriptedSync()
        s = PageStore.create(path, segment_size=SEGMENT, _vfs=vfs)
        s.write(0, b"AAAA")
        s.commit(b"first")
        s.rewind(s.head)   # the next commit is a checkpoint, which writes the hint
        s.write(0, b"BBBB")
        s._write_hint = _interrupt_once(s._write_hint, "after")
        with pytest.raises(KeyboardInterrupt):
            s.commit(b"second")
        del s._write_hint
        _assert_second_commit_stands(s, path)

    def test_an_interrupt_before_the_write_keeps_the_changes_uncommitted(self, path):
        """Ctrl-C after the commit was laid out, before any write: nothing was
        committed, the store stays a writer and still holds the changes."""
        s, exc = _interrupted_commit(path, _build="after")
        assert isinstance(exc, KeyboardInterrupt)
        assert (s.head, s.dirty_pages, s.read(0)[:4]) == (1, 1, b"BBBB")
        s.check()
        assert s.commit(b"second") == 2
        _assert_second_commit_stands(s, path)

    def test_an_interrupt_while_starting_a_segment_keeps_the_changes_uncommitted(self, path):
        """Ctrl-C after a new segment was made for a commit, before its write:
        nothing was committed, and committing again goes on in that segment."""
        s = PageStore.create(path, segment_size=SEGMENT, _vfs=_ScriptedSync())
        s.write(0, b"AAAA")
        s.commit(b"first")
        pages = SEGMENT // 4096 + 8   # more than the first segment holds
        for page_no in range(pages):
            s.write(page_no, b"B" * 4096)
        s._image.attach = _interrupt_once(s._image.attach, "after")
        with pytest.raises(KeyboardInterrupt):
            s.commit(b"big")
        del s._image.attach
        assert (s.head, s.dirty_pages) == (1, pages)
        assert s.commit(b"big") == 2
        s.check()
        s.close()
        with PageStore.open(path) as again:
            assert (again.head, again.read(pages - 1)) == (2, b"B" * 4096)
            assert sorted(n for n in os.listdir(path) if n.startswith("seg-")) == \
                ["seg-000001", "seg-000002"]
            again.check()

    def test_an_interrupt_during_the_write_fails_the_store(self, path):
        """Ctrl-C while the write runs: what reached the file is unknown, so FAILED."""
        class HalfWrite(_ScriptedSync):
            armed = False

            def pwrite(self, fd, data, offset):
                if self.armed:
                    self.armed = False
                    os.pwrite(fd, memoryview(data)[:len(data) // 2], offset)
                    raise KeyboardInterrupt
                super().pwrite(fd, data, offset)

        vfs = HalfWrite()
        s = PageStore.create(path, segment_size=SEGMENT, _vfs=vfs)
        s.write(0, b"AAAA")
        s.commit(b"first")
        s.write(0, b"BBBB" * 1024)
        vfs.armed = True
        with pytest.raises(KeyboardInterrupt):
            s.commit(b"second")
        _assert_failed_then_disk_decides(s, path, "interrupted while writing", head=1)

    def test_a_second_interrupt_while_completing_the_sync_fails_the_store(self, path):
        """Ctrl-C again while the interrupted sync is completed: FAILED."""
        s, exc = _interrupted_commit(path, ["interrupt", "interrupt"])
        assert isinstance(exc, KeyboardInterrupt)
        _assert_failed_then_disk_decides(s, path, "interrupted twice", head=2)

    def test_a_failing_sync_while_completing_fails_the_store(self, path):
        """The completing sync fails: FAILED as for any failed sync, never retried."""
        s, exc = _interrupted_commit(path, ["interrupt", "eio"])
        assert isinstance(exc, StoreFailed)
        _assert_failed_then_disk_decides(s, path, "injected", head=2)


class TestFailedWrites:
    def test_failed_commit_never_comes_back(self, path):
        """A commit whose write failed after its record landed is not found by readers or
        by the next open."""
        class ShortWrite(Vfs):
            armed = False

            def pwrite(self, fd, data, offset):
                if self.armed:
                    self.armed = False
                    view = memoryview(data)
                    os.pwrite(fd, view[:len(view) - 4096], offset)   # all but the zero slot
                    exc = OSError(errno.ENOSPC, "injected")
                    exc.written = len(view) - 4096
                    raise exc
                super().pwrite(fd, data, offset)

        vfs = ShortWrite()
        s = PageStore.create(path, segment_size=SEGMENT, _vfs=vfs)
        s.write(0, b"AAAA")
        s.commit()
        s.write(0, b"BBBB")
        vfs.armed = True
        with pytest.raises(CommitFailed):
            s.commit()
        with PageStore.open(path, readonly=True) as r:
            assert (r.head, r.read(0)[:4]) == (1, b"AAAA")
        s.close()
        with PageStore.open(path) as s:
            assert (s.head, s.read(0)[:4]) == (1, b"AAAA")

    def test_multi_page_write_is_all_or_nothing(self, path):
        """A write spanning a good page and a damaged one changes neither."""
        with PageStore.create(path, segment_size=SEGMENT) as s:
            s.write(0, b"a" * 4096)
            s.write(1, b"b" * 4096)
            s.commit()
            s.write(5, b"c")
            s.commit()
            seg, slot = slot_of(s, 1)
        with open(seg, "r+b") as f:
            f.seek(slot * 4096 + 100)
            f.write(b"?")
        with PageStore.open(path) as s:
            with pytest.raises(CorruptImage, match="page 1"):
                s.write_bytes(4096 - 4, b"XXXXYYYY")
            assert s.read_bytes(4092, 4) == b"aaaa"

    def test_buffers_of_wide_items(self, path):
        """Writing an array of 8-byte items stores all of its bytes."""
        words = array.array("Q", range(512))
        with PageStore.create(path, segment_size=SEGMENT) as s:
            s.write(3, words)
            s.write_bytes(8 * 4096, array.array("I", [7, 8]))
            assert s.read(3) == words.tobytes()
            assert s.read_bytes(8 * 4096, 8) == array.array("I", [7, 8]).tobytes()


class TestReaders:
    def test_reader_moves_on_after_an_in_flight_commit(self, path):
        """A reader that saw a commit still in flight catches up once it lands."""
        w = PageStore.create(path, segment_size=SEGMENT)
        w.write(0, b"0" * 8)
        w.commit()
        r = PageStore.open(path, readonly=True)
        w.write(1, b"A" * 8)
        a = w.commit()
        w.write(2, b"B" * 8)
        w.commit()
        seg, slot = slot_of(w, 2)
        with open(seg, "r+b") as f:                 # the newest page has not landed yet
            f.seek(slot * 4096)
            saved = f.read(4096)
            f.seek(slot * 4096)
            f.write(b"\xff" * 4096)
        assert r.refresh() == a
        with open(seg, "r+b") as f:
            f.seek(slot * 4096)
            f.write(saved)
        for i in range(3):
            w.write(3 + i, b"C" * 8)
            w.commit()
        assert r.refresh() == w.head
        assert r.read(2)[:8] == b"B" * 8
        r.close()
        w.close()


class TestHostileTrees:
    def test_depth_past_the_page_size_is_refused(self):
        """A root claiming more levels than page numbers need is CorruptImage, not UB."""
        native = NativeStore(4096, 1, b"i" * 16)
        with pytest.raises(CorruptImage, match="depth"):
            Tree(native, root_loc=make_loc(1, 1), root_sum=0, depth=12)
        with pytest.raises(CorruptImage, match="depth"):
            Tree(native, root_loc=make_loc(1, 1), root_sum=0, depth=0)

    def test_absurd_segment_in_usage(self):
        """A usage table naming a segment past any real image is refused at once."""
        tree = Tree(NativeStore(4096, 1, b"i" * 16))
        for segno in (0, 1 << 24, 3_000_000_000):
            with pytest.raises(CorruptImage, match="cannot exist"):
                tree.set_usage([(segno, 5)])


class TestNativeWrite:
    def test_write_arguments(self, path):
        """The native write takes offset by keyword, and refuses other keywords."""
        with PageStore.create(path, segment_size=SEGMENT) as s:
            s.write(1, b"abc", offset=10)
            s.write(1, b"de", 20)
            assert s.read(1)[10:13] == b"abc" and s.read(1)[20:22] == b"de"
            with pytest.raises(TypeError):
                s.write(1, b"x", where=3)
            with pytest.raises(ValueError, match="do not fit"):
                s.write(1, b"xy", offset=4095)
