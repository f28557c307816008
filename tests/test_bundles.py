"""Export and import bundles (snapshots/_bundle.py): a version round-trips
exactly (every page byte for byte, check(), a deep comparison of the root and
the Scheme globals), an older snapshot exports as well as the head, a damaged
bundle of every kind is refused leaving nothing behind, a killed export
leaves no half bundle, and the pager's page enumeration the bundle rests on."""
from __future__ import annotations

import glob
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import zstandard
from faults import flip_slot_holding

import image
import pager._store
import snapshots  # noqa: F401  (provides img.snapshots / img.snapshot)
import vm
from pager import CorruptImage, PageStore
from snapshots import _bundle
from snapshots._bundle import BundleError, export, import_bundle, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 5_2026

SCHEME_DATA = """
(define numbers '(1 4.5 -7 100000000000000000000))
(define text "some text")
(define ch #\\x)
(define sym 'a-symbol)
(define nested (list 1 (vector 2 "three" 'four) (list 5 (list 6))))
(define-record-type point (make-point x y) point? (x point-x) (y point-y))
(define pt (make-point 3 4))
(define table (make-hash-table))
(hash-table-set! table 'k "v")
(define (double n) (* 2 n))
"""
SCHEME_SHOW = """
(let ((port (open-output-string)))
  (write (list numbers text ch sym nested (point-x pt) (point-y pt)
               (hash-table-ref/default table 'k #f) (double 21))
         port)
  (get-output-string port))
"""


# -- helpers -------------------------------------------------------------------------


def imago(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "browser", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def dump(value, seen: dict | None = None):
    """A plain, comparable picture of a value and everything it reaches
    (cycles become back references by visiting order)."""
    seen = {} if seen is None else seen
    addr = getattr(value, "address", None) if isinstance(value, image.Handle) else None
    if addr is not None:
        if addr in seen:
            return ("ref", seen[addr])
        seen[addr] = len(seen)
    if isinstance(value, image.Blob):
        return ("blob", value.hash, value.read())
    if isinstance(value, image.Vector):
        return ("vector", [dump(v, seen) for v in value])
    if isinstance(value, image.Table):
        return ("table", sorted((repr(dump(k, seen)), dump(v, seen)) for k, v in value.items()))
    if isinstance(value, image.Object):
        return ("object", value.class_index, [dump(value[i], seen) for i in range(len(value))])
    if isinstance(value, tuple):
        return ("tuple", [dump(v, seen) for v in value])
    if isinstance(value, vm._types.Pair):
        return ("pair", dump(value.car, seen), dump(value.cdr, seen))
    if isinstance(value, vm._types.MString):
        return ("string", value.s)
    if isinstance(value, vm._types.Record):
        return ("record", type(value).__name__,
                [dump(getattr(value, f), seen) for f in value.record_type.fields])
    return (type(value).__name__, repr(value))


def image_picture(img: image.Image) -> tuple:
    return dump(img.root), dump(img.system)


def scheme_picture(img: image.Image) -> str:
    return vm._interp.to_python(vm.Interpreter(img).eval(SCHEME_SHOW))


def page_picture(path: str, commit: int | None = None) -> dict[int, bytes]:
    with PageStore.open(path, readonly=True) as store:
        with store.view(store.head if commit is None else commit) as view:
            return {p: view.read(p) for p in store.page_numbers(view)}


def leftovers(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if ".importing-" in n or ".tmp-" in n
            or ".creating-" in n]


@pytest.fixture
def source(tmp_path):
    """An image with Python and Scheme data, a labelled older snapshot, then
    changes after it; returns (path, id of the older snapshot)."""
    path = str(tmp_path / "source.image")
    rnd = random.Random(SEED)
    with image.open(path) as img:
        vm.Interpreter(img).eval(SCHEME_DATA)
        img.root["mails"] = [{"subject": f"mail {i}", "read": i % 3 == 0, "size": i * 17}
                             for i in range(300)]
        img.root["fixed"] = (1, "two", 3.0, None, True, b"bytes")
        img.root["attachment"] = img.blob(rnd.randbytes(40_000))
        img.root["cycle"] = cyc = []
        cyc.append(cyc)
        old = img.snapshot("before the changes").id
        img.root["mails"][5]["read"] = True
        del img.root["fixed"]
        img.root["big"] = img.blob(bytes(200_000))
        vm.Interpreter(img).eval("(define text \"changed\")")
        img.gc()
    return path, old


# -- round trips ------------------------------------------------------------------------


class TestRoundTrip:
    """export then import gives an image equal to the exported version."""

    def test_the_head_round_trips_exactly(self, source, tmp_path):
        """Every page byte for byte, the heap verifier, the root and system tables, Scheme values."""
        path, _ = source
        out, copy = str(tmp_path / "head.imago"), str(tmp_path / "copy.image")
        info = export(path, None, out)
        assert import_bundle(out, copy).page_count == info.page_count
        assert page_picture(copy) == page_picture(path)
        with image.open(path, readonly=True) as a, image.open(copy) as b:
            b.check()
            assert image_picture(b) == image_picture(a)
            assert scheme_picture(b) == scheme_picture(a)
            assert '"changed"' in scheme_picture(b)
        assert leftovers(str(tmp_path)) == []

    def test_an_older_snapshot_round_trips(self, source, tmp_path):
        """export IMAGE ID: the import holds that snapshot's version, not the head's."""
        path, old = source
        out, copy = str(tmp_path / "old.imago"), str(tmp_path / "copy.image")
        assert export(path, old, out).commit == old
        import_bundle(out, copy)
        assert page_picture(copy) == page_picture(path, old)
        with image.open(path, readonly=True) as live, image.open(copy) as b:
            a = live.at(old)
            b.check()
            assert image_picture(b) == image_picture(a)
            assert scheme_picture(b) == scheme_picture(a)
            assert '"some text"' in scheme_picture(b)
            assert "fixed" in b.root and "big" not in b.root
            a.close()

    def test_an_open_image_exports_its_version(self, source, tmp_path):
        """export(img, None, out) from a session: the version the image is at."""
        path, _ = source
        out, copy = str(tmp_path / "live.imago"), str(tmp_path / "copy.image")
        with image.open(path) as img:
            img.root["during the session"] = 1
            export(img, None, out)
            expected = image_picture(img)
        import_bundle(out, copy)
        with image.open(copy, readonly=True) as b:
            assert image_picture(b) == expected

    def test_import_commits_in_batches_and_labels_the_version(self, source, tmp_path, monkeypatch):
        """A bundle larger than a batch is imported in several commits; the head is a snapshot."""
        monkeypatch.setattr(_bundle, "BATCH_BYTES", 16 * 4096)
        path, _ = source
        out, copy = str(tmp_path / "b.imago"), str(tmp_path / "copy.image")
        export(path, None, out)
        import_bundle(out, copy)
        assert page_picture(copy) == page_picture(path)
        pages = verify(out).page_count
        with PageStore.open(copy, readonly=True) as store:
            assert store.head == pages // 16 + 1 > 1     # full batches, then the rest with the meta
            store.check()
        with image.open(copy, readonly=True) as b:
            assert [s.kind for s in b.snapshots()] == ["label"]
            assert b.snapshots()[0].id == b.head

    def test_zero_pages_and_sparse_pages_travel(self, tmp_path):
        """A page written as zeros keeps its entry; pages far apart stay where they were."""
        path = str(tmp_path / "z.image")
        with image.open(path) as img:
            img.root["x"] = 1
        with PageStore.open(path) as store:
            meta = store.head_meta
            store.write(1 << 20, bytes(store.page_size))
            store.write(3 << 30, b"far away")
            store.commit(meta)
        out, copy = str(tmp_path / "z.imago"), str(tmp_path / "copy.image")
        export(path, None, out)
        import_bundle(out, copy)
        pages = page_picture(copy)
        assert pages == page_picture(path)
        assert pages[1 << 20] == bytes(4096) and pages[3 << 30].startswith(b"far away")

    def test_verify_reads_a_whole_bundle(self, source, tmp_path):
        """verify() checks a bundle without importing it and reports its header."""
        path, old = source
        out = str(tmp_path / "v.imago")
        info = export(path, old, out)
        checked = verify(out)
        assert (checked.commit, checked.page_count, checked.page_size, checked.meta) == \
            (old, info.page_count, 4096, info.meta)


# -- refusals ------------------------------------------------------------------------------


def _rewrite(bundle: str, change) -> None:
    """Decompress a bundle's frame, let change(bytearray) edit it, write it back
    with a fresh frame and a trailer whose digest matches the edited content
    (so that only the edit is wrong)."""
    with open(bundle, "rb") as f:
        raw = f.read()
    content = bytearray(zstandard.ZstdDecompressor().stream_reader(raw[:-_bundle.TRAILER.size])
                        .read())
    change(content)
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(content))
    digest = _bundle._digest()
    digest.update(content)
    digest.update(struct.pack("<Q", len(frame)))
    with open(bundle, "wb") as f:
        f.write(frame + _bundle.TRAILER.pack(_bundle.END_MAGIC, len(frame), digest.digest()))


def _flip(bundle: str, where: float) -> None:
    with open(bundle, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        at = min(int(size * where), size - 1)
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))


def _cut(bundle: str, keep: float) -> None:
    with open(bundle, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.truncate(size + keep if isinstance(keep, int) else int(size * keep))


def _set_header_field(index: int, value) -> callable:
    def change(content: bytearray) -> None:
        fields = list(_bundle.HEADER.unpack_from(content))
        fields[index] = value
        content[:_bundle.HEADER.size] = _bundle.HEADER.pack(*fields)
    return change


def _unhashed_page_change(bundle: str) -> None:
    """A page byte changed and the frame remade, the digest left as it was."""
    with open(bundle, "rb") as f:
        raw = f.read()
    trailer = raw[-_bundle.TRAILER.size:]
    content = bytearray(zstandard.ZstdDecompressor().stream_reader(raw[:-_bundle.TRAILER.size])
                        .read())
    content[-100] ^= 1
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(content))
    _, _, digest = _bundle.TRAILER.unpack(trailer)
    with open(bundle, "wb") as f:
        f.write(frame + _bundle.TRAILER.pack(_bundle.END_MAGIC, len(frame), digest))


DAMAGE = {
    "cut to half": lambda b: _cut(b, 0.5),
    "cut one byte short": lambda b: _cut(b, -1),
    "cut inside the trailer": lambda b: _cut(b, -20),
    "cut to the zstd checksum": lambda b: (_rewrite(b, lambda c: None), _cut_frame_tail(b)),
    "empty file": lambda b: _cut(b, 0.0),
    "flipped byte at the start": lambda b: _flip(b, 0.0),
    "flipped byte in the middle": lambda b: _flip(b, 0.5),
    "flipped byte in the digest": lambda b: _flip(b, 0.999999),
    "bytes appended": lambda b: _append(b, b"\0" * 7),
    "wrong magic": lambda b: _rewrite(b, _set_header_field(0, b"NOTABNDL")),
    "wrong version": lambda b: _rewrite(b, _set_header_field(1, 99)),
    "wrong page size": lambda b: _rewrite(b, _set_header_field(2, 3000)),
    "page count too high": lambda b: _rewrite(b, _set_header_field(5, 10**6)),
    "pages out of order": lambda b: _rewrite(b, _swap_first_pages),
    "hash mismatch": _unhashed_page_change,
    "not zstd at all": lambda b: _replace(b, b"hello, I am a text file\n" * 10),
}


def _append(bundle: str, data: bytes) -> None:
    with open(bundle, "ab") as f:
        f.write(data)


def _replace(bundle: str, data: bytes) -> None:
    with open(bundle, "wb") as f:
        f.write(data)


def _cut_frame_tail(bundle: str) -> None:
    """Drop the frame's last 4 bytes (zstd's checksum) but keep a consistent trailer."""
    with open(bundle, "rb") as f:
        raw = f.read()
    frame = raw[:-_bundle.TRAILER.size][:-4]
    _, _, digest = _bundle.TRAILER.unpack(raw[-_bundle.TRAILER.size:])
    with open(bundle, "wb") as f:
        f.write(frame + _bundle.TRAILER.pack(_bundle.END_MAGIC, len(frame), digest))


def _swap_first_pages(content: bytearray) -> None:
    meta_len = _bundle.HEADER.unpack_from(content)[6]
    first = _bundle.HEADER.size + meta_len
    entry = 8 + 4096
    a, b = content[first:first + entry], content[first + entry:first + 2 * entry]
    content[first:first + 2 * entry] = b + a


class TestDamagedBundles:
    """A damaged bundle is refused with one clear line, and nothing is left behind."""

    @pytest.mark.parametrize("damage", sorted(DAMAGE))
    def test_damage_is_refused(self, source, tmp_path, damage):
        """Each kind of damage: BundleError from import and verify; no image, no temp."""
        path, _ = source
        out, copy = str(tmp_path / "d.imago"), str(tmp_path / "copy.image")
        export(path, None, out)
        DAMAGE[damage](out)
        with pytest.raises(BundleError) as refused:
            import_bundle(out, copy)
        message = str(refused.value)
        assert "\n" not in message and out in message
        with pytest.raises(BundleError):
            verify(out)
        assert not os.path.exists(copy)
        assert leftovers(str(tmp_path)) == []

    def test_each_refusal_says_what_is_wrong(self, source, tmp_path):
        """The message names the fault: version, digest, cut short."""
        path, _ = source
        expected = {"wrong version": "format version 99", "hash mismatch": "digest",
                    "cut to half": "cut short", "wrong magic": "wrong magic",
                    "pages out of order": "out of order", "not zstd at all": "not zstd"}
        for damage, words in expected.items():
            out = str(tmp_path / f"{damage}.imago")
            export(path, None, out)
            DAMAGE[damage](out)
            with pytest.raises(BundleError, match=words):
                verify(out)


class TestRefusals:
    """What export and import refuse before writing anything."""

    def test_an_existing_target_is_refused(self, source, tmp_path):
        """import never writes into an existing path, even an empty directory."""
        path, _ = source
        out = str(tmp_path / "x.imago")
        export(path, None, out)
        os.mkdir(tmp_path / "taken.image")
        with pytest.raises(FileExistsError):
            import_bundle(out, str(tmp_path / "taken.image"))
        assert os.listdir(tmp_path / "taken.image") == []
        with pytest.raises(FileExistsError):
            import_bundle(out, path)

    def test_a_version_not_on_disk_is_refused(self, source, tmp_path):
        """An id past the head or negative is a ValueError naming it; no file appears."""
        path, _ = source
        out = str(tmp_path / "x.imago")
        for bad in (10**6, -1):
            with pytest.raises(ValueError):
                export(path, bad, out)
        assert not os.path.exists(out) and leftovers(str(tmp_path)) == []

    def test_a_version_without_object_memory_is_refused(self, source, tmp_path):
        """Commit 0 (the empty store) holds no object memory: nothing to export."""
        path, _ = source
        with pytest.raises(ValueError, match="no object memory"):
            export(path, 0, str(tmp_path / "x.imago"))

    def test_a_damaged_image_does_not_export(self, source, tmp_path):
        """A page failing its checksum stops the export; no bundle appears."""
        path, _ = source
        pages = page_picture(path)
        victim = pages[max(pages)]
        flip_slot_holding(path, victim, 100, 0xFF)
        out = str(tmp_path / "x.imago")
        with pytest.raises(CorruptImage):
            export(path, None, out)
        assert not os.path.exists(out) and leftovers(str(tmp_path)) == []


def _contents(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()




# -- atomic export ---------------------------------------------------------------------------


class TestAtomicExport:
    """A bundle appears whole or not at all under its final name."""

    def test_a_failure_midway_leaves_no_bundle(self, source, tmp_path, monkeypatch):
        """An error after some pages: no file under the name, the temp file removed."""
        path, _ = source
        monkeypatch.setattr(_bundle, "BATCH_BYTES", 4096)
        real_numbers = PageStore.page_numbers

        def failing_numbers(self, view):
            for i, page_no in enumerate(real_numbers(self, view)):
                if i == 5 and getattr(self, "counted", False):
                    raise OSError("simulated read failure")
                yield page_no
            self.counted = True   # the first pass counts the pages; fail in the second

        monkeypatch.setattr(PageStore, "page_numbers", failing_numbers)
        out = str(tmp_path / "x.imago")
        with pytest.raises(OSError, match="simulated"):
            export(path, None, out)
        assert not os.path.exists(out) and leftovers(str(tmp_path)) == []

    def test_a_killed_export_keeps_the_previous_bundle(self, source, tmp_path):
        """SIGKILL during an export: the bundle already under the name is intact."""
        path, old = source
        out = str(tmp_path / "x.imago")
        export(path, old, out)
        before = _contents(out)
        child = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {ROOT!r})
            from pager import PageStore
            from snapshots import _bundle
            _bundle.BATCH_BYTES = 4096
            real = PageStore.page_numbers
            def slow(self, view):
                for n in real(self, view):
                    time.sleep(0.05)
                    yield n
            PageStore.page_numbers = slow
            _bundle.export({path!r}, None, {out!r})
        """)
        proc = subprocess.Popen([sys.executable, "-c", child])
        try:
            deadline = time.monotonic() + 30
            while not glob.glob(out + ".tmp-*"):   # the export is under way
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert _contents(out) == before
        assert glob.glob(out + ".tmp-*")   # what the killed child left, under its own name
        verify(out)


# -- the page enumeration under it (pager/_store.py: PageStore.page_numbers) --------------------


class TestPageNumbers:
    """store.page_numbers(view) lists exactly the pages a version's page table holds."""

    def test_every_version_over_checkpoints_and_frees(self, tmp_path, monkeypatch):
        """Random writes and frees over many checkpoints: each version lists its pages."""
        monkeypatch.setattr(pager._store, "CHECKPOINT_RECORDS", 4)
        rnd = random.Random(SEED)
        held: set[int] = set()
        history = {}
        with PageStore.create(str(tmp_path / "p.image")) as store:
            for n in range(40):
                for _ in range(15):
                    page_no = rnd.choice([rnd.randrange(3000), rnd.randrange(1 << 36)])
                    store.write(page_no, bytes([n + 1]) * 8)
                    held.add(page_no)
                for page_no in rnd.sample(sorted(held), 4) if n % 3 == 2 else ():
                    store.free(page_no)
                    held.discard(page_no)
                history[store.commit(b"")] = sorted(held)
            for commit, expected in history.items():
                with store.view(commit) as view:
                    assert list(store.page_numbers(view)) == expected
                    assert view.check()["pages"] == len(expected)

    def test_a_view_of_another_store_is_refused(self, tmp_path):
        with PageStore.create(str(tmp_path / "a.image")) as a, \
                PageStore.create(str(tmp_path / "b.image")) as b:
            with b.view(0) as view, pytest.raises(ValueError):
                list(a.page_numbers(view))


# -- the commands ---------------------------------------------------------------------------------


class TestCommands:
    """imago export / import through the command line."""

    def test_export_then_import(self, source, tmp_path):
        """export IMAGE ID OUT, import OUT IMAGE, then check: all exit 0."""
        path, old = source
        out, copy = str(tmp_path / "c.imago"), str(tmp_path / "copy.image")
        done = imago("export", path, str(old), out)
        assert done.returncode == 0, done.stderr
        assert f"exported commit {old}" in done.stdout
        done = imago("import", out, copy)
        assert done.returncode == 0, done.stderr
        assert page_picture(copy) == page_picture(path, old)
        done = imago("export", path, str(tmp_path / "head.imago"))
        assert done.returncode == 0, done.stderr

    @pytest.mark.parametrize("args,words", [
        (("export", "{path}", "nine", "{out}"), "a snapshot id is a number"),
        (("export", "{path}", "999999", "{out}"), "not on disk"),
        (("export", "{tmp}/none.image", "{out}"), "no image at"),
        (("import", "{damaged}", "{tmp}/new.image"), "not a whole imago bundle"),
        (("import", "{tmp}/none.imago", "{tmp}/new.image"), "No such file"),
        (("import", "{good}", "{path}"), "already exists"),
    ])
    def test_errors_are_one_line(self, source, tmp_path, args, words):
        """Bad input: 'imago: error: ...' on one line, exit status 1, no traceback."""
        path, _ = source
        good, damaged = str(tmp_path / "good.imago"), str(tmp_path / "damaged.imago")
        export(path, None, good)
        export(path, None, damaged)
        _flip(damaged, 0.5)
        names = {"path": path, "out": str(tmp_path / "o.imago"), "tmp": str(tmp_path),
                 "good": good, "damaged": damaged}
        done = imago(*(a.format(**names) for a in args))
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("imago: error: ") and words in lines[0]
