"""Regressions found by review: each test is a reproduction that once crashed
the process, corrupted state, or left the store believing something untrue."""
import array
import errno
import gc
import os

import pytest

from native import PageReader
from pager import CommitFailed, CorruptImage, PageStore, PagerError, StoreFailed
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

    def test_interrupt_inside_sync_loses_nothing(self, path):
        """Ctrl-C inside a commit's sync leaves the store FAILED, never half-applied."""
        class Interrupting(Vfs):
            armed = False

            def fdatasync(self, fd):
                if self.armed:
                    self.armed = False
                    raise KeyboardInterrupt
                super().fdatasync(fd)

        vfs = Interrupting()
        s = PageStore.create(path, segment_size=SEGMENT, _vfs=vfs)
        s.write(0, b"AAAA")
        s.commit()
        s.write(0, b"BBBB")
        vfs.armed = True
        with pytest.raises(KeyboardInterrupt):
            s.commit()
        with pytest.raises(StoreFailed, match="interrupted"):
            s.read(0)
        s.close()
        with PageStore.open(path) as s:
            assert s.read(0)[:4] in (b"AAAA", b"BBBB")   # the commit's fate is the disk's
            s.check()


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
