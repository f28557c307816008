"""Model test: vectors and tables behave exactly like Python lists and dicts
through random operations, with commits, rollbacks, reopens and collections
between them (hypothesis stateful testing; seeded by hypothesis' database
and derandomised in CI)."""
import copy
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import image

# A 1 KiB page makes leaves of 126 items and nodes of 63 entries, so a few
# hundred operations split leaves and grow the tree.
PAGE_SIZE = 1024

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=False), st.text(max_size=12), st.binary(max_size=12),
)
values = st.one_of(scalars, st.tuples(scalars, scalars))
keys = st.one_of(
    st.integers(-5, 5), st.sampled_from([0.0, 1.0, 2.5, -1.0]), st.booleans(), st.none(),
    st.text(max_size=10), st.binary(max_size=10), st.tuples(st.integers(0, 3), st.text(max_size=3)),
)
NAMES = ("v0", "v1")
TABLES = ("t0", "t1")


class ImageModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="imago-model-")
        self.path = self.dir + "/m.image"
        self.img = image.open(self.path, page_size=PAGE_SIZE)
        with self.img.transaction():
            for name in NAMES:
                self.img.root[name] = []
            for name in TABLES:
                self.img.root[name] = {}
        self.model = {name: [] for name in NAMES} | {name: {} for name in TABLES}
        self.txns = []        # open transactions (nested ones are savepoints), with
                              # the model as it was when each began

    def teardown(self):
        while self.txns:
            self.txns.pop()[0].__exit__(RuntimeError, RuntimeError(), None)
        self.img.check()
        self.img.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def vec(self, name):
        return self.img.root[name]

    # -- vectors ------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), value=values)
    def append(self, name, value):
        self.vec(name).append(value)
        self.model[name].append(value)

    @rule(name=st.sampled_from(NAMES), items=st.lists(scalars, min_size=50, max_size=300))
    def extend(self, name, items):
        self.vec(name).extend(items)
        self.model[name].extend(items)

    @rule(name=st.sampled_from(NAMES), index=st.integers(-400, 400), value=values)
    def insert(self, name, index, value):
        self.vec(name).insert(index, value)
        self.model[name].insert(index, value)

    @rule(name=st.sampled_from(NAMES), index=st.integers(-400, 400))
    def delete(self, name, index):
        model = self.model[name]
        if -len(model) <= index < len(model):
            del self.vec(name)[index]
            del model[index]
        else:
            with pytest.raises(IndexError):
                del self.vec(name)[index]

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def delete_slice(self, name, data):
        n = len(self.model[name])
        start = data.draw(st.integers(0, n))
        stop = data.draw(st.integers(start, min(n, start + 150)))
        del self.vec(name)[start:stop]
        del self.model[name][start:stop]

    @rule(name=st.sampled_from(NAMES), index=st.integers(-400, 400), value=values)
    def set_item(self, name, index, value):
        model = self.model[name]
        if -len(model) <= index < len(model):
            self.vec(name)[index] = value
            model[index] = value
        else:
            with pytest.raises(IndexError):
                self.vec(name)[index] = value

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def read_slice(self, name, data):
        n = len(self.model[name])
        a = data.draw(st.integers(-n - 2, n + 2))
        b = data.draw(st.integers(-n - 2, n + 2))
        step = data.draw(st.sampled_from([None, 1, 2, -1, -3]))
        assert self.vec(name)[a:b:step] == self.model[name][a:b:step]

    # -- tables ---------------------------------------------------------------

    @rule(name=st.sampled_from(TABLES), key=keys, value=values)
    def table_set(self, name, key, value):
        self.img.root[name][key] = value
        self.model[name][key] = value

    @rule(name=st.sampled_from(TABLES), key=keys)
    def table_delete(self, name, key):
        table = self.img.root[name]
        if key in self.model[name]:
            del table[key]
            del self.model[name][key]
        else:
            with pytest.raises(KeyError):
                del table[key]

    @rule(name=st.sampled_from(TABLES), key=keys)
    def table_get(self, name, key):
        assert self.img.root[name].get(key, "<missing>") == self.model[name].get(key, "<missing>")

    @rule(name=st.sampled_from(TABLES), many=st.dictionaries(st.text(max_size=6), scalars, max_size=60))
    def table_update(self, name, many):
        self.img.root[name].update(many)
        self.model[name].update(many)

    # -- transactions, reopens, collections -------------------------------------

    @precondition(lambda self: len(self.txns) < 3)
    @rule()
    def begin(self):
        txn = self.img.transaction()
        txn.__enter__()
        self.txns.append((txn, copy.deepcopy(self.model)))

    @precondition(lambda self: self.txns)
    @rule()
    def commit(self):
        self.txns.pop()[0].__exit__(None, None, None)

    @precondition(lambda self: self.txns)
    @rule()
    def rollback(self):
        txn, self.model = self.txns.pop()
        txn.__exit__(RuntimeError, RuntimeError("rollback"), None)

    @precondition(lambda self: not self.txns)
    @rule()
    def reopen(self):
        self.img.close()
        self.img = image.open(self.path)

    @rule()
    def collect(self):
        self.img.gc()
        self.img.check()

    # -- invariants -------------------------------------------------------------

    @invariant()
    def contents_match(self):
        for name in NAMES:
            vec = self.img.root[name]
            assert len(vec) == len(self.model[name])
            assert list(vec) == self.model[name]
        for name in TABLES:
            table = self.img.root[name]
            assert len(table) == len(self.model[name])
            assert table.items() == list(self.model[name].items())


ImageModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True)
TestImageModel = ImageModel.TestCase
