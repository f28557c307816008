"""Fault injection at the page store's file boundary (pager/_vfs.py), for tests.

Two Vfs subclasses, in the manner of SQLite's test VFSes (src/test6.c,
src/test_devsym.c):

``CrashVfs`` simulates power loss.  Every pwrite (each buffer of a pwritev
counts as one write) is held in memory, per file, until that file is
fdatasync'd or fsync'd; the sync then applies the file's held writes in
order and syncs for real.  A rename is done at once but stays "pending" until
its directory is fsync'd.  ``crash(rng)`` is the power cut: each held write is
kept, dropped or garbled (some bytes replaced, a torn prefix, or only some of
its 512-byte sectors), each pending rename is kept or undone, and from then on
every call but close() raises SimulatedCrash.  The shim can also cut the power
itself, inside the Nth sync (the writes were issued but not yet made durable)
or at the Nth write (which is then never issued).  ``force`` replaces the
random choice: one outcome for every held write, a list of them in the
order the writes were issued, or a function of (offset, data) such as
``fates(pages=..., record=...)``; "prefix:N" is a write torn after N bytes.
The CrashReport says what the cut did, in particular whether every held write
reached the disk as issued (``intact``).

Reads by the pager go through its own mmap of the real files, which never sees
held writes.  That is sound because the pager never reads a commit's bytes
before its sync returned (pager/_vfs.py); ``pread`` here overlays held writes
anyway, as the OS page cache would.

``FaultVfs`` fails the Nth call of one operation with an errno (ENOSPC, EIO),
optionally every call after it too, optionally after writing half the data
(a short write).  It also counts every call, so a test can first measure how
many calls a workload makes and then aim at each of them.

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
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NoReturn

from pager._vfs import Vfs

SECTOR = 512      # the unit a disk writes whole; the "sectors" garble keeps some of them
REC_MAGIC = b"IMAGOREC"   # a commit record ends with its 128-byte header (pager/_format.py)


class SimulatedCrash(BaseException):
    """The power went out.  A BaseException, so that no ``except Exception`` in
    the code under test can swallow it and carry on as if the process lived."""


def _real_fsync(fd: int) -> None:
    """Vfs.fsync without its call to self.fdatasync on macOS, which would count twice."""
    Vfs.fdatasync(Vfs(), fd) if sys.platform == "darwin" else os.fsync(fd)


def _file_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


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
    writes: list[_Held] = field(default_factory=list)

    @classmethod
    def of(cls, fd: int) -> _File:
        """A private read-write descriptor where the OS allows one (the pager opens
        some files write-only), else a duplicate that can only be written."""
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:
            return cls(os.dup(fd), True)
        try:
            return cls(os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC), True)
        except OSError:
            return cls(os.dup(fd), False)


@dataclass
class CrashReport:
    """What a simulated power cut did."""
    where: str                           # "fdatasync", "fsync", "fsync_dir", "write", "explicit"
    outcomes: list[str]                  # per held write: keep, drop, bytes, torn, sectors
    renames_undone: int = 0
    intact: bool = True                  # every held write's bytes are on disk as issued

    @property
    def held(self) -> int:
        return len(self.outcomes)

    @property
    def clean(self) -> bool:
        """No partial state was left: every held write landed whole, or none did."""
        return self.intact or all(o == "drop" for o in self.outcomes)


class CrashVfs(Vfs):
    """Holds writes until sync; ``crash(rng)`` keeps, drops or garbles them."""

    def __init__(self, rng: random.Random, *, crash_at_sync: int | None = None,
                 crash_at_write: int | None = None, garble_weight: float = 1.0,
                 force: str | list[str] | Callable[[int, bytes], str] | None = None) -> None:
        self.rng = rng
        self.force = force
        self.crash_at_sync = crash_at_sync
        self.crash_at_write = crash_at_write
        self.garble_weight = garble_weight
        self.syncs = 0
        self.writes = 0
        self.dead = False
        self.report: CrashReport | None = None
        self._files: dict[tuple[int, int], _File] = {}
        self._renames: list[tuple[str, str]] = []

    # -- the power cut -------------------------------------------------------

    def crash(self, rng: random.Random, where: str = "explicit") -> CrashReport:
        """Cut the power: keep, drop or garble every held write, keep or undo every
        pending rename; afterwards every call but close() raises SimulatedCrash."""
        self._alive()
        outcomes: list[str] = []
        intact = True
        for f in self._files.values():
            lo, hi, expected = self._expected(f)
            for w in f.writes:
                outcome = self._choose(rng, w, len(outcomes))
                outcomes.append(outcome)
                self._land(f.fd, w, outcome, rng)
            if expected is not None:
                intact &= os.pread(f.fd, hi - lo, lo) == expected
            elif f.writes:      # cannot read it back: intact only if every write was kept
                intact &= all(o == "keep" for o in outcomes[-len(f.writes):])
            os.close(f.fd)
        undone = 0
        for src, dst in reversed(self._renames):
            if rng.random() < 0.5 and os.path.lexists(dst):
                os.rename(dst, src)
                undone += 1
        self._files.clear()
        self._renames.clear()
        self.dead = True
        self.report = CrashReport(where, outcomes, undone, intact)
        return self.report

    def _choose(self, rng: random.Random, w: _Held, index: int) -> str:
        if isinstance(self.force, str):
            return self.force
        if isinstance(self.force, list):
            return self.force[index]
        if self.force is not None:
            return self.force(w.offset, w.data)
        kinds = ["keep", "drop", "garble"]
        kind = rng.choices(kinds, weights=[1, 1, self.garble_weight])[0]
        if kind != "garble":
            return kind
        if len(w.data) < 2:
            return "bytes"
        return rng.choice(["bytes", "torn", "sectors"])

    @staticmethod
    def _land(fd: int, w: _Held, outcome: str, rng: random.Random) -> None:
        """Apply one held write to the real file as the power cut left it."""
        data = w.data
        if outcome == "keep":
            os.pwrite(fd, data, w.offset)
        elif outcome == "bytes":
            raw = bytearray(data)
            for _ in range(rng.randint(1, max(1, len(raw) // 64))):
                i = rng.randrange(len(raw))
                raw[i] ^= rng.randrange(1, 256)     # never the byte it was
            os.pwrite(fd, raw, w.offset)
        elif outcome == "torn" and len(data) > 1:
            os.pwrite(fd, data[:rng.randrange(1, len(data))], w.offset)
        elif outcome.startswith("prefix:"):        # forced only: a torn write of exactly N bytes
            os.pwrite(fd, data[:int(outcome[7:])], w.offset)
        elif outcome == "sectors":
            start = w.offset
            while start < w.offset + len(data):
                end = min((start // SECTOR + 1) * SECTOR, w.offset + len(data))
                if rng.random() < 0.5:
                    os.pwrite(fd, data[start - w.offset:end - w.offset], start)
                start = end

    @staticmethod
    def _expected(f: _File) -> tuple[int, int, bytes | None]:
        """The span of a file's held writes and its bytes if every write landed."""
        if not f.writes or not f.readable:
            return 0, 0, None
        lo = min(w.offset for w in f.writes)
        hi = max(w.offset + len(w.data) for w in f.writes)
        span = bytearray(hi - lo)
        real = os.pread(f.fd, hi - lo, lo)
        span[:len(real)] = real
        for w in f.writes:
            span[w.offset - lo:w.offset - lo + len(w.data)] = w.data
        return lo, hi, bytes(span)

    def _alive(self) -> None:
        if self.dead:
            raise SimulatedCrash("the simulated machine has lost power")

    def _sync_point(self, where: str) -> None:
        self._alive()
        self.syncs += 1
        if self.syncs == self.crash_at_sync:
            self.crash(self.rng, where)
            raise SimulatedCrash(f"power lost inside {where} #{self.syncs}")

    # -- the Vfs -------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self._alive()
        return super().open(path, flags, mode)

    def close(self, fd: int) -> None:
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
            self.crash(self.rng, "write")
            raise SimulatedCrash(f"power lost at write #{self.writes}")
        key = _file_key(fd)
        if key not in self._files:
            self._files[key] = _File.of(fd)
        self._files[key].writes.append(_Held(offset, bytes(data)))

    def pwritev(self, fd: int, buffers: list, offset: int) -> None:
        for buf in buffers:          # one held write per buffer, as the base class does
            self.pwrite(fd, buf, offset)
            offset += len(buf)

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
        self._sync_point("fdatasync")
        self._apply(fd)
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self._sync_point("fsync")
        self._apply(fd)
        _real_fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self._sync_point("fsync_dir")
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
    disk does.  ``calls`` counts every call of every operation since creation.
    """

    OPS = ("pwrite", "pwritev", "fdatasync", "fsync", "fsync_dir", "open", "rename", "mkdir")

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failures = 0
        self.disarm()

    def arm(self, op: str, nth: int = 1, err: int = errno.ENOSPC, *, persist: bool = False,
            partial: bool = False) -> None:
        if op not in self.OPS:
            raise ValueError(f"cannot inject a fault into {op!r}")
        self.op, self.nth, self.err = op, nth, err
        self.persist, self.partial = persist, partial
        self._seen = 0

    def disarm(self) -> None:
        self.op, self.nth, self.err = None, 0, 0
        self.persist = self.partial = False
        self._seen = 0

    def _fails(self, op: str) -> bool:
        self.calls[op] += 1
        if op != self.op:
            return False
        self._seen += 1
        if self._seen == self.nth or (self.persist and self._seen > self.nth):
            self.failures += 1
            return True
        return False

    def _raise(self, op: str) -> NoReturn:
        raise OSError(self.err, f"{os.strerror(self.err)} (injected into {op})")

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if self._fails("open"):
            self._raise("open")
        return super().open(path, flags, mode)

    def pwrite(self, fd: int, data, offset: int) -> None:
        if self._fails("pwrite"):
            if self.partial and len(data) > 1:
                super().pwrite(fd, memoryview(data)[:len(data) // 2], offset)
            self._raise("pwrite")
        super().pwrite(fd, data, offset)

    def pwritev(self, fd: int, buffers: list, offset: int) -> None:
        if self._fails("pwritev"):
            if self.partial:
                joined = b"".join(bytes(b) for b in buffers)
                Vfs.pwrite(self, fd, joined[:len(joined) // 2], offset)
            self._raise("pwritev")
        for buf in buffers:          # the base pwrite, so a pwritev is not counted as pwrites
            Vfs.pwrite(self, fd, buf, offset)
            offset += len(buf)

    def fdatasync(self, fd: int) -> None:
        if self._fails("fdatasync"):
            self._raise("fdatasync")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self._fails("fsync"):
            self._raise("fsync")
        _real_fsync(fd)

    def fsync_dir(self, path: str) -> None:
        if self._fails("fsync_dir"):
            self._raise("fsync_dir")
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        if self._fails("rename"):
            self._raise("rename")
        super().rename(src, dst)

    def mkdir(self, path: str) -> None:
        if self._fails("mkdir"):
            self._raise("mkdir")
        super().mkdir(path)


def fates(pages: str = "keep", record: str = "keep", other: str = "keep"
          ) -> Callable[[int, bytes], str]:
    """A ``force`` for CrashVfs that picks each held write's fate by what it is:
    a commit record, data (pages or page-table nodes, anything not all zeros),
    or other writes (zero blocks), so tests need not know how the pager splits
    a commit into writes."""
    def choose(offset: int, data: bytes) -> str:
        if len(data) >= 128 and data[-128:-120] == REC_MAGIC:
            return record
        return pages if any(data) else other
    return choose


def abandon(store) -> None:
    """Drop a store whose machine crashed: close its descriptors (releasing the
    LOCK) without writing anything.  CrashVfs.close works even when dead, and
    _release may run again from __del__ harmlessly."""
    store._release()
