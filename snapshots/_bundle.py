"""Export and import bundles: one version of an image as one file, for backup
and for moving an image to another machine.

FORMAT.  A bundle file is one zstd frame (level 3, with zstd's own content
checksum) followed by an uncompressed trailer::

    frame content (little-endian):
      header   magic "IMAGOBDL" 8B, format version u32, page size u32,
               source commit u64, exported at (ns since the epoch) u64,
               page count u64, meta length u32, then the meta bytes: the
               commit's caller metadata (the object memory's meta words,
               then the note; image/_image.py, meta_block_of / commit_note)
      pages    page count x (page number u64, page-size bytes), the numbers
               strictly ascending
    trailer (48 bytes, after the frame):
      magic "IMAGOEND" 8B, frame length u64, BLAKE2b-256 digest

The digest (personalised "imago-bundle", no key) covers the frame content and
the frame length.  It is a strong checksum, not a signature: anyone can make
a bundle, and the pages of a bundle are trusted only as far as its maker is.
The trailer sits outside the frame so that a file cut short anywhere, even in
the frame's last checksum bytes, is refused before any page is read: the
frame length it names must end exactly where the trailer begins.

WHAT A BUNDLE HOLDS.  Every logical page the version's page table has an
entry for (PageStore.page_numbers), zero-filled or not; zstd makes zero pages
nearly free.  A page with no entry reads as zeros in the source and in the
import alike.  The commit's time, the image's other versions, its snapshot
log and its pager identity (image id and checksum salt) are not carried: an
import is a new image whose history starts with this version, labelled as a
snapshot "imported (commit N of the exported image)".  The changes journal
in the heap keeps the exporter's commit numbers (the head holds exactly the
bundle's pages); the imported version is its line's origin, so changes,
history and replay read those entries as made by it (snapshots/_versions.py,
A LINE'S ORIGIN).

INVARIANTS (each checked where named)
 1. A bundle appears whole or not at all under its final name: it is written
    as ``OUT.tmp-PID``, fsynced, renamed over OUT, and the directory fsynced;
    any failure removes the temp file (_write_atomically).  Only a regular
    file is ever replaced: an existing OUT that is a directory, a FIFO, a
    device or a socket is refused before anything is written (a rename
    would destroy the node); a symbolic link to a regular file has its
    target replaced, a dangling one is refused (_export_target).
 2. Export and import run in constant memory whatever the image size: pages
    stream through zstd in batches of BATCH_BYTES; import commits a batch at
    a time.  (The page-number walk keeps only the pages the commits since
    the version's checkpoint wrote.)
 3. An import's head holds exactly the bundle's pages and its meta:
    page numbers are strictly ascending and below the pager's limit, the
    count matches the header (_BundleReader.pages).
 4. An import trusts nothing until the digest matched: the image is built as
    ``IMAGE.importing-PID`` and renamed to IMAGE only after the trailer
    verified and the final commit (the one carrying the meta) returned; any
    failure removes the temporary image.  An existing IMAGE is refused.
 5. Damage (a cut, a flipped byte, a wrong magic or version, a digest
    mismatch, bytes appended) is a BundleError (a ValueError) of one line.

STATES OF AN IMPORT: CHECKED (trailer read, frame length matches the file)
--> READING (pages committed in batches into the temporary image) -->
VERIFIED (digest matched; the final commit carries the meta) --> PLACED
(renamed to IMAGE, directory fsynced).  A failure before PLACED leaves
nothing under IMAGE.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

import image
from image import meta_block_of
from pager import PageStore, PageView
from pager._format import MAX_META, MAX_PAGE_NO, PAGE_SIZES
from pager._vfs import Vfs
from snapshots._log import SnapshotLog

MAGIC = b"IMAGOBDL"
END_MAGIC = b"IMAGOEND"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQQI")    # magic, version, page size, commit, time, pages, meta
TRAILER = struct.Struct("<8sQ32s")     # magic, frame length, digest
PAGE_NO = struct.Struct("<Q")
DIGEST_PERSON = b"imago-bundle"
# zstd level 3: its default, about 300 MB/s here, within a few percent of the
# ratio of levels that run at half the speed; an export is a backup, often.
ZSTD_LEVEL = 3
# 8 MiB: large enough that per-call overheads vanish, small enough that an
# import's uncommitted pages stay well under any machine's memory and a
# commit fits in one 64 MiB segment at any page size.
BATCH_BYTES = 8 << 20
READ_SIZE = 1 << 20


class BundleError(ValueError):
    """A bundle is damaged, truncated, or not an imago bundle."""


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle's header says (and, from verify(), that the rest holds)."""
    path: str
    version: int
    page_size: int
    commit: int              # the commit it was exported from, in the source image
    exported: float          # seconds since the epoch
    page_count: int
    meta: bytes


def _digest():
    return hashlib.blake2b(digest_size=32, person=DIGEST_PERSON)


# -- export ------------------------------------------------------------------------


def export(source: str | os.PathLike | image.Image, commit: int | None,
           out_path: str | os.PathLike) -> BundleInfo:
    """Writes one bundle of a version of an image: `source` is an image's path
    (opened read-only, so a running session may go on) or an open Image;
    commit None means the current version (the head of a path, an open
    image's base).  Returns what the bundle's header says."""
    out_path = os.fspath(out_path)
    _export_target(out_path)   # refuse a bad target before reading the image; checked again at the rename
    if isinstance(source, image.Image):
        store = source.store
        if not isinstance(store, PageStore):
            raise ValueError("export from the image itself, not from a view of one of its "  # noqa: TRY004 - a value the CLI reports
                             "versions")
        return _export_store(store, store.base if commit is None else commit, out_path)
    path = os.fspath(source)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no image at {path}")
    with PageStore.open(path, readonly=True) as store:
        return _export_store(store, store.head if commit is None else commit, out_path)


def _export_store(store: PageStore, commit: int, out_path: str) -> BundleInfo:
    view = _open_view(store, commit)
    with view:
        if not meta_block_of(view.meta):
            raise ValueError(f"commit {commit} of {store.path} holds no object memory "
                             "(it was made before the image was formatted): nothing to export")
        count = sum(1 for _ in store.page_numbers(view))
        info = BundleInfo(out_path, FORMAT_VERSION, store.page_size, commit, time.time(), count,
                          view.meta)
        _write_atomically(out_path, lambda f: _write_bundle(f, store, view, info))
    return info


def _open_view(store: PageStore, commit: int) -> PageView:
    if not isinstance(commit, int) or isinstance(commit, bool) or commit < 0:
        raise ValueError(f"a version is a commit number, not {commit!r}")
    try:
        return store.view(commit)
    except KeyError as exc:
        raise ValueError(f"{store.path}: {exc.args[0]}") from None


def _write_bundle(f: BinaryIO, store: PageStore, view: PageView, info: BundleInfo) -> None:
    """The frame, then the trailer (see FORMAT)."""
    digest = _digest()
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    with compressor.stream_writer(f, closefd=False) as frame:
        def emit(chunk: bytes | bytearray) -> None:
            digest.update(chunk)
            frame.write(chunk)

        emit(HEADER.pack(MAGIC, FORMAT_VERSION, info.page_size, info.commit,
                         int(info.exported * 1e9), info.page_count, len(info.meta)) + info.meta)
        batch, written = bytearray(), 0
        for page_no in store.page_numbers(view):
            batch += PAGE_NO.pack(page_no)
            batch += view.read(page_no)
            written += 1
            if len(batch) >= BATCH_BYTES:
                emit(batch)
                batch = bytearray()
        emit(batch)
    if written != info.page_count:   # the version cannot change under a view; a bug if it did
        raise RuntimeError(f"counted {info.page_count} pages, then wrote {written}")
    frame_length = f.tell()
    digest.update(PAGE_NO.pack(frame_length))
    f.write(TRAILER.pack(END_MAGIC, frame_length, digest.digest()))


def _export_target(out_path: str) -> str:
    """The path a bundle may be renamed to for out_path (invariant 1)."""
    if os.path.isdir(out_path):
        raise IsADirectoryError(f"{out_path} is a directory, not a bundle file")
    if not os.path.lexists(out_path):
        return out_path
    try:
        mode = os.stat(out_path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{out_path} is a symbolic link to nothing; "
                                "export will not write through it") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{out_path} exists and is not a regular file (a FIFO, a device or a "
                         "socket): export replaces only a regular file")
    return os.path.realpath(out_path)


def _write_atomically(out_path: str, write) -> None:
    """write(f) fills a temp file that becomes out_path whole (invariant 1)."""
    out_path = _export_target(out_path)
    temp = f"{out_path}.tmp-{os.getpid()}"
    try:
        with open(temp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, out_path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    Vfs().fsync_dir(os.path.dirname(os.path.abspath(out_path)))


# -- reading a bundle ----------------------------------------------------------------


class _Bounded:
    """The first `limit` bytes of a file, as zstd's reader reads them."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


class _BundleReader:
    """Reads and checks one bundle, front to back, hashing what it reads.
    Every check failure is a BundleError naming the bundle (invariant 5)."""

    def __init__(self, f: BinaryIO, path: str) -> None:
        self.path = path
        self.digest = _digest()
        size = os.fstat(f.fileno()).st_size
        self.frame_length, self.expected = self._trailer(f, size)
        f.seek(0)
        try:
            self.frame = zstandard.ZstdDecompressor().stream_reader(
                _Bounded(f, self.frame_length), read_size=READ_SIZE, read_across_frames=False)
        except zstandard.ZstdError as exc:
            raise self.error(f"its compressed data is damaged ({exc})") from None
        self.info = self._header()

    def error(self, why: str) -> BundleError:
        return BundleError(f"{self.path} is not a whole imago bundle: {why}")

    def _trailer(self, f: BinaryIO, size: int) -> tuple[int, bytes]:
        if size < TRAILER.size:
            raise self.error(f"it is {size} bytes long, shorter than its trailer")
        f.seek(size - TRAILER.size)
        magic, frame_length, expected = TRAILER.unpack(f.read(TRAILER.size))
        if magic != END_MAGIC:
            f.seek(0)
            if f.read(4) != zstandard.FRAME_HEADER:
                raise self.error("it is not zstd data (an imago bundle is)")
            raise self.error("it does not end in a bundle trailer (cut short, or bytes appended)")
        if frame_length != size - TRAILER.size:
            raise self.error(f"its trailer names {frame_length} bytes of data, the file holds "
                             f"{size - TRAILER.size} (cut short, or bytes appended)")
        return frame_length, expected

    def read(self, n: int) -> bytes:
        """Exactly n bytes of frame content, hashed."""
        parts, left = [], n
        try:
            while left:
                chunk = self.frame.read(left)
                if not chunk:
                    raise self.error("its data ends early")
                parts.append(chunk)
                left -= len(chunk)
        except zstandard.ZstdError as exc:
            raise self.error(f"its compressed data is damaged ({exc})") from None
        data = b"".join(parts) if len(parts) != 1 else parts[0]
        self.digest.update(data)
        return data

    def _header(self) -> BundleInfo:
        magic, version, page_size, commit, exported_ns, count, meta_len = \
            HEADER.unpack(self.read(HEADER.size))
        if magic != MAGIC:
            raise self.error("wrong magic (not an imago bundle)")
        if version != FORMAT_VERSION:
            raise self.error(f"format version {version}; this imago reads version "
                             f"{FORMAT_VERSION}")
        if page_size not in PAGE_SIZES:
            raise self.error(f"page size {page_size} is not one an image can have")
        if meta_len > MAX_META or count > MAX_PAGE_NO:
            raise self.error("its header is damaged (impossible sizes)")
        meta = self.read(meta_len)
        if not meta_block_of(meta):
            raise self.error("its version holds no object memory")
        return BundleInfo(self.path, version, page_size, commit, exported_ns / 1e9, count, meta)

    def pages(self) -> Iterator[tuple[int, bytes]]:
        """(page number, bytes) in bundle order, checked ascending (invariant 3)."""
        last, page_size = -1, self.info.page_size
        for _ in range(self.info.page_count):
            entry = self.read(PAGE_NO.size + page_size)
            page_no = PAGE_NO.unpack_from(entry)[0]
            if not last < page_no < MAX_PAGE_NO:
                raise self.error(f"page {page_no} is out of order or out of range")
            last = page_no
            yield page_no, entry[PAGE_NO.size:]

    def finish(self) -> None:
        """The frame ends here and the digest matches (call after pages())."""
        try:
            extra = self.frame.read(1)
        except zstandard.ZstdError as exc:
            raise self.error(f"its compressed data is damaged ({exc})") from None
        if extra:
            raise self.error("it holds data past its last page")
        self.digest.update(PAGE_NO.pack(self.frame_length))
        if self.digest.digest() != self.expected:
            raise self.error("its digest does not match its contents")


def _open_bundle(path: str) -> BinaryIO:
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a bundle file")
    return open(path, "rb")


def verify(bundle_path: str | os.PathLike) -> BundleInfo:
    """Reads a whole bundle and checks everything (every invariant a bundle
    itself carries); BundleError if it does not hold.  Imports nothing."""
    bundle_path = os.fspath(bundle_path)
    with _open_bundle(bundle_path) as f:
        reader = _BundleReader(f, bundle_path)
        for _ in reader.pages():
            pass
        reader.finish()
    return reader.info


# -- import ---------------------------------------------------------------------------


def import_bundle(bundle_path: str | os.PathLike, new_image_path: str | os.PathLike) -> BundleInfo:
    """Makes a new image at new_image_path whose head holds exactly the
    bundle's pages and meta.  Refuses an existing target and a damaged bundle,
    leaving nothing behind (invariant 4)."""
    bundle_path, target = os.fspath(bundle_path), os.fspath(new_image_path)
    if os.path.lexists(target):
        raise FileExistsError(f"{target} already exists; import makes a new image")
    temp = f"{target}.importing-{os.getpid()}"
    with _open_bundle(bundle_path) as f:
        reader = _BundleReader(f, bundle_path)
        try:
            _build(reader, temp)
            _place(temp, target)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    return reader.info


def _build(reader: _BundleReader, temp: str) -> None:
    """READING then VERIFIED: the pages in batches, the meta with the last."""
    info = reader.info
    per_batch = max(1, BATCH_BYTES // info.page_size)
    with PageStore.create(temp, page_size=info.page_size) as store:
        pending = 0
        for page_no, data in reader.pages():
            store.write(page_no, data)
            pending += 1
            if pending == per_batch:
                store.commit(b"import: pages")
                pending = 0
        reader.finish()
        head = store.commit(info.meta)
    SnapshotLog(temp).take(head, "label", f"imported (commit {info.commit} of the exported image)")


def _place(temp: str, target: str) -> None:
    """PLACED: the whole image appears under its name (a directory rename
    would replace an empty directory, hence the second look)."""
    if os.path.lexists(target):
        raise FileExistsError(f"{target} appeared while importing; import makes a new image")
    os.rename(temp, target)
    Vfs().fsync_dir(os.path.dirname(os.path.abspath(target)))
