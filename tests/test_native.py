"""The C core on its own: checksums, the radix page table, dirty pages, bounds."""
import os
import random

import pytest

from native import ffi, lib
from pager._native import Dirty, NativeStore, Tree, make_loc
from pager import CorruptImage
from pager._format import encode_segment_header


class TestHash:
    # Reference values of XXH64 (from the xxHash reference implementation).
    VECTORS = [
        (b"", 0, 0xEF46DB3751D8E999),
        (b"a", 0, 0xD24EC4F1A98C6E5B),
        (b"abc", 0, 0x44BC2CF5AD770999),
        (bytes(range(256)) * 3, 12345, 0x6ECAC135863F12B2),
        (b"x" * 31, 7, 0x3781CEA7CB1A961E),
        (b"hello world!" * 5, 2**63 + 5, 0x7F10C55CDE99258B),
    ]

    @pytest.mark.parametrize("data,seed,expected", VECTORS)
    def test_xxh64_reference_vectors(self, data, seed, expected):
        """ic_hash is XXH64, bit for bit."""
        assert lib.ic_hash(data, len(data), seed) == expected


@pytest.fixture
def native():
    return NativeStore(1024, 99, b"i" * 16)


class TestTree:
    def test_empty_tree_reads_absent(self, native):
        """An empty page table maps every page to nothing."""
        tree = Tree(native)
        assert tree.entry(0) == (0, 0, 0)
        assert tree.entry(10**9) == (0, 0, 0)
        assert tree.depth == 0

    def test_apply_grows_and_maps(self, native):
        """Applying entries grows the tree and maps exactly those pages."""
        tree = Tree(native)
        rng = random.Random(1)
        pages = sorted(rng.sample(range(1 << 30), 500))
        pairs = b"".join(p.to_bytes(8, "little") + (p ^ 7).to_bytes(8, "little") for p in pages)
        tree.apply(pairs, make_loc(3, 1), commit=42)
        for i, p in enumerate(pages):
            assert tree.entry(p) == (make_loc(3, 1 + i), p ^ 7, 42)
        assert tree.entry(pages[0] + 1) == (0, 0, 0) or pages[1] == pages[0] + 1
        assert tree.usage() == {3: 500}

    def test_restore_undoes_apply(self, native):
        """restore() puts back the old entries and the usage accounting."""
        tree = Tree(native)
        first = (5).to_bytes(8, "little") + (1).to_bytes(8, "little")
        tree.apply(first, make_loc(1, 1), commit=1)
        second = (5).to_bytes(8, "little") + (2).to_bytes(8, "little")
        olds = tree.apply(second, make_loc(2, 9), commit=2, keep_olds=True)
        assert tree.entry(5)[0] == make_loc(2, 9)
        tree.restore(second, 16, olds)
        assert tree.entry(5) == (make_loc(1, 1), 1, 1)
        assert tree.usage() == {1: 1}

    def test_page_number_limit(self, native):
        """Page numbers at or past 2^40 are refused with ValueError."""
        tree = Tree(native)
        pairs = (1 << 40).to_bytes(8, "little") + bytes(8)
        with pytest.raises(ValueError, match="past the largest"):
            tree.apply(pairs, make_loc(1, 1), commit=1)

    def test_missing_segment_is_corrupt(self, native):
        """Reading a page whose segment is not mapped raises, never crashes."""
        tree = Tree(native)
        tree.apply((0).to_bytes(8, "little") + bytes(8), make_loc(7, 1), commit=3)
        ptr = lib.ic_page_read(tree.ptr, ffi.NULL, 0)
        assert ptr == ffi.NULL
        assert b"missing" in ffi.string(lib.ic_errmsg(native.ptr))

    def test_location_outside_segment(self, native, tmp_path):
        """A location past a mapped segment's end is refused as corrupt."""
        path = tmp_path / "seg"
        path.write_bytes(bytes(4 * 1024))
        fd = os.open(path, os.O_RDONLY)
        native.map(1, fd, 4 * 1024)
        os.close(fd)
        tree = Tree(native)
        tree.apply((0).to_bytes(8, "little") + bytes(8), make_loc(1, 4), commit=1)
        ptr = lib.ic_page_read(tree.ptr, ffi.NULL, 0)
        assert ptr == ffi.NULL
        assert b"outside the segment" in ffi.string(lib.ic_errmsg(native.ptr))
        tree.apply((0).to_bytes(8, "little") + bytes(8), make_loc(1, 0), commit=1)
        assert lib.ic_page_read(tree.ptr, ffi.NULL, 0) == ffi.NULL

    def test_node_checksum_failure(self, native, tmp_path):
        """A root node whose bytes fail their checksum raises CorruptImage naming the node."""
        path = tmp_path / "seg"
        header = encode_segment_header(1024, 8 * 1024, 2, b"i" * 16, 99, 0)
        path.write_bytes(header + bytes(8 * 1024 - len(header)))
        fd = os.open(path, os.O_RDONLY)
        native.map(2, fd, 8 * 1024)
        os.close(fd)
        tree = Tree(native, root_loc=make_loc(2, 3), root_sum=12345, depth=1)
        with pytest.raises(CorruptImage, match="page-table node at seg-000002 slot 3"):
            tree.entry(0)


class TestDirty:
    def test_dirty_table_grows(self, native):
        """Thousands of dirty pages keep their own bytes and gather in page order."""
        tree, dirty = Tree(native), Dirty(1024)
        rng = random.Random(3)
        pages = rng.sample(range(100000), 3000)
        for p in pages:
            assert lib.ic_write(tree.ptr, dirty.ptr, p * 1024, p.to_bytes(4, "little"), 4) == 0
        assert len(dirty) == 3000
        n = len(dirty)
        pairs, out, freed = bytearray(16 * n), bytearray(1024 * n), bytearray(8 * n)
        nw, nf = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        assert lib.ic_gather(tree.ptr, dirty.ptr, ffi.from_buffer(pairs), ffi.from_buffer(out),
                             nw, ffi.from_buffer(freed), nf) == 0
        assert nw[0] == 3000 and nf[0] == 0
        got = [int.from_bytes(pairs[16 * i:16 * i + 8], "little") for i in range(n)]
        assert got == sorted(pages)
        for i, p in enumerate(got):
            assert out[1024 * i:1024 * i + 4] == p.to_bytes(4, "little")
            assert int.from_bytes(pairs[16 * i + 8:16 * i + 16], "little") == \
                lib.ic_page_sum(native.ptr, p, ffi.from_buffer(out[1024 * i:1024 * (i + 1)]))
        dirty.clear()
        assert len(dirty) == 0


class TestPageReader:
    def test_reader_unbound_falls_back(self):
        """An unbound PageReader sends every call to its fallback, with the arguments."""
        from native import PageReader
        calls = []

        def fallback(kind, *args):
            calls.append((kind, args))
            return "fb"

        r = PageReader(1024, fallback)
        assert r.read(3) == "fb" and r.read_word(8) == "fb" and r.read_bytes(1, 2) == "fb"
        assert calls == [("read", (3,)), ("read_word", (8,)), ("read_bytes", (1, 2))]

    def test_reader_bad_arguments_fall_back(self, tmp_path):
        """Non-integer or negative arguments reach the fallback, which raises properly."""
        from pager import PageStore
        with PageStore.create(str(tmp_path / "r.image"), page_size=1024,
                              segment_size=64 << 10) as s:
            with pytest.raises(TypeError):
                s.read("x")
            with pytest.raises(ValueError):
                s.read(-5)
            with pytest.raises(ValueError):
                s.read_bytes(-1, 4)
            assert s.read_bytes(0, 0) == b""
