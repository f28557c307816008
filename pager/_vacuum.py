"""Vacuum (segment cleaning): reclaim the segments that only unretained
versions reach, keeping every retained version openable by its commit number.

WHAT IT OWNS: the vacuum pass, the resolution of a commit number to the
record that now carries its state (the original, or its newest stand-in), the
reader registry (pins), and the per-version "held back" accounting.

THE PROBLEM.  A version is a page table (a radix tree) plus its record.  Its
tree points into any segment: the commit's own, older ones (pages it shares),
and its record lies in one segment.  Deleting a segment V must not lose any
retained version, yet the trees that point into V live on disk and are never
rewritten in place (pager/__init__, invariant 1).

THE DESIGN (one pass per batch of victim segments V, oldest first)

  1. The retained set: the commits the caller keeps (snapshots.retained: the
     retention policy), the head, the commits open readers pin (see READERS),
     and the commits of this process's open views.  Each is resolved to the
     record that carries its state ("units": commits sharing a record share one
     tree).
  2. A sealed segment is a victim when the slots the retained trees reach in it
     (pages and on-disk nodes, a union taken with per-tree bitmaps, see
     ic_tree_mark) are at most MAX_LIVE of it: each byte copied then frees at
     least one.  The active segment is never a victim.  Victims are taken in
     batches whose live slots fit 3/4 of a segment (_batches): each retained
     tree is rewritten once per batch, and a batch's copies stay within one
     segment of extra disk.
  3. For a victim, every live page slot is copied once to the head, into the
     data area of one new record; the relocation map is old slot -> new slot.
     Every unit whose tree reaches V, or whose record lies in V (or, for a
     plain commit record, whose checkpoint's nodes do: replay reads them),
     gets a stand-in: its tree with every reference into V moved (leaf
     entries through the map, disk nodes in V copied to memory:
     ic_vac_relocate, which checks usage[V] == 0 after), written as
     a checkpoint copy-on-write (only the changed path nodes), with the same
     caller meta, and ``stands_for`` naming the commit it carries (one record
     per retained commit; commits sharing a tree share its nodes: the later
     ones are aliases, records with the same root and no nodes).
     The write is one contiguous group, one fdatasync::

         [Nh0: the head's state, + the copied pages, + its nodes]
         [S1 .. Sk: side stand-ins, each its nodes]          (FLAG_SIDE)
         [Nh: the head's state again: Nh0's root, no nodes]  (only if k > 0)

     Nh0 and Nh are ordinary checkpoints with the head's content, so the
     newest record is the head's and the writer goes on after Nh as after any
     commit.  Side records do not move the head (pager/__init__, invariant 9).
  4. The group is durable: the trees adopt their new roots, the writer's page
     table becomes Nh's.  The pins are read again (a reader may have opened a
     view meanwhile); if none reaches V, V is unlinked and the directory fsynced.
     Extra disk (V4): a group in the active segment's tail uses disk the image
     already holds; a group in a new segment may write at most group_limit
     slots, so that segment has the nominal size, and the pass starts one only
     while the segments it made, less those it deleted, stay within one
     segment (_ExtraDisk; the blocks the release thread has not freed yet
     count as held, step 5).  A batch whose plan, stand-in records and nodes
     included, passes that is cleaned in halves; a single victim that passes
     it is kept and reported (VacuumReport.refused, refusal_note): each
     retained version that reaches it needs at least a record slot of
     stand-in, so with enough of them (133 versions over 128-slot segments)
     its group would cost more disk than the segment it frees.  When the active
     segment has no room, the group is the body of a new segment
     (_streamed_group, _make_group_segment): under its temporary name the
     copied pages are written straight from a reused buffer of STREAM_WRITE
     bytes, each write handed to writeback at once (sync_file_range on Linux,
     so the disk works while the next chunk is copied), then the records and
     nodes, then the header; the slots past the group are a hole (they read
     as zeros, all the format asks of an unwritten slot), not written zeros.
     One fsync covers segment and group, then the rename and the directory
     fsync.  No segment is made in advance (its cost would only move to
     another pass or to a commit), but a deleted one is kept (SPARE).
  5. Freeing.  The file system frees a deleted segment's blocks when its last
     reference goes, which on some disks costs as much as writing them (an
     ext4 mounted with discard on a VM: 1.2 ms per MiB, 75 ms a 64 MiB
     segment).  _delete opens each victim before unlinking it and a thread
     closes those descriptors (_Release): nothing depends on when the blocks
     come back (the name is gone, durably after the directory fsync), so a
     pass returns without waiting, and the next pass waits first
     (wait_released).

SPARE (a deleted segment's file, reused).  Freeing a victim and allocating
the next group's segment cost about what writing the group does on the disk
measured (a 64 MiB segment: 85 ms to make fresh against 44 ms over a reused
file's blocks; 242 against 127 ms with the freeing of two victims against
one; /tmp figures, interleaved pairs).  So _delete renames one victim to
SPARE_NAME instead of unlinking it, once the pass has reclaimed at least as
much (a pass never keeps its only victim), and the next group that needs a
new segment, in this pass or a later one, is written into that file
(_take_spare, publish_segment's reuse): its body over the old blocks, the
slots past it zeroed with fallocate ZERO_RANGE (blocks kept, marked
unwritten: nothing written, nothing freed; written zeros where that is not
supported), the header last, then the usual fsync, rename, directory fsync,
so the segment reads exactly as a fresh one (invariants 3 and 7).  Three
conditions make the overwrite safe:
  - the spare's name is never a segment's, so no reader opens it by name,
    and it is used only after a directory fsync made its rename from the
    victim's name durable (else a crash could give the victim's name back to
    a half-overwritten file; the power-cut test found that);
  - no process holds it open or mapped: a reader that mapped the victim
    reads it until it closes (READERS), so the file is reused only if a
    write lease is granted (F_SETLEASE, which the kernel refuses while any
    other descriptor or mapping of the file exists; Linux only: elsewhere no
    spare is kept), else it is deleted;
  - this process's open views may map it: no spare is kept while any is open.
The spare counts as the image's disk (bytes_before/after, spare_bytes;
held_back does not list it) and against V4 until it is deleted.

CRASH SAFETY (a SIGKILL anywhere; tests/test_vacuum.py kills a loop of vacuums)
  - before the group's sync: the group is an interrupted write.  Opening
    verifies every record of a trailing group, not only the newest (one write
    can land out of order), and keeps the prefix that verifies: nothing, Nh0,
    or Nh0 and some side records.  The state is that of the newest non-side
    record: the old head, or Nh0 (same content).  V is still there.
  - after the sync, before the unlink: V lingers; the next vacuum finds that no
    retained tree reaches it (they resolve to their stand-ins) and deletes it
    without copying.
  - the unlink without the directory fsync: V exists or not; both are whole.
  - with V unlinked and its blocks not yet freed (step 5): the descriptor dies
    with the process and the kernel frees them; nothing on disk names V.
  - while a new segment is made for the group: only seg-N.tmp exists (never
    read: opening lists seg-NNNNNN names only; made again with O_TRUNC).  It
    is renamed after its fsync, so seg-N appears whole with the whole group,
    or not at all (invariant 7); a rename that the crash undoes (before the
    directory fsync) is a group never written.  V is unlinked only after the
    directory fsync.  (tests/test_vacuum.py TestNewSegment cuts the power at
    each write of the segment.)
  - a spare: renamed from V after the group that replaced V was durable (the
    same crash cases as an unlink); renamed to seg-N.tmp and overwritten only
    after that rename is durable, so a crash leaves spare-segment or
    seg-N.tmp with stray bytes, neither ever read (the writer deletes
    seg-*.tmp at open; a spare is rewritten whole before its rename), or a
    whole seg-N.

RESOLUTION (resolve(): views, rewind, vacuum).  The original records first (the
checkpoint chain, else a scan of the segment that holds the commit); if that
fails, or the tree reaches a segment that is gone, the newest stand-in, taken
transitively (a stand-in of a stand-in carries the same content).  A commit
that neither resolves is "commit N was vacuumed" (KeyError).

READERS (the registry).  A read-only store registers a file
``readers/<pid>-<token>`` under the image directory, held with an exclusive
flock for its lifetime (made under a .tmp name and flocked before the rename,
so it is never seen unlocked); it holds the commits that reader uses (its head,
its open views) with a checksum.  Vacuum probes each file: if the flock can be
taken the reader died, and the file is removed; otherwise its commits are
retained.  A reader also keeps every segment it mapped readable after an
unlink (a mapping holds the file), so its head is safe even before it pins.

INVARIANTS (checked in code: _check_moved before any unlink, check_group on
every group read back, ic_vac_relocate on every moved tree)
  V1. After a pass over V, no retained unit's tree reaches V (usage[V] == 0)
      and no retained unit's record lies in V.
  V2. The newest record of every acknowledged group is a non-side checkpoint
      with the head's content; side records sit only between Nh0 and Nh, or
      trail after a crash (then the next commit is a checkpoint: invariant 5).
  V3. A stand-in's stands_for is older than itself, so resolution ends.
  V4. At every moment of a pass, the segment files it made less those it
      deleted (their blocks freed) hold at most one segment of disk; a spare
      is not deleted, and reusing it makes nothing (_ExtraDisk.claim;
      tests/test_vacuum.py TestExtraDisk measures it, the spare included).

OPEN QUESTIONS: views of stand-ins in a process whose open views still map V
keep V's blocks allocated until those views close (the file is unlinked, its
space freed when the last mapping goes; V4 does not count them); a vacuum with
many retained versions spread over a segment writes one set of path nodes per
version, per batch (written/copied 1.6 on 8 MiB segments, 1.06 on 64 MiB in
bench_vacuum.py), and at least a record slot per retained version that
reaches a victim, so past about a segment's slots of such versions a victim
is kept rather than cleaned beyond one segment of extra disk (V4).  Splitting
its stand-ins over several groups would not help: the victim can go only once
every one of them is durable.  What would: a stand-in that is a delta record
replayed from another stand-in (several versions per slot), a format change.
The blocks freed in the background (step 5) are invisible to callers but
compete for the disk with whatever runs next.

COSTS.  The per-page and per-node work is C: one walk per tree collects the
batch's live pages for every retained tree (ic_vac_collect), one walk per tree
relocates it (ic_vac_relocate), one call copies and verifies the pages into the
group's buffer, or a STREAM_WRITE chunk of it (ic_vac_copy).  What remains
per batch is fixed: a sync for the group, one for the directory when it
starts a segment; the unlinks share one directory fsync at the end of the
pass (_sync_unlinks).  Resolving the retained commits reads each
checkpoint's log once (_scan_from); the stand-in index hops from record header
to record header and decodes only stand-ins (_standin_records: about 30x
cheaper than decoding every record; still a read per record on disk, a cost
that grows with the image).  Where a 64 MiB pass of bench_vacuum.py goes
(47.5 MiB copied, 2 victims; medians of 5, a loaded 2-core VM): resolving
the 11 retained commits 30-65 ms (Python record decoding, about 100 us a
record, and replaying about 90 records a commit), collecting 20-50, relocating
10-25, copying and verifying 20-40, writing the 50 MiB group 60-140 (the
page cache's copy; the fsync after the writeback kicks waits 2-15 ms, against
about 30 without them), the rest 15-30.  Freeing the 128 MiB deleted,
after the pass: 150-250 ms; 75-80 ms since one of the two is kept as the
spare (SPARE; the bench's verdict 0.32-0.34x of the disk before, 0.50-0.52x
after, in interleaved pairs).  Measured with bench_vacuum.py --reps 3 (the
disk peer in the same run, pairs of runs of HEAD and this): see
bench/README.md.  Before (for the record): the new segment's zeros past the
group (14 MiB), its fsync without writeback started, and the freeing in the
pass made up more than half of it.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field

from native import ffi, lib
from pager import _format as fmt
from pager._errors import CommitFailed, CorruptImage, PagerError
from pager._native import Tree, hash64, make_loc
from pager._segments import (SyncFailed, _check_coverage, _Tail, empty_tail, publish_segment,
                             sync)
from pager._vfs import Vfs

MAX_LIVE = 0.5          # a victim's live slots at most this share: a copied byte frees one
SPARE_NAME = "spare-segment"   # one deleted segment kept for the next group's new segment
READERS_DIR = "readers"
STALE_TMP_SECONDS = 60  # a .tmp registration older than this was left by a dead reader
PIN_READ_ATTEMPTS = 5   # a pin file caught mid-rewrite fails its checksum: read again


# -- resolution ---------------------------------------------------------------------


def resolve(store, commit_no: int, scans: dict | None = None) -> tuple[Tree, fmt.Record]:
    """The page table and record that carry commit_no's state (see RESOLUTION).
    scans, when given, keeps the log read from each checkpoint between calls
    (_scan_from: commits resolved in ascending order share one read)."""
    image = store._image
    damage = None
    try:
        tree, rec = _from_original(store, commit_no, scans)
        if _reaches_only(tree, image.sizes):
            return tree, rec
        tree.close()
    except KeyError:
        pass
    except CorruptImage as exc:   # damage, unless a stand-in serves the commit
        damage = exc
    rec = _newest_standin(store, commit_no)
    if rec is None:
        if damage is not None:
            raise damage
        raise KeyError(f"commit {commit_no} was vacuumed")
    tree = image.tree_from(rec, [])
    if not _reaches_only(tree, image.sizes):
        tree.close()
        raise KeyError(f"commit {commit_no} was vacuumed")
    return tree, rec


def _reaches_only(tree: Tree, segments) -> bool:
    return all(segno in segments for segno in tree.usage())


def _from_original(store, commit_no: int, scans: dict | None = None
                   ) -> tuple[Tree, fmt.Record]:
    image = store._image
    try:
        ckpt = image.checkpoint_before(store._ckpt, commit_no)
        records = _scan_from(image, ckpt, commit_no, {} if scans is None else scans)
    except KeyError:
        records = _scan_holding_segment(store, commit_no)
    if records and records[-1].seq < commit_no and records[-1].segno + 1 not in image.sizes:
        raise KeyError(f"commit {commit_no} is not on disk")   # it was in a vacuumed segment
    if not records or records[-1].seq != commit_no:
        start = records[0].seq if records else "?"
        raise CorruptImage(f"{store.path}: the log from the checkpoint at commit {start} "
                           f"does not reach commit {commit_no}")
    target = records[-1]
    if target.is_side:
        return image.tree_from(target, []), target
    start = max(i for i, r in enumerate(records) if r.is_state_checkpoint)
    if not all(segno in image.sizes for segno, _ in records[start].usage):
        # replaying copies the checkpoint's nodes: one lies in a vacuumed segment
        raise KeyError(f"commit {commit_no} is not on disk")
    replay = [r for r in records[start + 1:] if not r.is_side]
    return image.tree_from(records[start], replay), target


def _scan_from(image, ckpt: fmt.Record, commit_no: int, scans: dict) -> list[fmt.Record]:
    """The log from ckpt up to commit_no, continuing an earlier read of it."""
    key = (ckpt.segno, ckpt.slot, ckpt.sum)
    records, tail = scans.get(key, ([], _Tail(ckpt.segno, ckpt.slot, -1, 0, 0)))
    if tail.seq < commit_no:
        more, tail = image.scan(tail, upto=commit_no)
        records = records + more
        scans[key] = (records, tail)
    return [r for r in records if r.seq <= commit_no]


def _scan_holding_segment(store, commit_no: int) -> list[fmt.Record]:
    """The records of the segment holding commit_no, from its newest state
    checkpoint at or before it (the checkpoint chain may cross a vacuumed segment)."""
    image = store._image
    holder = None
    for segno in image.numbers():
        first = image.record_at(segno, 1)
        if first is not None and first.seq <= commit_no:
            holder = segno
    if holder is None:
        raise KeyError(f"commit {commit_no} is not on disk")
    records, _ = image.scan(empty_tail(holder), upto=commit_no)
    starts = [i for i, r in enumerate(records) if r.is_state_checkpoint]
    return records[starts[-1]:] if starts else []


def standin_index(store) -> dict[int, fmt.Record]:
    """{commit: the newest record standing for it}, over every segment on disk
    (cached until the segments or the log's end change).  Built by hopping
    from record header to record header (_standin_records): only stand-ins are
    decoded, so the cost is a header read per record, not a decode."""
    image = store._image
    key = (tuple(image.numbers()), store._tail)
    cached = getattr(store, "_standins", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    index: dict[int, fmt.Record] = {}
    for segno in image.numbers():
        _index_standins(index, _segment_standins(store, segno), store.head)
    store._standins = (key, index)
    return index


def _segment_standins(store, segno: int) -> list[fmt.Record]:
    """A segment's stand-ins, kept per store for sealed segments: a segment
    with a newer one on disk is never written again (pager/__init__,
    invariant 1), so only the newest is read again when the log moves."""
    image = store._image
    sealed = getattr(store, "_sealed_standins", None)
    if sealed is None:
        sealed = store._sealed_standins = {}
    for gone in set(sealed) - set(image.sizes):
        del sealed[gone]
    if segno in sealed:
        return sealed[segno]
    records = list(_standin_records(image, segno))
    if segno < max(image.sizes):
        sealed[segno] = records
    return records


def _index_standins(index: dict[int, fmt.Record], records, head: int) -> None:
    for rec in records:
        # past the head: a crashed vacuum's trailing side records (not yet part of the history)
        if rec.stands_for is not None and rec.seq <= head:
            old = index.get(rec.stands_for)
            if old is None or old.seq < rec.seq:
                index[rec.stands_for] = rec


_HEADER = fmt.REC_HEADER
_SUM = struct.Struct("<Q")


def _standin_records(image, segno: int):
    """The stand-in records of a segment's log, in order.  The log is followed
    by the chain fields of the headers alone (each record in the slot where
    the one before ended, naming its own slot and segment, numbered one past
    it, naming its checksum: the checks of Image.scan that matter here, and a
    64-bit checksum match is no accident); a record whose header names a
    commit it stands for is decoded in full (checksum verified) and must be a
    checkpoint at its own slot.  The first thing that does not continue the
    log ends it.  A plain record damaged past its header does not end the hop
    (a full scan stops there): the stand-ins after it are whole and verified,
    and a commit they serve is better served than lost.
    check_standin_index compares this with a full scan."""
    seg, ps = image.segment(segno), image.page_size
    nslots = len(seg) // ps
    slot, seq, last_sum = 1, -1, 0
    while slot < nslots:
        off = slot * ps
        if seg[off:off + 8] != fmt.REC_MAGIC:
            return
        fields = _HEADER.unpack_from(seg, off)
        length, rec_seq, prev_sum, npages, nnodes = (fields[3], fields[4], fields[6],
                                                     fields[8], fields[9])
        own_slot, own_segno, stands_for = fields[20], fields[21], fields[22]
        end = slot + -(-length // ps) + npages + nnodes
        if (own_slot != slot or own_segno != segno or length < fmt.HEADER_BYTES
                or length % fmt.RECORD_BLOCK or end > nslots
                or (seq >= 0 and (rec_seq != seq + 1 or prev_sum != last_sum))):
            return
        if stands_for:
            rec = fmt.decode_record(seg, segno, slot, image.salt, ps)
            if rec is None or not rec.is_checkpoint or rec.ckpt_slot != slot:
                return
            yield rec
        last_sum = _SUM.unpack_from(seg, off + length - 8)[0]
        seq, slot = rec_seq, end


def check_standin_index(store) -> None:
    """The hopped index (standin_index) against a full decode of every record."""
    image = store._image
    full: dict[int, fmt.Record] = {}
    for segno in image.numbers():
        _index_standins(full, image.scan(empty_tail(segno))[0], store.head)
    store._standins = None
    hopped = standin_index(store)
    if {c: (r.segno, r.slot) for c, r in hopped.items()} != \
            {c: (r.segno, r.slot) for c, r in full.items()}:
        raise CorruptImage(f"{store.path}: the stand-in index read from record headers "
                           f"differs from a full scan of the log")


def _newest_standin(store, commit_no: int) -> fmt.Record | None:
    index = standin_index(store)
    rec = None
    while commit_no in index:   # stands_for is older than the stand-in (V3): this ends
        rec = index[commit_no]
        commit_no = rec.seq
    return rec


# -- the reader registry --------------------------------------------------------------


def _pin_text(commits) -> bytes:
    body = " ".join(str(c) for c in sorted(set(commits)))
    return f"imago-pins {body} {zlib.crc32(body.encode()):08x}\n".encode()


def _parse_pins(raw: bytes) -> set[int] | None:
    try:
        words = raw.decode("ascii").split()
        if len(words) < 2 or words[0] != "imago-pins" or not raw.endswith(b"\n"):
            return None
        body = " ".join(words[1:-1])
        if int(words[-1], 16) != zlib.crc32(body.encode()):
            return None
        return {int(w) for w in words[1:-1]}
    except (UnicodeDecodeError, ValueError):
        return None


class ReaderPin:
    """One read-only store's registration: the commits it uses, held with flock."""

    def __init__(self, image_path: str) -> None:
        self.fd = -1
        folder = os.path.join(image_path, READERS_DIR)
        os.makedirs(folder, exist_ok=True)
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        temp = os.path.join(folder, name + ".tmp")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, _pin_text([]))
            self.path = os.path.join(folder, name)
            os.rename(temp, self.path)   # seen by vacuum only once locked
        except BaseException:
            os.close(fd)
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        self.fd = fd

    def set(self, commits) -> None:
        if self.fd < 0:
            return
        data = _pin_text(commits)
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def close(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)   # releases the flock


def register_reader(image_path: str) -> ReaderPin | None:
    """A registration for a reader, or None where the image directory is not
    writable (a read-only medium: nothing can vacuum it either)."""
    try:
        return ReaderPin(image_path)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return None
        raise


def live_pins(image_path: str) -> set[int]:
    """The commits live readers pin; registrations of dead readers are removed."""
    folder = os.path.join(image_path, READERS_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return set()
    pins: set[int] = set()
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".tmp"):
            try:
                if time.time() - os.stat(path).st_mtime > STALE_TMP_SECONDS:
                    os.unlink(path)
            except OSError:
                pass
            continue
        pins |= _pins_of(path)
    return pins


def _pins_of(path: str) -> set[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return set()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # a live reader holds it
            for _ in range(PIN_READ_ATTEMPTS):
                pins = _parse_pins(os.pread(fd, 1 << 20, 0))
                if pins is not None:
                    return pins
                time.sleep(0.001)
            raise PagerError(f"{path}: a reader's registration cannot be read; "
                             f"vacuum refuses rather than guess what it uses")
        os.unlink(path)   # the lock was free: its reader is gone
        return set()
    finally:
        os.close(fd)


# -- what each version reaches ------------------------------------------------------


class _Layout:
    """A bitmap over every slot of every segment on disk: bit seg_base[s] + slot."""

    def __init__(self, image) -> None:
        numbers = image.numbers()
        self.numbers = numbers
        top = numbers[-1] + 1
        self.base = ffi.new("uint64_t[]", top)
        self.ranges: dict[int, tuple[int, int]] = {}
        total = 0
        for s in range(top):
            self.base[s] = (1 << 64) - 1
        for s in numbers:
            self.base[s] = total
            self.ranges[s] = (total, image.nslots(s))
            total += image.nslots(s)
        self.nbits = total
        self.nsegs = top

    def reach(self, tree: Tree) -> int:
        """The slots tree reaches, as a Python int used as a bitset."""
        bitmap = bytearray((self.nbits + 7) // 8)
        tree.store.check(lib.ic_tree_mark(tree.ptr, ffi.from_buffer(bitmap), self.base,
                                          self.nsegs))
        return int.from_bytes(bitmap, "little")

    def count(self, bits: int, segno: int) -> int:
        start, n = self.ranges[segno]
        return ((bits >> start) & ((1 << n) - 1)).bit_count()


def held_back(store, commits) -> dict[int, int]:
    """{commit: bytes of disk only that commit reaches}, among commits and the head."""
    layout = _Layout(store._image)
    reach: dict[int, int] = {}
    for commit in sorted(set(commits) | {store.head}):
        try:
            tree, _ = resolve(store, commit)
        except KeyError:
            continue
        try:
            reach[commit] = layout.reach(tree)
        finally:
            tree.close()
    order = list(reach)
    before, acc = [], 0
    for c in order:
        before.append(acc)
        acc |= reach[c]
    after, acc = [0] * len(order), 0
    for i in range(len(order) - 1, -1, -1):
        after[i] = acc
        acc |= reach[order[i]]
    return {c: (reach[c] & ~(before[i] | after[i])).bit_count() * store.page_size
            for i, c in enumerate(order)}


# -- the pass --------------------------------------------------------------------------


@dataclass
class VacuumReport:
    """What a vacuum did (or, for a dry run, would do)."""
    retained: list[int]
    removed: list[int] = field(default_factory=list)     # segments deleted
    busy: list[int] = field(default_factory=list)        # victims a new reader pin kept
    copied_bytes: int = 0                                # live page bytes moved
    groups: int = 0                                      # group writes (one sync each)
    written_bytes: int = 0                               # all bytes appended
    reclaimed_bytes: int = 0                             # segment bytes deleted
    bytes_before: int = 0                                # segments and the spare
    bytes_after: int = 0
    spare_bytes: int = 0                                 # the spare, after the pass (SPARE)
    seconds: float = 0.0
    dry_run: bool = False
    unresolved: list[int] = field(default_factory=list)  # retained ids already gone
    refused: dict[int, int] = field(default_factory=dict)  # victims kept: {segment: slots
    #                                                        its group would write}
    extra_limit_bytes: int = 0                           # the disk a pass may add (V4)
    peak_extra_bytes: int = 0                            # the most it added at any time
    page_size: int = 0

    def refusal_note(self) -> str | None:
        """One line on the victims kept because cleaning them needs more than
        one segment of extra disk, or None."""
        if not self.refused:
            return None
        names = ", ".join(map(str, sorted(self.refused)))
        return (f"kept {len(self.refused)} segment(s) ({names}): cleaning them needs up to "
                f"{_human_bytes(max(self.refused.values()) * self.page_size)} of copies and "
                f"stand-ins for {len(self.retained)} retained versions, more than the extra "
                f"disk a vacuum may use (one segment, "
                f"{_human_bytes(self.extra_limit_bytes)}); retain fewer versions to reclaim them")


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class _Unit:
    """Retained commits that share one page table (one root), and that tree."""
    tree: Tree
    recs: dict[int, fmt.Record]   # commit -> the record that carries it now
    image: object                 # the store's segments (pager._segments.Image)

    @property
    def commits(self) -> set[int]:
        return set(self.recs)

    def lies_in(self, victims) -> bool:
        """Does a record it needs (its own, or the checkpoint a plain record
        replays from, whose nodes the replay reads) lie in the victims?"""
        return any(r.segno in victims or _replay_base(self, r) & set(victims)
                   for r in self.recs.values())

    def reaches(self, victims) -> bool:
        return any(lib.ic_tree_usage(self.tree.ptr, v) for v in victims)


def _replay_base(unit: _Unit, rec: fmt.Record) -> set[int]:
    """The segments the checkpoint a plain record replays from reaches."""
    if rec.is_checkpoint:
        return set()
    ckpt = unit.image.record_at(rec.segno, rec.ckpt_slot)
    return {segno for segno, _ in ckpt.usage} if ckpt is not None else set()


def vacuum(store, keep, *, max_live: float = MAX_LIVE, dry_run: bool = False) -> VacuumReport:
    """Clean every sealed segment whose live share is at most max_live."""
    started = time.perf_counter()
    _require_quiet(store)
    wait_released(store)   # one pass's freeing at a time
    image = store._image
    report = VacuumReport(retained=[], dry_run=dry_run, page_size=store.page_size)
    report.bytes_before = sum(image.sizes.values()) + _spare_size(store)
    units = _units(store, _retained(store, keep), report)
    try:
        layout = _Layout(image)
        union = 0
        for unit in units:
            union |= layout.reach(unit.tree)
        victims = _victims(store, units, layout, union, max_live)
        if dry_run:
            report.removed = victims
            report.copied_bytes = sum(layout.count(union, v) for v in victims) * store.page_size
            report.reclaimed_bytes = sum(image.sizes[v] for v in victims)
            report.bytes_after = report.bytes_before - report.reclaimed_bytes + report.copied_bytes
        else:
            scratch, extra = _Scratch(), _ExtraDisk(store)
            try:
                for batch in _batches(store, victims, layout, union):
                    _clean(store, units, batch, report, scratch, extra)
            finally:
                scratch.close()
                report.extra_limit_bytes, report.peak_extra_bytes = extra.limit, extra.peak
            _sync_unlinks(store, report)
            _Release.of(store).start()
            report.spare_bytes = _spare_size(store)
            report.bytes_after = sum(store._image.sizes.values()) + report.spare_bytes
    finally:
        for unit in units:
            unit.tree.close()
    report.seconds = time.perf_counter() - started
    return report


def _require_quiet(store) -> None:
    store._require_writer()
    if store.dirty_pages:
        raise PagerError(f"{store.path}: vacuum needs a clean writer: commit or roll back first")
    if store.base != store.head:
        raise PagerError(f"{store.path}: vacuum after a rewind needs the rewind's commit first")


def _retained(store, keep) -> set[int]:
    views = {v.commit for v in list(store._views) if v._tree is not None}
    return {int(c) for c in keep} | {store.head} | views | live_pins(store.path)


def _units(store, retained: set[int], report: VacuumReport) -> list[_Unit]:
    """The retained commits grouped by the page table they resolve to; the
    head's unit last."""
    units: dict[tuple, _Unit] = {}
    scans: dict = {}
    for commit in sorted(retained):
        if not 0 <= commit <= store.head:
            report.unresolved.append(commit)
            continue
        try:
            tree, rec = _resolve_for_vacuum(store, commit, scans)
        except KeyError:
            report.unresolved.append(commit)
            continue
        key = (("root", rec.root_loc, rec.depth) if rec.is_checkpoint
               else ("rec", rec.segno, rec.slot))
        if key in units:
            tree.close()
            units[key].recs[commit] = rec
        else:
            units[key] = _Unit(tree, {commit: rec}, store._image)
        report.retained.append(commit)
    out = sorted(units.values(), key=lambda u: store.head in u.recs)
    assert out and store.head in out[-1].recs, "the head resolves to itself"
    return out


def _resolve_for_vacuum(store, commit: int, scans: dict) -> tuple[Tree, fmt.Record]:
    """Like resolve(), but a stand-in first: after a crash between a group and
    its unlink, the originals still reach the victim and would be copied again."""
    rec = _newest_standin(store, commit) if commit != store.head else None
    if rec is not None and rec.segno in store._image.sizes:
        tree = store._image.tree_from(rec, [])
        if _reaches_only(tree, store._image.sizes):
            return tree, rec
        tree.close()
    return resolve(store, commit, scans)


def _victims(store, units: list[_Unit], layout: _Layout, union: int,
             max_live: float) -> list[int]:
    image = store._image
    holders = {r.segno for u in units for r in u.recs.values()}
    victims = []
    for segno in image.numbers():
        if segno == store._active:
            continue
        live = layout.count(union, segno) + (1 if segno in holders else 0)
        if live <= max_live * (image.nslots(segno) - 1):
            victims.append(segno)
    return victims


def _batches(store, victims: list[int], layout: _Layout, union: int):
    """Victims cleaned together: their live slots together at most 3/4 of a
    segment (the rest for stand-ins), so one group stays within one segment of
    extra disk, and
    each retained tree is rewritten once per batch, not once per victim."""
    budget = (min(store._image.sizes.values()) // store.page_size) * 3 // 4
    batch, live = [], 0
    for v in victims:
        n = layout.count(union, v)
        if batch and live + n > budget:
            yield batch
            batch, live = [], 0
        batch.append(v)
        live += n
    if batch:
        yield batch


def _clean(store, units: list[_Unit], batch: list[int], report: VacuumReport,
           scratch: _Scratch, extra: _ExtraDisk) -> None:
    head = units[-1]
    needing = [u for u in units[:-1] if u.lies_in(batch) or u.reaches(batch)]
    if needing or head.lies_in(batch) or head.reaches(batch):
        try:
            _write_group(store, head, needing, batch, report, scratch, extra)
        except _GroupTooLarge as too_large:   # nothing was written
            if len(batch) == 1:   # cleaning it would pass one segment of extra disk: keep it
                report.refused[batch[0]] = too_large.slots
                return
            half = len(batch) // 2
            _clean(store, units, batch[:half], report, scratch, extra)
            _clean(store, units, batch[half:], report, scratch, extra)
            return
    _check_moved(store, units, batch)
    free = []
    for victim in batch:
        if _pinned_since(store, units, victim):
            report.busy.append(victim)
        else:
            free.append(victim)
    _delete(store, free, report, extra)


def _check_moved(store, units: list[_Unit], batch: list[int]) -> None:
    """Invariant V1, before anything is unlinked."""
    for unit in units:
        if unit.lies_in(batch) or unit.reaches(batch):
            raise CorruptImage(f"{store.path}: vacuum left commits {sorted(unit.commits)} "
                               f"depending on segments {batch}; nothing was removed")


def _pinned_since(store, units: list[_Unit], victim: int) -> bool:
    """Does a commit a reader pinned during this pass still reach the victim?"""
    known = set().union(*(u.commits for u in units))
    for commit in live_pins(store.path) - known:
        try:
            tree, rec = resolve(store, commit)
        except KeyError:
            continue
        try:
            if rec.segno == victim or lib.ic_tree_usage(tree.ptr, victim):
                return True
        finally:
            tree.close()
    return False


def _delete(store, victims: list[int], report: VacuumReport, extra: _ExtraDisk) -> None:
    """Unlink the victims.  Their directory fsync waits (_sync_unlinks): an
    unlink that a crash undoes leaves a whole segment no retained tree
    reaches, which the next vacuum deletes without copying (CRASH SAFETY);
    the next group's new segment or the end of the pass syncs the directory.
    The file system frees a victim's blocks when its last reference goes,
    which costs about as much as writing them on some disks (measured: 75 ms
    for 64 MiB on a VM's ext4 mounted with discard): a descriptor opened
    before the unlink keeps that reference, and _Release drops it in a thread
    while the pass goes on."""
    image = store._image
    views_open = any(v._tree is not None for v in list(store._views))
    release = _Release.of(store)
    nominal = min(image.sizes.values())
    try:
        for victim in victims:
            size = image.sizes.pop(victim)
            path = image.seg_path(victim)
            if not views_open:
                image.native.unmap(victim)   # else open views still read it: freed with them
            report.removed.append(victim)
            if (not views_open and size == nominal and report.reclaimed_bytes >= size
                    and _keeps_spare(store)):
                store._vfs.rename(path, _spare_path(store))   # disk held: extra unchanged
                continue
            release.add(_hold(path), size)   # closed by the thread even if the unlink fails
            store._vfs.unlink(path)
            extra.deleted(size)
            report.reclaimed_bytes += size
    except OSError as exc:
        store._enter_failed(exc)
    finally:
        release.start()
    store._standins = None


def _spare_path(store) -> str:
    return os.path.join(store.path, SPARE_NAME)


def _spare_size(store) -> int:
    try:
        return os.stat(_spare_path(store)).st_size
    except FileNotFoundError:
        return 0


def _keeps_spare(store) -> bool:
    """Is there room for a spare (none yet), and a way to prove it unused
    before it is overwritten (a write lease: Linux)?"""
    return hasattr(fcntl, "F_SETLEASE") and not os.path.exists(_spare_path(store))


def _take_spare(store, size: int) -> str | None:
    """The spare's path if it can become a new segment of size bytes now:
    the right size, and no process holds it open or mapped (SPARE).  A spare
    that cannot be used is deleted (its blocks freed by _Release)."""
    path = _spare_path(store)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    unused = os.fstat(fd).st_size == size and _unused_elsewhere(fd)
    if unused:
        os.close(fd)
        try:   # its rename from a segment's name is durable before a byte of it changes
            store._vfs.fsync_dir(store.path)
        except OSError as exc:
            store._enter_failed(exc)
        return path
    _Release.of(store).add(fd, os.fstat(fd).st_size)
    try:
        store._vfs.unlink(path)
    except OSError as exc:
        store._enter_failed(exc)
    return None


def _unused_elsewhere(fd: int) -> bool:
    """No other descriptor or mapping of fd's file exists: a write lease is
    granted only then (fcntl F_SETLEASE; the file must be ours)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def _hold(path: str) -> int:
    """A read-only descriptor of a file about to be unlinked (-1 if it cannot
    be opened: the unlink then frees the blocks itself)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def wait_released(store) -> float:
    """Wait until the blocks of the segments the last vacuum deleted are
    freed (see _Release); the seconds it waited."""
    started = time.perf_counter()
    _Release.of(store).wait()
    return time.perf_counter() - started


class _Release:
    """The descriptors of unlinked victims, closed by a thread per batch: the
    close that drops a file's last reference is where the file system frees
    its blocks.  Nothing depends on when that happens: the segment's name is
    gone before (durably, after _sync_unlinks), its contents are no longer
    any retained version's, and a crash only moves the freeing to the
    kernel's cleanup of the dead process.  So a pass returns without waiting
    for it (as a file system that frees unlinked inodes in the background,
    XFS or btrfs, would); the next pass waits first (wait_released), so
    freeing never piles up beyond one pass, and bench_vacuum.py reports the
    wait beside the pass's own time."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.nbytes = 0   # the sizes of the files behind fds
        self.threads: list[tuple[threading.Thread, int]] = []   # and the bytes each frees

    @staticmethod
    def of(store) -> _Release:
        release = getattr(store, "_vacuum_release", None)
        if release is None:
            release = store._vacuum_release = _Release()
        return release

    def add(self, fd: int, nbytes: int) -> None:
        if fd >= 0:
            self.fds.append(fd)
            self.nbytes += nbytes

    def start(self) -> None:
        if self.fds:
            fds, nbytes, self.fds, self.nbytes = self.fds, self.nbytes, [], 0
            thread = threading.Thread(target=_close_all, args=(fds,), daemon=True,
                                      name="imago-vacuum-release")
            thread.start()
            self.threads.append((thread, nbytes))

    def pending(self) -> int:
        """Bytes of deleted segments whose blocks may not be free yet."""
        return self.nbytes + sum(n for thread, n in self.threads if thread.is_alive())

    def wait(self) -> None:
        self.start()
        threads, self.threads = self.threads, []
        for thread, _ in threads:
            thread.join()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass   # the file is unlinked: its blocks are freed whatever close says


def _sync_unlinks(store, report: VacuumReport) -> None:
    """One directory fsync for the pass's unlinks (invariant 7)."""
    if report.removed:
        try:
            store._vfs.fsync_dir(store.path)
        except OSError as exc:
            store._enter_failed(exc)


# -- writing a group ---------------------------------------------------------------


@dataclass
class _Planned:
    """One record of a group: where it goes and what it holds."""
    unit: _Unit
    stands_for: int
    flags: int
    length: int               # record bytes (a bound: the usage table may shrink)
    record_slots: int
    npages: int
    nnodes: int               # 0: an alias, sharing the root of the unit's record before it
    slot: int                 # where its record goes

    @property
    def end(self) -> int:
        return self.slot + self.record_slots + self.npages + self.nnodes


def _write_group(store, head: _Unit, needing: list[_Unit], batch: list[int],
                 report: VacuumReport, scratch: _Scratch, extra: _ExtraDisk) -> None:
    """Copy what head and needing reach in the batch to the log's end, with
    their stand-ins, durably (steps 3 and 4 of the design)."""
    image = store._image
    movers = [head] + needing
    live = _LivePages(movers, batch)
    segno, slot0 = store._tail.segno, store._tail.slot
    room = image.nslots(segno) - slot0   # a group in the active segment leaves a zero slot
    if _nh0_slots(store, head, live.n) + live.n < room:
        plan = _plan(store, head, needing, live, segno, slot0)
        total = plan[-1].end - slot0
        if total < room:
            frame = _Frame(scratch.take((total + 1) * store.page_size), slot0, store.page_size)
            pairs = live.copy(store._image, frame.ptr(plan[0].slot + plan[0].record_slots))
            laid = _lay_out(store, plan, segno, frame, pairs)
            _write_durably(store, frame.buf, slot0)
            _finish_group(store, laid, segno, slot0 + total, live, total, report)
            return
        _reload(store, movers)   # the nodes made it too large: undo, go to a new segment
    segno, slot0 = store._active + 1, 1
    plan = _plan(store, head, needing, live, segno, slot0)
    total = plan[-1].end - slot0
    size = _new_segment_size(store, total + 1)
    spare = _take_spare(store, size) if total <= group_limit(store) else None
    if total > group_limit(store) or not (spare or extra.admits(size)):
        _reload(store, movers)
        raise _GroupTooLarge(total)
    if spare is None:   # a spare is disk the image holds already
        extra.claim(store, size)
    laid: list = []
    _start_segment(store, total + 1, _streamed_group(store, plan, live, segno, slot0, total,
                                                     scratch, laid), spare)
    _finish_group(store, laid, segno, slot0 + total, live, total, report)


class _GroupTooLarge(Exception):
    """A batch's group, stand-ins included, would pass group_limit or the
    pass's extra disk (V4): split it, or keep a single victim."""

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self.slots = slots


def group_limit(store) -> int:
    """The most slots a group in a new segment may write: one segment less
    its header's slot and the zero slot past the group, so that the segment
    has the nominal size.  With the stand-ins' nodes counted (many retained
    versions each rewrite their path nodes) a group can pass it even for a
    single victim; _batches sizes batches by live pages alone (3/4 of a
    segment), so a batch whose plan passes this is cleaned in halves, and a
    single victim that passes it is kept (VacuumReport.refused): its group
    would cost more disk than the one segment it frees."""
    return min(store._image.sizes.values()) // store.page_size - 2


def _new_segment_size(store, need_slots: int) -> int:
    """The size _start_segment gives a segment holding need_slots after its header."""
    nominal = min(store._image.sizes.values())
    return max(nominal, (need_slots + 1) * store.page_size)


class _ExtraDisk:
    """A pass's account of the disk it holds beyond what the image held when it
    began (invariant V4): bytes of the segments it made, less those it deleted.
    A new segment is started only if the account stays within one segment
    (admits), so the pass never needs more than one segment of free disk.  The
    blocks of deleted segments that _Release still frees in its thread are not
    free yet: claim waits for them when the account without them would pass
    the limit (wait_released; a pass that starts one segment never waits)."""

    def __init__(self, store) -> None:
        self.limit = min(store._image.sizes.values())
        self.extra = 0
        self.peak = 0

    def admits(self, size: int) -> bool:
        return self.extra + size <= self.limit

    def claim(self, store, size: int) -> None:
        if not self.admits(size):
            raise AssertionError(f"a {size}-byte segment would pass the vacuum's extra disk "
                                 f"({self.extra} of {self.limit} bytes held)")
        if self.extra + _Release.of(store).pending() + size > self.limit:
            wait_released(store)
        self.extra += size
        self.peak = max(self.peak, self.extra)

    def deleted(self, size: int) -> None:
        self.extra -= size


def _finish_group(store, laid: list, segno: int, end: int, live: _LivePages, total: int,
                  report: VacuumReport) -> None:
    _adopt(store, laid, segno, end)
    report.groups += 1
    report.copied_bytes += live.n * store.page_size
    report.written_bytes += total * store.page_size


class _LivePages:
    """Every page slot in the batch the units reach: (old loc, page_no, sum)
    triples in a C buffer, sorted by loc, each slot once (ic_vac_collect).
    Page i of the list goes to data slot i of the group."""

    def __init__(self, units: list[_Unit], batch: list[int]) -> None:
        self.nflags = max(batch) + 1
        self.flags = ffi.new("uint8_t[]", self.nflags)
        for victim in batch:
            self.flags[victim] = 1
        cap = sum(lib.ic_tree_usage(u.tree.ptr, v) for u in units for v in batch)
        self.triples = ffi.new("uint8_t[]", 24 * max(cap, 1))
        trees = ffi.new("ic_tree *[]", [u.tree.ptr for u in units])
        n = ffi.new("uint64_t *")
        units[0].tree.store.check(lib.ic_vac_collect(trees, len(units), self.flags, self.nflags,
                                                     self.triples, cap, n))
        self.n = n[0]

    def relocate(self, tree: Tree, base: int) -> None:
        """Point tree's references into the batch at the copies from base on."""
        tree.store.check(lib.ic_vac_relocate(tree.ptr, self.flags, self.nflags, self.triples,
                                             self.n, base))

    def copy(self, image, into) -> bytes:
        """Copy the pages (each verified: invariant 8) into the buffer `into`;
        returns the (page_no, sum) pairs the record lists."""
        pairs = ffi.new("uint8_t[]", 16 * max(self.n, 1))
        self.copy_range(image, 0, self.n, into, pairs)
        return bytes(ffi.buffer(pairs, 16 * self.n))

    def copy_range(self, image, first: int, count: int, into, pairs) -> None:
        """Copy pages first..first+count (verified) into `into`; their (page_no,
        sum) pairs go to their places in `pairs` (16 bytes per page of the list)."""
        assert 0 <= first and first + count <= self.n
        image.native.check(lib.ic_vac_copy(image.native.ptr, self.triples + 24 * first, count,
                                           into, pairs + 16 * first))


def _reload(store, units: list[_Unit]) -> None:
    """Rebuild units' trees from disk (undoing a relocation that was not written)."""
    for unit in units:
        unit.tree.close()
        commit, rec = next(iter(unit.recs.items()))
        if rec.is_checkpoint:
            unit.tree = store._image.tree_from(rec, [])
        else:
            unit.tree, _ = _from_original(store, commit)


def _record_size(npages: int, nusage: int, meta: bytes, ps: int) -> tuple[int, int]:
    length = fmt.record_length(npages, 0, nusage, len(meta))
    return length, -(-length // ps)


def _nh0_slots(store, head: _Unit, npages: int) -> int:
    # A usage table can only lose victims and gain segno: its size now plus one bounds it.
    return _record_size(npages, len(head.tree.usage()) + 1, head.recs[store.head].meta,
                        store.page_size)[1]


def _plan(store, head: _Unit, needing: list[_Unit], live: _LivePages, segno: int,
          slot0: int) -> list[_Planned]:
    """Relocate the trees toward segno from slot0 and lay out the group:
    Nh0 (with the pages), each needing unit's stand-ins (nodes once, then
    aliases), the head unit's other commits as aliases, and Nh.  Sizes do not
    depend on where the group goes, only locations do."""
    ps = store.page_size
    bound = len(head.tree.usage()) + 1
    meta = head.recs[store.head].meta
    length, rslots = _record_size(live.n, bound, meta, ps)
    nh0 = _Planned(head, store.head, fmt.FLAG_CHECKPOINT, length, rslots, live.n, 0, slot0)
    base = make_loc(segno, slot0 + rslots)
    for unit in [head] + needing:
        live.relocate(unit.tree, base)
    nh0.nnodes = lib.ic_tree_dirty_nodes(head.tree.ptr)
    plan = [nh0]
    side = fmt.FLAG_CHECKPOINT | fmt.FLAG_SIDE
    for unit in needing + [head]:
        nodes = 0 if unit is head else lib.ic_tree_dirty_nodes(unit.tree.ptr)
        for commit in sorted(unit.commits - {store.head}):
            length, rslots = _record_size(0, len(unit.tree.usage()) + 1,
                                          unit.recs[commit].meta, ps)
            plan.append(_Planned(unit, commit, side, length, rslots, 0, nodes, plan[-1].end))
            nodes = 0   # the unit's next commits share the root just written
    if len(plan) > 1:
        length, rslots = _record_size(0, bound, meta, ps)
        plan.append(_Planned(head, store.head, fmt.FLAG_CHECKPOINT, length, rslots, 0, 0,
                             plan[-1].end))
    return plan


class _Scratch:
    """One zeroed buffer the pass's groups are laid out in, grown as needed.
    Anonymous memory mapped populated: touching a fresh multi-MiB buffer
    page by page costs a fault per 4 KiB (measured: 50 MiB in 50 ms as a
    bytearray, 25 ms populated)."""

    _POPULATE = getattr(mmap, "MAP_POPULATE", 0)   # Linux only; elsewhere faulted in

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None

    def take(self, nbytes: int) -> memoryview:
        if self._map is None or len(self._map) < nbytes:
            self.close()
            self._map = mmap.mmap(-1, max(nbytes, 1),
                                  flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | self._POPULATE)
        else:   # reused: clear what the last group left
            ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(self._map)), 0, nbytes)
        return memoryview(self._map)[:nbytes]

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:   # a view of it is still held: the collector frees it
                pass
            self._map = None


class _Frame:
    """A group's bytes from slot0 on, in one zeroed buffer, except (with a
    hole) the page slots hole[0]..hole[0]+hole[1], which are streamed to the
    file instead (_streamed_group): records and nodes never lie in the hole."""

    def __init__(self, buf: memoryview | bytearray, slot0: int, page_size: int,
                 hole: tuple[int, int] = (0, 0)) -> None:
        self.buf, self.slot0, self.ps, self.hole = buf, slot0, page_size, hole
        self.base = ffi.cast("uint8_t *", ffi.from_buffer(buf))

    def offset(self, slot: int) -> int:
        """Where slot's bytes lie in buf."""
        first, n = self.hole
        if n and slot >= first:
            assert slot >= first + n, "nothing is laid out in the streamed pages"
            slot -= n
        return (slot - self.slot0) * self.ps

    def ptr(self, slot: int):
        return self.base + self.offset(slot)

    def view(self, slot: int, nslots: int) -> memoryview:
        off = self.offset(slot)
        return memoryview(self.buf)[off:off + nslots * self.ps]

    def pieces(self) -> list[tuple[int, memoryview]]:
        """(slot, bytes) of the buffer's parts: before the hole, after it."""
        first, n = self.hole
        if not n:
            return [(self.slot0, memoryview(self.buf))]
        split = (first - self.slot0) * self.ps
        return [(self.slot0, memoryview(self.buf)[:split]),
                (first + n, memoryview(self.buf)[split:])]


STREAM_WRITE = 4 << 20   # bytes of copied pages per write into a new segment


def _streamed_group(store, plan: list[_Planned], live: _LivePages, segno: int, slot0: int,
                    total: int, scratch: _Scratch, laid: list):
    """The group's bytes as (file offset, bytes) pieces for _make_group_segment:
    the copied pages first, through one reused buffer of STREAM_WRITE bytes
    (a group-sized buffer costs a page fault per 4 KiB of it), then its records
    and nodes.  Appends the records' layout to `laid`."""
    image, ps = store._image, store.page_size
    pages_at = plan[0].slot + plan[0].record_slots
    per_write = max(1, STREAM_WRITE // ps)
    pairs = ffi.new("uint8_t[]", 16 * max(live.n, 1))
    if live.n:
        chunk = scratch.take(min(live.n, per_write) * ps)
        into = ffi.cast("uint8_t *", ffi.from_buffer(chunk))
    for first in range(0, live.n, per_write):
        count = min(per_write, live.n - first)
        live.copy_range(image, first, count, into, pairs)
        yield (pages_at + first) * ps, chunk[:count * ps]
    frame = _Frame(bytearray((total - live.n) * ps), slot0, ps, hole=(pages_at, live.n))
    laid.extend(_lay_out(store, plan, segno, frame, bytes(ffi.buffer(pairs, 16 * live.n))))
    for slot, part in frame.pieces():
        if len(part):
            yield slot * ps, part


def _lay_out(store, plan: list[_Planned], segno: int, frame: _Frame, pairs: bytes) -> list:
    """The group's records and nodes in the frame (its pages are there or
    streamed; pairs lists them); the layout _adopt takes."""
    salt = store._image.salt
    seq, prev_sum = store._tail.seq, store._tail.sum
    prev_ckpt = make_loc(store._ckpt.segno, store._ckpt.slot)
    roots: dict[int, tuple[bytes, int, dict]] = {}   # id(unit) -> its root as laid out
    laid, nh0_seq, now = [], seq + 1, time.time_ns()
    for p in plan:
        seq += 1
        nodes_at = p.slot + p.record_slots + p.npages
        if id(p.unit) not in roots or p.nnodes:
            roots[id(p.unit)] = _serialize(p.unit.tree, segno, nodes_at, frame.ptr(nodes_at),
                                           p.nnodes)
        root_bytes, depth, usage = roots[id(p.unit)]
        root_loc, root_sum = struct.unpack_from("<QQ", root_bytes)
        source = p.unit.recs[p.stands_for]
        is_head = not p.flags & fmt.FLAG_SIDE
        record = fmt.encode_record(
            seq=seq, parent=(store.head if p is plan[0] else nh0_seq) if is_head else source.parent,
            prev_sum=prev_sum, time_ns=now if is_head else source.time_ns, flags=p.flags,
            segno=segno, slot=p.slot, pairs=pairs if p.npages else b"",
            usage=sorted(usage.items()), meta=source.meta, depth=depth, root_loc=root_loc,
            root_sum=root_sum, prev_ckpt=prev_ckpt, nnodes=p.nnodes,
            nodes_sum=hash64(frame.view(nodes_at, p.nnodes), salt) if p.nnodes else 0,
            salt=salt, stands_for=p.stands_for, length=p.length)
        frame.view(p.slot, p.record_slots)[:len(record)] = record
        prev_sum = struct.unpack_from("<Q", record, len(record) - 8)[0]
        prev_ckpt = make_loc(segno, p.slot)
        laid.append((p, root_bytes, depth, make_loc(segno, nodes_at)))
    return laid


def _serialize(tree: Tree, segno: int, nodes_at: int, out, nnodes: int
               ) -> tuple[bytes, int, dict[int, int]]:
    """Write tree's memory nodes at out (as if at segno, nodes_at on); its root,
    depth and the usage table its record carries."""
    root, depth = ffi.new("uint8_t[]", 32), ffi.new("int *")
    tree.store.check(lib.ic_tree_serialize(tree.ptr, make_loc(segno, nodes_at), out, nnodes,
                                           root, depth))
    usage = dict(tree.usage())
    if nnodes:
        usage[segno] = usage.get(segno, 0) + nnodes
    return bytes(ffi.buffer(root, 32)), depth[0], usage


def _write_durably(store, buf: bytearray, slot0: int) -> None:
    """One write, one fdatasync (invariants 2 and 6), as a commit does."""
    tail = store._tail
    try:
        store._vfs.pwrite(store._seg_fd, buf, slot0 * store.page_size)
        sync(store._vfs, store._seg_fd)
    except SyncFailed as exc:
        store._enter_failed(exc.error)
    except OSError as exc:
        if getattr(exc, "written", None) != 0:
            store._scrub_failed_commit(tail)
        raise CommitFailed(f"{store.path}: vacuum could not write its copies "
                           f"({exc.strerror or exc}); nothing was removed") from exc
    except BaseException:
        store._state = "failed"   # interrupted between write and sync: unknown, as in commit
        store._failure = "interrupted during vacuum"
        store._bind_reader()
        raise


def _adopt(store, laid: list, segno: int, end: int) -> None:
    """The group is durable: trees take their new roots, the writer its new head."""
    image = store._image
    image.native.set_limit(segno, end)
    records = []
    for p, root, depth, first_loc in laid:
        rec = image.record_at(segno, p.slot)
        if rec is None:
            store._state, store._failure = "failed", "a vacuum record does not read back"
            store._bind_reader()
            raise CorruptImage(f"{store.path}: {store._failure}; reopen the image")
        records.append(rec)
        if p.nnodes or p is laid[0][0]:
            lib.ic_tree_adopt(p.unit.tree.ptr, ffi.from_buffer(root), depth, first_loc, p.nnodes)
        p.unit.recs[p.stands_for] = rec
    check_group(records)
    last = records[-1]
    c = store._commit_args
    zero_from = max(c.zero_from if c.segno == segno else 1, end)
    store._reader.rebind(0, 0, None)
    old_tree, store._tree = store._tree, image.tree_from(last, [])
    store._ckpt = last
    store._tail = _Tail(segno, end, last.seq, last.sum, last.slot)
    store.head = store.base = last.seq
    store._records_since_ckpt = store._pages_since_ckpt = 0
    store._start_log(store._tail, zero_from=zero_from)
    store._bind_reader()
    old_tree.close()
    store._write_hint()
    store.appended_bytes += (end - records[0].slot) * store.page_size
    store._standins = None
    head_unit = laid[0][0].unit
    head_unit.recs[last.seq] = last   # the head is now Nh's number


def _start_segment(store, need_slots: int, pieces, spare: str | None = None) -> int:
    """Start the next segment, large enough for need_slots after its header,
    holding the group's pieces (offset, bytes) from slot 1 on, need_slots - 1
    slots of them (durable with the segment: make_segment_from), in the spare
    file when given."""
    image = store._image
    segno = store._active + 1
    size = _new_segment_size(store, need_slots)
    try:
        _make_group_segment(store, segno, size, pieces, need_slots * store.page_size, spare)
    except SyncFailed as exc:
        store._enter_failed(exc.error)
    except OSError as exc:
        raise CommitFailed(f"{store.path}: vacuum could not start {fmt.segment_name(segno)} "
                           f"({exc.strerror or exc}); nothing was removed") from exc
    try:   # the group is durable now: a writer that cannot follow it must stop
        image.attach(segno)
        fd = store._vfs.open(image.seg_path(segno), os.O_RDWR)
    except OSError as exc:
        store._enter_failed(exc)
    old_fd, store._seg_fd, store._active = store._seg_fd, fd, segno
    store._tail = empty_tail(segno, store._tail.seq, store._tail.sum)
    try:
        store._vfs.close(old_fd)
    except OSError:
        pass
    image.native.set_limit(segno, 1)
    store._start_log(store._tail, zero_from=1)
    return segno


def _make_group_segment(store, segno: int, size: int, pieces, body_end: int,
                        spare: str | None = None) -> None:
    """make_segment_from (pager/_segments.py) for a vacuum group, with two
    differences.  The body's pieces are handed to writeback as each is
    written (_start_writeback), so the disk writes while the next piece is
    copied and the one fsync at the end waits only for the last of it.  And
    the slots past the body are a hole, not written zeros: a hole reads as
    zeros, which is all the format asks of a slot no commit has written
    (invariant 3: the slot past the log's end reads as zeros; recovery and
    the crash shim read the same), so only the last slot is written, to give
    the file its size, and the hole's blocks are reserved (_reserve), so a
    full disk fails the vacuum, not a later commit.  The price: the commits
    that later fill this one segment's tail write into unwritten extents,
    about a fifth slower (12 KiB pwrite + fdatasync on this VM: 6,400/s
    fallocated, 6,500/s over a hole, 8,000/s over written zeros; DESIGN.md
    has 6,900 against 11,000), instead of the pass writing that tail (14 of
    64 MiB in bench_vacuum.py) before anything is reclaimed.  The protocol is the
    same: everything under the temporary name, the header last, one fsync,
    the rename, the directory fsync (invariant 7: whole or absent).  (Writing
    each piece in a thread while the next is copied was tried: 172 against
    173 ms a pass, six interleaved pairs; not kept.)"""
    vfs, ps, image = store._vfs, store.page_size, store._image
    if not ps <= body_end <= size:
        raise ValueError(f"a segment body ending at {body_end} does not fit {ps}..{size}")

    def fill(fd: int) -> None:
        if spare is not None:   # its old bytes past the body must read as zeros
            _zero_range(vfs, fd, body_end, size - body_end)
        elif body_end < size:   # the hole's end: the file has its size from the start
            vfs.pwrite(fd, bytes(ps), size - ps)
            _reserve(vfs, fd, body_end, size - ps - body_end)
        extents = []
        for offset, data in pieces:
            vfs.pwrite(fd, data, offset)
            _start_writeback(vfs, fd, offset, len(data))
            extents.append((offset, len(data)))
        _check_coverage(extents, ps, body_end)
        header = fmt.encode_segment_header(ps, size, segno, image.image_id, image.salt,
                                           time.time_ns())
        vfs.pwrite(fd, header + bytes(ps - len(header)), 0)

    publish_segment(vfs, store.path, segno, fill, reuse=spare)


def _load_sync_file_range():
    """libc's sync_file_range (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2   # <linux/fs.h>: start writeback of the dirty pages, do not wait


def _reserve(vfs: Vfs, fd: int, offset: int, length: int) -> None:
    """Reserve the disk blocks of the hole past a group (fallocate: no data
    written, the range still reads as zeros), so that a full disk is found
    here, where the vacuum fails whole, and not by a later commit into the
    tail, as the zero-filled segments of the writer guarantee (DESIGN.md).
    A file system without fallocate keeps the hole.  Only on the real file
    system: a test's Vfs models no blocks."""
    if type(vfs) is not Vfs or length <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        raise


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_ZERO_RANGE = 0x01, 0x10   # <linux/falloc.h>
ZERO_WRITE = 1 << 20   # bytes per write where zeros are written


def _load_fallocate():
    """libc's fallocate (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func


_FALLOCATE = _load_fallocate()


def _zero_range(vfs: Vfs, fd: int, offset: int, length: int) -> None:
    """Make a range of a reused file read as zeros: on the real file system
    fallocate's ZERO_RANGE (the blocks stay allocated, marked unwritten: no
    data written, nothing freed), else (unsupported, or a test's Vfs, which
    must see every write) written zeros.  Durable with the file's fsync."""
    if length <= 0:
        return
    if _FALLOCATE is not None and type(vfs) is Vfs:
        if _FALLOCATE(fd, _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
    zeros = bytes(min(length, ZERO_WRITE))
    for at in range(offset, offset + length, len(zeros)):
        vfs.pwrite(fd, zeros[:offset + length - at], at)


def _start_writeback(vfs: Vfs, fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range back now (Linux), so that the
    disk works while the CPU copies the next piece.  Advisory only: it makes
    nothing durable (the fsync does), and its failure is no failure.  Only on
    the real file system: a test's Vfs holds writes until sync."""
    if _SYNC_FILE_RANGE is not None and type(vfs) is Vfs and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def check_group(records: list[fmt.Record]) -> None:
    """Invariants V2 and V3 over a group as read back from disk."""
    if not records or records[-1].is_side or records[0].is_side:
        raise CorruptImage("a vacuum group must begin and end with the head's state")
    for rec in records:
        if not rec.is_checkpoint or rec.stands_for is None or rec.stands_for >= rec.seq:
            raise CorruptImage(f"vacuum record {rec.seq} is no stand-in of an older commit")
    if any(not rec.is_side for rec in records[1:-1]):
        raise CorruptImage("a vacuum group holds side records only between its ends")
