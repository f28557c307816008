"""PageStore: the append-only page store (see pager/__init__.py for the rules).

This module owns the commit protocol, recovery, segment files and read-only
views.  The C core (native/) owns page translation, dirty buffers and
checksums; _format.py owns the byte layout.  With the real file system a
commit is one C call that also makes its write and sync (ic_commit_write);
with any other Vfs (the tests' crash and fault shims) the same steps run here,
each through the Vfs (_commit_through_vfs).
"""
from __future__ import annotations

import fcntl
import heapq
import os
import struct
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import NamedTuple

from native import PageReader, ffi, lib
from pager import _format as fmt
from pager._errors import (CommitFailed, CorruptImage, ImageLocked, PagerError, ReadOnlyStore,
                           RecoveryWarning, StoreFailed)
from pager._native import ENTRY_SIZE, Dirty, NativeStore, Tree, make_loc, raise_status
from pager._segments import (HINT_NAME, Image, SyncFailed, _Tail, empty_tail, make_segment,
                             segment_numbers, sync)
from pager._vfs import Vfs
from pager import _vacuum

DEFAULT_PAGE_SIZE = 4096
# 64 MiB: zero-filling a segment is a pause of well under a second even on an
# SD card, and an image of a few TiB still needs only tens of thousands of maps.
DEFAULT_SEGMENT_SIZE = 64 << 20
# A checkpoint is due when this many page-table nodes are dirty (4 MiB at 4 KiB
# pages) or this many records were written since the last one.  The records
# bound what opening replays; the nodes bound memory, and a larger figure lets
# more commits share the interior nodes a checkpoint rewrites (measured with
# commits spread over a 10 GiB store: 256 nodes cost 2.8 pages a commit, 1,024
# about 2.1).
CHECKPOINT_NODES = 1024
CHECKPOINT_RECORDS = 1024
# ... or before the pages written since the last one would pass this: opening
# replays each of them into the page table (about 30 ns each, plus decoding
# its record), and bulk commits of thousands of pages would otherwise leave
# up to a million to replay.  4,096 keeps that under a fifth of a
# millisecond, and costs a bulk load about one checkpoint per 16 MiB written.
CHECKPOINT_PAGES = 4096
MAX_PAGE_NO = fmt.MAX_PAGE_NO
LOCK_NAME = "LOCK"
LOCK_ATTEMPTS = 20           # x 5 ms: far longer than a reader's probe, short for a person
LOCK_RETRY_SECONDS = 0.005
LOCK_PID_WIDTH = 32          # bytes of the LOCK file that name its holder (read back whole)

_READER, _WRITER, _FAILED, _CLOSED = "reader", "writer", "failed", "closed"
# How far a commit through the Vfs got (PageStore._vfs_stage; None between
# commits): being built and written (not yet whole in the file), written
# whole, synced.  What an interruption means depends on it (_catch_up).
_UNWRITTEN, _WRITTEN, _SYNCED = "unwritten", "written", "synced"


class CommitInfo(NamedTuple):
    """One commit as listed by PageStore.commits()."""
    number: int
    parent: int | None
    time: float              # seconds since the epoch
    meta: bytes
    pages: tuple[int, ...]   # the logical pages it wrote


class PageView:
    """A read-only view of one commit, in the process that opened it; meta is
    that commit's caller metadata.  It answers what a reader store does
    (readonly, head, head_meta, page_reader, dirty_pages), so the layers above
    open it as they open a store (image.Image.at)."""

    readonly = True
    dirty_pages = 0

    def __init__(self, tree: Tree, commit: int, page_size: int, meta: bytes = b"",
                 path: str = "") -> None:
        self._tree: Tree | None = tree
        self.commit = commit
        self.meta = meta
        self.path = path
        self.page_size = page_size
        self._reader = _make_reader(self, page_size)
        self._reader.rebind(_address(tree.ptr), 0, tree)

    def _require_open(self) -> Tree:
        if self._tree is None:
            raise PagerError(f"the view of commit {self.commit} is closed")
        return self._tree

    @property
    def head(self) -> int:
        return self.commit

    @property
    def base(self) -> int:
        """The version it reads (a writer's base; a view reads its commit)."""
        return self.commit

    @property
    def head_meta(self) -> bytes:
        return self.meta

    @property
    def page_reader(self) -> PageReader:
        return self._reader

    def read(self, page_no: int) -> bytes:
        """The bytes of a logical page as of this commit."""
        return _read_page(self._require_open(), ffi.NULL, page_no, self.page_size)

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Bytes at a logical address as of this commit."""
        return _read_bytes(self._require_open(), ffi.NULL, addr, length)

    def read_word(self, addr: int) -> int:
        """The 64-bit word at a logical address as of this commit."""
        return _read_word(self._require_open(), ffi.NULL, addr)

    def check(self) -> dict:
        """Walk every page-table node and page this commit reaches, re-verifying
        each checksum and the per-segment accounting; raise CorruptImage on the
        first fault.  Returns {"commit", "pages", "nodes"}."""
        pages, nodes = self._require_open().check()
        return {"commit": self.commit, "pages": pages, "nodes": nodes}

    def close(self) -> None:
        self._reader.rebind(0, 0, None)
        if self._tree is not None:
            self._tree.close()
            self._tree = None
            on_close = getattr(self, "_on_close", None)
            if on_close is not None:
                on_close()   # the store un-pins this commit (pager/_vacuum, READERS)

    def __enter__(self) -> PageView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ic_write = lib.ic_write
_ic_commit_write = lib.ic_commit_write
_IC_FULL, _IC_IO, _IC_STAGE_SYNC = lib.IC_FULL, lib.IC_IO, lib.IC_STAGE_SYNC
_new_tuple = tuple.__new__
_ZERO_BLOCK = bytes(fmt.RECORD_BLOCK)
_buffer = ffi.buffer


def _address(ptr) -> int:
    return int(ffi.cast("uintptr_t", ptr)) if ptr is not None else 0


def _make_reader(owner, page_size: int) -> PageReader:
    """A native reader whose fallback runs owner's documented Python methods,
    which check the state and raise the right error."""
    methods = {name: getattr(type(owner), name)
               for name in ("read", "read_word", "read_bytes", "write")
               if hasattr(type(owner), name)}
    ref = weakref.ref(owner)

    def fallback(kind: str, *args):
        target = ref()
        if target is None:
            raise PagerError("the store is gone")
        return methods[kind](target, *args)

    reader = PageReader(page_size, fallback)
    for name in methods:
        setattr(owner, name, getattr(reader, name))
    return reader


def _read_page(tree: Tree, dirty, page_no: int, page_size: int) -> bytes:
    try:
        ptr = lib.ic_page_read(tree.ptr, dirty, page_no)
    except OverflowError:
        raise ValueError(f"page number {page_no} is out of range") from None
    if ptr == ffi.NULL:
        raise_status(tree.store.ptr, lib.ic_errcode(tree.store.ptr))
    return ffi.buffer(ptr, page_size)[:]


def _read_bytes(tree: Tree, dirty, addr: int, length: int) -> bytes:
    if length < 0 or addr < 0 or addr + length > MAX_PAGE_NO * tree.store.page_size:
        raise ValueError(f"address range {addr}+{length} is out of range")
    out = bytearray(length)
    try:
        code = lib.ic_read(tree.ptr, dirty, addr, ffi.from_buffer(out), length)
    except OverflowError:
        raise ValueError(f"address range {addr}+{length} is out of range") from None
    if code:
        raise_status(tree.store.ptr, code)
    return bytes(out)


def _read_word(tree: Tree, dirty, addr: int) -> int:
    out = ffi.new("uint64_t *")
    try:
        code = lib.ic_read_u64(tree.ptr, dirty, addr, out)
    except OverflowError:
        raise ValueError(f"address {addr} is out of range") from None
    if code:
        raise_status(tree.store.ptr, code)
    return out[0]


class PageStore:
    """The one writer, or a reader, of an image directory.  See pager/__init__."""

    # -- opening -------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, page_size: int = DEFAULT_PAGE_SIZE, *,
               segment_size: int = DEFAULT_SEGMENT_SIZE, _vfs: Vfs | None = None) -> PageStore:
        """Make a new, empty image at path (a directory NAME.image) and open it."""
        vfs = _vfs or Vfs()
        path = os.fspath(path)
        _check_geometry(page_size, segment_size)
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists")
        temp = f"{path}.creating-{os.getpid()}"
        image_id, salt = os.urandom(16), int.from_bytes(os.urandom(8), "little")
        vfs.mkdir(temp)
        try:
            cls._populate(vfs, temp, page_size, segment_size, image_id, salt)
            vfs.rename(temp, path)
            vfs.fsync_dir(os.path.dirname(os.path.abspath(path)))
        except BaseException as exc:
            import shutil
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(exc, SyncFailed):   # no store exists yet to enter FAILED
                raise exc.error from None
            raise
        store = cls.open(path, _vfs=vfs)
        # Just made and zero-filled past commit 0: no commit needs a zero slot.
        store._start_log(store._tail, zero_from=store._tail.slot)
        return store

    @staticmethod
    def _populate(vfs: Vfs, temp: str, page_size: int, segment_size: int, image_id: bytes,
                  salt: int) -> None:
        """Write the first segment of a new image, holding commit 0: a
        checkpoint of the empty page table."""
        make_segment(vfs, temp, 1, segment_size, page_size, image_id, salt)
        native = NativeStore(page_size, salt, image_id)
        tree, dirty = Tree(native), Dirty(page_size)
        c = ffi.new("ic_commit *")
        _start_log(c, _Tail(1, 1, -1, 0, 0), parent=fmt.NO_PARENT, prev_ckpt=0,
                   seg_slots=segment_size // page_size, zero_from=2, salt=salt)
        c.checkpoint = 1
        native.check(lib.ic_commit_build(tree.ptr, dirty.ptr, c))
        try:
            fd = vfs.open(os.path.join(temp, fmt.segment_name(1)), os.O_RDWR)
            try:
                vfs.pwrite(fd, ffi.buffer(c.buf, c.buf_len), page_size)
                sync(vfs, fd)
            finally:
                vfs.close(fd)
        finally:
            lib.ic_commit_undo(tree.ptr, c)   # the tree is thrown away
            lib.ic_commit_release(c)
        vfs.close(vfs.open(os.path.join(temp, LOCK_NAME), os.O_RDWR | os.O_CREAT))

    @classmethod
    def open(cls, path: str | os.PathLike, readonly: bool = False, *,
             _vfs: Vfs | None = None) -> PageStore:
        """Open an image: the one writer (ImageLocked if another holds it), or a reader."""
        self = cls.__new__(cls)
        self._init(os.fspath(path), readonly, _vfs or Vfs())
        return self

    def _init(self, path: str, readonly: bool, vfs: Vfs) -> None:
        self.path = path
        self.readonly = readonly
        self.recovery_notes: list[str] = []
        self.appended_bytes = 0     # bytes this process appended: pages, nodes and records
        self.head_meta = b""        # the caller metadata of the commit the state is (base)
        self.base = 0               # the commit the writer's state is: the head, or what rewind chose
        self._vfs = vfs
        self._state = _CLOSED
        self._lock_fd = -1
        self._seg_fd = -1
        self._tree: Tree | None = None
        self._dirty: Dirty | None = None
        self._reader: PageReader | None = None
        self._views: weakref.WeakSet = weakref.WeakSet()   # open views: vacuum keeps them
        self._pin: _vacuum.ReaderPin | None = None
        self._standins = None
        self._vfs_stage: str | None = None   # a commit through the Vfs under way
        if not os.path.exists(path):
            raise FileNotFoundError(f"no image at {path}")
        if not os.path.isdir(path):
            raise CorruptImage(f"{path} is not an imago image (an image is a directory)")
        numbers = segment_numbers(path)
        if not numbers:
            raise CorruptImage(f"{path} is not an imago image: it holds no segment files")
        if not readonly:
            self._take_lock()
        try:
            if readonly:
                self._pin = _vacuum.register_reader(path)
            self._image = self._map_segments(path, vfs, numbers)
            self.page_size = self._image.page_size
            self._load_head()
            self._update_pins()
            if not readonly:
                self._prepare_writer()
        except BaseException:
            self._release()
            raise
        self._state = _READER if readonly else _WRITER
        self._reader = _make_reader(self, self.page_size)
        self._bind_reader()
        for note in self.recovery_notes:
            warnings.warn(note, RecoveryWarning, stacklevel=3)

    def _map_segments(self, path: str, vfs: Vfs, numbers: list[int]) -> Image:
        """Map the segments; one vacuumed between listing and mapping is listed
        again (a vacuum removes a segment only once nothing needs it)."""
        for attempt in range(LOCK_ATTEMPTS):
            try:
                return Image(path, vfs, numbers)
            except FileNotFoundError:
                if attempt == LOCK_ATTEMPTS - 1:
                    raise
                numbers = segment_numbers(path)
        raise AssertionError("unreachable")

    def _update_pins(self) -> None:
        """A reader's registration names the commits it uses (pager/_vacuum)."""
        if self._pin is not None:
            self._pin.set([self.head] + [v.commit for v in list(self._views)
                                         if v._tree is not None])

    def _take_lock(self) -> None:
        fd = self._vfs.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT)
        # A reader probes the lock with a momentary shared flock (_writer_active);
        # a few short retries tell that apart from a writer, which holds it.
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(LOCK_RETRY_SECONDS)
        else:
            holder = (os.pread(fd, LOCK_PID_WIDTH, 0).decode("ascii", "replace").strip()
                      or "unknown")
            self._vfs.close(fd)
            raise ImageLocked(f"{self.path} is open for writing by another process "
                              f"(pid {holder})")
        self._lock_fd = fd
        try:   # who holds the lock, for the message above; only a courtesy
            # Written over in place at a fixed width, not truncated first:
            # truncating frees the file's block, a journal commit that cost
            # a third of a millisecond of every open for writing.
            os.pwrite(fd, f"{os.getpid()}".ljust(LOCK_PID_WIDTH - 1).encode() + b"\n", 0)
        except OSError:
            pass

    def _load_head(self) -> None:
        """Find the newest valid commit and build its page table (recovery)."""
        image = self._image
        numbers = image.numbers()
        self._active = numbers[-1]
        for segno in numbers:   # sealed logs are whole; the head's end is set below
            image.native.set_limit(segno, image.nslots(segno))
        for segno in reversed(numbers):
            records, tail = self._scan_segment(segno)
            self._note_damage(tail)
            records, tail = self._settle_newest(segno, records, tail)
            if records:
                break
        else:
            raise CorruptImage(f"{self.path}: no segment holds a valid commit record")
        self._set_head(records, tail)
        for segno, live in self._tree.usage().items():
            if segno not in image.sizes:
                raise CorruptImage(f"segment {fmt.segment_name(segno)} is missing from "
                                   f"{self.path}: it holds {live} live pages of commit "
                                   f"{self.head}")

    def _settle_newest(self, segno: int, records: list[fmt.Record], tail: _Tail
                       ) -> tuple[list[fmt.Record], _Tail]:
        """Drop the newest commit if it is torn.  Only the newest can be: each
        commit's sync returned before the next was written.  For the same reason
        a newest commit followed by the header of the next one was acknowledged,
        so it stays even if its pages fail; they fail loudly when read."""
        if records and records[-1].stands_for is not None:
            records, tail = self._settle_group(segno, records, tail)
        reason = self._image.verify_pages(records[-1]) if records else None
        if reason is None:
            return records, tail
        newest = records[-1]
        if self._image.next_commit_began(newest):
            self.recovery_notes.append(
                f"{self.path}: commit {newest.seq} was acknowledged (a later commit had "
                f"begun), but its pages are damaged ({reason}); reading them raises "
                f"CorruptImage")
            return records, tail
        records.pop()
        self.recovery_notes.append(
            f"{self.path}: dropped commit {newest.seq}, whose pages fail their checksums "
            f"({reason}): an interrupted commit, or damage; the image opens at commit "
            f"{newest.seq - 1}")
        if not any(r.is_state_checkpoint for r in records):
            return self._scan_from_start(segno, upto=newest.seq - 1)
        return records, self._tail_after(segno, records)

    def _settle_group(self, segno: int, records: list[fmt.Record], tail: _Tail
                      ) -> tuple[list[fmt.Record], _Tail]:
        """A vacuum writes its group (Nh0, side records, Nh) in one write, which
        may land out of order: verify each of a trailing group, not only the
        newest, and keep the prefix that verifies (pager/_vacuum, CRASH SAFETY)."""
        start = len(records) - 1
        while start > 0 and records[start].is_side:
            start -= 1
        if not records[-1].is_side and start > 0 and records[start - 1].is_side:
            start -= 1
            while start > 0 and records[start].is_side:
                start -= 1
        for i in range(start, len(records)):
            reason = self._image.verify_pages(records[i])
            if reason is not None:
                self.recovery_notes.append(
                    f"{self.path}: an interrupted vacuum left commits {records[i].seq} to "
                    f"{records[-1].seq} incomplete ({reason}); they were dropped")
                kept = records[:i]
                if not any(r.is_state_checkpoint for r in kept):
                    return self._scan_from_start(segno, upto=records[i].seq - 1)
                return kept, self._tail_after(segno, kept)
        return records, tail

    def _scan_segment(self, segno: int) -> tuple[list[fmt.Record], _Tail]:
        """The log of one segment from the newest checkpoint the hint names, or
        else from its first record.  The hint only saves time: both ways find
        the same head."""
        hint = self._image.read_hint()
        if hint is not None and hint[0] == segno:
            _, slot, seq, record_sum = hint
            records, tail = self._image.scan(_Tail(segno, slot, -1, 0, 0))
            if records and records[0].seq == seq and records[0].sum == record_sum:
                return records, tail
        return self._scan_from_start(segno)

    def _scan_from_start(self, segno: int, upto: int | None = None
                         ) -> tuple[list[fmt.Record], _Tail]:
        """Read a segment's log from slot 1.  Where a damaged record breaks it and
        a valid checkpoint lies beyond, go on from that checkpoint: the state
        does not depend on the damaged record, only views of the commits before
        the checkpoint do (and those fail with CorruptImage)."""
        image = self._image
        records, tail = image.scan(empty_tail(segno), upto=upto)
        while (upto is None or tail.seq < upto) and image.slot_dirty(segno, tail.slot):
            ckpt = image.next_checkpoint(tail, upto)
            if ckpt is None:
                break
            self.recovery_notes.append(
                f"{self.path}: the log of {fmt.segment_name(segno)} is damaged after commit "
                f"{tail.seq} (slot {tail.slot}); the image opens from the checkpoint of commit "
                f"{ckpt.seq}, and commits in between can no longer be viewed")
            records, tail = image.scan(_Tail(segno, ckpt.slot, -1, 0, 0), upto=upto)
        return records, tail

    def _tail_after(self, segno: int, records: list[fmt.Record]) -> _Tail:
        if not records:
            return empty_tail(segno)
        first = records[0]
        tail = _Tail(segno, first.slot, -1, 0, 0)
        for rec in records:
            tail = tail.after(rec)
        return tail

    def _set_head(self, records: list[fmt.Record], tail: _Tail) -> None:
        """Make the last of records the head; records begin at or before its
        checkpoint and run on without a gap."""
        state = list(records)
        while len(state) > 1 and state[-1].is_side:   # a crashed vacuum's (invariant 9)
            state.pop()
        index = max(i for i, r in enumerate(state) if r.is_state_checkpoint)
        tree = self._image.tree_from(state[index], state[index + 1:])   # may raise
        self._image.native.set_limit(tail.segno, tail.slot)
        self._ckpt = state[index]
        self._tail = tail
        self.head = self.base = state[-1].seq
        # After trailing side records the next commit's parent is not its
        # predecessor, so it must be a checkpoint (invariant 5).
        self._records_since_ckpt = (len(state) - index - 1 if self.head == tail.seq
                                    else CHECKPOINT_RECORDS)
        # More than the bound is an image written before it existed: at the
        # bound, the next commit (at least one page) is a checkpoint.
        self._pages_since_ckpt = min(sum(r.npages for r in state[index + 1:]),
                                     CHECKPOINT_PAGES)
        self._tree = tree
        self.head_meta = state[-1].meta

    def _note_damage(self, tail: _Tail) -> None:
        if not self._image.slot_dirty(tail.segno, tail.slot) or self._writer_active():
            return
        later = self._image.later_record(tail)
        where = f"{fmt.segment_name(tail.segno)} slot {tail.slot}"
        which = (f"the commit record after commit {tail.seq}" if tail.seq >= 0 else
                 f"the first commit record of {fmt.segment_name(tail.segno)}")
        if later is not None:
            raise CorruptImage(f"{self.path}: {which} ({where}) is damaged, yet commit "
                               f"{later.seq} lies beyond it; refusing to drop acknowledged "
                               f"commits")
        self.recovery_notes.append(
            f"{self.path}: {which} ({where}) is damaged or incomplete: an interrupted commit, "
            f"or damage to an acknowledged one; the image opens at the newest valid commit")

    @property
    def writer_active(self) -> bool:
        """For a reader: whether a live writer holds the image."""
        return self._writer_active()

    def _writer_active(self) -> bool:
        """For a reader: does a live writer hold the LOCK?  Then bytes past the
        log's end are a commit in flight, not damage."""
        if not self.readonly:
            return False
        try:
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)   # releases the shared lock too

    def _prepare_writer(self) -> None:
        """Open the active segment for appending and clear any torn tail in it."""
        image = self._image
        if self._active != self._tail.segno:
            # The newest segment holds no valid record yet: commits go on there.
            self._tail = empty_tail(self._active, self._tail.seq, self._tail.sum)
            image.native.set_limit(self._active, 1)
        for name in os.listdir(self.path):
            if name.endswith(".tmp") and name.startswith("seg-"):
                self._vfs.unlink(os.path.join(self.path, name))
        self._seg_fd = self._vfs.open(image.seg_path(self._active), os.O_RDWR)
        self._dirty = Dirty(self.page_size)
        self._commit_args = ffi.new("ic_commit *")
        self._commit_io = ffi.new("ic_io *")
        # The real file system: a commit is one C call (_commit_native).  Any
        # other Vfs (the tests' crash and fault shims) sees every write and sync.
        self._native_io = type(self._vfs) is Vfs
        self._commit_release = weakref.finalize(self, lib.ic_commit_release, self._commit_args)
        self._clear_torn_tail()
        # Slots from zero_from on are known to be zeros.  Unknown for a segment
        # this process did not create (an interrupted commit may have left bytes
        # anywhere past the end), so every commit there writes its zero slot.
        self._start_log(self._tail, zero_from=image.nslots(self._active))

    def _clear_torn_tail(self) -> None:
        """Save, then zero, the slots past the log's end that are not zeros (an
        interrupted commit), restoring invariant: the slot past the end is zero."""
        tail, image = self._tail, self._image
        end = tail.slot
        while image.slot_dirty(tail.segno, end):
            end += 1
        if end == tail.slot:
            return
        # A torn commit may have holes (a slot that never reached the disk): its
        # record header, where readable, gives its whole extent.
        end = max(end, image.claimed_extent(tail.segno, tail.slot))
        ps = self.page_size
        seg = image.segment(tail.segno)
        damaged = os.path.join(self.path, f"damaged-{fmt.segment_name(tail.segno)}-"
                                          f"{tail.slot}.bin")
        fd = self._vfs.open(damaged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self._vfs.pwrite(fd, bytes(seg[tail.slot * ps:end * ps]), 0)
            self._vfs.fsync(fd)
        finally:
            self._vfs.close(fd)
        try:
            self._vfs.pwrite(self._seg_fd, bytes((end - tail.slot) * ps), tail.slot * ps)
            sync(self._vfs, self._seg_fd)
        except SyncFailed as exc:
            raise StoreFailed(f"{self.path}: could not clear a torn commit "
                              f"({exc.error.strerror or exc.error})") from exc

    # -- reading ---------------------------------------------------------------

    # read, read_bytes, read_word and write are served by a native PageReader
    # bound as instance attributes (see _bind_reader); these methods document
    # them and are what its fallback runs when a call cannot be served directly.

    def read(self, page_no: int) -> bytes:
        """The bytes of a logical page; a never-written page reads as zeros."""
        self._require_open()
        return _read_page(self._tree, self._dirty_ptr(), page_no, self.page_size)

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Bytes at a logical address (page_no * page_size + offset), across pages."""
        self._require_open()
        return _read_bytes(self._tree, self._dirty_ptr(), addr, length)

    def read_word(self, addr: int) -> int:
        """The little-endian 64-bit word at a logical address."""
        self._require_open()
        return _read_word(self._tree, self._dirty_ptr(), addr)

    def _bind_reader(self) -> None:
        """Point the native reader at the current state, or unbind it when the
        store is not usable (so that every read goes to the checking fallback)."""
        if self._reader is None:
            return
        if self._state in (_READER, _WRITER):
            self._reader.rebind(_address(self._tree.ptr), _address(self._dirty_ptr()),
                                (self._tree, self._dirty))
        else:
            self._reader.rebind(0, 0, None)

    @property
    def page_reader(self) -> PageReader:
        """The native reader of this store's current state.  It follows the
        store through commits and refreshes, and is unbound once the store is
        closed or failed (every call then raises the store's error); the
        object memory reads and writes through it."""
        return self._reader

    def _dirty_ptr(self):
        return self._dirty.ptr if self._dirty is not None else ffi.NULL

    # -- writing ---------------------------------------------------------------

    def write(self, page_no: int, data: bytes, offset: int = 0) -> None:
        """Copy data into a page at offset; visible to this writer at once."""
        if self._state is not _WRITER:
            self._require_writer()
        nbytes = len(data) if type(data) is bytes else memoryview(data).nbytes
        if offset < 0 or offset + nbytes > self.page_size:
            raise ValueError(f"{nbytes} bytes at offset {offset} do not fit in a "
                             f"{self.page_size}-byte page")
        if not 0 <= page_no < MAX_PAGE_NO:
            raise ValueError(f"page number {page_no} is out of range")
        self._reader.invalidate()
        code = _ic_write(self._tree.ptr, self._dirty.ptr, page_no * self.page_size + offset,
                         ffi.from_buffer(data), nbytes)
        if code:
            raise_status(self._image.native.ptr, code)

    def write_bytes(self, addr: int, data: bytes) -> None:
        """Copy data to a logical address, across page boundaries."""
        self._require_writer()
        self._reader.invalidate()
        try:
            code = lib.ic_write(self._tree.ptr, self._dirty.ptr, addr, ffi.from_buffer(data),
                                memoryview(data).nbytes)
        except OverflowError:
            raise ValueError(f"address {addr} is out of range") from None
        if code:
            raise_status(self._image.native.ptr, code)

    def write_word(self, addr: int, value: int) -> None:
        """Store a little-endian 64-bit word at a logical address."""
        self._require_writer()
        self._reader.invalidate()
        try:
            code = lib.ic_write_u64(self._tree.ptr, self._dirty.ptr, addr, value)
        except OverflowError:
            raise ValueError(f"address {addr} or value {value} is out of range") from None
        if code:
            raise_status(self._image.native.ptr, code)

    def free(self, page_no: int) -> None:
        """Drop a page from the page table at the next commit; it reads as zeros."""
        self._require_writer()
        if not 0 <= page_no < MAX_PAGE_NO:
            raise ValueError(f"page number {page_no} is out of range")
        self._reader.invalidate()
        if lib.ic_dirty_drop(self._dirty.ptr, page_no):
            raise MemoryError("out of memory for the dirty-page table")

    @property
    def dirty_pages(self) -> int:
        """How many pages this writer changed since the last commit."""
        return len(self._dirty) if self._dirty is not None else 0

    def rollback(self) -> None:
        """Drop everything written since the last commit."""
        self._require_writer()
        self._reader.invalidate()
        self._dirty.clear()

    def rewind(self, commit_no: int) -> None:
        """The writer goes on from an older commit: what it reads is that
        commit's state, and the next commit's parent is commit_no.  The
        commits after it stay on disk (a branch: views reach them) until
        segment cleaning drops them.  Uncommitted changes are dropped.  Not
        durable until the next commit, which carries a checkpoint (invariant 5):
        reopening before it lands on the newest commit, as if never rewound."""
        self._require_writer()
        if not 0 <= commit_no <= self.head:
            raise KeyError(f"commit {commit_no} is not on disk (the head is {self.head})")
        tree, rec = _vacuum.resolve(self, commit_no)
        self._reader.rebind(0, 0, None)
        old_tree, self._tree = self._tree, tree
        self._dirty.clear()
        self.base, self.head_meta = commit_no, rec.meta
        self._records_since_ckpt = CHECKPOINT_RECORDS   # the next commit is a checkpoint
        self._start_log(self._tail, zero_from=self._commit_args.zero_from)
        self._bind_reader()
        old_tree.close()

    def commit(self, meta: bytes = b"") -> int:
        """Make every write since the last commit durable; returns the commit number."""
        try:
            return self._commit(meta)
        except BaseException:
            self._catch_up(meta)
            raise
        finally:
            # Committed (or undone) dirty copies are freed: pointers to them are stale.
            if self._reader is not None:
                self._reader.invalidate()

    def _commit(self, meta: bytes) -> int:
        if self._state is not _WRITER:
            self._require_writer()
        if type(meta) is not bytes:
            meta = bytes(meta)
        if len(meta) > fmt.MAX_META:
            raise ValueError(f"commit metadata is {len(meta)} bytes; the limit is "
                             f"{fmt.MAX_META}")
        if not self._native_io:
            self._commit_through_vfs(meta)
        # The commit as one C call: build, write, sync, finish (core.c, "a
        # whole commit in one call").  No Python runs between its write and
        # its sync, so an interruption (Ctrl-C) lands before the write or
        # after the commit is durable.
        elif code := _ic_commit_write(self._tree.ptr, self._dirty.ptr, self._commit_args,
                                      self._seg_fd, meta, len(meta), self._commit_io):
            self._native_not_done(code, meta)
        else:
            self._finish(self._commit_args, meta, done=True)
        return self.head

    def _catch_up(self, meta: bytes) -> None:
        """commit() is raising: make the store agree with the disk.  An
        interruption (Ctrl-C, or a MemoryError) may land anywhere in a
        commit; what it means depends on how far the commit got:

        - built but not yet being written: nothing was written, so the build
          is undone and the store stays a writer with its uncommitted pages;
        - writing, before the write returned whole (_UNWRITTEN): what reached
          the disk is unknown, so FAILED;
        - written whole (_WRITTEN), in or after the sync: the sync is
          completed (the interruption was no failure, so this is not a retry
          after an error, invariant 6: os.fdatasync itself goes on after
          EINTR, PEP 475), then the commit is finished;
        - synced (_SYNCED), or finished in C (c has moved on) but not yet in
          the store's own bookkeeping: the commit is finished.

        A commit that stands is finished here, so that the store's head,
        tail and meta match the page table; the interruption goes on up to
        the caller, which finds the new head (image/_image.py looks)."""
        c = getattr(self, "_commit_args", None)
        if self._state is not _WRITER or c is None:
            return
        stage, finished_in_c = self._vfs_stage, c.seq - 1 != self._tail.seq
        if stage is None and not finished_in_c:
            self._drop_unwritten_build(c)
        elif stage is _UNWRITTEN:
            self._interrupted(c, "interrupted while writing a commit")
        else:
            if stage is _WRITTEN:
                self._complete_sync(c)
            self._finish(c, bytes(meta), done=finished_in_c)

    def _drop_unwritten_build(self, c) -> None:
        """An interruption or error before the write: undo the build, if one
        was applied (c.undo is set from ic_commit_build to its undo or done).
        A segment started for it stays, empty, and the next commit goes on
        there or starts it again, as after a failed open of it."""
        if c.undo != ffi.NULL:
            lib.ic_commit_undo(self._tree.ptr, c)

    def _complete_sync(self, c) -> None:
        """The sync of a wholly written commit was interrupted: sync again.
        A failure is FAILED as any failed sync; a second interruption leaves
        the commit's fate unknown, so FAILED too."""
        try:
            sync(self._vfs, self._seg_fd)
        except SyncFailed as exc:
            self._vfs_stage = None
            lib.ic_commit_undo(self._tree.ptr, c)
            self._enter_failed(exc.error)
        except BaseException:
            self._interrupted(c, "interrupted twice while syncing a commit")
            raise
        self._vfs_stage = _SYNCED

    def _interrupted(self, c, why: str) -> None:
        """The commit under way may or may not be on disk: put the page table
        back and trust nothing more until the image is reopened."""
        self._vfs_stage = None
        lib.ic_commit_undo(self._tree.ptr, c)
        self._state = _FAILED
        self._failure = why
        self._bind_reader()

    def _native_not_done(self, code: int, meta: bytes) -> None:
        """ic_commit_write did not commit (code says why).  When the commit
        does not fit the segment nothing was written, and the Vfs path starts
        the next one; otherwise raise what the failure means (invariant 6 for a
        failed sync)."""
        io = self._commit_io
        if code == _IC_FULL:
            self._commit_through_vfs(meta)
            return
        if code != _IC_IO:
            raise_status(self._image.native.ptr, code)
        error = OSError(io.err, os.strerror(io.err))
        if io.stage == _IC_STAGE_SYNC:
            self._enter_failed(error)
        if io.written:   # some bytes may have landed
            self._scrub_failed_commit(self._tail)
        raise CommitFailed(f"{self.path}: commit {self._tail.seq + 1} could not be written "
                           f"({error.strerror}); nothing was committed") from error

    def _commit_through_vfs(self, meta: bytes) -> None:
        """The commit step by step, each write and sync through the Vfs.
        _vfs_stage says how far it got, for _catch_up when it is interrupted."""
        meta_buf = ffi.from_buffer(meta) if meta else ffi.NULL   # alive until built
        c = self._build(meta_buf, len(meta))
        if c is None:
            c = self._build_in_new_segment(meta_buf, len(meta))
        tail = self._tail
        self._vfs_stage = _UNWRITTEN
        try:
            self._vfs.pwrite(self._seg_fd, _buffer(c.buf, c.buf_len), tail.slot * self.page_size)
            self._vfs_stage = _WRITTEN
            sync(self._vfs, self._seg_fd)
            self._vfs_stage = _SYNCED
        except SyncFailed as exc:
            self._vfs_stage = None
            lib.ic_commit_undo(self._tree.ptr, c)
            self._enter_failed(exc.error)
        except OSError as exc:
            self._vfs_stage = None
            lib.ic_commit_undo(self._tree.ptr, c)
            if getattr(exc, "written", None) != 0:   # some bytes may have landed
                self._scrub_failed_commit(tail)
            raise CommitFailed(f"{self.path}: commit {tail.seq + 1} could not be written "
                               f"({exc.strerror or exc}); nothing was committed") from exc
        self._finish(c, meta)

    def _start_log(self, tail: _Tail, zero_from: int, seg_slots: int | None = None) -> None:
        """Describe the next commit to the builder: after this, it keeps the
        tail itself (ic_commit_done advances it), so a commit sets only what
        is its own."""
        c = self._commit_args
        _start_log(c, tail, parent=self.base,
                   prev_ckpt=make_loc(self._ckpt.segno, self._ckpt.slot),
                   seg_slots=self._image.nslots(tail.segno) if seg_slots is None else seg_slots,
                   zero_from=zero_from, salt=self._image.salt)
        c.since_ckpt = self._records_since_ckpt
        c.pages_since_ckpt = self._pages_since_ckpt
        c.ckpt_records, c.ckpt_nodes = CHECKPOINT_RECORDS, CHECKPOINT_NODES
        c.ckpt_pages = CHECKPOINT_PAGES

    def _scrub_failed_commit(self, tail: _Tail) -> None:
        """A commit write that failed part-way may have left its whole record in
        the page cache, where a reader or the next open would take it for a
        commit.  Zero the record's first block (no sync needed: the page cache
        now holds zeros, whatever reaches the disk).  If even that fails, what
        lies past the log's end is unknown: terminal."""
        try:
            self._vfs.pwrite(self._seg_fd, _ZERO_BLOCK, tail.slot * self.page_size)
        except OSError as exc:
            self._enter_failed(exc)

    def _build(self, meta_buf, meta_len: int):
        """Lay out the next commit and apply it to the page table (undoable);
        None when it does not fit in the segment."""
        c = self._commit_args
        c.meta, c.meta_len = meta_buf, meta_len   # the builder decides on a checkpoint
        code = lib.ic_commit_build(self._tree.ptr, self._dirty.ptr, c)
        if code == lib.IC_FULL:
            return None
        self._image.native.check(code)
        return c

    def _build_in_new_segment(self, meta_buf, meta_len: int):
        """Start the next segment, sized for this commit if it is larger than a
        segment; its first record is a checkpoint (invariant 4)."""
        tail = empty_tail(self._active + 1, self._tail.seq, self._tail.sum)
        nominal = min(self._image.sizes.values())
        self._start_log(tail, zero_from=1, seg_slots=1)   # no room: the builder reports its need
        probe = self._build(meta_buf, meta_len)
        assert probe is None
        need = self._commit_args.need_slots
        seg_size = max(nominal, _round_up((need + 1) * self.page_size, self.page_size))
        try:
            make_segment(self._vfs, self.path, tail.segno, seg_size, self.page_size,
                         self._image.image_id, self._image.salt)
            self._image.attach(tail.segno)
            fd = self._vfs.open(self._image.seg_path(tail.segno), os.O_RDWR)
        except SyncFailed as exc:
            self._enter_failed(exc.error)
        except OSError as exc:
            self._start_log(self._tail, zero_from=self._image.nslots(self._active))
            raise CommitFailed(f"{self.path}: could not start segment "
                               f"{fmt.segment_name(tail.segno)} ({exc.strerror or exc}); "
                               f"nothing was committed") from exc
        old_fd, self._seg_fd, self._active, self._tail = self._seg_fd, fd, tail.segno, tail
        try:
            self._vfs.close(old_fd)
        except OSError:
            pass   # a sealed segment: nothing of it is written again
        # Made by this process and zero-filled: no zero slot needed.
        self._start_log(tail, zero_from=1)
        self._image.native.set_limit(tail.segno, 1)
        c = self._build(meta_buf, meta_len)
        if c is None:
            raise CommitFailed(f"{self.path}: commit does not fit a segment of {seg_size} bytes")
        return c

    def _enter_failed(self, exc: OSError) -> None:
        """The terminal state: never retry a sync (invariant 6)."""
        self._state = _FAILED
        self._bind_reader()
        self._failure = f"{exc.strerror or exc}"
        raise StoreFailed(f"{self.path}: a sync failed ({self._failure}); the store refuses "
                          f"further work until it is reopened") from exc

    def _finish(self, c, meta: bytes, done: bool = False) -> None:
        """The commit is durable: finish it in C (unless ic_commit_write did),
        then take the store's state from c, which now describes the commit
        after.  Setting the tail comes last: until then _catch_up can run
        this again, and each step but the byte count is idempotent."""
        nslots, checkpoint = c.nslots, c.checkpoint
        if not done:
            lib.ic_commit_done(self._tree.ptr, self._dirty.ptr, c)
        seq = c.seq - 1
        self.head = self.base = seq
        self.head_meta = meta
        self._records_since_ckpt = c.since_ckpt
        self._pages_since_ckpt = c.pages_since_ckpt
        if checkpoint:
            ckpt = self._image.record_at(c.segno, c.ckpt_slot)
            if ckpt is None:   # what was just written and synced does not read back
                self._state = _FAILED
                self._failure = f"commit {seq} does not read back from disk"
                self._bind_reader()
                raise StoreFailed(f"{self.path}: {self._failure}; reopen the image")
            self._ckpt = ckpt
            self._write_hint()
        self.appended_bytes += nslots * self.page_size
        self._vfs_stage = None
        # (tuple.__new__ itself: a NamedTuple's __new__ is a Python frame, and
        # this runs for every commit)
        self._tail = _new_tuple(_Tail, (c.segno, c.slot, seq, c.prev_sum, c.ckpt_slot))

    def _write_hint(self) -> None:
        """Name the newest checkpoint for the next open.  Unsynced and only a
        hint: a stale or torn one is ignored (it has its own checksum)."""
        data = fmt.encode_hint(self._image.salt, self._ckpt.segno, self._ckpt.slot,
                               self._ckpt.seq, self._ckpt.sum)
        try:
            fd = self._vfs.open(os.path.join(self.path, HINT_NAME), os.O_WRONLY | os.O_CREAT)
            try:
                self._vfs.pwrite(fd, data, 0)
            finally:
                self._vfs.close(fd)
        except OSError:
            pass

    # -- history ---------------------------------------------------------------

    def commits(self) -> list[CommitInfo]:
        """Every commit still on disk, oldest first."""
        self._require_open()
        return [_commit_info(r) for r in self._all_records()]

    def written_pages(self) -> WrittenPages:
        """The pages each commit on disk wrote, as it wrote them (WrittenPages)."""
        self._require_open()
        return WrittenPages(self._image, self._all_records())

    def _all_records(self) -> list[fmt.Record]:
        """Every record from the oldest segment to the head, in order.  A
        segment's log ends where the next segment's begins: a record past that
        (a commit whose write failed before the writer moved on) is not part of
        the history."""
        out: list[fmt.Record] = []
        numbers = self._image.numbers()
        firsts = [self._image.record_at(n, 1) for n in numbers]
        for i, segno in enumerate(numbers):
            later = [f.seq for f in firsts[i + 1:] if f is not None]
            upto = min([self.head] + [seq - 1 for seq in later])
            last = out[-1] if out and segno - 1 in self._image.sizes else None
            # after a vacuumed segment the log starts afresh (check() accepts that gap)
            tail = empty_tail(segno, last.seq if last else -1, last.sum if last else 0)
            records, _ = self._image.scan(tail, upto=upto)
            out.extend(records)
            if out and out[-1].seq >= self.head:
                break
        return out

    def view(self, commit_no: int, scans: dict | None = None) -> PageView:
        """A read-only view of any commit still on disk.  scans: a dict the
        caller keeps between views it opens in ascending order, so that they
        share the reading of the log from their checkpoint (_vacuum.resolve)."""
        self._require_open()
        if not 0 <= commit_no <= self.head:
            raise KeyError(f"commit {commit_no} is not on disk (the head is {self.head})")
        view = None
        if self._pin is not None:   # pinned before it is built (pager/_vacuum, READERS)
            self._pin.set([self.head, commit_no] + [v.commit for v in list(self._views)])
        try:
            tree, rec = _vacuum.resolve(self, commit_no, scans)
            view = PageView(tree, commit_no, self.page_size, rec.meta, self.path)
            view.record = rec   # what carries it: the original, or a vacuum's stand-in
        finally:
            if view is not None:
                self._views.add(view)
                view._on_close = self._update_pins
            self._update_pins()
        return view

    def page_numbers(self, view: PageView) -> Iterator[int]:
        """The logical pages that view's commit holds (its page table has an
        entry for them, even if they read as zeros), ascending, each once.

        A generator over the page table, in constant memory but for the pages
        the commits since the view's checkpoint wrote: the checkpoint's tree is
        walked on disk, node by verified node, and merged with those pages;
        only pages those commits wrote or freed are looked up in the view."""
        self._require_open()
        tree = view._require_open()
        if view.path != self.path:
            raise ValueError(f"the view is of {view.path}, not of {self.path}")
        ckpt, records = self._replay_of(view)
        touched: set[int] = set()
        for rec in records[1:]:
            touched.update(rec.page_numbers())
            touched.update(struct.unpack(f"<{rec.nfreed}Q", rec.freed))
        last = -1
        for page_no in heapq.merge(self._checkpoint_pages(ckpt), sorted(touched)):
            if page_no == last:
                continue
            last = page_no
            if page_no not in touched or tree.entry(page_no)[0]:
                yield page_no

    def _replay_of(self, view: PageView) -> tuple[fmt.Record, list[fmt.Record]]:
        """The checkpoint view's state is built from, and the records from it to
        the view's commit.  After a vacuum the view may stand on a stand-in (a
        checkpoint: nothing to replay), and the checkpoint chain may cross a
        vacuumed segment (then the holding segment is scanned)."""
        rec = getattr(view, "record", None)
        if rec is not None and rec.is_checkpoint:
            return rec, [rec]
        try:
            ckpt = self._image.checkpoint_before(self._ckpt, view.commit)
            records, _ = self._image.scan(_Tail(ckpt.segno, ckpt.slot, -1, 0, 0),
                                          upto=view.commit)
        except KeyError:
            records = _vacuum._scan_holding_segment(self, view.commit)
        return records[0], [r for r in records if not r.is_side]

    def _checkpoint_pages(self, ckpt: fmt.Record) -> Iterator[int]:
        """The pages a checkpoint's on-disk page table holds, ascending."""
        if ckpt.root_loc:
            yield from self._node_pages(ckpt.depth - 1, ckpt.root_loc, ckpt.root_sum, 0)

    def _node_pages(self, level: int, loc: int, node_sum: int, prefix: int) -> Iterator[int]:
        shift = (self.page_size // ENTRY_SIZE).bit_length() - 1
        node = self._node_bytes(level, loc, node_sum)
        for i, (child, child_sum, _, _) in enumerate(struct.iter_unpack("<QQQQ", node)):
            if not child:
                continue
            if level == 0:
                yield prefix << shift | i
            else:
                yield from self._node_pages(level - 1, child, child_sum, prefix << shift | i)

    def _node_bytes(self, level: int, loc: int, node_sum: int) -> bytes:
        """A page-table node's bytes, bounds-checked and verified (invariant 8)."""
        segno, slot = loc >> 32, loc & 0xFFFFFFFF
        where = f"{fmt.segment_name(segno)} slot {slot}"
        if segno not in self._image.sizes or not 1 <= slot < self._image.nslots(segno):
            raise CorruptImage(f"{self.path}: a page-table node lies outside the log ({where})")
        off = slot * self.page_size
        node = bytes(self._image.segment(segno)[off:off + self.page_size])
        if lib.ic_node_sum(self._image.native.ptr, level, node) != node_sum:
            raise CorruptImage(f"{self.path}: page-table node at {where} (level {level}) fails "
                               f"its checksum")
        return node

    def refresh(self) -> int:
        """A reader moves to the newest commit; returns the new head."""
        self._require(_READER)
        for segno in segment_numbers(self.path):
            if segno not in self._image.sizes:
                try:
                    self._image.attach(segno)
                except FileNotFoundError:
                    pass   # vacuumed since it was listed
        try:
            return self._refresh()
        finally:
            self._update_pins()

    def _refresh(self) -> int:
        if self._image.numbers()[-1] == self._tail.segno:
            segno = self._tail.segno
            self._image.native.set_limit(segno, self._image.nslots(segno))
            records, tail = self._image.scan(self._tail)
            # A commit is one write, record first: a reader may see a record
            # before all its pages have landed.  Until they verify, that commit
            # is still in flight.
            for i, rec in enumerate(records):
                if self._image.verify_pages(rec) is not None:
                    records = records[:i]
                    tail = self._tail
                    for done in records:
                        tail = tail.after(done)
                    break
            if records:
                self._advance(records, tail)
            self._image.native.set_limit(segno, self._tail.slot)
            return self.head
        self.recovery_notes = []
        self._reader.rebind(0, 0, None)
        old_tree = self._tree
        self._load_head()
        self._bind_reader()
        old_tree.close()
        return self.head

    def _advance(self, records: list[fmt.Record], tail: _Tail) -> None:
        """A reader applies the records that followed its head."""
        ckpts = [i for i, r in enumerate(records) if r.is_state_checkpoint]
        if not ckpts and all(r.is_side for r in records):
            self._tail = tail   # a vacuum's side records so far: the state is unchanged
            return
        records = records if ckpts else [r for r in records if not r.is_side]
        old_tree = self._tree
        self._reader.rebind(0, 0, None)
        try:
            if ckpts:
                self._set_head(records[ckpts[-1]:], tail)
            else:
                # Replay onto a fresh tree from the head's checkpoint, so that a
                # failure part-way leaves the old state whole.
                replayed = self._records_since_head_checkpoint() + records
                tree = self._image.tree_from(self._ckpt, replayed)
                self._tree = tree
                self._records_since_ckpt += len(records)
                self._pages_since_ckpt += sum(r.npages for r in records)
                self._tail, self.head = tail, tail.seq
                self.base = self.head
                self.head_meta = records[-1].meta
        finally:
            self._bind_reader()
        if self._tree is not old_tree:
            old_tree.close()

    def _records_since_head_checkpoint(self) -> list[fmt.Record]:
        records, _ = self._image.scan(_Tail(self._ckpt.segno, self._ckpt.slot, -1, 0, 0),
                                      upto=self.head)
        return records[1:]

    # -- segment cleaning ------------------------------------------------------

    def vacuum(self, keep, *, max_live: float = _vacuum.MAX_LIVE,
               dry_run: bool = False) -> _vacuum.VacuumReport:
        """Reclaim the segments only unretained versions reach; keep (commit
        numbers), the head, readers' pins and open views stay openable
        (pager/_vacuum.py).  The writer must have no uncommitted changes.
        A pass holds at most one segment of disk beyond the image: victims
        whose cleaning would need more are kept (report.refused)."""
        return _vacuum.vacuum(self, keep, max_live=max_live, dry_run=dry_run)

    def held_back(self, commits) -> dict[int, int]:
        """{commit: bytes on disk that only it reaches}, among commits and the head."""
        self._require_open()
        return _vacuum.held_back(self, commits)

    # -- verification ----------------------------------------------------------

    def check(self) -> dict:
        """Walk every record, page and page-table node; raise CorruptImage on the
        first fault.  Returns counts of what was verified."""
        self._require_open()
        self._verify_state()
        records = self._all_records()
        if not records:
            raise CorruptImage(f"{self.path}: the log of the oldest segment is damaged at its "
                               f"start, so the history before the head cannot be verified")
        if 1 in self._image.sizes and records[0].seq != 0:
            raise CorruptImage(f"{self.path}: the log does not start at commit 0")
        if records[-1].seq != self.head:
            raise CorruptImage(f"{self.path}: the log ends at commit {records[-1].seq}, "
                               f"not at the head {self.head}")
        for a, b in zip(records, records[1:]):
            after_vacuum = b.slot == 1 and b.segno - 1 not in self._image.sizes and b.seq > a.seq
            if (b.seq != a.seq + 1 or b.prev_sum != a.sum) and not after_vacuum:
                raise CorruptImage(f"{self.path}: the log breaks between commits {a.seq} "
                                   f"and {b.seq}")
        for rec in records:
            reason = self._image.verify_pages(rec)
            if reason:
                raise CorruptImage(f"{self.path}: {reason}")
        pages, nodes = self._tree.check()
        return {"head": self.head, "commits": len(records), "pages": pages, "nodes": nodes,
                "segments": len(self._image.sizes)}

    def _verify_state(self) -> None:
        """The state invariants of pager/__init__, checked."""
        t = self._tail
        assert self._state in (_READER, _WRITER), self._state
        # the log may end in a crashed vacuum's side records, past the head (invariant 9)
        assert t.seq >= self.head, (t, self.head)
        assert 1 <= t.slot <= self._image.nslots(t.segno)
        assert self._ckpt.is_state_checkpoint and self._ckpt.seq <= self.head
        assert t.seq != self.head or t.ckpt_slot == 0 or \
            (self._ckpt.segno, self._ckpt.slot) == (t.segno, t.ckpt_slot)
        assert self._readonly_or_bounded()
        assert self._vfs_stage is None   # no commit is left half-made between calls
        if self._state == _READER:
            assert self._dirty is None and self._seg_fd < 0 and self._lock_fd < 0
        else:
            assert t.segno == self._active and self._seg_fd >= 0 and self._lock_fd >= 0

    # -- states and closing ----------------------------------------------------

    def _readonly_or_bounded(self) -> bool:
        # a reader only replays what the writer wrote; the writer bounds it
        return self._state == _READER or (self._records_since_ckpt <= CHECKPOINT_RECORDS
                                          and self._pages_since_ckpt <= CHECKPOINT_PAGES)

    def _require_open(self) -> None:
        if self._state in (_READER, _WRITER):
            return
        if self._state == _FAILED:
            raise StoreFailed(f"{self.path}: the store failed ({self._failure}) and must be "
                              f"reopened")
        raise PagerError(f"{self.path}: the store is closed")

    def _require_writer(self) -> None:
        self._require_open()
        if self._state != _WRITER:
            raise ReadOnlyStore(f"{self.path} is open read-only")

    def _require(self, state: str) -> None:
        self._require_open()
        if self._state != state:
            raise PagerError(f"{self.path}: only a {state} can do this")

    def close(self) -> None:
        """Release the image; uncommitted writes are dropped.  Views stay usable."""
        if self._state != _CLOSED or self._lock_fd >= 0 or self._seg_fd >= 0:
            self._release()

    def _release(self) -> None:
        """Let go of everything: the reader first (it points into the tree),
        then memory, then descriptors, each whatever the others did."""
        self._state = _CLOSED
        if self._reader is not None:
            self._reader.rebind(0, 0, None)
        pin = getattr(self, "_pin", None)
        if pin is not None:
            self._pin = None
            pin.close()
        release = getattr(self, "_commit_release", None)
        if release is not None:
            release()
        dirty, tree, seg_fd, lock_fd = self._dirty, self._tree, self._seg_fd, self._lock_fd
        self._dirty, self._seg_fd, self._lock_fd = None, -1, -1
        try:
            if dirty is not None:
                dirty.close()
            if tree is not None:
                tree.close()
            if seg_fd >= 0:
                self._vfs.close(seg_fd)
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)   # closing the descriptor releases the flock

    def __enter__(self) -> PageStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", _CLOSED) != _CLOSED:
            self._release()

    def __repr__(self) -> str:
        return f"<PageStore {self.path} {self._state} head={getattr(self, 'head', None)}>"


def _start_log(c, tail: _Tail, *, parent: int, prev_ckpt: int, seg_slots: int, zero_from: int,
               salt: int) -> None:
    """Set the log half of an ic_commit: the commit after `tail`."""
    c.seq, c.parent, c.prev_sum = tail.seq + 1, parent, tail.sum
    c.segno, c.slot, c.seg_slots = tail.segno, tail.slot, seg_slots
    c.ckpt_slot, c.prev_ckpt, c.zero_from, c.salt = tail.ckpt_slot, prev_ckpt, zero_from, salt
    c.meta, c.meta_len, c.checkpoint = ffi.NULL, 0, 0


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _check_geometry(page_size: int, segment_size: int) -> None:
    if page_size not in fmt.PAGE_SIZES:
        raise ValueError(f"page size {page_size} is not a power of two from 1 KiB to 64 KiB")
    if not fmt.geometry_ok(page_size, segment_size):
        raise ValueError(f"segment size {segment_size} must be a multiple of the page size, "
                         f"from 16 pages to 1 TiB")


class WrittenPages:
    """The pages each commit on disk wrote, read as that commit wrote them:
    from the commit's own data slots, each checked against the page sum its
    record lists (as Image.verify_pages checks a commit).  A page a commit
    wrote holds, whole, that page's bytes in the commit's state, so a reader
    can compare the bytes it cares about across commits without building a
    page table (snapshots/_versions.py, HISTORY, FAST).

    Made by PageStore.written_pages() over the records on disk then, and read
    through the store's segment maps: use it while the store is open.  A
    segment a vacuum deleted since fails the read (CorruptImage), never
    returns other bytes.  Only a plain commit's record says what that commit
    wrote: vacuum's records (stand-ins, and the checkpoint whose data area
    holds the pages copied for every retained version) list copies, not the
    commit's state, so they are not served (KeyError, as for a commit whose
    record is gone)."""

    def __init__(self, image: Image, records: list[fmt.Record]) -> None:
        self._image = image
        self._all = records
        self._records = {r.seq: r for r in records if r.stands_for is None and not r.is_side}
        self._slots: dict[int, dict[int, tuple[int, int]]] = {}   # commit -> page -> (i, sum)

    def commits(self) -> list[CommitInfo]:
        """Every commit on disk, oldest first, as PageStore.commits() lists
        them (from the same read of the records: a caller needing both reads once)."""
        return [_commit_info(r) for r in self._all]

    def __contains__(self, commit_no: object) -> bool:
        """Whether commit_no's own record is on disk (its pages can be read)."""
        return commit_no in self._records

    def pages(self, commit_no: int) -> tuple[int, ...]:
        """The logical pages commit_no wrote (KeyError: its own record is not on disk)."""
        return self._record(commit_no).page_numbers()

    def freed(self, commit_no: int) -> tuple[int, ...]:
        """The logical pages commit_no freed (they left its page table)."""
        rec = self._record(commit_no)
        return struct.unpack(f"<{rec.nfreed}Q", rec.freed)

    def page(self, commit_no: int, page_no: int) -> bytes:
        """page_no as commit_no wrote it.  KeyError if that commit did not
        write it (or its own record is not on disk); CorruptImage if the slot
        fails its page sum."""
        rec = self._record(commit_no)
        slots = self._slots.get(commit_no)
        if slots is None:
            numbers = struct.unpack_from(f"<{2 * rec.npages}Q", rec.pairs)
            slots = self._slots[commit_no] = {numbers[2 * i]: (i, numbers[2 * i + 1])
                                              for i in range(rec.npages)}
        if page_no not in slots:
            raise KeyError(f"commit {commit_no} did not write page {page_no}")
        i, page_sum = slots[page_no]
        slot = rec.first_slot + i
        self._image.native.verify_slot(make_loc(rec.segno, slot), page_sum, page_no, rec.seq)
        size = self._image.page_size
        return bytes(self._image.segment(rec.segno)[slot * size:(slot + 1) * size])

    def _record(self, commit_no: int) -> fmt.Record:
        rec = self._records.get(commit_no)
        if rec is None:
            raise KeyError(f"commit {commit_no}'s own record is not on disk")
        return rec


def _commit_info(rec: fmt.Record) -> CommitInfo:
    return CommitInfo(rec.seq, None if rec.parent == fmt.NO_PARENT else rec.parent,
                      rec.time_ns / 1e9, rec.meta, rec.page_numbers())
