"""The segment files of one image directory: creating them whole, mapping them,
reading the log in them, and the probes recovery uses.

A segment's log is read forward from a known-good record (slot 1, a
checkpoint, or the hinted newest checkpoint): each next record must start in
the slot where the previous commit ended and continue its checksum chain
(_Tail.follows, invariant 3 of pager/__init__).  The first thing that is not
such a record ends the log.
"""
from __future__ import annotations

import os
import re
import struct
import time
from typing import NamedTuple

from pager import _format as fmt
from pager._errors import CorruptImage
from pager._native import NativeStore, Tree, hash64, make_loc
from pager._vfs import Vfs


class _Tail(NamedTuple):
    """Where a segment's log ends, and what the next record there must match.
    (A NamedTuple: the writer makes one per commit, and it must be cheap.)"""
    segno: int
    slot: int         # the next record starts here
    seq: int          # the last record's commit number (-1: none seen yet)
    sum: int          # the last record's checksum
    ckpt_slot: int    # this segment's newest checkpoint record (0: none yet)

    def follows(self, rec: fmt.Record) -> bool:
        """Does rec continue the log here?"""
        if rec.segno != self.segno or rec.slot != self.slot:
            return False
        if self.seq >= 0 and (rec.seq != self.seq + 1 or rec.prev_sum != self.sum):
            return False
        if rec.is_checkpoint:
            return rec.ckpt_slot == rec.slot
        return self.ckpt_slot != 0 and rec.ckpt_slot == self.ckpt_slot and rec.parent == rec.seq - 1

    def after(self, rec: fmt.Record) -> _Tail:
        return _Tail(self.segno, rec.slot_end, rec.seq, rec.sum,
                     rec.slot if rec.is_checkpoint else self.ckpt_slot)


def empty_tail(segno: int, seq: int = -1, last_sum: int = 0) -> _Tail:
    return _Tail(segno, 1, seq, last_sum, 0)


_SEGMENT_NAME = re.compile(r"seg-([0-9]{6})", re.ASCII)


def segment_numbers(path: str) -> list[int]:
    """The numbers of the segment files in an image directory (seg-000000 is
    never one: segments count from 1)."""
    numbers = []
    for name in os.listdir(path):
        match = _SEGMENT_NAME.fullmatch(name)
        if match and int(match[1]) > 0:
            numbers.append(int(match[1]))
    return sorted(numbers)


class SyncFailed(Exception):
    """An fsync or fdatasync failed: what is on disk is unknown (invariant 6)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def sync(vfs: Vfs, fd: int, data_only: bool = True) -> None:
    try:
        vfs.fdatasync(fd) if data_only else vfs.fsync(fd)
    except OSError as exc:
        raise SyncFailed(exc) from exc


ZERO_WRITE = 1 << 20   # bytes of zeros per write when filling a segment


def make_segment(vfs: Vfs, dirpath: str, segno: int, seg_size: int, page_size: int,
                 image_id: bytes, salt: int, body: bytes | bytearray = b"") -> None:
    """Create a zero-filled segment whole: temp file, fsync, rename, dir fsync.
    ``body`` (whole slots) is written from slot 1 in the same pass: the segment
    appears with it or not at all.

    Zeros are written, not fallocated: on ext4 a fallocated extent is
    "unwritten" and the first write into it costs a journal commit in
    fdatasync (DESIGN.md measured 6,900 commits/s against 11,000/s)."""
    pieces = [(page_size, body)] if body else []
    make_segment_from(vfs, dirpath, segno, seg_size, page_size, image_id, salt, pieces,
                      page_size + len(body) if body else page_size)


def make_segment_from(vfs: Vfs, dirpath: str, segno: int, seg_size: int, page_size: int,
                      image_id: bytes, salt: int, pieces, body_end: int) -> None:
    """make_segment, its body given as (offset, bytes) pieces that together
    cover [page_size, body_end) exactly, in any order; each is written before
    the next is taken, so a generator may reuse one buffer for all of them
    (vacuum streams a group's pages so: pager/_vacuum.py).  Zeros fill the
    rest; every byte is written once, all under the temporary name, before
    the one fsync (invariant 7: the segment appears whole or not at all).
    The pieces' coverage is checked: a gap would leave a hole, a sparse
    extent, which the next commit there would pay for (see make_segment)."""
    if not page_size <= body_end <= seg_size:
        raise ValueError(f"a segment body ending at {body_end} does not fit "
                         f"{page_size}..{seg_size}")
    chunk = bytes(min(seg_size, ZERO_WRITE))

    def fill(fd: int) -> None:
        if body_end > page_size:
            vfs.pwrite(fd, chunk[:page_size], 0)
        extents = []
        for offset, data in pieces:
            vfs.pwrite(fd, data, offset)
            extents.append((offset, len(data)))
        _check_coverage(extents, page_size, body_end)
        start = body_end if body_end > page_size else 0
        for off in range(start, seg_size, len(chunk)):
            vfs.pwrite(fd, chunk[:seg_size - off], off)
        vfs.pwrite(fd, fmt.encode_segment_header(page_size, seg_size, segno, image_id, salt,
                                                 time.time_ns()), 0)

    publish_segment(vfs, dirpath, segno, fill)


def publish_segment(vfs: Vfs, dirpath: str, segno: int, fill,
                    reuse: str | None = None) -> None:
    """The protocol by which a segment file appears (invariant 7): fill(fd)
    writes it all under a temporary name, one fsync, the rename, the
    directory fsync.  A failure before the rename unlinks the temporary file
    and leaves no segment; a failed directory fsync is SyncFailed.  With
    reuse (a vacuum's spare, pager/_vacuum.py SPARE), that file becomes the
    temporary one, its old bytes in place: fill must then write or zero every
    byte of it, as it is never read before the rename."""
    final = os.path.join(dirpath, fmt.segment_name(segno))
    temp = final + ".tmp"
    if reuse is not None:
        vfs.rename(reuse, temp)
        fd = vfs.open(temp, os.O_RDWR)
    else:
        fd = vfs.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        fill(fd)
        sync(vfs, fd, data_only=False)
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
        raise SyncFailed(exc) from exc


def _check_coverage(extents: list[tuple[int, int]], start: int, end: int) -> None:
    """Do the (offset, length) extents tile [start, end) without gap or overlap?"""
    at = start
    for offset, length in sorted(extents):
        if offset != at:
            raise ValueError(f"segment body pieces leave {at}..{offset} unwritten"
                             if offset > at else f"segment body pieces overlap at {offset}")
        at += length
    if at != end:
        raise ValueError(f"segment body pieces end at {at}, not {end}")


class Image:
    """The segment files of one image directory, mapped by a NativeStore."""

    def __init__(self, path: str, vfs: Vfs, numbers: list[int]) -> None:
        self.path = path
        self.vfs = vfs
        if not numbers:
            raise CorruptImage(f"{path} is not an imago image: it holds no segment files")
        oldest = self._header_of(numbers[0])
        self.reference = numbers[0]   # the segment whose identity the others must share
        self.page_size = oldest.page_size
        self.salt = oldest.salt
        self.image_id = oldest.image_id
        self.native = NativeStore(oldest.page_size, oldest.salt, oldest.image_id)
        self.sizes: dict[int, int] = {}
        if type(vfs) is Vfs:   # the OS itself: the C core attaches, a few syscalls each
            self._attach_natively(numbers)
        else:                  # a shim (tests/faults.py) must see every call
            for segno in numbers:
                self.attach(segno)

    def _attach_natively(self, numbers: list[int]) -> None:
        """attach() each segment in C; one C refuses goes through attach(),
        which names what is wrong with it (or maps it, if it changed since)."""
        dirfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for segno in numbers:
                seg_size = self.native.attach(dirfd, segno)
                if seg_size is None:
                    self.attach(segno)
                else:
                    self.sizes[segno] = seg_size
        finally:
            os.close(dirfd)

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

    def nslots(self, segno: int) -> int:
        return self.sizes[segno] // self.page_size

    def segment(self, segno: int) -> memoryview:
        view = self.native.segment(segno)
        if view is None:
            raise CorruptImage(f"segment {fmt.segment_name(segno)} is missing from {self.path}")
        return view

    def record_at(self, segno: int, slot: int) -> fmt.Record | None:
        if segno not in self.sizes:
            return None
        return fmt.decode_record(self.segment(segno), segno, slot, self.salt, self.page_size)

    def scan(self, tail: _Tail, upto: int | None = None) -> tuple[list[fmt.Record], _Tail]:
        """The records that continue the log from tail, and the tail after them."""
        seg = self.segment(tail.segno)
        records = []
        while upto is None or tail.seq < upto:
            rec = fmt.decode_record(seg, tail.segno, tail.slot, self.salt, self.page_size)
            if rec is None or not tail.follows(rec) or (upto is not None and rec.seq > upto):
                break
            records.append(rec)
            tail = tail.after(rec)
        return records, tail

    def slot_dirty(self, segno: int, slot: int) -> bool:
        """Does a slot hold anything but zeros?"""
        if slot >= self.nslots(segno):
            return False
        off = slot * self.page_size
        return self.segment(segno)[off:off + self.page_size] != self._zero_slot

    @property
    def _zero_slot(self) -> bytes:
        zero = getattr(self, "_zero", None)
        if zero is None:
            zero = self._zero = bytes(self.page_size)
        return zero

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
                return f"the page-table checkpoint of commit {rec.seq} fails its checksum"
        return None

    def tree_from(self, ckpt: fmt.Record, records: list[fmt.Record]) -> Tree:
        """The page table after the last of records, which follow the checkpoint ckpt."""
        tree = Tree(self.native, ckpt.root_loc, ckpt.root_sum, ckpt.depth)
        try:
            tree.set_usage(ckpt.usage)
            for rec in records:
                tree.apply(rec.pairs, make_loc(rec.segno, rec.first_slot), rec.seq)
                tree.apply_freed(rec.freed, rec.seq)
        except ValueError as exc:   # a range the core refused: it came from disk
            tree.close()
            raise CorruptImage(f"{self.path}: replaying commits after the checkpoint of "
                               f"commit {ckpt.seq}: {exc}") from None
        except BaseException:
            tree.close()
            raise
        return tree

    def checkpoint_before(self, start: fmt.Record, commit_no: int) -> fmt.Record:
        """Walk back the checkpoint chain from `start` to the newest checkpoint at
        or before commit_no.  KeyError if the chain leaves the segments on disk;
        CorruptImage if a checkpoint in it is damaged."""
        ckpt = start
        while ckpt.seq > commit_no or ckpt.is_side:   # a side record is no state to replay from
            segno, slot = ckpt.prev_ckpt >> 32, ckpt.prev_ckpt & 0xFFFFFFFF
            if not ckpt.prev_ckpt or segno not in self.sizes:
                raise KeyError(f"commit {commit_no} is no longer on disk")
            earlier = self.record_at(segno, slot)
            if earlier is None or not earlier.is_checkpoint or earlier.seq >= ckpt.seq:
                raise CorruptImage(
                    f"{self.path}: the checkpoint record before commit {ckpt.seq} "
                    f"({fmt.segment_name(segno)} slot {slot}) is damaged, so commit "
                    f"{commit_no} cannot be viewed")
            ckpt = earlier
        return ckpt

    def next_checkpoint(self, tail: _Tail, upto: int | None = None) -> fmt.Record | None:
        """The first valid checkpoint record past damage at the tail, newer than
        it (and not past upto)."""
        for rec in self._records_past(tail):
            if rec.is_state_checkpoint and (upto is None or rec.seq <= upto):
                return rec
        return None

    def later_record(self, tail: _Tail) -> fmt.Record | None:
        """A whole record, newer than the tail, lying past damage in the log:
        proof that the damaged commit was acknowledged.  A vacuum group's
        records prove nothing (pager/_vacuum.py): the group is one write, so
        its later records can land while an earlier one of it is torn."""
        return next((r for r in self._records_past(tail) if r.stands_for is None), None)

    def _records_past(self, tail: _Tail):
        seg = self.segment(tail.segno)
        for slot in range(tail.slot + 1, self.nslots(tail.segno)):
            off = slot * self.page_size
            if seg[off:off + 8] != fmt.REC_MAGIC:
                continue
            rec = fmt.decode_record(seg, tail.segno, slot, self.salt, self.page_size)
            if rec is not None and rec.seq > tail.seq:
                yield rec

    def next_commit_began(self, newest: fmt.Record) -> bool:
        """Does the slot after `newest` hold the header of the commit after it
        (its magic, number, place and a prev_sum naming newest), even if that
        record is damaged elsewhere?  Then newest's sync had returned.  Other
        bytes there prove nothing: a power cut can leave stale bytes or a
        garbled zero slot."""
        seg, slot = self.segment(newest.segno), newest.slot_end
        off = slot * self.page_size
        if off + fmt.HEADER_BYTES > len(seg) or seg[off:off + 8] != fmt.REC_MAGIC:
            return False
        fields = fmt.REC_HEADER.unpack_from(seg, off)
        seq, prev_sum, own_slot, own_segno = fields[4], fields[6], fields[20], fields[21]
        return (seq, prev_sum, own_slot, own_segno) == \
            (newest.seq + 1, newest.sum, slot, newest.segno)

    def claimed_extent(self, segno: int, slot: int) -> int:
        """The slot after the commit whose record header (even if the record is
        damaged) starts at slot: that header's claim, bounded by the segment."""
        seg, off = self.segment(segno), slot * self.page_size
        if off + fmt.HEADER_BYTES > len(seg) or seg[off:off + 8] != fmt.REC_MAGIC:
            return slot
        fields = fmt.REC_HEADER.unpack_from(seg, off)
        length, npages, nnodes = fields[3], fields[8], fields[9]
        end = slot + -(-length // self.page_size) + npages + nnodes
        return min(end, self.nslots(segno))

    def read_hint(self) -> tuple[int, int, int, int] | None:
        try:
            with open(os.path.join(self.path, HINT_NAME), "rb") as f:
                return fmt.decode_hint(f.read(64), self.salt)
        except OSError:
            return None


HINT_NAME = "HINT"
