"""The object memory's public behaviour (image/), one group per behaviour."""
import math
import os

import pytest

import image
from pager import PageStore


@pytest.fixture
def img(tmp_path):
    img = image.open(tmp_path / "t.image")
    yield img
    if not img.closed:
        img.check()
        img.close()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "t.image"


# -- exports and opening --------------------------------------------------------

def test_exports_are_exactly_the_public_api():
    """image/__init__ exports what its docstring lists, and nothing private."""
    assert set(image.__all__) == {
        "Blob", "Collection", "CorruptObject", "Handle", "Image", "ImageError", "LAYOUT",
        "Object", "Phase", "ReadOnlyImage", "Special", "StaleHandle", "Table",
        "Vector", "commit_note", "meta_block_of", "open", "provide", "register_values"}
    for name in image.__all__:
        assert getattr(image, name) is not None


def test_open_creates_a_missing_image_with_an_empty_root(path):
    """A writer creates the image; its root table starts empty and check() passes."""
    img = image.open(path)
    assert isinstance(img.root, image.Table) and len(img.root) == 0
    stats = img.check()
    assert stats["objects"] > 0 and stats["free_chunks"] == 0
    img.close()
    assert os.path.isdir(path)


def test_readonly_open_of_a_missing_image_fails_cleanly(path):
    """A reader does not create an image."""
    with pytest.raises(Exception) as info:
        image.open(path, readonly=True)
    assert not isinstance(info.value, (SystemError, MemoryError))


def test_a_plain_page_store_with_commits_is_not_an_object_image(path):
    """A store whose page 0 holds no object memory is refused with CorruptImage."""
    from pager import CorruptImage
    store = PageStore.create(path)
    store.write(0, b"not an image")
    store.commit()
    store.close()
    with pytest.raises(CorruptImage, match="no object memory"):
        image.open(path)


def test_one_writer_at_a_time(path):
    """A second writer is refused while the first holds the image."""
    from pager import ImageLocked
    img = image.open(path)
    with pytest.raises(ImageLocked):
        image.open(path)
    img.close()


# -- values -----------------------------------------------------------------------

ROUND_TRIP = [
    None, True, False, 0, 1, -1, 2**60 - 1, -2**60, 2**60, -2**60 - 1, 2**64, -(2**200) + 7,
    0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, math.inf, -math.inf, 1e-40, 3.141592653589793,
    "", "a", "seven77", "eight888", "ünïcødé", "😀" * 3, "x" * 10_000,
    b"", b"\x00", b"1234567", b"12345678", bytes(range(256)) * 40,
    (), (1, "two", (3.0, None)), ("a" * 20, b"b" * 20),
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: repr(v)[:30])
def test_values_round_trip_through_a_reopen(path, value):
    """Every value type reads back equal, with its type, after a reopen."""
    img = image.open(path)
    img.root["v"] = value
    img.close()
    img = image.open(path)
    got = img.root["v"]
    assert type(got) is type(value) and got == value
    if isinstance(value, float):
        assert math.copysign(1, got) == math.copysign(1, value)
    img.check()
    img.close()


def test_nan_round_trips(img):
    """NaN is stored and read back as NaN."""
    img.root["nan"] = math.nan
    assert math.isnan(img.root["nan"])


def test_unsupported_values_raise_type_error_naming_the_type(img):
    """A set, an object or a function cannot be stored; nothing is left behind."""
    before = img.check()["objects"]
    for bad in ({1, 2}, object(), len, [1, {2}], {"k": frozenset()}):
        with pytest.raises(TypeError, match="cannot store a '(set|object|builtin_function_or_method|frozenset)'"):
            img.root["bad"] = bad
    assert "bad" not in img.root
    assert img.check()["objects"] == before


def test_containers_become_handles(img):
    """A list becomes a Vector, a dict a Table; a tuple reads back as a tuple."""
    img.root["x"] = {"list": [1, 2], "dict": {"a": 1}, "tuple": (1, [2])}
    x = img.root["x"]
    assert isinstance(x, image.Table)
    assert isinstance(x["list"], image.Vector) and list(x["list"]) == [1, 2]
    assert isinstance(x["dict"], image.Table) and dict(x["dict"]) == {"a": 1}
    t = x["tuple"]
    assert type(t) is tuple and t[0] == 1 and isinstance(t[1], image.Vector)


def test_a_handle_stored_twice_is_one_object(img):
    """Storing a handle stores a reference: identity holds and a change shows through both."""
    img.root["a"] = [1]
    img.root["b"] = img.root["a"]
    assert img.root["a"] is img.root["b"]
    img.root["a"].append(2)
    assert list(img.root["b"]) == [1, 2]


def test_a_plain_container_is_copied_in(img):
    """Storing a list copies it: later changes to the Python list do not reach the image."""
    mine = [1, 2]
    img.root["a"] = mine
    mine.append(3)
    assert list(img.root["a"]) == [1, 2]


def test_sharing_and_cycles_in_a_stored_value_are_kept(img):
    """One Python container reached twice becomes one object; a cycle stays a cycle."""
    shared = [1]
    cyclic = [0]
    cyclic.append(cyclic)
    img.root["x"] = {"a": shared, "b": shared, "c": cyclic}
    x = img.root["x"]
    assert x["a"] is x["b"]
    assert x["c"][1] is x["c"]
    img.check()


def test_deep_nesting_raises_recursion_error_not_a_crash(img):
    """A value nested past the recursion limit raises RecursionError."""
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        img.root["deep"] = deep
    img.check()


# -- vectors ----------------------------------------------------------------------

def test_vector_behaves_like_a_list_across_leaf_and_node_splits(img):
    """append, insert, index, slice, delete and set agree with a list across thousands of items."""
    img.root["v"] = []
    v = img.root["v"]
    model = []
    with img.transaction():
        for i in range(3000):
            v.append(i)
            model.append(i)
        for i in range(0, 600, 7):
            v.insert(i * 3, -i)
            model.insert(i * 3, -i)
        for i in (0, 5, 1000, -1, -200, 1500):
            del v[i]
            del model[i]
        v[17] = "x"
        model[17] = "x"
    assert len(v) == len(model)
    assert list(v) == model
    assert v[100:900] == model[100:900]
    assert v[::-7] == model[::-7]
    assert v[-1] == model[-1] and v[-len(model)] == model[0]
    assert img.check()["vectors"] >= 1


def test_vector_index_errors_match_list(img):
    """Out-of-range indexing raises IndexError; insert clamps like list.insert."""
    img.root["v"] = [1, 2, 3]
    v = img.root["v"]
    with pytest.raises(IndexError):
        v[3]
    with pytest.raises(IndexError):
        v[-4]
    with pytest.raises(IndexError):
        del v[10]
    with pytest.raises(TypeError):
        v["a"]
    v.insert(100, 4)
    v.insert(-100, 0)
    assert list(v) == [0, 1, 2, 3, 4]


def test_vector_mixin_methods(img):
    """index, count, pop, remove, extend, clear, reversed, contains and slice assignment work."""
    img.root["v"] = [3, 1, 3, 2]
    v = img.root["v"]
    assert v.index(3) == 0 and v.count(3) == 2 and 2 in v and 9 not in v
    assert v.pop() == 2 and v.pop(0) == 3
    v.remove(3)
    v.extend(range(5))
    assert list(v) == [1, 0, 1, 2, 3, 4]
    assert list(reversed(v)) == [4, 3, 2, 1, 0, 1]
    v[1:3] = ["a", "b", "c"]
    assert list(v) == [1, "a", "b", "c", 2, 3, 4]
    del v[::2]
    assert list(v) == ["a", "c", 3]
    v.clear()
    assert len(v) == 0 and list(v) == []
    v.append(1)
    assert list(v) == [1]


def test_deleting_everything_from_a_tall_vector_leaves_an_empty_one(img):
    """A vector emptied from a multi-level tree is a valid empty vector that grows again."""
    img.root["v"] = list(range(2000))
    v = img.root["v"]
    with img.transaction():
        while len(v):
            del v[len(v) // 2]
    assert list(v) == []
    img.check()
    v.append("again")
    assert list(v) == ["again"]


# -- tables -----------------------------------------------------------------------

def test_table_behaves_like_a_dict_in_insertion_order(img):
    """Set, get, delete and reinsert keep Python's dict order and content across resizes."""
    img.root["t"] = {}
    t = img.root["t"]
    model = {}
    with img.transaction():
        for i in range(500):
            t[f"k{i}"] = i
            model[f"k{i}"] = i
        for i in range(0, 500, 3):
            del t[f"k{i}"]
            del model[f"k{i}"]
        t["k0"] = "back"
        model["k0"] = "back"
    assert list(t) == list(model)
    assert t.items() == list(model.items())
    assert len(t) == len(model)
    assert img.check()["tables"] >= 1


def test_numeric_keys_follow_python_equality(img):
    """1, 1.0 and True are one key, as in a dict; the first key stored is kept."""
    img.root["t"] = {}
    t = img.root["t"]
    t[1] = "int"
    t[1.0] = "float"
    t[True] = "bool"
    assert len(t) == 1 and list(t) == [1] and type(list(t)[0]) is int and t[1] == "bool"
    t[2**70] = "big"
    t[float(2**70)] = "bigfloat"
    assert t[2**70] == "bigfloat" and len(t) == 2


def test_every_hashable_value_is_a_key(img):
    """None, bools, ints, floats, str, bytes, tuples and handles are keys; lists are not."""
    img.root["h"] = [1]
    handle = img.root["h"]
    keys = [None, False, 7, 2**80, 2.5, "s", "long string key", b"b", b"long bytes key",
            (1, "a", (2, b"x")), handle]
    img.root["t"] = {}
    t = img.root["t"]
    for i, k in enumerate(keys):
        t[k] = i
    for i, k in enumerate(keys):
        assert t[k] == i
    assert "b" not in t and b"s" not in t   # str and bytes never collide
    with pytest.raises(TypeError, match="unhashable"):
        t[[1]] = 1
    with pytest.raises(KeyError):
        t["absent"]


def test_table_mixin_methods(img):
    """get, pop, popitem, setdefault, update, clear, keys, values and items work."""
    img.root["t"] = {"a": 1}
    t = img.root["t"]
    assert t.get("a") == 1 and t.get("z") is None and t.get("z", 5) == 5
    assert t.setdefault("b", 2) == 2 and t.setdefault("b", 3) == 2
    t.update({"c": 3}, d=4)
    assert list(t.keys()) == ["a", "b", "c", "d"] and t.values() == [1, 2, 3, 4]
    assert t.pop("a") == 1 and t.pop("zz", None) is None
    with pytest.raises(KeyError):
        t.pop("zz")
    assert t.popitem() == ("d", 4)
    t.clear()
    assert len(t) == 0 and dict(t) == {}


# -- transactions ------------------------------------------------------------------

def test_autocommit_makes_each_mutation_durable(path):
    """Outside a transaction each mutating call is a commit of its own."""
    img = image.open(path)
    img.root["v"] = []
    head = img.head
    img.root["v"].append(1)
    img.root["v"].append(2)
    assert img.head == head + 2
    img.close()
    img = image.open(path)
    assert list(img.root["v"]) == [1, 2]
    img.close()


def test_a_transaction_is_one_commit(path):
    """Many changes in a transaction make exactly one commit."""
    img = image.open(path)
    head = img.head
    with img.transaction():
        img.root["v"] = []
        for i in range(100):
            img.root["v"].append(i)
    assert img.head == head + 1
    img.close()
    img = image.open(path)
    assert list(img.root["v"]) == list(range(100))
    img.close()


def test_an_exception_rolls_back_and_stales_new_handles(img):
    """A failed transaction leaves no trace; handles made in it raise StaleHandle; old ones work."""
    img.root["old"] = [1]
    old = img.root["old"]
    before = img.check()
    with pytest.raises(ZeroDivisionError):
        with img.transaction():
            img.root["new"] = [2]
            new = img.root["new"]
            old.append(99)
            1 / 0
    assert "new" not in img.root and list(old) == [1]
    with pytest.raises(image.StaleHandle):
        len(new)
    with pytest.raises(image.StaleHandle):
        new.append(1)
    with pytest.raises(image.StaleHandle):
        img.root["again"] = new
    assert img.check() == before
    old.append(2)
    assert list(old) == [1, 2]


def test_a_nested_transaction_is_a_savepoint(img):
    """An inner failure undoes only the inner changes; the outer transaction commits the rest."""
    img.root["v"] = []
    head = img.head
    with img.transaction():
        img.root["v"].append(1)
        try:
            with img.transaction():
                img.root["v"].append(2)
                img.root["inner"] = [3]
                inner = img.root["inner"]
                raise ValueError("inner")
        except ValueError:
            pass
        with img.transaction():
            img.root["v"].append(4)
    assert list(img.root["v"]) == [1, 4] and "inner" not in img.root
    assert img.head == head + 1
    with pytest.raises(image.StaleHandle):
        len(inner)
    img.check()


def test_savepoints_nest_and_an_outer_failure_undoes_inner_successes(img):
    """A released savepoint's changes belong to its parent, and go if the parent fails."""
    img.root["v"] = [0]
    v = img.root["v"]
    with pytest.raises(KeyError):
        with img.transaction():
            v.append(1)
            with img.transaction():
                v.append(2)
                with img.transaction():
                    v.append(3)
            try:
                with img.transaction():
                    v.append(4)
                    with img.transaction():
                        v.append(5)
                    raise IndexError
            except IndexError:
                pass
            assert list(v) == [0, 1, 2, 3]
            raise KeyError("outer")
    assert list(v) == [0]
    img.check()


def test_a_collection_in_a_savepoint_rolls_back_with_it(img):
    """Pages a collection freed come back when its savepoint rolls back."""
    img.root["big"] = ["p" * 3000 for _ in range(100)]
    img.root["keep"] = ["k" * 3000 for _ in range(20)]
    del img.root["big"]
    before = img.check()
    with img.transaction():
        try:
            with img.transaction():
                assert img.gc()["pages"] > 0
                raise RuntimeError
        except RuntimeError:
            pass
        assert img.check() == before
        assert [s[0] for s in img.root["keep"]] == ["k"] * 20
    assert img.check() == before


def test_a_failed_autocommit_call_leaves_nothing(img):
    """A mutating call that raises (an unsupported value) rolls its own commit back."""
    img.root["v"] = [1]
    head = img.head
    with pytest.raises(TypeError):
        img.root["v"].append([1, 2, {3}])
    assert img.head == head and list(img.root["v"]) == [1]
    assert img.check()["objects"] == img.stats()["objects"]


def test_readonly_images_refuse_changes_and_refresh(path):
    """A reader sees committed states, refuses writes, and refresh() moves it on."""
    writer = image.open(path)
    writer.root["v"] = [1]
    reader = image.open(path, readonly=True)
    assert list(reader.root["v"]) == [1]
    with pytest.raises(image.ReadOnlyImage):
        reader.root["v"].append(2)
    writer.root["v"].append(2)
    assert list(reader.root["v"]) == [1]
    reader.refresh()
    assert list(reader.root["v"]) == [1, 2]
    reader.check()
    reader.close()
    writer.close()


def test_close_makes_every_handle_stale(path):
    """After close(), handles raise StaleHandle instead of reading a closed store."""
    img = image.open(path)
    img.root["v"] = [1]
    v = img.root["v"]
    img.close()
    with pytest.raises(image.StaleHandle):
        v[0]
    img.close()   # idempotent


def test_handles_of_another_image_are_refused(tmp_path):
    """A handle can be stored only in its own image."""
    a = image.open(tmp_path / "a.image")
    b = image.open(tmp_path / "b.image")
    a.root["v"] = [1]
    with pytest.raises(ValueError, match="another image"):
        b.root["v"] = a.root["v"]
    a.close()
    b.close()


# -- the collector ------------------------------------------------------------------

def test_gc_frees_what_nothing_reaches_and_keeps_the_rest(img):
    """Unreachable objects are freed, reachable ones survive, and check() passes."""
    img.root["keep"] = [{"a": "x" * 100} for _ in range(50)]
    img.root["drop"] = [{"a": "y" * 100} for _ in range(50)]
    del img.root["drop"]
    freed = img.gc()
    assert freed["objects"] >= 100 and freed["bytes"] > 50 * 100
    stats = img.check()
    assert stats["free_bytes"] == freed["bytes"] or stats["free_bytes"] <= freed["bytes"]
    assert [m["a"] for m in img.root["keep"]] == ["x" * 100] * 50
    assert img.gc()["objects"] == 0


def test_gc_treats_live_handles_as_roots(img):
    """An object only a Python handle reaches survives a collection."""
    img.root["v"] = [1, 2, 3]
    v = img.root["v"]
    del img.root["v"]
    img.gc()
    assert list(v) == [1, 2, 3]
    img.check()
    del v
    import gc
    gc.collect()
    assert img.gc()["objects"] >= 2


def test_gc_reuses_freed_space(img):
    """Allocation after a collection reuses free chunks before growing the heap."""
    img.root["drop"] = ["z" * 200 for _ in range(100)]
    del img.root["drop"]
    img.gc()
    heap_before = img.stats()["heap_bytes"]
    img.root["new"] = ["w" * 200 for _ in range(50)]
    assert img.stats()["heap_bytes"] == heap_before
    img.check()


def test_gc_drops_empty_pages_from_the_page_table(img):
    """Pages left without a live byte leave the page table."""
    img.root["big"] = ["p" * 3000 for _ in range(200)]
    img.root["small"] = [1]
    del img.root["big"]
    freed = img.gc()
    assert freed["pages"] >= 100
    pages_after = img.store.check()["pages"]
    img.root["again"] = ["q" * 3000 for _ in range(10)]
    assert img.store.check()["pages"] > pages_after
    img.check()


def test_gc_in_a_rolled_back_transaction_leaves_no_trace(img):
    """A collection inside a transaction that fails is rolled back with it."""
    img.root["drop"] = [[i] for i in range(100)]
    del img.root["drop"]
    before = img.check()
    with pytest.raises(RuntimeError):
        with img.transaction():
            img.gc()
            raise RuntimeError
    assert img.check() == before


def test_gc_stress_collects_before_every_commit(img):
    """With gc_stress on, every commit collects first, and the data stays whole."""
    img.gc_stress = True
    img.root["v"] = []
    v = img.root["v"]
    model = []
    for i in range(30):
        v.append({"i": i, "s": "x" * (i * 10)})
        model.append(i)
        if i % 3 == 0:
            del v[0]
            del model[0]
    assert [m["i"] for m in v] == model
    assert img.stats()["collections"] >= 30
    img.check()


# -- blobs ------------------------------------------------------------------------------

def test_blob_is_stored_once_by_keyed_hash(img):
    """The same bytes give the same Blob; read() returns them; the hash is keyed per image."""
    import hashlib
    data = b"attachment " * 10_000
    b1 = img.blob(data)
    b2 = img.blob(bytearray(data))
    assert b1 is b2 and b1.read() == data and len(b1) == len(data)
    assert len(b1.hash) == 32 and b1.hash != hashlib.blake2b(data, digest_size=32).digest()
    assert img.blob_by_hash(b1.hash) is b1
    assert img.stats()["object_bytes"] < len(data) // 4   # compressed


def test_blobs_persist_and_the_index_is_weak(path):
    """A stored blob survives a reopen; an unreferenced one is collected."""
    img = image.open(path)
    img.root["att"] = img.blob(b"kept" * 1000)
    dropped = img.blob(b"dropped" * 1000)
    digest = dropped.hash
    del dropped
    import gc
    gc.collect()
    img.gc()
    assert img.blob_by_hash(digest) is None
    img.check()
    img.close()
    img = image.open(path)
    assert img.root["att"].read() == b"kept" * 1000
    assert img.blob(b"dropped" * 1000).read() == b"dropped" * 1000
    img.check()
    img.close()


# -- the inbox shape ----------------------------------------------------------------------

def test_mark_one_mail_read_dirties_one_page(img):
    """Setting a flag of a stored mail dirties at most two pages (one plus a boundary)."""
    img.root["inbox"] = []
    with img.transaction():
        for i in range(300):
            img.root["inbox"].append({"from": "a@b.c", "subject": f"s{i}", "read": False,
                                      "body": "b" * 1000})
    inbox = img.root["inbox"]
    with img.transaction():
        inbox[150]["read"] = True
        assert img.store.dirty_pages <= 2
    assert inbox[150]["read"] is True


def test_a_failed_store_inside_a_caught_transaction_leaves_a_valid_heap(img):
    """A container whose copy failed half way is garbage the verifier accepts."""
    with img.transaction():
        with pytest.raises(TypeError):
            img.root["x"] = [1, 2, {"k": [3, {4}]}]
        with pytest.raises(TypeError):
            img.root["y"] = {"a": [object()]}
        with pytest.raises(TypeError):
            img.root["t"] = (1, (2, {3}))
        img.root["z"] = [1]
    assert "x" not in img.root and "y" not in img.root
    img.check()
    assert img.gc()["objects"] >= 4
    img.check()


# -- classes ------------------------------------------------------------------------------

def test_defined_classes_make_objects_with_slots_that_persist(path):
    """define_class adds to the class table; new() makes objects whose slots persist."""
    img = image.open(path)
    point = img.define_class("point", ("x", "y"))
    assert point >= image.LAYOUT["N_SYSTEM_CLASSES"]
    assert img.class_info(point) == ("point", "record", ("x", "y"))
    p = img.new(point, [1, [2]])
    img.root["p"] = p
    p[0] = "one"
    assert len(p) == 2 and p[0] == "one" and list(p[1]) == [2] and p[-1] is p[1]
    with pytest.raises(IndexError):
        p[2]
    with pytest.raises(ValueError):
        img.new(point + 1, [])        # not defined
    with pytest.raises(ValueError):
        img.new(image.LAYOUT["C_VECTOR"], [])   # system classes are made by storing values
    img.close()
    img = image.open(path)
    p = img.root["p"]
    assert isinstance(p, image.Object) and p.class_index == point and p[0] == "one"
    img.check()
    img.close()


class TestTimeTravel:
    """img.at(commit): a read-only image of an older commit, beside the live one."""

    def test_an_old_commit_reads_as_it_was(self, path):
        """The view sees the values of its commit; the live image goes on; neither disturbs the other."""
        img = image.open(path)
        img.root["inbox"] = [{"subject": "a"}]
        then = img.head
        img.root["inbox"].append({"subject": "b"})
        img.root["inbox"][0]["subject"] = "changed"
        old = img.at(then)
        assert [m["subject"] for m in old.root["inbox"]] == ["a"]
        assert [m["subject"] for m in img.root["inbox"]] == ["changed", "b"]
        assert old.check()["objects"] > 0
        with pytest.raises(image.ReadOnlyImage):
            old.root["x"] = 1
        old.close()
        img.root["after"] = 1   # the live image is unaffected by the closed view
        img.close()

    def test_a_commit_that_is_not_on_disk_is_refused(self, path):
        img = image.open(path)
        with pytest.raises(KeyError):
            img.at(img.head + 5)
        img.close()

    def test_rewind_goes_on_from_an_older_commit(self, path):
        """img.rewind(n): the state is commit n's, handles go stale, new commits branch from n."""
        img = image.open(path)
        img.root["x"] = [1]
        then = img.head
        img.root["x"].append(2)
        later = img.head
        held = img.root["x"]
        img.rewind(then)
        with pytest.raises(image.StaleHandle):
            len(held)
        assert list(img.root["x"]) == [1] and img.base == then
        img.root["x"].append(3)
        old = img.at(later)   # the abandoned line stays reachable
        assert list(old.root["x"]) == [1, 2]
        old.close()
        img.check()
        img.close()
        with image.open(path) as again:
            assert list(again.root["x"]) == [1, 3]
