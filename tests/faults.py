"""Fault injection at the page store's file boundary (pager/_vfs.py), for tests.

Two Vfs subclasses, in the manner of SQLite's test VFSes (src/test6.c,
src/test_devsym.c):

``CrashVfs`` simulates power loss.  Every pwrite is held in memory, per file,
until that file is fdatasync'd or fsync'd; the sync then applies the file's
held writes in order and syncs for real.  A rename is done at once but stays
"pending" until its directory is fsync'd.  ``crash(rng)`` is the power cut:
each pending rename is kept or undone, each held write is cut into pieces and
each piece is kept, dropped or garbled (some bytes replaced, a torn prefix, or
only some of its 512-byte sectors); from then on every call but close()
raises SimulatedCrash.  A disk with a volatile cache persists what it likes,
in any order, so a piece is, at random, the whole write (an in-order tear), one
page-sized slot of a segment file, or one 512-byte sector.  The shim can also
cut the power itself, inside the Nth sync (the writes were issued but not yet
made durable) or at the Nth write (which is then never issued).

A commit is one write of whole slots, ``[record][pages][nodes][zero slot]``
(pager/_format.py).  The shim recognises such a write in a segment file (it
starts with a record's magic at a slot boundary; the page size comes from the
segment's header) and names its parts: ``commit_regions``.  ``force``
replaces the random choice, with the parts as the pieces: one outcome for
every piece, a list of them in order, or a function of the Piece such as
``fates(record=..., pages=..., nodes=..., zero=..., other=...)``;
"prefix:N" is a piece torn after N bytes, "sectors:0110" keeps the sectors
of a piece that the mask, repeated, marks 1.

The CrashReport says what the cut did: per file, the bytes before the cut,
as issued, and as landed.  ``intact``: every held write reached the disk as
issued; ``clean``: in the segment files, all of it did or none of it changed
anything; ``commit()``: the commit write that was in flight, if any, and
whether the bytes its checksums cover (record, pages, nodes) all landed.

Reads by the pager go through its own mmap of the real files, which never sees
held writes.  That is sound because the pager never reads a commit's bytes
before its sync returned (pager/_vfs.py); ``pread`` here overlays held writes
anyway, as the OS page cache would.

``FaultVfs`` fails the Nth call of one operation with an errno (ENOSPC, EIO),
optionally every call after it too, optionally after writing half the data
(a short write), optionally only counting calls a predicate picks (such as
``commit_write``).  It also counts every call, so a test can first measure
how many calls a workload makes and then aim at each of them.

``abandon(store)`` lets a test drop a store whose process "died": it closes
the store's descriptors (which releases the LOCK flock) without any write.

Only seeded ``random.Random`` objects are used; nothing here reads the clock
or os.urandom.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from pager import _format as fmt
from pager._vfs import Vfs

SECTOR = 512      # the unit a disk writes whole, if any; the finest piece a cut keeps or drops
# The grain a random cut picks per held write: the whole write (an in-order
# tear), one page-sized slot (a segment file only), or one sector.
GRAINS, GRAIN_WEIGHTS = ("write", "slot", "sector"), (2, 2, 1)
_SEGMENT_NAME = re.compile(r"seg-\d{6}")


class SimulatedCrash(BaseException):
    """The power went out.  A BaseException, so that no ``except Exception`` in
    the code under test can swallow it and carry on as if the process lived."""


def _real_fsync(fd: int) -> None:
    """Vfs.fsync without its call to self.fdatasync on macOS, which would count twice."""
    Vfs.fdatasync(Vfs(), fd) if sys.platform == "darwin" else os.fsync(fd)


def _file_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def is_segment(path: str) -> bool:
    """Is this a segment file of an image (not a temporary one)?"""
    return _SEGMENT_NAME.fullmatch(os.path.basename(path)) is not None


def segment_page_size(fd: int) -> int | None:
    """The page size in the durable header of the segment file open at fd."""
    raw = os.pread(fd, fmt.SEG_HEADER.size, 0)
    if len(raw) < fmt.SEG_HEADER.size or raw[:8] != fmt.SEG_MAGIC:
        return None
    return fmt.SEG_HEADER.unpack_from(raw)[2]


@dataclass(frozen=True)
class Region:
    """A part of one held write: [lo, hi) bytes into it."""
    kind: str        # record, page, node, zero (of a commit write), or other
    index: int       # its place among the regions of its kind
    lo: int
    hi: int


@dataclass(frozen=True)
class CommitLayout:
    """The parts of a commit write, read from its record header."""
    seq: int
    length: int      # the record's bytes, covered by its checksum
    regions: list[Region]

    def covered(self) -> list[tuple[int, int]]:
        """The byte ranges some checksum covers: record[0:length], pages, nodes."""
        return [(0, self.length)] + [(r.lo, r.hi) for r in self.regions
                                     if r.kind in ("page", "node")]


def commit_regions(data: bytes, page_size: int) -> CommitLayout | None:
    """The layout of a commit write ``[record][pages][nodes][zero slot]``, or None
    when data does not start with a commit record."""
    if len(data) < fmt.REC_HEADER.size or data[:8] != fmt.REC_MAGIC:
        return None
    fields = fmt.REC_HEADER.unpack_from(data)
    length, seq, npages, nnodes = fields[3], fields[4], fields[8], fields[9]
    record_end = -(-length // page_size) * page_size
    regions = [Region("record", 0, 0, record_end)]
    at = record_end
    for kind, count in (("page", npages), ("node", nnodes)):
        for i in range(count):
            regions.append(Region(kind, i, at, at + page_size))
            at += page_size
    if at > len(data):
        return None
    if at < len(data):
        regions.append(Region("zero", 0, at, len(data)))
    return CommitLayout(seq, length, regions)


@dataclass
class _Held:
    offset: int
    data: bytes


@dataclass
class _File:
    """The held writes of one file (inode), and a private descriptor to apply
    them through, since the pager may close its own before the crash."""
    fd: int
    readable: bool
    path: str
    writes: list[_Held] = field(default_factory=list)

    @classmethod
    def of(cls, fd: int, path: str) -> _File:
        """A private read-write descriptor where the OS allows one (the pager opens
        some files write-only), else a duplicate that can only be written."""
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:
            return cls(os.dup(fd), True, path)
        try:
            return cls(os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC), True, path)
        except OSError:
            return cls(os.dup(fd), False, path)

    def page_size(self) -> int | None:
        return segment_page_size(self.fd) if self.readable and is_segment(self.path) else None


@dataclass(frozen=True)
class Piece:
    """A part of a held write that a power cut keeps, drops or garbles as a unit."""
    path: str
    kind: str        # a Region kind, or "write"/"slot"/"sector" for a random grain
    index: int
    offset: int      # in the file
    data: bytes


@dataclass
class FileCut:
    """One file's held writes at the cut: its bytes over their span [lo, lo + len)
    before the cut, as every write issued would leave them, and as landed
    (None where the shim could not read the file back)."""
    path: str
    page_size: int | None    # of a segment file
    lo: int
    writes: list[_Held]
    before: bytes | None
    expected: bytes | None
    after: bytes | None

    def _span(self, a: int, b: int) -> slice:
        return slice(a - self.lo, b - self.lo)

    def landed(self, a: int, b: int) -> bool:
        """Are bytes [a, b) of the file on disk as the writes issued them?"""
        return self.after is not None and self.after[self._span(a, b)] == \
            self.expected[self._span(a, b)]

    def unchanged(self, a: int, b: int) -> bool:
        """Are bytes [a, b) of the file as they were before the cut?"""
        return self.after is not None and self.after[self._span(a, b)] == \
            self.before[self._span(a, b)]

    @property
    def hi(self) -> int:
        return self.lo + (len(self.expected) if self.expected is not None else 0)


@dataclass(frozen=True)
class CommitCut:
    """The commit write a power cut caught in flight, and how much of it landed."""
    seq: int
    offset: int               # in its segment file
    layout: CommitLayout
    file: FileCut

    def part_landed(self, kind: str) -> bool:
        """Did every region of this kind land as issued (True if there is none)?"""
        return all(self.file.landed(self.offset + r.lo, self.offset + r.hi)
                   for r in self.layout.regions if r.kind == kind)

    @property
    def record_landed(self) -> bool:
        """Did the record's checksummed bytes land as issued?"""
        return self.file.landed(self.offset, self.offset + self.layout.length)

    @property
    def landed(self) -> bool:
        """Did every byte that the commit's checksums cover land as issued?  Then
        the commit is valid on disk; otherwise it is not."""
        return all(self.file.landed(self.offset + a, self.offset + b)
                   for a, b in self.layout.covered())


@dataclass
class CrashReport:
    """What a simulated power cut did."""
    where: str                           # "fdatasync", "fsync", "fsync_dir", "write", "explicit"
    file: str | None                     # the name of the file written or synced at the cut
    pieces: list[tuple[str, str]]        # per piece: (kind, outcome: keep, drop, bytes, ...)
    files: list[FileCut]
    renames_undone: int = 0

    @property
    def intact(self) -> bool:
        """Every held write's bytes are on disk as issued."""
        return all(f.landed(f.lo, f.hi) for f in self.files)

    @property
    def clean(self) -> bool:
        """No partial state was left in the segment files: every byte held for
        them landed as issued, or none changed anything.  (Other files are
        either a hint, temporary, or never read by opening.)"""
        segs = [f for f in self.files if is_segment(f.path)]
        return (all(f.landed(f.lo, f.hi) for f in segs)
                or all(f.unchanged(f.lo, f.hi) for f in segs))

    def commit(self) -> CommitCut | None:
        """The commit write held at the cut, if any (a commit is synced before the
        next one is written, so there is at most one)."""
        found = []
        for f in self.files:
            for w in f.writes if f.page_size and f.expected is not None else ():
                layout = commit_regions(w.data, f.page_size)
                if layout is not None and w.offset % f.page_size == 0:
                    found.append(CommitCut(layout.seq, w.offset, layout, f))
        assert len(found) <= 1, found
        return found[0] if found else None


Force = str | list[str] | Callable[[Piece], str] | None


class CrashVfs(Vfs):
    """Holds writes until sync; ``crash(rng)`` keeps, drops or garbles pieces of them."""

    def __init__(self, rng: random.Random, *, crash_at_sync: int | None = None,
                 crash_at_write: int | None = None, garble_weight: float = 1.0,
                 force: Force = None) -> None:
        self.rng = rng
        self.force = force
        self.crash_at_sync = crash_at_sync
        self.crash_at_write = crash_at_write
        self.garble_weight = garble_weight
        self.syncs = 0
        self.writes = 0
        self.segment_syncs = 0     # fdatasyncs of segment files that returned (commits, clearing)
        self.dead = False
        self.report: CrashReport | None = None
        self._paths: dict[int, str] = {}
        self._files: dict[tuple[int, int], _File] = {}
        self._renames: list[tuple[str, str]] = []

    # -- the power cut -------------------------------------------------------

    def crash(self, rng: random.Random, where: str = "explicit",
              target: str | None = None) -> CrashReport:
        """Cut the power: every pending rename is kept or undone, every piece of
        every held write kept, dropped or garbled; afterwards every call but
        close() raises SimulatedCrash."""
        self._alive()
        pieces: list[tuple[str, str]] = []
        cuts = []
        for f in self._files.values():
            cut = self._snapshot(f)
            first = len(pieces)
            for w in f.writes:
                for piece in self._pieces(f, w, rng):
                    outcome = self._choose(rng, piece, len(pieces))
                    pieces.append((piece.kind, outcome))
                    self._land(f.fd, piece, outcome, rng)
            if cut.before is not None:
                cut.after = self._read(f.fd, cut.lo, len(cut.before))
            elif all(o == "keep" for _, o in pieces[first:]):
                cut.expected = cut.after = cut.before = b""   # unreadable, but known whole
            cuts.append(cut)
            os.close(f.fd)
        undone = 0
        for src, dst in reversed(self._renames):
            if rng.random() < 0.5 and os.path.lexists(dst):
                os.rename(dst, src)
                undone += 1
        self._files.clear()
        self._renames.clear()
        self.dead = True
        self.report = CrashReport(where, target and os.path.basename(target), pieces, cuts,
                                  undone)
        return self.report

    @staticmethod
    def _read(fd: int, lo: int, length: int) -> bytes:
        raw = os.pread(fd, length, lo)
        return raw + bytes(length - len(raw))

    def _snapshot(self, f: _File) -> FileCut:
        """The file's bytes over its held writes' span, before and as issued."""
        lo = min(w.offset for w in f.writes)
        hi = max(w.offset + len(w.data) for w in f.writes)
        if not f.readable:
            return FileCut(f.path, None, lo, f.writes, None, None, None)
        before = self._read(f.fd, lo, hi - lo)
        expected = bytearray(before)
        for w in f.writes:
            expected[w.offset - lo:w.offset - lo + len(w.data)] = w.data
        return FileCut(f.path, f.page_size(), lo, f.writes, before, bytes(expected), None)

    def _pieces(self, f: _File, w: _Held, rng: random.Random) -> list[Piece]:
        """Cut a held write into the units the power cut treats alike: the parts of
        a commit when forced, else a random grain."""
        page_size = f.page_size()
        layout = commit_regions(w.data, page_size) if page_size and \
            w.offset % page_size == 0 else None
        if self.force is not None:
            regions = layout.regions if layout else [Region("other", 0, 0, len(w.data))]
            return [Piece(f.path, r.kind, r.index, w.offset + r.lo, w.data[r.lo:r.hi])
                    for r in regions]
        grain = rng.choices(GRAINS, weights=GRAIN_WEIGHTS)[0]
        unit = {"write": None, "slot": page_size or SECTOR, "sector": SECTOR}[grain]
        if unit is None:
            return [Piece(f.path, grain, 0, w.offset, w.data)]
        pieces, start, end = [], w.offset, w.offset + len(w.data)
        while start < end:
            stop = min((start // unit + 1) * unit, end)
            pieces.append(Piece(f.path, grain, len(pieces), start,
                                w.data[start - w.offset:stop - w.offset]))
            start = stop
        return pieces

    def _choose(self, rng: random.Random, piece: Piece, index: int) -> str:
        if isinstance(self.force, str):
            return self.force
        if isinstance(self.force, list):
            return self.force[index]
        if self.force is not None:
            return self.force(piece)
        kinds = ["keep", "drop", "garble"]
        kind = rng.choices(kinds, weights=[1, 1, self.garble_weight])[0]
        if kind != "garble":
            return kind
        if len(piece.data) < 2:
            return "bytes"
        return rng.choice(["bytes", "torn", "sectors"] if len(piece.data) > SECTOR
                          else ["bytes", "torn"])

    @staticmethod
    def _land(fd: int, piece: Piece, outcome: str, rng: random.Random) -> None:
        """Apply one piece of a held write to the real file as the power cut left it."""
        data, offset = piece.data, piece.offset
        if outcome == "keep":
            os.pwrite(fd, data, offset)
        elif outcome == "bytes":
            raw = bytearray(data)
            for _ in range(rng.randint(1, max(1, len(raw) // 64))):
                i = rng.randrange(len(raw))
                raw[i] ^= rng.randrange(1, 256)     # never the byte it was
            os.pwrite(fd, raw, offset)
        elif outcome == "torn" and len(data) > 1:
            os.pwrite(fd, data[:rng.randrange(1, len(data))], offset)
        elif outcome.startswith("prefix:"):        # forced only: a torn piece of exactly N bytes
            os.pwrite(fd, data[:int(outcome[7:])], offset)
        elif outcome == "sectors" or outcome.startswith("sectors:"):
            mask = outcome[8:]         # forced only: "sectors:01" keeps every second sector
            start, n = offset, 0
            while start < offset + len(data):
                end = min((start // SECTOR + 1) * SECTOR, offset + len(data))
                if mask[n % len(mask)] == "1" if mask else rng.random() < 0.5:
                    os.pwrite(fd, data[start - offset:end - offset], start)
                start, n = end, n + 1
        else:
            assert outcome == "drop", outcome

    def _alive(self) -> None:
        if self.dead:
            raise SimulatedCrash("the simulated machine has lost power")

    def _sync_point(self, where: str, target: str) -> None:
        self._alive()
        self.syncs += 1
        if self.syncs == self.crash_at_sync:
            self.crash(self.rng, where, target)
            raise SimulatedCrash(f"power lost inside {where} #{self.syncs} of {target}")

    def _path(self, fd: int) -> str:
        return self._paths.get(fd, f"/proc/self/fd/{fd}")

    # -- the Vfs -------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self._alive()
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self._paths.pop(fd, None)
        os.close(fd)    # allowed even when dead: closing writes nothing, and frees the LOCK

    def size(self, fd: int) -> int:
        self._alive()
        size = super().size(fd)
        f = self._files.get(_file_key(fd))
        for w in f.writes if f else ():
            size = max(size, w.offset + len(w.data))
        return size

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        self._alive()
        out = bytearray(super().pread(fd, length, offset))
        f = self._files.get(_file_key(fd))
        for w in f.writes if f else ():
            lo, hi = max(offset, w.offset), min(offset + length, w.offset + len(w.data))
            if lo < hi:
                if len(out) < hi - offset:
                    out.extend(bytes(hi - offset - len(out)))
                out[lo - offset:hi - offset] = w.data[lo - w.offset:hi - w.offset]
        return bytes(out)

    def pwrite(self, fd: int, data, offset: int) -> None:
        self._alive()
        self.writes += 1
        if self.writes == self.crash_at_write:
            self.crash(self.rng, "write", self._path(fd))
            raise SimulatedCrash(f"power lost at write #{self.writes} to {self._path(fd)}")
        key = _file_key(fd)
        if key not in self._files:
            self._files[key] = _File.of(fd, self._path(fd))
        self._files[key].writes.append(_Held(offset, bytes(data)))

    def _apply(self, fd: int) -> None:
        f = self._files.pop(_file_key(fd), None)
        if f is None:
            return
        try:
            for w in f.writes:
                super().pwrite(f.fd, w.data, w.offset)
        finally:
            os.close(f.fd)

    def fdatasync(self, fd: int) -> None:
        self._sync_point("fdatasync", self._path(fd))
        self._apply(fd)
        super().fdatasync(fd)
        self.segment_syncs += is_segment(self._path(fd))

    def fsync(self, fd: int) -> None:
        self._sync_point("fsync", self._path(fd))
        self._apply(fd)
        _real_fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self._sync_point("fsync_dir", path)
        path = os.path.abspath(path)
        self._renames = [(s, d) for s, d in self._renames
                         if os.path.dirname(os.path.abspath(d)) != path]
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        self._alive()
        super().rename(src, dst)
        self._renames.append((src, dst))

    def unlink(self, path: str) -> None:
        self._alive()
        super().unlink(path)

    def mkdir(self, path: str) -> None:
        self._alive()
        super().mkdir(path)


class FaultVfs(Vfs):
    """Fails the Nth call of one operation with an OSError.

    ``arm(op, nth, err)`` restarts the count for ``op``; the nth call from
    then on fails (and, with ``persist``, every later one).  With ``partial``
    a failing write first writes half its bytes, as a short write on a full
    disk does.  With ``when``, a predicate of (path, offset, data) for writes
    or of (path,) for other calls, only the calls it picks are counted and
    failed.  ``calls`` counts every call of every operation since creation.
    """

    OPS = ("pwrite", "fdatasync", "fsync", "fsync_dir", "open", "rename", "mkdir")

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failures = 0
        self._paths: dict[int, str] = {}
        self.disarm()

    def arm(self, op: str, nth: int = 1, err: int = errno.ENOSPC, *, persist: bool = False,
            partial: bool = False, when: Callable[..., bool] | None = None) -> None:
        if op not in self.OPS:
            raise ValueError(f"cannot inject a fault into {op!r}")
        self.op, self.nth, self.err = op, nth, err
        self.persist, self.partial, self.when = persist, partial, when
        self._seen = 0

    def disarm(self) -> None:
        self.op, self.nth, self.err = None, 0, 0
        self.persist = self.partial = False
        self.when = None
        self._seen = 0

    def _fails(self, op: str, *about) -> bool:
        self.calls[op] += 1
        if op != self.op or (self.when is not None and not self.when(*about)):
            return False
        self._seen += 1
        if self._seen == self.nth or (self.persist and self._seen > self.nth):
            self.failures += 1
            return True
        return False

    def _raise(self, op: str, written: int = 0) -> NoReturn:
        exc = OSError(self.err, f"{os.strerror(self.err)} (injected into {op})")
        exc.written = written   # as pager._vfs.Vfs.pwrite reports it
        raise exc

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if self._fails("open", path):
            self._raise("open")
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        self._paths.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd: int, data, offset: int) -> None:
        if self._fails("pwrite", self._paths.get(fd, ""), offset, data):
            if self.partial and len(data) > 1:
                super().pwrite(fd, memoryview(data)[:len(data) // 2], offset)
                self._raise("pwrite", len(data) // 2)
            self._raise("pwrite")
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        if self._fails("fdatasync", self._paths.get(fd, "")):
            self._raise("fdatasync")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self._fails("fsync", self._paths.get(fd, "")):
            self._raise("fsync")
        _real_fsync(fd)

    def fsync_dir(self, path: str) -> None:
        if self._fails("fsync_dir", path):
            self._raise("fsync_dir")
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        if self._fails("rename", dst):
            self._raise("rename")
        super().rename(src, dst)

    def mkdir(self, path: str) -> None:
        if self._fails("mkdir", path):
            self._raise("mkdir")
        super().mkdir(path)


def commit_write(path: str, offset: int, data) -> bool:
    """A ``when`` for FaultVfs: is this write a commit (a record, at the start of a
    write to a segment file)?"""
    return is_segment(path) and bytes(memoryview(data)[:8]) == fmt.REC_MAGIC


def fates(record: str = "keep", pages: str | list[str] = "keep",
          nodes: str | list[str] | None = None, zero: str = "keep", other: str = "keep"
          ) -> Callable[[Piece], str]:
    """A ``force`` for CrashVfs that picks each part of a commit write's fate by
    what it is: the record's slots, each data page and each page-table node
    (a list gives one fate per page or node, in order; nodes share the pages'
    fate unless given), and the zeroed slot after them.  Every other write
    (hint, zero-fill, saved damage) meets ``other``."""
    by_kind = {"record": record, "page": pages, "node": pages if nodes is None else nodes,
               "zero": zero, "other": other}

    def choose(piece: Piece) -> str:
        fate = by_kind[piece.kind]
        return fate if isinstance(fate, str) else fate[piece.index]
    return choose


def abandon(store) -> None:
    """Drop a store whose machine crashed: close its descriptors (releasing the
    LOCK) without writing anything.  CrashVfs.close works even when dead, and
    _release may run again from __del__ harmlessly."""
    store._release()


def flip_slot_holding(path: str, page: bytes, offset: int, mask: int) -> None:
    """Damage an image on disk: XOR mask into byte offset of the one segment
    slot whose bytes are exactly page (a page random enough to be unique)."""
    import glob
    for seg in sorted(glob.glob(os.path.join(path, "seg-*"))):
        with open(seg, "r+b") as f:
            data = f.read()
            hits = [o for o in range(0, len(data), len(page)) if data[o:o + len(page)] == page]
            if hits:
                assert len(hits) == 1
                f.seek(hits[0] + offset)
                f.write(bytes([data[hits[0] + offset] ^ mask]))
                return
    raise AssertionError("no slot holds that page")
