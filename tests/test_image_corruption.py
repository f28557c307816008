"""Damage to the object memory that the pager cannot see, one object at a time.

The pager's checksums stop flipped bytes before the C code meets them
(tests/test_pager_corruption.py).  Here every change is written through the
page store itself (PageStore.write_word, then commit), so its pages are signed
as any commit signs them (the meta words, which travel in each commit record,
through MetaStore) and the damage reaches native/objmem.c: a buggy
writer, or a forger, leaves an image like this.

Each test copies a small image built once per module (1 KiB pages, so that
vectors have interior nodes and tables have indexes; a few hundred mails, a
vector of numbers, a blob, free chunks left by a collection), damages one
object or meta word, reopens the image and asserts:

- img.check() raises image.CorruptObject whose .address names the damaged
  object (or, for a reference, the object holding it), and whose message says
  "object at 0x..." with that address (TestMessages, for every damage below);
- reading or changing the damaged object raises CorruptObject (or another
  clean error the operation itself explains), never crashes, hangs, or raises
  MemoryError or SystemError.

Cases that could take the interpreter down run in a child process.  Tests that
fail because of a real imago bug are marked xfail(strict=True) with the bug in
their reason, so the suite stays green and each bug stays visible.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest

import image
from image import CorruptObject
from pager import PageStore, PagerError

# -- the object memory's layout, as native/objmem.c's header comment states it -------

L = image.LAYOUT
CLASSES = {name: i for i, name in enumerate(L["classes"])}
FREE, STRING, BYTES, TUPLE = (CLASSES[n] for n in ("free", "string", "bytes", "tuple"))
VECTOR, LEAF, NODE = CLASSES["vector"], CLASSES["vector-leaf"], CLASSES["vector-node"]
TABLE, TSTORE, BLOB = CLASSES["table"], CLASSES["table-store"], CLASSES["blob"]
FMT_POINTERS, FMT_BYTES, FMT_WORDS = 0, 1, 2
SIZE_OVERFLOW = 0xFFFFFF
M64 = (1 << 64) - 1
EMPTY = 0
SPECIAL_TAG = 6
ABSENT = (5 << 3) | SPECIAL_TAG
M_BINS, N_BINS, N_EXACT = 32, 64, 32
V_HEIGHT, V_ROOT = 0, 1             # a vector's two slots; its length is its root's count
PAGE = 1024
LEAF_MAX = PAGE // 8 - 2            # items in a full leaf at this page size
NODE_MAX = (PAGE // 8 - 2) // 2     # entries in a full node
TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CHILD_SECONDS = 20                  # a child still running after this hangs


def mix64(x: int) -> int:
    """splitmix64's finaliser, as objmem.c's mix64."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def check_bits(addr: int) -> int:
    return mix64(addr) >> 52


def fx(n: int) -> int:
    """The fixnum word of n."""
    return ((n << 3) | 1) & M64


def unfx(w: int) -> int:
    v = w >> 3
    return v - (1 << 61) if v >= (1 << 60) else v


def make_header(cls: int, fmt: int, size: int, addr: int, *, bits: int | None = None) -> int:
    bits = check_bits(addr) if bits is None else bits
    return (cls << 44) | (bits << 32) | (min(size, SIZE_OVERFLOW) << 8) | fmt


def short_word(tag: int, data: bytes) -> int:
    return int.from_bytes(b"\0" + data + bytes(7 - len(data)), "little") | (len(data) << 3) | tag


def short_value(w: int) -> bytes:
    return (w >> 8).to_bytes(7, "little")[:(w >> 3) & 7]


@dataclass
class Obj:
    addr: int
    cls: int
    fmt: int
    size: int
    body: int
    words: int
    hd: int

    def slot(self, store, i: int) -> int:
        return store.read_word(self.body + 8 * i)

    def slot_addr(self, i: int) -> int:
        return self.body + 8 * i


def header(store, addr: int) -> Obj:
    """The object at addr, parsed as objmem.c's parse_header does (unchecked)."""
    hd = store.read_word(addr)
    cls, fmt, size, body = hd >> 44, hd & 0xF, (hd >> 8) & 0xFFFFFF, addr + 8
    if size == SIZE_OVERFLOW:
        size, body = store.read_word(addr + 8), addr + 16
    payload = (size + 7) // 8 if fmt == FMT_BYTES else size
    return Obj(addr, cls, fmt, size, body, max(2, (body - addr) // 8 + payload), hd)


def meta(store, index: int) -> int:
    return store.read_word(8 * index)


def set_meta(store, index: int, value: int) -> None:
    store.write_word(8 * index, value & M64)


def heap_objects(store):
    """Every object and free chunk from M_BASE to M_TOP."""
    addr, top = meta(store, L["M_BASE"]), meta(store, L["M_TOP"])
    while addr < top:
        o = header(store, addr)
        yield o
        addr += 8 * o.words


def table_entries(store, taddr: int):
    """(entry number, entry address, hash word, key word, value word) of a table's used entries."""
    t = header(store, taddr)
    s = header(store, t.slot(store, 2))
    index_size, used = unfx(s.slot(store, 1)), unfx(t.slot(store, 1))
    for e in range(used):
        at = s.slot_addr(2 + index_size + 3 * e)
        yield e, at, store.read_word(at), store.read_word(at + 8), store.read_word(at + 16)


def entry_of(store, taddr: int, key: bytes):
    """The entry of a short-string key."""
    for e, at, h, k, v in table_entries(store, taddr):
        if k & 7 == 3 and short_value(k) == key:
            return at, h, k, v
    raise LookupError(key)


def forge(store, cls: int, fmt: int, words: list[int]) -> int:
    """Appends a well-formed object at M_TOP (header with the right check bits,
    the accounting updated): how a forger adds objects that check() accepts."""
    top = meta(store, L["M_TOP"])
    payload = words or [0]
    store.write_word(top, make_header(cls, fmt, len(words), top))
    store.write_bytes(top + 8, struct.pack(f"<{len(payload)}Q", *payload))
    set_meta(store, L["M_TOP"], top + 8 * (1 + len(payload)))
    set_meta(store, L["M_OBJECTS"], meta(store, L["M_OBJECTS"]) + 1)
    set_meta(store, L["M_OBJ_WORDS"], meta(store, L["M_OBJ_WORDS"]) + 1 + len(payload))
    return top


# -- the image ----------------------------------------------------------------------------


def make_mails(n: int, seed: int = 1) -> list[dict]:
    """n mails: short and long strings, ints, bools, bytes, tuples, nested lists, floats."""
    rng = random.Random(seed)
    return [{"from": f"user{i}@example.org", "subject": "hello " * rng.randint(1, 5) + "ünï",
             "id": i, "read": bool(i & 1),
             "body": bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))),
             "tags": ("a", "bb", i), "thread": [[i, "x"], ["reply", i * 2]], "score": i / 3,
             "big": 10**30 + i}
            for i in range(n)]


def build_image(path: str, page_size: int = PAGE, mails: int = 300) -> None:
    """The template: a root with an inbox, numbers, a deeper vector, a blob and a small
    (unindexed) table; every tenth mail's subject replaced and collected, leaving free chunks."""
    store = PageStore.create(path, page_size=page_size, segment_size=1 << 20)
    img = image.Image(store)
    try:
        with img.transaction():
            img.root["inbox"] = make_mails(mails)
            img.root["numbers"] = list(range(2000))
            img.root["deep"] = list(range(8100))   # two levels of nodes at 1 KiB pages
            img.root["blob"] = img.blob(b"attachment " * 200)
            img.root["small"] = {"a": 1, "b": "two words", "c": [3]}
        with img.transaction():
            inbox = img.root["inbox"]
            for i in range(0, mails, 10):
                inbox[i]["subject"] = i
        img.gc()
        img.check()
    finally:
        img.close()


@dataclass
class Model:
    """Addresses in the template image."""
    base: int = 0
    top: int = 0
    inbox: int = 0
    inbox_node: int = 0
    inbox_leaves: list[int] = field(default_factory=list)
    mail: int = 0                 # inbox[3], an indexed table
    mail_store: int = 0
    from_str: int = 0             # inbox[3]["from"], a string object
    body: int = 0                 # inbox[3]["body"], a bytes object
    tags: int = 0                 # inbox[3]["tags"], a tuple
    thread: int = 0               # inbox[3]["thread"], a vector
    numbers: int = 0
    deep: int = 0                 # root["deep"], a vector of height 2
    deep_nodes: list[int] = field(default_factory=list)   # its level-1 nodes
    blob: int = 0
    small: int = 0                # root["small"], a table without an index
    small_store: int = 0
    root: int = 0
    root_store: int = 0
    frees: list[tuple[int, int]] = field(default_factory=list)   # (addr, words)
    head: tuple[int, int, int] = (0, 0, 0)   # (bin, addr, words): the head of the first exact bin


def read_model(path: str) -> Model:
    m = Model()
    img = image.open(path)
    try:
        root = img.root
        m.root, m.inbox, m.numbers = root.address, root["inbox"].address, root["numbers"].address
        m.blob, m.small = root["blob"].address, root["small"].address
        m.deep = root["deep"].address
        mail = root["inbox"][3]
        m.mail, m.thread = mail.address, mail["thread"].address
    finally:
        img.close()
    with open_store(path, readonly=True) as store:
        m.base, m.top = meta(store, L["M_BASE"]), meta(store, L["M_TOP"])
        v = header(store, m.inbox)
        assert v.size == 2 and unfx(v.slot(store, V_HEIGHT)) == 1, \
            "the inbox should be a vector (height, root) with one level of nodes"
        m.inbox_node = v.slot(store, V_ROOT)
        node = header(store, m.inbox_node)
        m.inbox_leaves = [node.slot(store, 2 + 2 * k) for k in range(unfx(node.slot(store, 0)))]
        deep = header(store, header(store, m.deep).slot(store, V_ROOT))
        m.deep_nodes = [deep.slot(store, 2 + 2 * k) for k in range(unfx(deep.slot(store, 0)))]
        m.mail_store = header(store, m.mail).slot(store, 2)
        m.small_store = header(store, m.small).slot(store, 2)
        m.root_store = header(store, m.root).slot(store, 2)
        m.from_str = entry_of(store, m.mail, b"from")[3]
        m.body = entry_of(store, m.mail, b"body")[3]
        m.tags = entry_of(store, m.mail, b"tags")[3]
        m.frees = [(o.addr, o.words) for o in heap_objects(store) if o.cls == FREE]
        b = next(b for b in range(N_EXACT) if meta(store, M_BINS + b))
        m.head = (b, meta(store, M_BINS + b), b + 2)
    assert header_ok(path, m)
    return m


def header_ok(path: str, m: Model) -> bool:
    """The model's objects are what it says (a guard against a changed template)."""
    with open_store(path, readonly=True) as store:
        want = {m.inbox: VECTOR, m.inbox_node: NODE, m.mail: TABLE, m.mail_store: TSTORE,
                m.from_str: STRING, m.body: BYTES, m.tags: TUPLE, m.numbers: VECTOR,
                m.blob: BLOB, m.small: TABLE, m.small_store: TSTORE}
        return (all(header(store, a).cls == c for a, c in want.items())
                and all(header(store, a).cls == LEAF for a in m.inbox_leaves)
                and unfx(header(store, m.deep).slot(store, V_HEIGHT)) == 2
                and all(header(store, a).cls == NODE for a in m.deep_nodes)
                and header(store, m.head[1]).cls == FREE and header(store, m.head[1]).words == m.head[2]
                and len(m.inbox_leaves) == 3 and len(m.frees) >= 10
                and unfx(header(store, m.mail_store).slot(store, 1)) > 0
                and unfx(header(store, m.small_store).slot(store, 1)) == 0)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[str, Model]:
    path = str(tmp_path_factory.mktemp("corruption") / "template.image")
    build_image(path)
    return path, read_model(path)


@pytest.fixture
def path(template, tmp_path) -> str:
    src, _ = template
    dst = str(tmp_path / "damaged.image")
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def model(template) -> Model:
    return template[1]


class MetaStore:
    """A page store as the object memory sees it: addresses below the meta
    words' end are the meta words, which live in the newest commit record that
    carries them (native/objmem.c, "the meta page"), not in a store page.  A
    commit carries them again, so damage to them is signed like any other."""

    META_BYTES = L["META_WORDS"] * 8

    def __init__(self, store: PageStore) -> None:
        self.store = store
        self.meta = bytearray(image._image.meta_block_of(store.head_meta))

    def read_word(self, addr: int) -> int:
        return int.from_bytes(self.read_bytes(addr, 8), "little")

    def read_bytes(self, addr: int, length: int) -> bytes:
        if addr < self.META_BYTES:
            assert addr + length <= self.META_BYTES
            return bytes(self.meta[addr:addr + length])
        return self.store.read_bytes(addr, length)

    def write_word(self, addr: int, value: int) -> None:
        self.write_bytes(addr, value.to_bytes(8, "little"))

    def write_bytes(self, addr: int, data: bytes) -> None:
        if addr < self.META_BYTES:
            assert addr + len(data) <= self.META_BYTES
            self.meta[addr:addr + len(data)] = data
        else:
            self.store.write_bytes(addr, data)

    def commit(self, note: bytes) -> int:
        return self.store.commit(bytes(self.meta) + note)

    def __getattr__(self, name):
        return getattr(self.store, name)


@contextlib.contextmanager
def open_store(path: str, readonly: bool = False):
    store = PageStore.open(path, readonly=readonly)
    try:
        yield MetaStore(store)
    finally:
        store.close()


@contextlib.contextmanager
def damaged(path: str):
    """The page store of path; what is written in the block is committed (and so signed)."""
    with open_store(path) as store:
        yield store
        store.commit(b"damage")


@contextlib.contextmanager
def opened(path: str):
    img = image.open(path)
    try:
        yield img
    finally:
        img.close()


def check_error(path: str) -> CorruptObject:
    """The CorruptObject that check() raises (it must raise one)."""
    with opened(path) as img:
        with pytest.raises(CorruptObject) as info:
            img.check()
    assert info.value.address is not None
    return info.value


def assert_check_names(path: str, *addrs: int) -> CorruptObject:
    exc = check_error(path)
    assert exc.address in addrs, (f"check() named {exc.address:#x}, expected one of "
                                  f"{[hex(a) for a in addrs]}: {exc}")
    return exc


def clean_or_corrupt(fn, *addrs: int, allow=()):
    """Runs fn: it may succeed, or raise CorruptObject naming one of addrs (any
    address when none are given), or one of allow.  Anything else fails the test."""
    try:
        return fn()
    except CorruptObject as exc:
        if addrs:
            assert exc.address in addrs, (f"named {exc.address!r}, expected one of "
                                          f"{[hex(a) for a in addrs]}: {exc}")
        return exc
    except allow as exc:   # noqa: B030 - allow is a tuple of exception classes
        return exc


def corrupt_on_access(fn, *addrs: int) -> CorruptObject:
    """fn must raise CorruptObject naming one of addrs (any address when none are given)."""
    with pytest.raises(CorruptObject) as info:
        fn()
    if addrs:
        assert info.value.address in addrs, (f"named {info.value.address!r}, expected one of "
                                             f"{[hex(a) for a in addrs]}: {info.value}")
    return info.value


def run_child(code: str, *args: str, timeout: float = CHILD_SECONDS) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter with tests/ importable; a hang past timeout
    ends it with faulthandler's traceback (exit status 1, "Timeout" on stderr)."""
    prelude = (f"import sys, faulthandler; sys.path.insert(0, {TESTS!r}); "
               f"faulthandler.enable(); faulthandler.dump_traceback_later({timeout}, exit=True)\n")
    env = dict(os.environ)
    env.pop("IMAGO_GC_STRESS", None)
    try:
        return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                              capture_output=True, text=True, timeout=timeout + 30, cwd=ROOT,
                              env=env)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(exc.cmd, -9, exc.stdout or "", "hung past the backstop")


def assert_child_ok(proc: subprocess.CompletedProcess, expect: str = "OK") -> None:
    how = ("hung" if "Timeout" in proc.stderr or proc.returncode == -9
           else f"died with status {proc.returncode}" if proc.returncode
           else f"ended without printing {expect!r}")
    assert proc.returncode == 0 and expect in proc.stdout, (
        f"the child {how}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}")


# -- the damages ---------------------------------------------------------------------------
#
# Each is a function (store, model) -> the address check() must name.  TestMessages runs
# them all again to check that the message names that address too.

DAMAGES = {}


def damage(fn):
    DAMAGES[fn.__name__] = fn
    return fn


def apply(path: str, model: Model, fn) -> int:
    with damaged(path) as store:
        return fn(store, model)


@damage
def bad_check_bits(store, m):
    o = header(store, m.from_str)
    store.write_word(m.from_str, o.hd ^ (1 << 40))
    return m.from_str


@damage
def class_beyond_table(store, m):
    o = header(store, m.from_str)
    store.write_word(m.from_str, (o.hd & ((1 << 44) - 1)) | (40 << 44))
    return m.from_str


@damage
def format_not_of_class(store, m):
    o = header(store, m.from_str)
    store.write_word(m.from_str, (o.hd & ~0xF) | FMT_WORDS)
    return m.from_str


@damage
def flags_set(store, m):
    o = header(store, m.from_str)
    store.write_word(m.from_str, o.hd | 0x40)
    return m.from_str


@damage
def size_past_heap_end(store, m):
    o = header(store, m.from_str)
    store.write_word(m.from_str, make_header(STRING, FMT_BYTES, SIZE_OVERFLOW - 1, m.from_str))
    return m.from_str


@damage
def overflow_size_too_small(store, m):
    o = header(store, m.from_str)
    store.write_word(m.from_str, make_header(STRING, FMT_BYTES, SIZE_OVERFLOW, m.from_str))
    store.write_word(m.from_str + 8, o.size)
    return m.from_str


@damage
def fixed_shape_wrong_size(store, m):
    store.write_word(m.inbox, make_header(VECTOR, FMT_POINTERS, 3, m.inbox))
    return m.inbox


@damage
def ref_into_middle(store, m):
    at, _, _, _ = entry_of(store, m.mail, b"from")
    store.write_word(at + 16, m.from_str + 8)
    return m.mail_store


@damage
def ref_past_top(store, m):
    at, _, _, _ = entry_of(store, m.mail, b"from")
    store.write_word(at + 16, m.top + 64)
    return m.mail_store


@damage
def ref_below_base(store, m):
    at, _, _, _ = entry_of(store, m.mail, b"from")
    store.write_word(at + 16, 8 * L["M_ROOT"])
    return m.mail_store


@damage
def ref_to_last_word(store, m):
    at, _, _, _ = entry_of(store, m.mail, b"from")
    store.write_word(at + 16, 0xFFFFFFFFFFFFFFF8)
    return m.mail_store


@damage
def ref_misaligned(store, m):
    """A word with the invalid tag 7 (a pointer that is not 8-aligned)."""
    at, _, _, _ = entry_of(store, m.mail, b"from")
    store.write_word(at + 16, m.from_str | 7)
    return m.mail_store


@damage
def ref_to_free_chunk(store, m):
    at, _, _, _ = entry_of(store, m.mail, b"from")
    store.write_word(at + 16, m.frees[0][0])
    return m.mail_store


@damage
def tuple_slot_dangling(store, m):
    store.write_word(header(store, m.tags).slot_addr(1), m.top + 8)
    return m.tags


def last_entry_start_at(store, m) -> int:
    """The address of the start of the inbox root node's last entry (the length is it plus the
    last leaf's count)."""
    node = header(store, m.inbox_node)
    return node.slot_addr(1 + 2 * (unfx(node.slot(store, 0)) - 1))


@damage
def vector_length_plus_one(store, m):
    at = last_entry_start_at(store, m)
    store.write_word(at, fx(unfx(store.read_word(at)) + 1))
    return m.inbox_node


@damage
def vector_length_absurd(store, m):
    store.write_word(last_entry_start_at(store, m), fx(10**12))
    return m.inbox_node


@damage
def vector_length_not_fixnum(store, m):
    store.write_word(last_entry_start_at(store, m), short_word(3, b"48"))
    return m.inbox_node


@damage
def node_entry_start_lie(store, m):
    node = header(store, m.inbox_node)
    store.write_word(node.slot_addr(3), fx(unfx(node.slot(store, 3)) - 1))
    return m.inbox_node


@damage
def node_count_past_capacity(store, m):
    store.write_word(header(store, m.inbox_node).slot_addr(0), fx(NODE_MAX + 1))
    return m.inbox_node


@damage
def leaf_count_short(store, m):
    leaf = header(store, m.inbox_leaves[0])
    store.write_word(leaf.slot_addr(0), fx(unfx(leaf.slot(store, 0)) - 6))
    return m.inbox_leaves[0]


@damage
def leaf_count_past_capacity(store, m):
    leaf = header(store, m.inbox_leaves[0])
    store.write_word(leaf.slot_addr(0), fx(leaf.size))
    return m.inbox_leaves[0]


@damage
def height_eleven_over_a_leaf(store, m):
    v = header(store, m.inbox)
    store.write_word(v.slot_addr(V_HEIGHT), fx(11))
    store.write_word(v.slot_addr(V_ROOT), m.inbox_leaves[0])
    return m.inbox_leaves[0]


@damage
def height_twelve(store, m):
    store.write_word(header(store, m.inbox).slot_addr(V_HEIGHT), fx(12))
    return m.inbox


@damage
def height_zero_over_a_node(store, m):
    store.write_word(header(store, m.inbox).slot_addr(V_HEIGHT), fx(0))
    return m.inbox_node


@damage
def root_is_a_table(store, m):
    store.write_word(header(store, m.inbox).slot_addr(V_ROOT), m.mail)
    return m.mail


@damage
def table_count_lie(store, m):
    t = header(store, m.mail)
    store.write_word(t.slot_addr(0), fx(unfx(t.slot(store, 0)) - 1))
    return m.mail


@damage
def table_count_past_used(store, m):
    t = header(store, m.mail)
    store.write_word(t.slot_addr(0), fx(unfx(t.slot(store, 1)) + 1))
    return m.mail


@damage
def table_used_past_capacity(store, m):
    t = header(store, m.mail)
    store.write_word(t.slot_addr(1), fx(10**6))
    return m.mail


@damage
def table_store_capacity_lie(store, m):
    s = header(store, m.mail_store)
    store.write_word(s.slot_addr(0), fx(unfx(s.slot(store, 0)) + 1))
    return m.mail_store


@damage
def table_store_is_a_vector(store, m):
    store.write_word(header(store, m.mail).slot_addr(2), m.thread)
    return m.thread


@damage
def index_slot_past_used(store, m):
    """The index slot of the entry for "id" names an entry past the used ones."""
    s = header(store, m.mail_store)
    index_size, used = unfx(s.slot(store, 1)), unfx(header(store, m.mail).slot(store, 1))
    at, _, _, _ = entry_of(store, m.mail, b"id")
    e = (at - s.slot_addr(2 + index_size)) // 24
    j = next(j for j in range(index_size) if s.slot(store, 2 + j) == fx(e))
    store.write_word(s.slot_addr(2 + j), fx(used + 3))
    return m.mail_store


@damage
def entry_past_used_not_empty(store, m):
    s = header(store, m.mail_store)
    index_size, used = unfx(s.slot(store, 1)), unfx(header(store, m.mail).slot(store, 1))
    store.write_word(s.slot_addr(2 + index_size + 3 * used), fx(5))
    return m.mail_store


@damage
def string_not_utf8(store, m):
    store.write_bytes(header(store, m.from_str).body, b"\xff\xfe\xfd")
    return m.from_str


def move_head(store, m, to_bin: int) -> int:
    """Moves the head chunk of m.head's bin to the head of list to_bin."""
    b, addr, words = m.head
    set_meta(store, M_BINS + b, store.read_word(addr + 8))
    store.write_word(addr + 8, meta(store, M_BINS + to_bin))
    set_meta(store, M_BINS + to_bin, addr)
    return addr


@damage
def free_list_cycle(store, m):
    _, addr, _ = m.head
    store.write_word(addr + 8, addr)
    return addr


@damage
def free_list_names_a_live_object(store, m):
    o = header(store, m.from_str)
    set_meta(store, M_BINS + o.words - 2, m.from_str)
    return m.from_str


@damage
def free_chunk_on_the_wrong_list(store, m):
    return move_head(store, m, m.head[0] + 1)


@damage
def objects_count_lie(store, m):
    set_meta(store, L["M_OBJECTS"], meta(store, L["M_OBJECTS"]) + 1)
    return 0


@damage
def object_words_lie(store, m):
    set_meta(store, L["M_OBJ_WORDS"], meta(store, L["M_OBJ_WORDS"]) - 1)
    return 0


@damage
def free_words_lie(store, m):
    set_meta(store, L["M_FREE_WORDS"], meta(store, L["M_FREE_WORDS"]) + 2)
    return 0


@damage
def nclasses_too_small(store, m):
    first = next(o.addr for o in heap_objects(store) if o.cls >= TSTORE)
    set_meta(store, L["M_NCLASSES"], TSTORE)   # table stores and blobs now lie past the table
    return first


@damage
def root_meta_dangling(store, m):
    set_meta(store, L["M_ROOT"], m.root + 8)
    return 0


# -- headers --------------------------------------------------------------------------------


class TestHeaders:
    def test_bad_check_bits(self, path, model):
        """A header whose check bits do not match its address is named by check() and on access."""
        addr = apply(path, model, bad_check_bits)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], addr)
            assert img.root["inbox"][4]["from"] == "user4@example.org"

    def test_class_beyond_the_class_table(self, path, model):
        """A class index past M_NCLASSES is named by check() and on access."""
        addr = apply(path, model, class_beyond_table)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], addr)

    def test_format_that_does_not_match_the_class(self, path, model):
        """A string whose header says format 2 (words) is named by check() and on access."""
        addr = apply(path, model, format_not_of_class)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], addr)

    def test_flag_bits_set(self, path, model):
        """Header flag bits (none are defined yet) are refused."""
        addr = apply(path, model, flags_set)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], addr)

    def test_size_past_the_end_of_the_heap(self, path, model):
        """A size that runs past M_TOP is named by check() and on access, with no huge allocation."""
        addr = apply(path, model, size_past_heap_end)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], addr)

    def test_overflow_size_word_that_fits_the_header(self, path, model):
        """An overflow size word smaller than SIZE_OVERFLOW is refused."""
        addr = apply(path, model, overflow_size_too_small)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], addr)

    def test_fixed_shape_class_with_the_wrong_size(self, path, model):
        """A vector header of three slots (vectors have two) is refused."""
        addr = apply(path, model, fixed_shape_wrong_size)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: len(img.root["inbox"]), addr)


# -- references -----------------------------------------------------------------------------


class TestReferences:
    def test_into_the_middle_of_an_object(self, path, model):
        """A reference to the second word of a string is named by check() (at its holder) and on access."""
        holder = apply(path, model, ref_into_middle)
        assert_check_names(path, holder)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], holder, model.from_str + 8)
            corrupt_on_access(lambda: dict(img.root["inbox"][3]), holder, model.from_str + 8)

    def test_past_the_top_of_the_heap(self, path, model):
        """A reference past M_TOP is named by check() and on access."""
        holder = apply(path, model, ref_past_top)
        assert_check_names(path, holder)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], holder, model.top + 64)

    def test_below_the_base_of_the_heap(self, path, model):
        """A reference into page 0's meta words is named by check() and on access."""
        holder = apply(path, model, ref_below_base)
        assert_check_names(path, holder)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], holder, 8 * L["M_ROOT"])

    def test_to_the_last_word_of_the_address_space(self, path, model):
        """A reference to 0xFFFFFFFFFFFFFFF8 raises CorruptObject on access, not the pager's ValueError."""
        holder = apply(path, model, ref_to_last_word)
        assert_check_names(path, holder)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], holder, 0xFFFFFFFFFFFFFFF8)

    def test_to_the_last_word_of_the_address_space_is_found_by_check(self, path, model):
        """check() names the holder of a reference to 0xFFFFFFFFFFFFFFF8."""
        assert_check_names(path, apply(path, model, ref_to_last_word))

    def test_misaligned_word(self, path, model):
        """A word with the invalid tag 7 is named by check() at its holder and refused on access."""
        holder = apply(path, model, ref_misaligned)
        assert_check_names(path, holder)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"])

    def test_to_a_free_chunk(self, path, model):
        """A reference to a free chunk is named by check() at its holder and on access."""
        holder = apply(path, model, ref_to_free_chunk)
        assert_check_names(path, holder)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], holder, model.frees[0][0])

    def test_to_a_free_chunk_stops_the_collector(self, path, model):
        """gc() refuses to trace into a free chunk, rolls back and leaves the image as it was."""
        apply(path, model, ref_to_free_chunk)
        with opened(path) as img:
            head = img.head
            corrupt_on_access(img.gc, model.frees[0][0])
            assert img.head == head
        assert_check_names(path, model.mail_store)

    def test_dangling_tuple_slot(self, path, model):
        """A tuple slot past the heap is named by check() and on access."""
        holder = apply(path, model, tuple_slot_dangling)
        assert_check_names(path, holder)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["tags"], model.top + 8, holder)

    def test_meta_root_dangling(self, path, model):
        """M_ROOT naming the middle of an object is found by check() and on access."""
        apply(path, model, root_meta_dangling)
        assert_check_names(path, 0)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root, model.root + 8, 0)

    def test_reference_to_a_leaf_from_outside_its_vector(self, path, model):
        """A table value naming another vector's leaf is found by check(), as decode() refuses it."""
        with damaged(path) as store:
            at, _, _, _ = entry_of(store, model.mail, b"thread")
            store.write_word(at + 16, model.inbox_leaves[1])
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["thread"], model.inbox_leaves[1])
        assert_check_names(path, model.mail_store, model.inbox_leaves[1])

    def test_meta_root_that_is_not_a_table(self, path, model):
        """M_ROOT holding a fixnum is found by check()."""
        with damaged(path) as store:
            set_meta(store, L["M_ROOT"], fx(5))
        assert_check_names(path, 0)


# -- words that are not values --------------------------------------------------------------


def leaf_item_at(store, m: Model, leaf: int, k: int) -> int:
    return header(store, leaf).slot_addr(1 + k)


BAD_WORDS = {
    "empty": EMPTY,
    "tag 7": fx(5) | 7,
    "unknown special": (9 << 3) | SPECIAL_TAG,
    "absent": ABSENT,
    "short string not UTF-8": short_word(3, b"\xff\xfe"),
}


class TestValueWords:
    @pytest.mark.parametrize("word", ["tag 7", "unknown special"])
    def test_leaf_item_that_is_no_value(self, path, model, word):
        """A leaf item with a tag or special no value has is found by check() and refused on access."""
        leaf = model.inbox_leaves[0]
        with damaged(path) as store:
            store.write_word(leaf_item_at(store, model, leaf, 5), BAD_WORDS[word])
        assert_check_names(path, leaf)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][5])
            corrupt_on_access(lambda: list(img.root["inbox"]))
            assert isinstance(img.root["inbox"][6], image.Table)

    @pytest.mark.parametrize("word", ["empty", "absent", "short string not UTF-8"])
    def test_leaf_item_that_is_no_value_is_found_by_check(self, path, model, word):
        """check() finds an EMPTY, ABSENT or non-UTF-8 word among a leaf's items."""
        leaf = model.inbox_leaves[0]
        with damaged(path) as store:
            store.write_word(leaf_item_at(store, model, leaf, 5), BAD_WORDS[word])
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][5])
        assert_check_names(path, leaf)

    @pytest.mark.parametrize("word", sorted(BAD_WORDS))
    def test_leaf_item_that_is_no_value_names_the_leaf(self, path, model, word):
        """Reading a leaf item that is no value raises CorruptObject naming the leaf (or its vector)."""
        leaf = model.inbox_leaves[0]
        with damaged(path) as store:
            store.write_word(leaf_item_at(store, model, leaf, 5), BAD_WORDS[word])
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][5], leaf, model.inbox)


# -- vectors --------------------------------------------------------------------------------


class TestVectors:
    def test_length_disagrees_with_the_leaves(self, path, model):
        """The root's last entry starting one item late is named by check(); every item under
        the entry before it is refused (the descent compares that leaf's count with the
        entries' starts), and the items under the last entry still read."""
        addr = apply(path, model, vector_length_plus_one)
        assert_check_names(path, addr)
        with opened(path) as img:
            inbox = img.root["inbox"]
            assert len(inbox) == 301
            assert isinstance(inbox[0], image.Table)
            corrupt_on_access(lambda: inbox[LEAF_MAX], model.inbox_leaves[-2])
            corrupt_on_access(lambda: inbox[2 * LEAF_MAX - 1], model.inbox_leaves[-2])
            corrupt_on_access(lambda: list(inbox), model.inbox_leaves[-2])
            corrupt_on_access(lambda: inbox.insert(LEAF_MAX + 1, 1), model.inbox_leaves[-2])
            assert isinstance(inbox[300], image.Table)

    def test_absurd_length_is_found_by_check(self, path, model):
        """A root entry's size of 10**12 (a length of about 10**12) is named by check()."""
        assert_check_names(path, apply(path, model, vector_length_absurd))

    def test_absurd_length_on_access(self, path, model):
        """Slicing or listing a vector whose length is about 10**12 raises CorruptObject, not MemoryError."""
        apply(path, model, vector_length_absurd)
        with opened(path) as img:
            inbox = img.root["inbox"]
            corrupt_on_access(lambda: inbox[:])
            corrupt_on_access(lambda: list(inbox))

    def test_absurd_length_iteration_stops(self, path, model):
        """Iterating a vector whose length says 10**12 stops with CorruptObject at the real end."""
        apply(path, model, vector_length_absurd)
        with opened(path) as img:
            n = 0
            with pytest.raises(CorruptObject):
                for _ in img.root["inbox"]:
                    n += 1
            assert n <= 300

    def test_length_that_is_not_a_fixnum(self, path, model):
        """A root entry's size holding a short string is named by check() and on access."""
        addr = apply(path, model, vector_length_not_fixnum)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: len(img.root["inbox"]), addr)

    def test_node_entry_start_lie(self, path, model):
        """An interior entry starting one item early is named by check(); reads do not crash."""
        addr = apply(path, model, node_entry_start_lie)
        assert_check_names(path, addr)
        with opened(path) as img:
            inbox = img.root["inbox"]
            assert len(inbox) == 300    # the length is found down the rightmost path
            # The descent finds a leaf that disagrees with its entry and names the leaf.
            clean_or_corrupt(lambda: list(inbox), addr, *model.inbox_leaves)
            clean_or_corrupt(lambda: inbox.insert(200, 1), addr, *model.inbox_leaves)

    def test_node_object_size_lie(self, path, model):
        """A node whose header claims two slots fewer breaks the heap's parse, inside the node's old extent."""
        with damaged(path) as store:
            node = header(store, model.inbox_node)
            store.write_word(node.addr, make_header(NODE, FMT_POINTERS, node.size - 2, node.addr))
        exc = check_error(path)
        assert model.inbox_node <= exc.address < model.inbox_node + 8 * node.words
        with opened(path) as img:
            assert clean_or_corrupt(lambda: list(img.root["inbox"])) is not None

    def test_node_object_of_even_size(self, path, model):
        """A node header of an even slot count (a count and pairs are odd) is refused."""
        with damaged(path) as store:
            node = header(store, model.inbox_node)
            store.write_word(node.addr, make_header(NODE, FMT_POINTERS, node.size - 1, node.addr))
        exc = check_error(path)
        assert model.inbox_node <= exc.address < model.inbox_node + 8 * node.words
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][0], model.inbox_node)

    def test_node_count_past_capacity(self, path, model):
        """A node count larger than its slots hold is named by check() and on access."""
        addr = apply(path, model, node_count_past_capacity)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][0], addr)

    def test_node_count_naming_empty_entries(self, path, model):
        """A node count of five over three entries is found by check() and on access."""
        with damaged(path) as store:
            store.write_word(header(store, model.inbox_node).slot_addr(0), fx(5))
        check_error(path)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][0], model.inbox_node)
            corrupt_on_access(lambda: img.root["inbox"].append(1), model.inbox_node)

    def test_node_count_naming_empty_entries_names_the_node(self, path, model):
        """check() names an inner node whose count covers EMPTY entries, not address 0."""
        node = model.deep_nodes[-1]
        with damaged(path) as store:
            count = unfx(header(store, node).slot(store, 0))
            store.write_word(header(store, node).slot_addr(0), fx(count + 2))
        with opened(path) as img:
            deep = img.root["deep"]
            corrupt_on_access(lambda: deep[-1], node)
            corrupt_on_access(lambda: deep.append(1), node)
        assert_check_names(path, node, model.deep)

    def test_leaf_count_short(self, path, model):
        """A leaf count six short of its items is named by check() and on access."""
        addr = apply(path, model, leaf_count_short)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][LEAF_MAX - 1], addr)

    def test_leaf_count_past_capacity(self, path, model):
        """A leaf count equal to its slots (one more than it holds) is named by check() and on access."""
        addr = apply(path, model, leaf_count_past_capacity)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][0], addr)

    def test_height_eleven_over_a_leaf(self, path, model):
        """Height 11 with a leaf as root is named by check() and on access."""
        addr = apply(path, model, height_eleven_over_a_leaf)
        assert_check_names(path, addr)
        with opened(path) as img:
            inbox = img.root["inbox"]
            corrupt_on_access(lambda: len(inbox), addr)
            corrupt_on_access(lambda: inbox[0], addr)
            corrupt_on_access(lambda: inbox.append(1), addr)
            corrupt_on_access(lambda: inbox.insert(0, 1), addr)
            corrupt_on_access(lambda: inbox.__delitem__(0), addr)

    def test_height_twelve(self, path, model):
        """A height past MAX_HEIGHT - 1 is named by check() and on access."""
        addr = apply(path, model, height_twelve)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: len(img.root["inbox"]), addr)

    def test_height_zero_over_a_node(self, path, model):
        """Height 0 over an interior node is named by check() and on access."""
        addr = apply(path, model, height_zero_over_a_node)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][0], addr)

    def test_root_that_is_a_table(self, path, model):
        """A vector whose root is a table is named by check() and on access."""
        addr = apply(path, model, root_is_a_table)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][0], addr)

    def test_oversized_leaf_is_found_by_check(self, path, model):
        """A tuple of 300 slots relabelled as a vector's only leaf is found by check()."""
        leaf = plant_oversized_leaf(path, model)
        assert_check_names(path, leaf, model.numbers)

    def test_oversized_leaf_insert_does_not_crash(self, path, model):
        """Inserting into the middle of an oversized full leaf raises CorruptObject (or works), in a child."""
        plant_oversized_leaf(path, model)
        proc = run_child("""
            import image
            img = image.open(sys.argv[1])
            v = img.root["numbers"]
            try:
                v.insert(0, "x")
            except image.CorruptObject:
                pass
            img.close()
            print("OK")
        """, path)
        assert_child_ok(proc)

    def test_shared_subtree_check_does_not_hang(self, path, model):
        """check() of a vector whose nodes all share one child finishes (in a child) and raises CorruptObject."""
        with damaged(path) as store:
            v = header(store, model.numbers)
            leaf = header(store, v.slot(store, V_ROOT)).slot(store, 2)
            child, size = leaf, unfx(header(store, leaf).slot(store, 0))
            for _ in range(11):
                child = forge(store, NODE, FMT_POINTERS, [fx(16)] + [fx(size), child] * 16)
                size *= 16
            store.write_bytes(v.body, struct.pack("<2Q", fx(11), child))
        proc = run_child("""
            import image
            img = image.open(sys.argv[1])
            try:
                img.check()
            except image.CorruptObject:
                print("OK")
            else:
                print("check() passed")
            img.close()
        """, path, timeout=5)
        assert_child_ok(proc)

    def test_shared_subtree_reads(self, path, model):
        """A vector whose nodes share one child claims more items than the heap holds:
        reading it raises CorruptObject at once (no walk of the shared tree, no hang)."""
        with damaged(path) as store:
            v = header(store, model.numbers)
            leaf = header(store, v.slot(store, V_ROOT)).slot(store, 2)
            child, size = leaf, unfx(header(store, leaf).slot(store, 0))
            for _ in range(11):
                child = forge(store, NODE, FMT_POINTERS, [fx(16)] + [fx(size), child] * 16)
                size *= 16
            store.write_bytes(v.body, struct.pack("<2Q", fx(11), child))
        with opened(path) as img:
            v = img.root["numbers"]
            corrupt_on_access(lambda: v[0], child)
            corrupt_on_access(lambda: len(v), child)
            corrupt_on_access(lambda: v[size // 2: size // 2 + 3], child)


def plant_oversized_leaf(path: str, model: Model) -> int:
    """Makes root["numbers"] a vector whose only leaf is a forged, full, 300-slot leaf."""
    items = [fx(299)] + [fx(1000 + i) for i in range(299)]
    with damaged(path) as store:
        leaf = forge(store, LEAF, FMT_POINTERS, items)
        store.write_bytes(header(store, model.numbers).body, struct.pack("<2Q", fx(0), leaf))
    return leaf


# -- tables ---------------------------------------------------------------------------------


class TestTables:
    def test_count_lie(self, path, model):
        """A count one short of the live entries is named by check(); reads do not crash."""
        addr = apply(path, model, table_count_lie)
        assert_check_names(path, addr)
        with opened(path) as img:
            mail = img.root["inbox"][3]
            assert mail["id"] == 3 and len(list(mail)) == 9
            clean_or_corrupt(lambda: mail.__setitem__("new", 1), addr)

    def test_count_past_used(self, path, model):
        """A count past the used entries is named by check() and on access."""
        addr = apply(path, model, table_count_past_used)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["id"], addr)

    def test_used_past_capacity(self, path, model):
        """A used count past the store's capacity is named by check() and on access."""
        addr = apply(path, model, table_used_past_capacity)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["id"], addr)

    def test_used_one_past_the_entries(self, path, model):
        """A used count one past the entries written is found by check(); keys() and values() refuse the zero entry."""
        with damaged(path) as store:
            t = header(store, model.mail)
            store.write_word(t.slot_addr(1), fx(unfx(t.slot(store, 1)) + 1))
        assert_check_names(path, model.mail, model.mail_store)
        with opened(path) as img:
            mail = img.root["inbox"][3]
            corrupt_on_access(lambda: list(mail))
            corrupt_on_access(mail.values)

    def test_used_one_past_the_entries_items(self, path, model):
        """items() of a table whose used count runs past its entries raises CorruptObject, not SystemError."""
        with damaged(path) as store:
            t = header(store, model.mail)
            store.write_word(t.slot_addr(1), fx(unfx(t.slot(store, 1)) + 1))
        with opened(path) as img:
            corrupt_on_access(img.root["inbox"][3].items)

    def test_store_capacity_lie(self, path, model):
        """A store whose capacity disagrees with its size is named by check() and on access."""
        addr = apply(path, model, table_store_capacity_lie)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["id"], addr)

    def test_store_that_is_a_vector(self, path, model):
        """A table whose store slot names a vector is named by check() and on access."""
        addr = apply(path, model, table_store_is_a_vector)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["id"], addr)

    def test_index_slot_past_used(self, path, model):
        """An index slot naming an entry past the used ones is named by check() and on lookup."""
        addr = apply(path, model, index_slot_past_used)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["id"], addr)

    def test_empty_index_slot_past_used(self, path, model):
        """An empty index slot turned into an entry number past the used ones is found by check()."""
        with damaged(path) as store:
            s = header(store, model.mail_store)
            index_size = unfx(s.slot(store, 1))
            for j in range(index_size):
                if s.slot(store, 2 + j) == fx(-1):
                    store.write_word(s.slot_addr(2 + j), fx(100))
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3].get("missing"), model.mail_store)
        assert_check_names(path, model.mail_store)

    def test_entry_past_used_not_empty(self, path, model):
        """An entry past the used ones that is not zero is named by check()."""
        addr = apply(path, model, entry_past_used_not_empty)
        assert_check_names(path, addr)
        with opened(path) as img:
            assert dict(img.root["inbox"][3])["id"] == 3

    def test_hash_lie_in_an_indexed_table(self, path, model):
        """An entry whose hash is not its key's is found by check() (the index cannot reach it)."""
        with damaged(path) as store:
            at, h, _, _ = entry_of(store, model.mail, b"id")
            store.write_word(at, fx(unfx(h) ^ 0x5555))
        assert_check_names(path, model.mail_store)

    def test_hash_lie_in_a_small_table(self, path, model):
        """An entry of an unindexed table whose hash is not its key's is found by check()."""
        with damaged(path) as store:
            at, h, _, _ = entry_of(store, model.small, b"a")
            store.write_word(at, fx(unfx(h) ^ 0x5555))
        with opened(path) as img:
            small = img.root["small"]
            assert "a" in list(small)
            clean_or_corrupt(lambda: small["a"], allow=(KeyError,))
        assert_check_names(path, model.small_store, model.small)


# -- strings, blobs -------------------------------------------------------------------------


class TestStringsAndBlobs:
    def test_string_not_utf8(self, path, model):
        """A string object whose bytes are not UTF-8 is named by check() and on access."""
        addr = apply(path, model, string_not_utf8)
        assert_check_names(path, addr)
        with opened(path) as img:
            corrupt_on_access(lambda: img.root["inbox"][3]["from"], addr)
            corrupt_on_access(lambda: img.root["inbox"][3].get("from"), addr)

    def test_blob_length_lie(self, path, model):
        """A blob whose length slot disagrees with its data raises CorruptObject on read."""
        with damaged(path) as store:
            store.write_word(header(store, model.blob).slot_addr(2), fx(10))
        with opened(path) as img:
            corrupt_on_access(img.root["blob"].read, model.blob)

    def test_blob_frame_claiming_a_huge_size(self, path, model):
        """A blob whose zstd frame claims 2**40 bytes raises CorruptObject on read, not MemoryError."""
        with damaged(path) as store:
            data = header(store, header(store, model.blob).slot(store, 1))
            # magic, a descriptor with an 8-byte content size, a raw block of the rest, a last empty block
            frame = (b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", 1 << 40))
            rest = data.size - len(frame) - 6
            frame += bytes([rest << 3 & 0xFF, rest >> 5 & 0xFF, rest >> 13 & 0xFF]) + bytes(rest)
            frame += b"\x01\x00\x00"
            assert len(frame) == data.size
            store.write_bytes(data.body, frame)
        with opened(path) as img:
            corrupt_on_access(img.root["blob"].read, model.blob)

    def test_blob_length_that_is_a_bigint(self, path, model):
        """len() of a blob whose length slot names a bigint raises CorruptObject, not OverflowError."""
        with damaged(path) as store:
            at, _, _, big = entry_of(store, model.mail, b"big")
            store.write_word(header(store, model.blob).slot_addr(2), big)
        with opened(path) as img:
            corrupt_on_access(lambda: len(img.root["blob"]), model.blob)
            corrupt_on_access(img.root["blob"].read, model.blob)

    def test_blob_length_lie_is_found_by_check(self, path, model):
        """check() finds a blob whose length slot is not a non-negative fixnum."""
        with damaged(path) as store:
            store.write_word(header(store, model.blob).slot_addr(2), fx(-5))
        assert_check_names(path, model.blob)


# -- free lists -----------------------------------------------------------------------------


def fill_with(img, words: int, n: int) -> None:
    """Stores n byte strings that each take exactly `words` words (a header and payload)."""
    for i in range(n):
        img.root[f"fill{i}"] = bytes([65 + i % 26]) * (8 * (words - 1))


class TestFreeLists:
    def test_gc_does_not_free_a_live_object_inside_a_free_chunk(self, path, model):
        """gc() over a free chunk enlarged to cover a live string refuses with CorruptObject, and the string survives."""
        with damaged(path) as store:
            for addr, words in model.frees:
                after = header(store, addr + 8 * words)
                if after.cls in (STRING, BYTES):
                    break
            store.write_word(addr, make_header(FREE, FMT_WORDS, words + after.words - 1, addr))
            # the accounting follows, as a forger would make it
            set_meta(store, L["M_FREE_WORDS"], meta(store, L["M_FREE_WORDS"]) + after.words)
            set_meta(store, L["M_OBJ_WORDS"], meta(store, L["M_OBJ_WORDS"]) - after.words)
            set_meta(store, L["M_OBJECTS"], meta(store, L["M_OBJECTS"]) - 1)
            live = store.read_bytes(after.body, after.size)
        with opened(path) as img:
            corrupt_on_access(img.gc)
            for i in range(40):   # allocations that would reuse the chunk
                clean_or_corrupt(lambda: img.root.__setitem__(f"fill{i}", "x" * (8 * words + i)))
        with open_store(path, readonly=True) as store:
            assert store.read_bytes(after.body, after.size) == live, "gc freed a live object"

    def test_cycle(self, path, model):
        """A free chunk linking to itself is named by check(); allocating twice from it is refused."""
        addr = apply(path, model, free_list_cycle)
        assert_check_names(path, addr)
        words = model.head[2]
        with opened(path) as img:
            img.root["fill0"] = b"A" * (8 * (words - 1))
            corrupt_on_access(lambda: fill_with(img, words, 2), addr)
            assert img.root["fill0"] == b"A" * (8 * (words - 1))

    def test_list_naming_a_live_object(self, path, model):
        """A free list whose head is a live string is named by check(); allocation from it is refused."""
        addr = apply(path, model, free_list_names_a_live_object)
        assert_check_names(path, addr)
        with opened(path) as img:
            words = header(img.store, addr).words
            corrupt_on_access(lambda: fill_with(img, words, 1), addr)
            assert img.root["inbox"][3]["from"] == "user3@example.org"

    def test_chunk_on_the_wrong_list(self, path, model):
        """A free chunk on the list of another size is named by check()."""
        addr = apply(path, model, free_chunk_on_the_wrong_list)
        assert_check_names(path, addr)

    def test_chunk_smaller_than_its_list_is_refused(self, path, model):
        """Allocating from a chunk smaller than its list says raises CorruptObject and damages nothing."""
        _, addr, words = model.head
        big = words + 6
        with damaged(path) as store:
            move_head(store, model, big - 2)
        with opened(path) as img:
            clean_or_corrupt(lambda: fill_with(img, big, 1), addr)
        with open_store(path, readonly=True) as store:
            after = header(store, addr + 8 * words)
            assert after.hd >> 32 & 0xFFF == check_bits(addr + 8 * words), \
                "the object after the chunk was overwritten"


# -- the collector -----------------------------------------------------------------------------


class TestCollector:
    @pytest.mark.parametrize("name,value", [("M_ROOT", "tag 7"), ("M_ROOT", "fixnum"),
                                            ("M_ROOT", "empty"), ("M_CLASSES", "tag 7"),
                                            ("M_SYMBOLS", "empty"), ("M_BLOBS", "empty")])
    def test_gc_refuses_a_meta_root_that_is_not_a_pointer(self, path, model, name, value):
        """gc() with a meta root damaged into a non-pointer raises CorruptObject and frees nothing."""
        with damaged(path) as store:
            old = meta(store, L[name])
            set_meta(store, L[name], {"tag 7": old | 7, "fixnum": fx(5), "empty": EMPTY}[value])
        with opened(path) as img:
            corrupt_on_access(img.gc, 0)
        with damaged(path) as store:
            set_meta(store, L[name], old)    # repaired, the image is whole again
        with opened(path) as img:
            img.check()
            assert len(img.root["inbox"]) == 300 and img.root["blob"].read()[:10] == b"attachment"


# -- accounting and bounds ----------------------------------------------------------------------


class TestAccountsAndBounds:
    @pytest.mark.parametrize("fn", [objects_count_lie, object_words_lie, free_words_lie],
                             ids=lambda f: f.__name__)
    def test_accounting_lie(self, path, model, fn):
        """A meta count (M_OBJECTS, M_OBJ_WORDS, M_FREE_WORDS) that disagrees with the heap is found by check()."""
        apply(path, model, fn)
        assert_check_names(path, 0)
        with opened(path) as img:
            assert img.root["inbox"][3]["id"] == 3
            img.root["inbox"].append({"id": 300})
            assert img.root["inbox"][300]["id"] == 300

    def test_class_count_too_small(self, path, model):
        """M_NCLASSES below the classes in use is found by check() at the first object past it."""
        apply(path, model, nclasses_too_small)
        with open_store(path, readonly=True) as store:
            first = next(o.addr for o in heap_objects(store) if o.cls >= TSTORE)
        assert_check_names(path, first)

    def test_top_past_the_largest_heap(self, path, model):
        """M_TOP past 2**52 is refused when the image opens."""
        with damaged(path) as store:
            set_meta(store, L["M_TOP"], (1 << 52) + 8)
        with pytest.raises(CorruptObject) as info:
            image.open(path)
        assert info.value.address == 0

    @pytest.mark.parametrize("top", ["unaligned", "below base"])
    def test_impossible_top(self, path, model, top):
        """An unaligned M_TOP, or one below M_BASE, is refused when the image opens."""
        with damaged(path) as store:
            set_meta(store, L["M_TOP"], model.top + 4 if top == "unaligned" else model.base - 8)
        with pytest.raises(CorruptObject) as info:
            image.open(path)
        assert info.value.address == 0

    def test_top_beyond_the_pager_range_is_refused_at_open(self, path, model):
        """An M_TOP past the pager's address range (2**50 at 1 KiB pages) refuses the image."""
        with damaged(path) as store:
            set_meta(store, L["M_TOP"], 1 << 51)
        with pytest.raises(image.CorruptObject, match="heap bounds"):
            image.open(path).close()

    @pytest.mark.parametrize("top", [1 << 45, 1 << 30])
    def test_top_beyond_the_store_is_refused_at_open(self, path, model, top):
        """An M_TOP whose last page the store never wrote refuses the image (CorruptObject at 0)."""
        with damaged(path) as store:
            set_meta(store, L["M_TOP"], top)
        with pytest.raises(CorruptObject) as info:
            image.open(path).close()
        assert info.value.address == 0

    @pytest.mark.parametrize("top", [1 << 45, 1 << 30])
    def test_top_beyond_the_heap_is_found_without_exhausting_memory(self, path, model, top):
        """check(), gc() and a store into an image whose M_TOP lies far past the heap (its last
        page forged) raise CorruptObject (the walk meets zeros), never MemoryError."""
        with damaged(path) as store:
            set_meta(store, L["M_TOP"], top)
            set_meta(store, L["M_FREE_WORDS"], 0)
            store.write_word(top - 8, 0x1234)
        with opened(path) as img:
            corrupt_on_access(img.check)
            corrupt_on_access(img.gc)
            img.root["numbers"].append("a string of some length")   # allocates at the forged top
            corrupt_on_access(img.check)

    @pytest.mark.parametrize("top", [1 << 40, 1 << 45])
    def test_gc_after_storing_at_a_forged_top(self, path, model, top):
        """gc() after an object was stored at a forged M_TOP (its last page written) raises CorruptObject, in bounded memory (a child)."""
        with damaged(path) as store:
            set_meta(store, L["M_TOP"], top)
            set_meta(store, L["M_FREE_WORDS"], 0)
            store.write_word(top - 8, 0x1234)   # the page of the forged top's last word exists
        proc = run_child("""
            import resource, image, os
            if "asan" not in os.environ.get("LD_PRELOAD", ""):
                resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
            img = image.open(sys.argv[1])
            img.root["numbers"].append("a string of some length")   # allocated at the forged top
            try:
                img.gc()
            except image.CorruptObject:
                print("OK")
            except MemoryError:
                print("MemoryError")
            img.close()
        """, path)
        assert_child_ok(proc)

    def test_forged_top_and_length(self, path, model):
        """Slicing or listing a vector whose length and M_TOP are both forged large raises CorruptObject."""
        with damaged(path) as store:
            set_meta(store, L["M_TOP"], 1 << 45)
            store.write_word((1 << 45) - 8, 0x1234)
            store.write_word(last_entry_start_at(store, model), fx(1 << 40))
        proc = run_child("""
            import resource, image, os
            if "asan" not in os.environ.get("LD_PRELOAD", ""):
                resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
            img = image.open(sys.argv[1])
            inbox = img.root["inbox"]
            for what, fn in (("slice", lambda: inbox[:]), ("list", lambda: list(inbox))):
                try:
                    fn()
                except image.CorruptObject:
                    print("OK", what)
                except MemoryError:
                    print("MemoryError", what)
            img.close()
        """, path)
        assert_child_ok(proc, "OK slice\nOK list")

    def test_unknown_version(self, path, model):
        """A damaged version word refuses the image with an ImageError or a pager error."""
        with damaged(path) as store:
            set_meta(store, 1, 7)
        with pytest.raises((image.ImageError, PagerError)):
            image.open(path).close()

    def test_damaged_magic(self, path, model):
        """A damaged magic word refuses the image with CorruptImage."""
        from pager import CorruptImage
        with damaged(path) as store:
            set_meta(store, 0, 0x1234)
        with pytest.raises(CorruptImage, match="no object memory"):
            image.open(path)


# -- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_messages_name_the_address(path, model, name):
    """check()'s CorruptObject message says "object at 0x..." with the address it names, and why."""
    addr = apply(path, model, DAMAGES[name])
    exc = check_error(path)
    assert exc.address == addr
    assert f"object at {addr:#x}:" in str(exc), str(exc)
    assert "%" not in str(exc) and MESSAGE_HINTS.get(name, "") in str(exc), str(exc)


# What the message must say besides the address, where one phrase is the point.
MESSAGE_HINTS = {
    "class_beyond_table": "class 40", "size_past_heap_end": "past the end of the heap",
    "string_not_utf8": "UTF-8", "free_list_cycle": "cycle", "objects_count_lie": "the image counts",
    "vector_length_plus_one": "its siblings before it hold", "vector_length_not_fixnum": "no item",
}


def test_every_damage_is_found_by_check(path, model):
    """Each damage in DAMAGES, applied alone to a fresh copy, makes check() raise CorruptObject."""
    src = os.path.dirname(path)
    for name, fn in DAMAGES.items():
        copy = os.path.join(src, f"{name}.image")
        shutil.copytree(path, copy)
        apply(copy, model, fn)
        check_error(copy)
        shutil.rmtree(copy)
