"""PageStore: the append-only page store (see pager/__init__.py for the rules).

This module owns the commit protocol, recovery, segment files and read-only
views.  The C core (native/) owns page translation, dirty buffers and
checksums; _format.py owns the byte layout.
"""
from __future__ import annotations

import os
import struct
import time
import warnings
from bisect import bisect_right
from dataclasses import dataclass, replace
from typing import NamedTuple

from native import PageReader, ffi, lib
from pager import _format as fmt
from pager._errors import (CommitFailed, CorruptImage, ImageLocked, PagerError, ReadOnlyStore,
                           RecoveryWarning, StoreFailed)
from pager._native import Dirty, NativeStore, Tree, hash64, loc_parts, make_loc, raise_status
from pager._vfs import Vfs

DEFAULT_PAGE_SIZE = 4096
# 64 MiB: zero-filling a segment is a pause of well under a second even on an
# SD card, and an image of a few TiB still needs only tens of thousands of maps.
DEFAULT_SEGMENT_SIZE = 64 << 20
# A checkpoint is due when this many page-table nodes are dirty (1 MiB at 4 KiB
# pages) or this many records were written since the last one.  Together they
# bound what open() replays and keep a checkpoint's cost near one page a commit.
CHECKPOINT_NODES = 256
CHECKPOINT_RECORDS = 1024
MAX_PAGE_NO = 1 << 40        # as in native/core.c: 4 PiB at 4 KiB pages
LOCK_NAME = "LOCK"
LOCK_ATTEMPTS = 20           # x 5 ms: far longer than a reader's probe, short for a person
LOCK_RETRY_SECONDS = 0.005

_READER, _WRITER, _FAILED, _CLOSED = "reader", "writer", "failed", "closed"


class CommitInfo(NamedTuple):
    """One commit as listed by PageStore.commits()."""
    number: int
    parent: int | None
    time: float              # seconds since the epoch
    meta: bytes
    pages: tuple[int, ...]   # the logical pages it wrote


@dataclass(frozen=True)
class _Tail:
    """Where a segment's log ends, and what the next record there must match."""
    segno: int
    top: int          # the next record ends here
    slot: int         # the next commit's pages start at this slot
    seq: int          # the last record's commit number (-1: none seen yet)
    sum: int          # the last record's checksum
    ckpt_top: int     # top of this segment's newest checkpoint record (0: none yet)

    def follows(self, rec: fmt.Record) -> bool:
        """Does rec continue the log here (invariants 3 to 5 of pager/__init__)?"""
        if rec.first_slot != self.slot:
            return False
        if self.seq >= 0 and (rec.seq != self.seq + 1 or rec.prev_sum != self.sum):
            return False
        if rec.is_checkpoint:
            return rec.ckpt_top == rec.top
        return self.ckpt_top != 0 and rec.ckpt_top == self.ckpt_top and rec.parent == rec.seq - 1

    def after(self, rec: fmt.Record) -> _Tail:
        return _Tail(self.segno, rec.start, rec.slot_end, rec.seq, rec.sum,
                     rec.top if rec.is_checkpoint else self.ckpt_top)


def _empty_tail(segno: int, seg_size: int, seq: int = -1, last_sum: int = 0) -> _Tail:
    return _Tail(segno, seg_size, 1, seq, last_sum, 0)


def _segment_numbers(path: str) -> list[int]:
    numbers = []
    for name in os.listdir(path):
        if name.startswith("seg-") and len(name) == 10 and name[4:].isdigit():
            numbers.append(int(name[4:]))
    return sorted(numbers)


class _Image:
    """The segment files of one image directory, mapped by a NativeStore."""

    def __init__(self, path: str, vfs: Vfs) -> None:
        self.path = path
        self.vfs = vfs
        numbers = _segment_numbers(path)
        if not numbers:
            raise CorruptImage(f"{path} is not an imago image: it holds no segment files")
        oldest = self._header_of(numbers[0])
        self.reference = numbers[0]   # the segment whose identity the others must share
        self.page_size = oldest.page_size
        self.salt = oldest.salt
        self.image_id = oldest.image_id
        self.native = NativeStore(oldest.page_size, oldest.salt, oldest.image_id)
        self.sizes: dict[int, int] = {}
        self.first_seq: dict[int, int] = {}
        for segno in numbers:
            self.attach(segno)

    def seg_path(self, segno: int) -> str:
        return os.path.join(self.path, fmt.segment_name(segno))

    def _header_of(self, segno: int, fd: int | None = None) -> fmt.SegmentHeader:
        name = fmt.segment_name(segno)
        own = fd is None
        if own:
            fd = self.vfs.open(self.seg_path(segno), os.O_RDONLY)
        try:
            size = self.vfs.size(fd)
            header = fmt.decode_segment_header(self.vfs.pread(fd, fmt.HEADER_BYTES, 0))
        finally:
            if own:
                self.vfs.close(fd)
        if header is None:
            if size < fmt.HEADER_BYTES:
                raise CorruptImage(f"{name} in {self.path} is truncated: {size} bytes")
            raise CorruptImage(f"{name} in {self.path} is not an imago segment (bad header)")
        if header.segno != segno:
            raise CorruptImage(f"{name} in {self.path} is segment {header.segno} renamed")
        if size < header.seg_size:
            raise CorruptImage(f"{name} in {self.path} is truncated: {size} of "
                               f"{header.seg_size} bytes")
        if size > header.seg_size:
            raise CorruptImage(f"{name} in {self.path} has {size - header.seg_size} bytes "
                               f"of garbage appended past its end")
        return header

    def attach(self, segno: int) -> None:
        """Check a segment's header against this image and map it."""
        fd = self.vfs.open(self.seg_path(segno), os.O_RDONLY)
        try:
            header = self._header_of(segno, fd)
            if (header.image_id, header.salt, header.page_size) != \
                    (self.image_id, self.salt, self.page_size):
                raise CorruptImage(f"{fmt.segment_name(segno)} in {self.path} belongs to "
                                   f"another image than {fmt.segment_name(self.reference)}")
            self.native.map(segno, fd, header.seg_size)
            self.sizes[segno] = header.seg_size
        finally:
            self.vfs.close(fd)

    def numbers(self) -> list[int]:
        return sorted(self.sizes)

    def segment(self, segno: int) -> memoryview:
        view = self.native.segment(segno)
        if view is None:
            raise CorruptImage(f"segment {fmt.segment_name(segno)} is missing from {self.path}")
        return view

    def scan(self, tail: _Tail, upto: int | None = None) -> tuple[list[fmt.Record], _Tail]:
        """The records that continue the log from tail, and the tail after them."""
        seg = self.segment(tail.segno)
        records = []
        while upto is None or tail.seq < upto:
            rec = fmt.decode_record(seg, tail.segno, tail.top, self.salt, self.page_size)
            if rec is None or not tail.follows(rec):
                break
            records.append(rec)
            tail = tail.after(rec)
        return records, tail

    def first_record(self, segno: int) -> fmt.Record | None:
        size = self.sizes[segno]
        rec = fmt.decode_record(self.segment(segno), segno, size, self.salt, self.page_size)
        if rec is not None and _empty_tail(segno, size).follows(rec):
            self.first_seq[segno] = rec.seq
            return rec
        return None

    def damage_below(self, tail: _Tail) -> bool:
        """Are there non-zero bytes in the record block after the log's end?"""
        floor = tail.slot * self.page_size
        if tail.top - fmt.RECORD_BLOCK < floor:
            return False
        seg = self.segment(tail.segno)
        return any(seg[tail.top - fmt.RECORD_BLOCK:tail.top])

    def later_record(self, tail: _Tail) -> fmt.Record | None:
        """A whole record, newer than the tail, lying past damage in the log."""
        seg = self.segment(tail.segno)
        floor = tail.slot * self.page_size + fmt.RECORD_BLOCK
        for top in range(tail.top - fmt.RECORD_BLOCK, floor, -fmt.RECORD_BLOCK):
            if seg[top - fmt.HEADER_BYTES:top - fmt.HEADER_BYTES + 8] != fmt.REC_MAGIC:
                continue
            rec = fmt.decode_record(seg, tail.segno, top, self.salt, self.page_size)
            if rec is not None and rec.seq > tail.seq:
                return rec
        return None

    def verify_pages(self, rec: fmt.Record) -> str | None:
        """None if every page and node a record wrote matches its checksum, else why not."""
        base = make_loc(rec.segno, rec.first_slot)
        for i in range(rec.npages):
            page_no, page_sum = struct.unpack_from("<QQ", rec.pairs, 16 * i)
            try:
                self.native.verify_slot(base + i, page_sum, page_no, rec.seq)
            except CorruptImage as exc:
                return str(exc)
        if rec.nnodes:
            seg = self.segment(rec.segno)
            lo = (rec.first_slot + rec.npages) * self.page_size
            if hash64(seg[lo:lo + rec.nnodes * self.page_size], self.salt) != rec.nodes_sum:
                return (f"the page-table checkpoint of commit {rec.seq} fails its checksum")
        return None

    def segment_of(self, commit_no: int) -> int | None:
        """The segment whose log holds commit_no (each begins with a checkpoint)."""
        numbers = [s for s in self.numbers() if s in self.first_seq or self.first_record(s)]
        firsts = [self.first_seq[s] for s in numbers]
        i = bisect_right(firsts, commit_no)
        return numbers[i - 1] if i else None

    def tree_at(self, records: list[fmt.Record], upto: int) -> Tree:
        """The page table after commit `upto`, from its checkpoint and the deltas after it."""
        target = next(r for r in records if r.seq == upto)
        ckpt_index = next(i for i, r in enumerate(records) if r.top == target.ckpt_top)
        ckpt = records[ckpt_index]
        tree = Tree(self.native, ckpt.root_loc, ckpt.root_sum, ckpt.depth)
        tree.set_usage(ckpt.usage)
        for rec in records[ckpt_index + 1:]:
            if rec.seq > upto:
                break
            tree.apply(rec.pairs, make_loc(rec.segno, rec.first_slot), rec.seq)
            tree.apply_freed(rec.freed, rec.seq)
        return tree

class _SyncFailed(Exception):
    """An fsync or fdatasync failed: what is on disk is unknown (invariant 6)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _sync(vfs: Vfs, fd: int, data_only: bool = True) -> None:
    try:
        vfs.fdatasync(fd) if data_only else vfs.fsync(fd)
    except OSError as exc:
        raise _SyncFailed(exc) from exc


def _make_segment(vfs: Vfs, dirpath: str, segno: int, seg_size: int, page_size: int,
                  image_id: bytes, salt: int) -> None:
    """Create a zero-filled segment whole: temp file, fsync, rename, dir fsync.

    Zeros are written, not fallocated: on ext4 a fallocated extent is
    "unwritten" and the first write into it costs a journal commit in
    fdatasync (DESIGN.md measured 6,900 commits/s against 11,000/s)."""
    final = os.path.join(dirpath, fmt.segment_name(segno))
    temp = final + ".tmp"
    fd = vfs.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        chunk = bytes(min(seg_size, 1 << 20))
        for off in range(0, seg_size, len(chunk)):
            vfs.pwrite(fd, chunk[:seg_size - off], off)
        vfs.pwrite(fd, fmt.encode_segment_header(page_size, seg_size, segno, image_id, salt,
                                                 time.time_ns()), 0)
        _sync(vfs, fd, data_only=False)
    except BaseException:
        vfs.close(fd)
        fd = -1
        try:
            vfs.unlink(temp)
        except OSError:
            pass
        raise
    finally:
        if fd >= 0:
            vfs.close(fd)
    vfs.rename(temp, final)
    try:
        vfs.fsync_dir(dirpath)
    except OSError as exc:
        raise _SyncFailed(exc) from exc


class PageView:
    """A read-only view of one commit, in the process that opened it."""

    def __init__(self, tree: Tree, commit: int, page_size: int) -> None:
        self._tree: Tree | None = tree
        self.commit = commit
        self.page_size = page_size
        self._reader = _make_reader(self, page_size)
        self._reader.rebind(_address(tree.ptr), 0)

    def _require_open(self) -> Tree:
        if self._tree is None:
            raise PagerError(f"the view of commit {self.commit} is closed")
        return self._tree

    def read(self, page_no: int) -> bytes:
        """The bytes of a logical page as of this commit."""
        return _read_page(self._require_open(), ffi.NULL, page_no, self.page_size)

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Bytes at a logical address as of this commit."""
        return _read_bytes(self._require_open(), ffi.NULL, addr, length)

    def read_word(self, addr: int) -> int:
        """The 64-bit word at a logical address as of this commit."""
        return _read_word(self._require_open(), ffi.NULL, addr)

    def close(self) -> None:
        self._reader.rebind(0, 0)
        if self._tree is not None:
            self._tree.close()
            self._tree = None

    def __enter__(self) -> PageView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _address(ptr) -> int:
    return int(ffi.cast("uintptr_t", ptr)) if ptr is not None else 0


def _make_reader(owner, page_size: int) -> PageReader:
    """A native reader whose fallback runs owner's documented Python methods,
    which check the state and raise the right error."""
    methods = {"read": type(owner).read, "read_word": type(owner).read_word,
               "read_bytes": type(owner).read_bytes}
    ref = __import__("weakref").ref(owner)

    def fallback(kind: str, *args):
        target = ref()
        if target is None:
            raise PagerError("the store is gone")
        return methods[kind](target, *args)

    reader = PageReader(page_size, fallback)
    owner.read, owner.read_word, owner.read_bytes = \
        reader.read, reader.read_word, reader.read_bytes
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
            if isinstance(exc, _SyncFailed):   # no store exists yet to enter FAILED
                raise exc.error from None
            raise
        return cls.open(path, _vfs=vfs)

    @staticmethod
    def _populate(vfs: Vfs, temp: str, page_size: int, segment_size: int, image_id: bytes,
                  salt: int) -> None:
        """Write the first segment of a new image, holding commit 0."""
        _make_segment(vfs, temp, 1, segment_size, page_size, image_id, salt)
        record, _ = fmt.encode_record(
            salt, flags=fmt.FLAG_CHECKPOINT, seq=0, parent=fmt.NO_PARENT, prev_sum=0,
            time_ns=time.time_ns(), first_slot=1, npages=0, nnodes=0, pairs=b"", freed=b"",
            usage=[], meta=b"", depth=0, root_loc=0, root_sum=0, ckpt_top=segment_size,
            nodes_sum=hash64(b"", salt))
        fd = vfs.open(os.path.join(temp, fmt.segment_name(1)), os.O_RDWR)
        try:
            vfs.pwrite(fd, record, segment_size - len(record))
            vfs.fdatasync(fd)
        finally:
            vfs.close(fd)
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
        self._vfs = vfs
        self._state = _CLOSED
        self._lock_fd = -1
        self._seg_fd = -1
        self._tree: Tree | None = None
        self._dirty: Dirty | None = None
        self._reader: PageReader | None = None
        if not os.path.exists(path):
            raise FileNotFoundError(f"no image at {path}")
        if not os.path.isdir(path):
            raise CorruptImage(f"{path} is not an imago image (an image is a directory)")
        if not _segment_numbers(path):
            raise CorruptImage(f"{path} is not an imago image: it holds no segment files")
        if not readonly:
            self._take_lock()
        try:
            self._image = _Image(path, vfs)
            self.page_size = self._image.page_size
            self._load_head()
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

    def _take_lock(self) -> None:
        fd = self._vfs.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT)
        import fcntl
        # A reader probes the lock with a momentary shared flock (_writer_active);
        # a few short retries tell that apart from a writer, which holds it.
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(LOCK_RETRY_SECONDS)
        else:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            self._vfs.close(fd)
            raise ImageLocked(f"{self.path} is open for writing by another process "
                              f"(pid {holder})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _load_head(self) -> None:
        """Find the newest valid commit and build its page table (recovery)."""
        image = self._image
        numbers = image.numbers()
        self._active = numbers[-1]
        for segno in reversed(numbers):
            tail0 = _empty_tail(segno, image.sizes[segno])
            records, tail = image.scan(tail0)
            self._note_damage(tail)
            # Only the newest commit can be torn: each commit's sync returned
            # before the next was written.  So a newest record whose pages fail
            # is dropped (and said so), and the one before it is trusted; its
            # pages, like all others, are verified when first read.
            reason = image.verify_pages(records[-1]) if records else None
            if reason is not None:
                dropped = records.pop()
                self.recovery_notes.append(
                    f"{self.path}: dropped commit {dropped.seq}, whose pages fail their "
                    f"checksums ({reason}): an interrupted commit, or damage; the image "
                    f"opens at commit {dropped.seq - 1}")
                tail = tail0
                for rec in records:
                    tail = tail.after(rec)
            if records:
                self._records = records
                self._tail = tail
                break
        else:
            raise CorruptImage(f"{self.path}: no segment holds a valid commit record")
        self.head = self._tail.seq
        self._tree = image.tree_at(records, self.head)
        self._records_since_ckpt = sum(1 for r in records if r.top < self._tail.ckpt_top)
        for segno, live in self._tree.usage().items():
            if segno not in image.sizes:
                raise CorruptImage(f"segment {fmt.segment_name(segno)} is missing from "
                                   f"{self.path}: it holds {live} live pages of commit "
                                   f"{self.head}")

    def _note_damage(self, tail: _Tail) -> None:
        if not self._image.damage_below(tail) or self._writer_active():
            return
        later = self._image.later_record(tail)
        where = f"{fmt.segment_name(tail.segno)} at offset {tail.top - fmt.RECORD_BLOCK}"
        which = (f"the commit record after commit {tail.seq}" if tail.seq >= 0 else
                 f"the first commit record of {fmt.segment_name(tail.segno)}")
        if later is not None:
            raise CorruptImage(f"{self.path}: {which} ({where}) is damaged, yet commit "
                               f"{later.seq} lies beyond it; refusing to drop acknowledged "
                               f"commits")
        self.recovery_notes.append(
            f"{self.path}: {which} ({where}) is damaged or incomplete: an interrupted commit, "
            f"or damage to an acknowledged one; the image opens at the newest valid commit")

    def _writer_active(self) -> bool:
        """For a reader: does a live writer hold the LOCK?  Then bytes past the
        log's end are a commit in flight, not damage."""
        if not self.readonly:
            return False
        import fcntl
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
            self._tail = _empty_tail(self._active, image.sizes[self._active],
                                     self._tail.seq, self._tail.sum)
        for name in os.listdir(self.path):
            if name.endswith(".tmp") and name.startswith("seg-"):
                self._vfs.unlink(os.path.join(self.path, name))
        self._seg_fd = self._vfs.open(image.seg_path(self._active), os.O_RDWR)
        self._dirty = Dirty(self.page_size)
        self._clear_torn_tail()

    def _clear_torn_tail(self) -> None:
        """Save, then zero, non-zero record blocks below the log's end, so that a
        shorter record written there later is never followed by stale bytes."""
        tail, seg = self._tail, self._image.segment(self._tail.segno)
        low, floor = tail.top, tail.slot * self.page_size
        while low - fmt.RECORD_BLOCK >= floor and any(seg[low - fmt.RECORD_BLOCK:low]):
            low -= fmt.RECORD_BLOCK
        if low == tail.top:
            return
        damaged = os.path.join(self.path, f"damaged-{fmt.segment_name(tail.segno)}-{low}.bin")
        fd = self._vfs.open(damaged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self._vfs.pwrite(fd, bytes(seg[low:tail.top]), 0)
            self._vfs.fsync(fd)
        finally:
            self._vfs.close(fd)
        try:
            self._write_synced([(bytes(tail.top - low), low)])
        except _SyncFailed as exc:
            raise StoreFailed(f"{self.path}: could not clear a torn commit "
                              f"({exc.error.strerror or exc.error})") from exc

    # -- reading ---------------------------------------------------------------

    # read, read_bytes and read_word are served by a native PageReader bound as
    # instance attributes (see _bind_reader); these methods document them and
    # are what its fallback runs when a call cannot be served directly.

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
            self._reader.rebind(_address(self._tree.ptr), _address(self._dirty_ptr()))
        else:
            self._reader.rebind(0, 0)

    def _dirty_ptr(self):
        return self._dirty.ptr if self._dirty is not None else ffi.NULL

    # -- writing ---------------------------------------------------------------

    def write(self, page_no: int, data: bytes, offset: int = 0) -> None:
        """Copy data into a page at offset; visible to this writer at once."""
        self._require_writer()
        if offset < 0 or offset + len(data) > self.page_size:
            raise ValueError(f"{len(data)} bytes at offset {offset} do not fit in a "
                             f"{self.page_size}-byte page")
        if not 0 <= page_no < MAX_PAGE_NO:
            raise ValueError(f"page number {page_no} is out of range")
        self.write_bytes(page_no * self.page_size + offset, data)

    def write_bytes(self, addr: int, data: bytes) -> None:
        """Copy data to a logical address, across page boundaries."""
        self._require_writer()
        try:
            code = lib.ic_write(self._tree.ptr, self._dirty.ptr, addr, ffi.from_buffer(data),
                                len(data))
        except OverflowError:
            raise ValueError(f"address {addr} is out of range") from None
        if code:
            raise_status(self._image.native.ptr, code)

    def write_word(self, addr: int, value: int) -> None:
        """Store a little-endian 64-bit word at a logical address."""
        self._require_writer()
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
        if lib.ic_dirty_drop(self._dirty.ptr, page_no):
            raise MemoryError("out of memory for the dirty-page table")

    @property
    def dirty_pages(self) -> int:
        """How many pages this writer changed since the last commit."""
        return len(self._dirty) if self._dirty is not None else 0

    def rollback(self) -> None:
        """Drop everything written since the last commit."""
        self._require_writer()
        self._dirty.clear()

    def commit(self, meta: bytes = b"") -> int:
        """Make every write since the last commit durable; returns the commit number."""
        self._require_writer()
        meta = bytes(meta)
        if len(meta) > fmt.MAX_META:
            raise ValueError(f"commit metadata is {len(meta)} bytes; the limit is {fmt.MAX_META}")
        changes = self._gather()
        plan = self._plan(self._tail, changes, meta)
        if plan is None:
            plan = self._plan_in_new_segment(changes, meta)
        try:
            self._write_commit(plan)
        except _SyncFailed as exc:
            self._enter_failed(exc.error)
        except OSError as exc:
            self._undo(plan)
            raise CommitFailed(f"{self.path}: commit {plan.seq} could not be written "
                               f"({exc.strerror or exc}); nothing was committed") from exc
        self._finish(plan)
        return plan.seq

    def _gather(self) -> _Changes:
        n, ps = len(self._dirty), self.page_size
        pairs, pages, freed = bytearray(16 * n), bytearray(n * ps), bytearray(8 * n)
        nw, nf = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        self._image.native.check(lib.ic_gather(
            self._tree.ptr, self._dirty.ptr, ffi.from_buffer(pairs), ffi.from_buffer(pages), nw,
            ffi.from_buffer(freed), nf))
        return _Changes(bytes(pairs[:16 * nw[0]]), memoryview(pages)[:nw[0] * ps],
                        bytes(freed[:8 * nf[0]]), nw[0])

    def _plan(self, tail: _Tail, ch: _Changes, meta: bytes, seg_size: int | None = None
              ) -> _Plan | None:
        """Apply the changes to the page table as if written at tail; None (and
        undone) when they do not fit in that segment."""
        seq, tree = tail.seq + 1, self._tree
        first_loc = make_loc(tail.segno, tail.slot)
        olds = tree.apply(ch.pairs, first_loc, seq, keep_olds=True)
        try:
            olds_freed = tree.apply_freed(ch.freed, seq, keep_olds=True)
        except BaseException:
            tree.restore(ch.pairs, 16, olds)
            raise
        plan = _Plan(tail, seq, ch, meta, olds, olds_freed)
        if (tail.ckpt_top == 0 or self._records_since_ckpt >= CHECKPOINT_RECORDS
                or tree.dirty_nodes >= CHECKPOINT_NODES):
            plan.nodes, plan.root_loc, plan.root_sum, plan.depth = \
                tree.serialize(first_loc + ch.npages)
            usage = tree.usage()
            nnodes = len(plan.nodes) // self.page_size
            if nnodes:
                usage[tail.segno] = usage.get(tail.segno, 0) + nnodes
            plan.usage = sorted(usage.items())
        length = fmt.record_length(ch.npages, len(ch.freed) // 8, len(plan.usage or []),
                                   len(meta))
        slots = tail.slot + ch.npages + len(plan.nodes) // self.page_size
        if seg_size is not None:
            plan.seg_size = max(seg_size, _round_up(slots * self.page_size + length,
                                                    self.page_size))
            plan.tail = tail = replace(tail, top=plan.seg_size)
        if slots * self.page_size > tail.top - length:
            self._undo(plan)
            return None
        plan.record, plan.record_sum = self._encode(plan)
        return plan

    def _plan_in_new_segment(self, ch: _Changes, meta: bytes) -> _Plan:
        """Start the next segment (its first record is a checkpoint) and plan there."""
        tail = _empty_tail(self._active + 1, 0, self._tail.seq, self._tail.sum)
        plan = self._plan(tail, ch, meta, seg_size=self._image.sizes[self._active])
        try:
            _make_segment(self._vfs, self.path, tail.segno, plan.seg_size, self.page_size,
                          self._image.image_id, self._image.salt)
            self._image.attach(tail.segno)
            fd = self._vfs.open(self._image.seg_path(tail.segno), os.O_RDWR)
        except _SyncFailed as exc:
            self._enter_failed(exc.error)
        except OSError as exc:
            self._undo(plan)
            raise CommitFailed(f"{self.path}: could not start segment "
                               f"{fmt.segment_name(tail.segno)} ({exc.strerror or exc}); "
                               f"nothing was committed") from exc
        self._vfs.close(self._seg_fd)
        self._seg_fd, self._active = fd, tail.segno
        self._tail = plan.tail
        return plan

    def _encode(self, plan: _Plan) -> tuple[bytes, int]:
        ch, tail = plan.changes, plan.tail
        return fmt.encode_record(
            self._image.salt, flags=fmt.FLAG_CHECKPOINT if plan.is_checkpoint else 0,
            seq=plan.seq, parent=self.head, prev_sum=tail.sum, time_ns=time.time_ns(),
            first_slot=tail.slot, npages=ch.npages, nnodes=len(plan.nodes) // self.page_size,
            pairs=ch.pairs, freed=ch.freed, usage=plan.usage or [], meta=plan.meta,
            depth=max(plan.depth, 0), root_loc=plan.root_loc, root_sum=plan.root_sum,
            ckpt_top=tail.top if plan.is_checkpoint else tail.ckpt_top,
            nodes_sum=hash64(plan.nodes, self._image.salt) if plan.is_checkpoint else 0)

    def _write_commit(self, plan: _Plan) -> None:
        """One commit's writes.  The record goes with a zeroed block below it,
        so that in every acknowledged state the block past the log's end is zero:
        stale bytes of an interrupted commit can never come to sit right past
        the end, where the next open would take them for damage."""
        tail, ch = plan.tail, plan.changes
        writes = []
        if ch.npages or plan.nodes:
            writes.append(([ch.pages, plan.nodes], tail.slot * self.page_size))
        record_at = tail.top - len(plan.record)
        pages_end = (tail.slot + ch.npages + len(plan.nodes) // self.page_size) * self.page_size
        if record_at - fmt.RECORD_BLOCK >= pages_end:
            writes.append(([_ZERO_BLOCK, plan.record], record_at - fmt.RECORD_BLOCK))
        else:
            writes.append(([plan.record], record_at))
        self._write_synced(writes)

    def _write_synced(self, writes: list) -> None:
        """Write, then fdatasync.  A failed write leaves the store usable; a failed
        sync raises _SyncFailed, because the kernel may already have dropped the
        dirty pages it could not write (invariant 6)."""
        for buffers, offset in writes:
            if isinstance(buffers, (bytes, bytearray, memoryview)):
                buffers = [buffers]
            self._vfs.pwritev(self._seg_fd, [b for b in buffers if len(b)], offset)
        _sync(self._vfs, self._seg_fd)

    def _enter_failed(self, exc: OSError) -> None:
        """The terminal state: never retry a sync (invariant 6)."""
        self._state = _FAILED
        self._bind_reader()
        self._failure = f"{exc.strerror or exc}"
        raise StoreFailed(f"{self.path}: a sync failed ({self._failure}); the store refuses "
                          f"further work until it is reopened") from exc

    def _undo(self, plan: _Plan) -> None:
        self._tree.restore(plan.changes.freed, 8, plan.olds_freed)
        self._tree.restore(plan.changes.pairs, 16, plan.olds)

    def _finish(self, plan: _Plan) -> None:
        ch, tail = plan.changes, plan.tail
        nnodes = len(plan.nodes) // self.page_size
        if plan.is_checkpoint:
            self._tree.adopt(plan.root_loc, plan.root_sum, plan.depth,
                             make_loc(tail.segno, tail.slot + ch.npages), nnodes)
            self._records_since_ckpt = 0
        else:
            self._records_since_ckpt += 1
        self._dirty.clear()
        self._tail = _Tail(tail.segno, tail.top - len(plan.record),
                           tail.slot + ch.npages + nnodes, plan.seq, plan.record_sum,
                           tail.top if plan.is_checkpoint else tail.ckpt_top)
        self.head = plan.seq
        self.appended_bytes += len(ch.pages) + len(plan.nodes) + len(plan.record)

    # -- history ---------------------------------------------------------------

    def commits(self) -> list[CommitInfo]:
        """Every commit still on disk, oldest first."""
        self._require_open()
        return [CommitInfo(r.seq, None if r.parent == fmt.NO_PARENT else r.parent,
                           r.time_ns / 1e9, r.meta, r.page_numbers())
                for r in self._all_records()]

    def _all_records(self) -> list[fmt.Record]:
        out: list[fmt.Record] = []
        for segno in self._image.numbers():
            size = self._image.sizes[segno]
            last = out[-1] if out else None
            tail = _empty_tail(segno, size, last.seq if last else -1, last.sum if last else 0)
            records, _ = self._image.scan(tail, upto=self.head)
            out.extend(records)
            if out and out[-1].seq >= self.head:
                break
        return out

    def view(self, commit_no: int) -> PageView:
        """A read-only view of any commit still on disk."""
        self._require_open()
        if not 0 <= commit_no <= self.head:
            raise KeyError(f"commit {commit_no} is not on disk (the head is {self.head})")
        segno = self._image.segment_of(commit_no)
        if segno is None:
            raise KeyError(f"commit {commit_no} is no longer on disk")
        size = self._image.sizes[segno]
        records, _ = self._image.scan(_empty_tail(segno, size), upto=commit_no)
        if not records or records[-1].seq != commit_no:
            raise KeyError(f"commit {commit_no} is not on disk")
        return PageView(self._image.tree_at(records, commit_no), commit_no, self.page_size)

    def refresh(self) -> int:
        """A reader moves to the newest commit; returns the new head."""
        self._require(_READER)
        for segno in _segment_numbers(self.path):
            if segno not in self._image.sizes:
                self._image.attach(segno)
        self.recovery_notes = []
        old_tree = self._tree
        self._reader.rebind(0, 0)
        self._load_head()
        self._bind_reader()
        old_tree.close()
        return self.head

    # -- verification ----------------------------------------------------------

    def check(self) -> dict:
        """Walk every record, page and page-table node; raise CorruptImage on the
        first fault.  Returns counts of what was verified."""
        self._require_open()
        self._verify_state()
        records = self._all_records()
        if 1 in self._image.sizes and records[0].seq != 0:
            raise CorruptImage(f"{self.path}: the log does not start at commit 0")
        if records[-1].seq != self.head:
            raise CorruptImage(f"{self.path}: the log ends at commit {records[-1].seq}, "
                               f"not at the head {self.head}")
        for a, b in zip(records, records[1:]):
            if b.seq != a.seq + 1 or b.prev_sum != a.sum:
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
        assert t.seq == self.head, (t, self.head)
        assert 1 <= t.slot and t.slot * self.page_size <= t.top <= self._image.sizes[t.segno]
        assert self._records_since_ckpt <= CHECKPOINT_RECORDS
        if self._state == _READER:
            assert self._dirty is None and self._seg_fd < 0 and self._lock_fd < 0
        else:
            assert t.segno == self._active and self._seg_fd >= 0 and self._lock_fd >= 0

    # -- states and closing ----------------------------------------------------

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
        if self._state == _CLOSED:
            return
        self._release()
        self._state = _CLOSED

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.rebind(0, 0)
        if self._dirty is not None:
            self._dirty.close()
            self._dirty = None
        if self._tree is not None:
            self._tree.close()
        if self._seg_fd >= 0:
            self._vfs.close(self._seg_fd)
            self._seg_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)   # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> PageStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", _CLOSED) != _CLOSED:
            self._release()

    def __repr__(self) -> str:
        return f"<PageStore {self.path} {self._state} head={getattr(self, 'head', None)}>"


@dataclass
class _Changes:
    pairs: bytes            # (page_no, sum) per written page, in page order
    pages: memoryview       # their bytes
    freed: bytes            # dropped page numbers
    npages: int


@dataclass
class _Plan:
    tail: _Tail
    seq: int
    changes: _Changes
    meta: bytes
    olds: object
    olds_freed: object
    nodes: bytes | bytearray = b""
    root_loc: int = 0
    root_sum: int = 0
    depth: int = -1
    usage: list | None = None
    seg_size: int = 0
    record: bytes = b""
    record_sum: int = 0

    @property
    def is_checkpoint(self) -> bool:
        return self.usage is not None


_ZERO_BLOCK = bytes(fmt.RECORD_BLOCK)


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _check_geometry(page_size: int, segment_size: int) -> None:
    if page_size not in fmt.PAGE_SIZES:
        raise ValueError(f"page size {page_size} is not a power of two from 1 KiB to 64 KiB")
    if not fmt.geometry_ok(page_size, segment_size):
        raise ValueError(f"segment size {segment_size} must be a multiple of the page size, "
                         f"from 16 pages to 1 TiB")
