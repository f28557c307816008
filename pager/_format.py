"""On-disk layout of segments and commit records.

A segment file ``seg-NNNNNN`` (fixed size, zero-filled at creation) is::

    slot 0      segment header (the first 128 bytes of a page)
    slot 1..    data pages and page-table nodes, growing UP, page-aligned
       ...      free (zeros)
    ..end       commit records, growing DOWN from the end, 512-byte blocks

Pages stay aligned with the OS page cache, while a small commit costs one
record block instead of a whole page.  A record occupies ``[top - length,
top)``: its 128-byte header is the last part, the body (page list, freed
pages, segment usage, caller metadata) the first part, zero padding between.
The first record of a segment is written at ``top = segment size``; each next
record ends where the previous one starts.

Segment header (little-endian)::

    0 magic "IMAGOSEG"   8 version u32   12 page_size u32   16 seg_size u64
    24 segno u32   28 0   32 image_id 16B   48 salt u64   56 created_ns u64
    64..119 zero   120 sum u64 = xxh64(bytes 0..119, seed 0)

Record header (the last 128 bytes of the record)::

    0 magic "IMAGOREC"  8 version u16  10 flags u16  12 length u32
    16 seq u64  24 parent u64  32 prev_sum u64  40 time_ns u64
    48 first_slot u32  52 npages u32  56 nnodes u32  60 nfreed u32
    64 meta_len u32  68 nusage u32  72 depth u16  74 0 u16  76 0 u32
    80 root_loc u64  88 root_sum u64  96 ckpt_top u64  104 nodes_sum u64
    112 0 u64  120 sum u64 = xxh64(body + header[0:120], seed salt)

Body, in order: npages x (page_no u64, page_sum u64) for the data pages at
slots first_slot.., nfreed x page_no u64, nusage x (segno u64, live u64),
meta bytes.  Checkpoint node pages follow the data pages at slot
first_slot + npages; ``nodes_sum`` hashes them all, ``root_*`` and ``depth``
name the page-table root after this commit, ``ckpt_top`` is the top of the
newest checkpoint record of this segment at or before this one (its own top
when the record is a checkpoint).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pager._native import hash64

FORMAT_VERSION = 1
SEG_MAGIC = b"IMAGOSEG"
REC_MAGIC = b"IMAGOREC"
SEG_HEADER = struct.Struct("<8sIIQII16sQQ56x")   # without its trailing sum
REC_HEADER = struct.Struct("<8sHHIQQQQIIIIIIHHIQQQQQ")
HEADER_BYTES = 128
RECORD_BLOCK = 512      # a sector: the unit a disk writes whole, so records never share one with a torn neighbour's tail
FLAG_CHECKPOINT = 1
MAX_META = 1 << 20      # caller metadata is a label, not a payload
NO_PARENT = (1 << 64) - 1
PAGE_SIZES = frozenset(1 << s for s in range(10, 17))
MAX_SEGMENT = 1 << 40

assert SEG_HEADER.size == 120 and REC_HEADER.size == 120


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
    top: int                 # the record ends here; the next one ends at top - length
    length: int
    flags: int
    seq: int
    parent: int
    prev_sum: int
    time_ns: int
    first_slot: int
    npages: int
    nnodes: int
    nfreed: int
    depth: int
    root_loc: int
    root_sum: int
    ckpt_top: int
    nodes_sum: int
    sum: int
    pairs: bytes             # npages x (page_no, sum)
    freed: bytes             # nfreed x page_no
    usage: list[tuple[int, int]]
    meta: bytes

    @property
    def is_checkpoint(self) -> bool:
        return bool(self.flags & FLAG_CHECKPOINT)

    @property
    def start(self) -> int:
        return self.top - self.length

    @property
    def slot_end(self) -> int:
        """The first slot after this commit's data pages and nodes."""
        return self.first_slot + self.npages + self.nnodes

    def page_numbers(self) -> tuple[int, ...]:
        return struct.unpack_from(f"<{self.npages * 2}Q", self.pairs)[::2]


def record_length(npages: int, nfreed: int, nusage: int, meta_len: int) -> int:
    body = 16 * npages + 8 * nfreed + 16 * nusage + meta_len
    return -(-(body + HEADER_BYTES) // RECORD_BLOCK) * RECORD_BLOCK


def encode_record(salt: int, *, flags: int, seq: int, parent: int, prev_sum: int,
                  time_ns: int, first_slot: int, npages: int, nnodes: int, pairs: bytes,
                  freed: bytes, usage: list[tuple[int, int]], meta: bytes, depth: int,
                  root_loc: int, root_sum: int, ckpt_top: int,
                  nodes_sum: int) -> tuple[bytes, int]:
    """The record's bytes (length a multiple of RECORD_BLOCK) and its checksum."""
    nfreed = len(freed) // 8
    length = record_length(npages, nfreed, len(usage), len(meta))
    usage_bytes = b"".join(struct.pack("<QQ", s, n) for s, n in usage)
    body = b"".join((pairs, freed, usage_bytes, meta))
    pad = bytes(length - HEADER_BYTES - len(body))
    head = REC_HEADER.pack(REC_MAGIC, FORMAT_VERSION, flags, length, seq, parent, prev_sum,
                           time_ns, first_slot, npages, nnodes, nfreed, len(meta), len(usage),
                           depth, 0, 0, root_loc, root_sum, ckpt_top, nodes_sum, 0)
    total = hash64(body + pad + head, salt)
    return body + pad + head + struct.pack("<Q", total), total


def decode_record(seg: memoryview, segno: int, top: int, salt: int,
                  page_size: int) -> Record | None:
    """The record ending at ``top`` in a segment's bytes, or None if what lies
    there is not a whole, self-consistent record (zeros, garbage, a torn write)."""
    if top < 2 * HEADER_BYTES or top > len(seg):
        return None
    head = bytes(seg[top - HEADER_BYTES:top])
    if head[:8] != REC_MAGIC:
        return None
    (_, version, flags, length, seq, parent, prev_sum, time_ns, first_slot, npages, nnodes,
     nfreed, meta_len, nusage, depth, _, _, root_loc, root_sum, ckpt_top, nodes_sum,
     _) = REC_HEADER.unpack_from(head)
    if version != FORMAT_VERSION or length % RECORD_BLOCK or length > top:
        return None
    if meta_len > MAX_META or length != record_length(npages, nfreed, nusage, meta_len):
        return None
    if first_slot < 1 or (first_slot + npages + nnodes) * page_size > top - length:
        return None
    raw = seg[top - length:top]
    stored = struct.unpack_from("<Q", head, 120)[0]
    if hash64(raw[:length - 8], salt) != stored:
        return None
    body = bytes(seg[top - length:top - length + 16 * npages + 8 * nfreed + 16 * nusage + meta_len])
    p = 16 * npages
    freed = body[p:p + 8 * nfreed]
    p += 8 * nfreed
    usage = [struct.unpack_from("<QQ", body, p + 16 * i) for i in range(nusage)]
    p += 16 * nusage
    return Record(segno, top, length, flags, seq, parent, prev_sum, time_ns, first_slot, npages,
                  nnodes, nfreed, depth, root_loc, root_sum, ckpt_top, nodes_sum, stored,
                  body[:16 * npages], freed, usage, body[p:p + meta_len])
