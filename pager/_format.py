"""On-disk layout of segments, commit records and the checkpoint hint.

A segment file ``seg-NNNNNN`` (fixed size, zero-filled at creation) is a row of
page-sized slots::

    slot 0      segment header (the first 128 bytes)
    slot 1..    commits, one after another, each  [record][data pages][nodes]
    ...         zeros

A commit occupies whole slots: its record (``record_slots`` slots), then the
pages it wrote, then, for a checkpoint, the page-table nodes.  The next
commit's record starts in the slot after.  Pages stay aligned with the OS
page cache, a commit is one contiguous write, and no commit ever writes into a
slot an earlier commit used (no reliance on the disk writing sectors
atomically).  The writer also zeroes the slot after each commit, in the same
write, so in every acknowledged state the slot past the log's end is zero.

Segment header (little-endian)::

    0 magic "IMAGOSEG"   8 version u32   12 page_size u32   16 seg_size u64
    24 segno u32   28 0   32 image_id 16B   48 salt u64   56 created_ns u64
    64..119 zero   120 sum u64 = xxh64(bytes 0..119, seed 0)

Record (built by native/core.c, ic_commit_build; read here)::

    0 magic "IMAGOREC"  8 version u16  10 flags u16  12 length u32
    16 seq  24 parent  32 prev_sum  40 time_ns                 (u64 each)
    48 npages u32  52 nnodes u32  56 nfreed u32  60 meta_len u32
    64 nusage u32  68 depth u16  70 0
    72 root_loc  80 root_sum  88 ckpt_slot  96 prev_ckpt  104 nodes_sum
    112 slot u32  116 segno u32  120 stands_for u64
    128 body: npages x (page_no u64, sum u64), nfreed x page_no u64,
              nusage x (segno u64, live u64), meta bytes
    length - 8: sum = xxh64(record[0 : length - 8], seed salt)

``length`` is a multiple of RECORD_BLOCK, at least what the contents need (a
checkpoint's is sized for the most segments its usage table could list).  ``ckpt_slot`` is the slot of this
segment's newest checkpoint record at or before this one (its own slot for a
checkpoint); ``prev_ckpt`` (checkpoints only) locates the previous checkpoint
record, in this segment or an older one, so old versions are found by walking
back checkpoint to checkpoint.  A record names its own slot and segment, so a
copy found anywhere else is never mistaken for it.

Vacuum (pager/_vacuum.py) adds two things, both readable as before by
images that never saw a vacuum (the field was written as 0, the flag clear):
``stands_for`` is 0, or 1 + the number of a commit whose logical content this
record's checkpoint carries (a stand-in, written when that commit's pages
were moved out of a segment being cleaned); FLAG_SIDE marks a stand-in that
does not move the head (the log's state is that of the newest record without
the flag; see pager/__init__, invariant 9).

The hint file ``HINT`` (written without sync; only ever a hint) names the
newest checkpoint record, so that opening need not read a whole segment::

    0 magic "IMAGOHNT"  8 segno u32  12 slot u32  16 seq u64  24 record sum u64
    32 sum u64 = xxh64(bytes 0..31, seed salt)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pager._native import hash64

FORMAT_VERSION = 1
SEG_MAGIC = b"IMAGOSEG"
REC_MAGIC = b"IMAGOREC"
SEG_HEADER = struct.Struct("<8sIIQII16sQQ56x")   # without its trailing sum
REC_HEADER = struct.Struct("<8sHHIQQQQIIIIIHHQQQQQIIQ")
HINT = struct.Struct("<8sIIQQ")
HINT_MAGIC = b"IMAGOHNT"
HEADER_BYTES = 128
RECORD_BLOCK = 512      # records are whole sectors; the builder in core.c agrees
FLAG_CHECKPOINT = 1
FLAG_SIDE = 2          # a stand-in beside the log's state (vacuum)
MAX_META = 1 << 20      # caller metadata is a label, not a payload
MAX_PAGE_NO = 1 << 40   # as native/core.c: 4 PiB at 4 KiB pages
NO_PARENT = (1 << 64) - 1
PAGE_SIZES = frozenset(1 << s for s in range(10, 17))
MAX_SEGMENT = 1 << 40

assert SEG_HEADER.size == 120 and REC_HEADER.size == 128 and HINT.size == 32


def geometry_ok(page_size: int, seg_size: int) -> bool:
    """Page sizes are powers of two from 1 KiB to 64 KiB; a segment is a whole
    number of pages, at least 16 (room for a header, pages and records)."""
    return (page_size in PAGE_SIZES and seg_size % page_size == 0
            and 16 * page_size <= seg_size <= MAX_SEGMENT)


def segment_name(segno: int) -> str:
    return f"seg-{segno:06d}"


def encode_segment_header(page_size: int, seg_size: int, segno: int, image_id: bytes,
                          salt: int, created_ns: int) -> bytes:
    head = SEG_HEADER.pack(SEG_MAGIC, FORMAT_VERSION, page_size, seg_size, segno, 0,
                           image_id, salt, created_ns)
    return head + struct.pack("<Q", hash64(head, 0))


@dataclass(frozen=True)
class SegmentHeader:
    page_size: int
    seg_size: int
    segno: int
    image_id: bytes
    salt: int
    created_ns: int


def decode_segment_header(raw: bytes) -> SegmentHeader | None:
    """The header, or None when these bytes are not a valid segment header."""
    if len(raw) < HEADER_BYTES or raw[:8] != SEG_MAGIC:
        return None
    if hash64(raw[:120], 0) != struct.unpack_from("<Q", raw, 120)[0]:
        return None
    magic, version, page_size, seg_size, segno, _, image_id, salt, created = \
        SEG_HEADER.unpack_from(raw)
    if version != FORMAT_VERSION or not geometry_ok(page_size, seg_size):
        return None
    return SegmentHeader(page_size, seg_size, segno, image_id, salt, created)


@dataclass
class Record:
    """One commit record as found on disk, already checked against its checksum."""
    segno: int
    slot: int                # where the record starts
    record_slots: int        # slots the record itself takes
    length: int
    flags: int
    seq: int
    parent: int
    prev_sum: int
    time_ns: int
    npages: int
    nnodes: int
    nfreed: int
    depth: int
    root_loc: int
    root_sum: int
    ckpt_slot: int
    prev_ckpt: int
    nodes_sum: int
    sum: int
    pairs: bytes             # npages x (page_no, sum)
    freed: bytes             # nfreed x page_no
    usage: list[tuple[int, int]]
    meta: bytes
    stands_for: int | None = None   # the commit this stand-in carries (vacuum)

    @property
    def is_checkpoint(self) -> bool:
        return bool(self.flags & FLAG_CHECKPOINT)

    @property
    def is_side(self) -> bool:
        """A stand-in beside the log's state: it does not move the head."""
        return bool(self.flags & FLAG_SIDE)

    @property
    def is_state_checkpoint(self) -> bool:
        """A checkpoint of the log's state (what opening and replay start from)."""
        return self.is_checkpoint and not self.is_side

    @property
    def first_slot(self) -> int:
        """The slot of this commit's first data page."""
        return self.slot + self.record_slots

    @property
    def slot_end(self) -> int:
        """The slot after this commit's pages and nodes: where the next record goes."""
        return self.first_slot + self.npages + self.nnodes

    def page_numbers(self) -> tuple[int, ...]:
        return struct.unpack_from(f"<{self.npages * 2}Q", self.pairs)[::2]


def record_length(npages: int, nfreed: int, nusage: int, meta_len: int) -> int:
    raw = HEADER_BYTES + 16 * npages + 8 * nfreed + 16 * nusage + meta_len + 8
    return -(-raw // RECORD_BLOCK) * RECORD_BLOCK


def _page_numbers_in_range(pairs: bytes, npages: int) -> bool:
    """Every page number of a record's (page_no u64, sum u64) pairs is below
    MAX_PAGE_NO = 2**40: the top three bytes of each little-endian page_no
    (bytes 5, 6, 7 of its 16) are zero.  Byte slicing keeps this in C; a
    big commit lists thousands of pages, and opening an image, history and
    vacuum decode records by the thousand."""
    assert MAX_PAGE_NO == 1 << 40
    high = pairs[5::16] + pairs[6::16] + pairs[7::16]
    return high.count(0) == 3 * npages


def decode_record(seg: memoryview, segno: int, slot: int, salt: int,
                  page_size: int) -> Record | None:
    """The record starting at ``slot`` of a segment's bytes, or None if what lies
    there is not a whole, self-consistent record (zeros, garbage, a torn write,
    or a record that belongs somewhere else)."""
    off = slot * page_size
    nslots = len(seg) // page_size
    if slot < 1 or off + HEADER_BYTES > len(seg) or seg[off:off + 8] != REC_MAGIC:
        return None
    (_, version, flags, length, seq, parent, prev_sum, time_ns, npages, nnodes, nfreed,
     meta_len, nusage, depth, _, root_loc, root_sum, ckpt_slot, prev_ckpt, nodes_sum,
     own_slot, own_segno, stands_for) = REC_HEADER.unpack_from(seg, off)
    if (version != FORMAT_VERSION or own_slot != slot or own_segno != segno
            or meta_len > MAX_META or length % RECORD_BLOCK
            or length < record_length(npages, nfreed, nusage, meta_len)):
        return None
    record_slots = -(-length // page_size)
    if slot + record_slots + npages + nnodes > nslots:
        return None
    stored = struct.unpack_from("<Q", seg, off + length - 8)[0]
    if hash64(seg[off:off + length - 8], salt) != stored:
        return None
    if seq >= 1 << 62 or (parent >= 1 << 62 and parent != NO_PARENT):
        return None
    if (flags & FLAG_SIDE and not flags & FLAG_CHECKPOINT) or stands_for > seq:
        return None   # a side record carries a tree; a stand-in follows what it stands for
    p = off + HEADER_BYTES
    pairs = bytes(seg[p:p + 16 * npages])
    if not _page_numbers_in_range(pairs, npages):
        return None
    p += 16 * npages
    freed = bytes(seg[p:p + 8 * nfreed])
    p += 8 * nfreed
    usage = [struct.unpack_from("<QQ", seg, p + 16 * i) for i in range(nusage)]
    p += 16 * nusage
    return Record(segno, slot, record_slots, length, flags, seq, parent, prev_sum, time_ns,
                  npages, nnodes, nfreed, depth, root_loc, root_sum, ckpt_slot, prev_ckpt,
                  nodes_sum, stored, pairs, freed, usage, bytes(seg[p:p + meta_len]),
                  stands_for - 1 if stands_for else None)


def encode_record(*, seq: int, parent: int, prev_sum: int, time_ns: int, flags: int,
                  segno: int, slot: int, pairs: bytes, usage: list[tuple[int, int]],
                  meta: bytes, depth: int, root_loc: int, root_sum: int, prev_ckpt: int,
                  nnodes: int, nodes_sum: int, salt: int, stands_for: int | None,
                  length: int | None = None) -> bytes:
    """A checkpoint record as native/core.c builds one (pager/_vacuum.py writes
    stand-ins with it); ``length`` pads it, which is at least what it needs."""
    need = record_length(len(pairs) // 16, 0, len(usage), len(meta))
    length = need if length is None else length
    assert length >= need and length % RECORD_BLOCK == 0 and flags & FLAG_CHECKPOINT
    head = REC_HEADER.pack(REC_MAGIC, FORMAT_VERSION, flags, length, seq, parent, prev_sum,
                           time_ns, len(pairs) // 16, nnodes, 0, len(meta), len(usage), depth,
                           0, root_loc, root_sum, slot, prev_ckpt, nodes_sum, slot, segno,
                           0 if stands_for is None else stands_for + 1)
    body = pairs + b"".join(struct.pack("<QQ", s, n) for s, n in usage) + meta
    raw = head + body + bytes(length - 8 - len(head) - len(body))
    return raw + struct.pack("<Q", hash64(raw, salt))


def encode_hint(salt: int, segno: int, slot: int, seq: int, record_sum: int) -> bytes:
    body = HINT.pack(HINT_MAGIC, segno, slot, seq, record_sum)
    return body + struct.pack("<Q", hash64(body, salt))


def decode_hint(raw: bytes, salt: int) -> tuple[int, int, int, int] | None:
    """(segno, slot, seq, record sum) of a valid hint, else None."""
    if len(raw) < HINT.size + 8 or raw[:8] != HINT_MAGIC:
        return None
    if hash64(raw[:HINT.size], salt) != struct.unpack_from("<Q", raw, HINT.size)[0]:
        return None
    _, segno, slot, seq, record_sum = HINT.unpack_from(raw)
    return segno, slot, seq, record_sum
