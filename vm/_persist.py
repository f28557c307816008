"""Scheme values in the image: how they are stored, read back, and become handles.

The image (image/, native/objmem.c) stores Python's values by itself; this
module teaches it Scheme's, through the two doors the image offers:

- the encode hook (objmem.c, "the encode hook"): an ``_Encoder`` per image
  says how a Scheme value the image does not know is stored:

      Scheme value             stored as                    read back as
      -----------------------  ---------------------------  ---------------------
      Char                     a character immediate        the interned Char
      '() / eof                the nil / eof specials       NIL / EOF
      Symbol                   the image's one SYMBOL       the interned Symbol
      Pair (transient)         a PAIR object                PersistentPair
      MString (transient)      an MSTRING object (1 slot)   PersistentString
      compiled procedure       a CLOSURE: name, "lambda",   the procedure (see
                               its core lambda form         PROCEDURES below)
      standard procedure       a CLOSURE: name, "system"    the procedure
      record                   an object of the image class the type's stored
                               "record:NAME" (its fields)   subclass (see below)
      SVector, str, numbers,   as Python's (a Vector, a     a Vector handle, ...
      bool, None, bytes        string, ...)
      HashTable (transient)    a Table (as a dict)          a Table handle

- register_values: the classes and makers above, process-wide.

PersistentPair and PersistentString are subclasses of Pair and MString (and
a stored record's class a subclass of its type's class), so every isinstance
check of the Scheme layer takes them as they are; their fields are
properties that read and write the image.

PROMOTION (Smalltalk's become:).  When a global is bound, or a slot of a
stored pair, string or record, an item of an image vector or an entry of
an image table is written (``store``, ``store_items``; vm/_builtins and
vm/_interp call them), every transient pair, string and record the stored
value reaches turns into the handle of its image copy: code still holding
any of them sees later changes, and eq? stays right, inner pairs included.
The store itself tells where each went: between heap.record_made() and
heap.made() objmem lists every value its encode hook described as a pair or
an object, with the address it was stored at (objmem.c, "made objects"), and
heap.turn() turns them in bulk, in C; nothing is decoded, so promotion costs
O(objects stored) on top of the store, shares what is shared and ends on
cycles.  A transient vector or hash table is copied in, not turned (code
that still holds it changes the copy it holds), but the pairs, strings and
records inside it are turned.  Items stored together (vector-fill!,
vector-copy!) are one value (heap.vec_store): items that share a transient
share its copy.  A Python caller storing into the image directly
(img.root[...] = x) copies: promotion is the Scheme layer's.

UNDOING A PROMOTION.  A promoted transient is the handle of an object made
in the running transaction; if that transaction (or the savepoint) rolls
back, the image makes the handle stale.  Each promotion therefore logs the
transient's class and fields in its environment (``Promotions``, a flat
list heap.turn appends to) until the form's transaction ends: on rollback the logged transients get their class
and values back (a closure or a guard's local that holds one can still use
it); on commit the log is dropped.

PROCEDURES.  A procedure stored in one image is one CLOSURE, however often
it is stored: a compiled procedure remembers the handle of its CLOSURE
(``scheme_handle``), a standard one is remembered per environment by name,
and the handle remembers the procedure (``_proc``).  Reading a CLOSURE back
through a pair, a record, a global, an image vector or table (vm/_builtins'
readers call read_back) gives that procedure when it is known
(so ``(memq f hooks)`` finds f, in this session and after a reopen, once f
has run); a CLOSURE not yet called reads back as its StoredProcedure handle,
which is callable.  A handle keeps its object alive (handles are roots), so
a remembered CLOSURE's address is never reused while the procedure lives.

RECORDS PER IMAGE.  A record type defined while an interpreter runs a form
on image I gets its class in I only (``running``); a record is stored with
the class of the image it is stored into, and cannot be stored into an
image where its type was never defined (a clear TypeError).

WHAT CANNOT BE STORED: a procedure that captures local variables (a closure
over a let), a continuation, a port, a parameter object, a promise.  Bound
to a global, such a value lives for the session and its definition is kept
as source and run again when the image boots (_interp); put into a stored
object, it is a clear error and the form rolls back.  Record types are
replayed the same way, before the root is read, so that stored records
read back as records of the type.

NOTHING HERE HOLDS AN IMAGE FROM A PROCESS-WIDE TABLE: per-image state lives
in the image's environment (ImageEnvironment) or on handles; the module's
tables hold images and environments weakly, and an interpreter's own
procedures (image:commit ...) are registered on its environment, not
process-wide.  So a closed image is freed with its interpreter.

INVARIANTS (``check_promotions`` verifies 3 and 4)
1. A StoredProcedure compiles its core form at most once per handle, in the
   environment of the interpreter that owns the image.
2. Nothing here commits except a slot write made outside any transaction
   (its own autocommit), which promotes only after the commit.
3. Every logged promotion's transient is either the live handle of its
   image address (same heap), or stale and waiting to be restored (or, its
   turn having failed half way, still of its transient class).
4. A remembered procedure handle (scheme_handle, system_closures) that is
   not stale belongs to a live image and its _proc is the procedure.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from fractions import Fraction
from typing import Any, Callable, Iterator

import image
from image import LAYOUT
from native._fastpath import HandleBase

from ._printer import register_printer
from ._types import (EOF, NIL, RECORD_TYPE_HOOKS, Char, MString, Pair, Record, RecordType,
                     SchemeError, SVector, Symbol, char, field_slot, intern)

C_PAIR, C_MSTRING, C_CLOSURE = LAYOUT["C_PAIR"], LAYOUT["C_MSTRING"], LAYOUT["C_CLOSURE"]

__all__ = ["PersistentPair", "PersistentString", "Promotions", "StoredProcedure", "encode_value", "read_back",
           "install", "kept", "running", "store", "store_items", "to_transient"]

# Values that hold no object of their own: never promoted, never walked.
_ATOMS = frozenset((int, float, complex, Fraction, str, bytes, bool, type(None), Symbol, Char,
                    type(NIL)))


def _set(handle: HandleBase, index: int, value: Any) -> None:
    """Writes slot index of handle's object, in the current transaction (or
    one of its own), and promotes the transients value reaches."""
    img, heap, addr = handle._img, handle._heap, handle._addr
    if img._depth:
        if type(value) in _ATOMS:   # the common case: nothing to promote
            heap.set_slot(addr, index, value)
        else:
            store(img, value, lambda: heap.set_slot(addr, index, value))
        return

    def write() -> None:
        with img.transaction():
            heap.set_slot(addr, index, value)
    store(img, value, write)   # committed by then: there is nothing to undo


def read_back(value: Any) -> Any:
    """A slot's value as Scheme code sees it: a stored procedure is the
    procedure itself when it is known (see PROCEDURES)."""
    return value._known() if type(value) is StoredProcedure else value


class PersistentPair(Pair):
    """A pair in the image: car and cdr read and write its two slots."""

    __slots__ = ()

    @property
    def car(self) -> Any:
        value = self._heap.slot(self._addr, 0)
        return value._known() if type(value) is StoredProcedure else value

    @car.setter
    def car(self, value: Any) -> None:
        _set(self, 0, value)

    @property
    def cdr(self) -> Any:
        value = self._heap.slot(self._addr, 1)
        return value._known() if type(value) is StoredProcedure else value

    @cdr.setter
    def cdr(self, value: Any) -> None:
        _set(self, 1, value)

    def __repr__(self) -> str:
        return f"<PersistentPair at {self._addr:#x}>"


class PersistentString(MString):
    """A mutable string in the image: .s reads and replaces its one slot (a str)."""

    __slots__ = ()

    @property
    def s(self) -> str:
        return self._heap.slot(self._addr, 0)

    @s.setter
    def s(self, value: str) -> None:
        _set(self, 0, value)

    def __repr__(self) -> str:
        return f"<PersistentString at {self._addr:#x}>"


def _gone(self: Any, *args: Any) -> Any:
    from image import StaleHandle
    raise StaleHandle(f"the object at {self._addr:#x} is gone: it was made in a transaction "
                      "that rolled back, or its image was closed")


class _StalePair(Pair):
    """What a PersistentPair becomes when its object is gone."""

    __slots__ = ()
    car = cdr = property(_gone, _gone)


class _StaleString(MString):
    __slots__ = ()
    s = property(_gone, _gone)


PersistentPair.stale_class = _StalePair
PersistentString.stale_class = _StaleString


# -- records -------------------------------------------------------------------------
#
# A record type gets a class in the image ("record:NAME" with its fields; the
# same name and fields find the same class in a later session) and a
# persistent subclass of its Python class whose fields read and write the
# image object's slots, so the type's accessors, modifiers and predicate take
# stored records as they are.  The class index is kept per (type, image): the
# image whose interpreter ran the form that defined the type.

# transient class -> its persistent class (records: weakly, a type can go away)
_PERSISTENT_CLASSES: "weakref.WeakKeyDictionary[type, type]" = weakref.WeakKeyDictionary(
    {Pair: PersistentPair, MString: PersistentString})
_RUNNING: list[Any] = []   # the images whose interpreters are running a form, innermost last


@contextlib.contextmanager
def running(img: image.Image) -> Iterator[None]:
    """While an interpreter runs a form on img: record types made belong to img."""
    _RUNNING.append(img)
    try:
        yield
    finally:
        _RUNNING.pop()


def _record_field(index: int) -> property:
    def get(self: Any) -> Any:
        value = self._heap.slot(self._addr, index)
        return value._known() if type(value) is StoredProcedure else value

    def put(self: Any, value: Any) -> None:
        _set(self, index, value)
    return property(get, put)


def persistent_record_class(rtd: RecordType) -> type:
    """The class of stored records of this type (made once per type)."""
    cls = _PERSISTENT_CLASSES.get(rtd.cls)
    if cls is None:
        fields = {field_slot(f): _record_field(i) for i, f in enumerate(rtd.fields)}
        stale = type(f"stale {rtd.name}", (rtd.cls,), {"__slots__": (), **{
            field_slot(f): property(_gone, _gone) for f in rtd.fields}})
        cls = type(f"stored {rtd.name}", (rtd.cls,), {"__slots__": (), "stale_class": stale, **fields})
        _PERSISTENT_CLASSES[rtd.cls] = cls
    return cls


record_types_made = 0   # a form that moved this defined a record type (vm/_interp)

# record type -> {image: class index}, both weakly
_RECORD_INDEX: "weakref.WeakKeyDictionary[RecordType, weakref.WeakKeyDictionary]" = \
    weakref.WeakKeyDictionary()


def _record_type_made(rtd: RecordType) -> None:
    """A new record type: its class in the image whose interpreter is running."""
    global record_types_made
    record_types_made += 1
    img = _RUNNING[-1] if _RUNNING else None
    if img is None or img.closed:
        return
    try:
        index = img.class_index(f"record:{rtd.name}", rtd.fields)
    except image.ReadOnlyImage:
        return   # a read-only image cannot hold records of a type it does not know
    img.set_handle_class(index, persistent_record_class(rtd))
    _RECORD_INDEX.setdefault(rtd, weakref.WeakKeyDictionary())[img] = index


RECORD_TYPE_HOOKS.append(_record_type_made)


def _record_record(x: Record, img: Any) -> tuple:
    rtd = type(x).record_type
    index = _RECORD_INDEX.get(rtd, {}).get(img) if img is not None else None
    if index is None:
        raise TypeError(f"cannot store a {rtd.name} record in this image: its type was not "
                        "defined by this image's interpreter")
    return ("object", index, [getattr(x, field_slot(f)) for f in rtd.fields])


# -- procedures -----------------------------------------------------------------------

# The process-wide procedures stored by name (the standard ones and the
# runtime's helpers).  An interpreter's own procedures (image:commit, which
# close over it) are registered on its environment instead (register_own).
_SYSTEM_NAMES: dict[int, str] = {}          # id(procedure) -> its registry name
_SYSTEM_PROCEDURES: dict[str, Callable] = {}  # registry name -> procedure
# image -> a weak reference to the environment its stored procedures compile
# in (weak both ways: an image and its interpreter are freed when closed).
_ENVIRONMENTS: "weakref.WeakKeyDictionary[Any, weakref.ref]" = weakref.WeakKeyDictionary()


def _environment_of(img: Any) -> Any:
    ref = _ENVIRONMENTS.get(img)
    return ref() if ref is not None else None


def register_system_procedures(procedures: dict[str, Callable]) -> None:
    """Process-wide procedures that are stored by name: the standard ones and
    the runtime's helpers that expanded code embeds as constants."""
    for name, proc in procedures.items():
        if callable(proc):   # a later registration of a name replaces it
            _SYSTEM_NAMES[id(proc)] = name
            _SYSTEM_PROCEDURES[name] = proc


def register_own(env: Any, procedures: dict[str, Callable]) -> None:
    """An interpreter's own procedures, stored by name, found again through
    the environment of the image a CLOSURE is read from."""
    for name, proc in procedures.items():
        env.own_procedures[name] = proc
        env.own_names[id(proc)] = name


@functools.cache   # once per process: the modules do not change
def register_runtime_constants() -> None:
    """The runtime's and the expander's procedures that expanded code embeds
    as constants ((quote <procedure>)), by module and name, so that a stored
    core form that holds one can be stored and read back."""
    from . import _expand, _runtime
    for prefix, module in (("runtime", _runtime), ("expand", _expand)):
        register_system_procedures({f"{prefix}:{name}": value for name, value in vars(module).items()
                                    if callable(value) and not isinstance(value, type)
                                    and getattr(value, "__module__", None) == module.__name__})


def _system_name(proc: Callable, env: Any) -> str | None:
    """The registry name proc is stored by, or None (ids can be reused: the
    registry must still hold proc itself)."""
    name = _SYSTEM_NAMES.get(id(proc))
    if name is not None and _SYSTEM_PROCEDURES.get(name) is proc:
        return name
    if env is not None:
        name = env.own_names.get(id(proc))
        if name is not None and env.own_procedures.get(name) is proc:
            return name
    return None


def _system_procedure(name: str, env: Any) -> Callable | None:
    proc = env.own_procedures.get(name) if env is not None else None
    return proc if proc is not None else _SYSTEM_PROCEDURES.get(name)


def _link(proc: Callable, handle: "StoredProcedure", env: Any) -> None:
    """proc is stored as handle's CLOSURE: each remembers the other (PROCEDURES)."""
    handle._proc = proc
    name = _system_name(proc, env)
    if name is not None:
        if env is not None:
            env.system_closures[name] = handle
        return
    try:
        proc.scheme_handle = handle
    except (AttributeError, TypeError):
        pass   # a callable without attributes is stored again each time


def _usable(handle: Any, img: Any) -> bool:
    """handle is a live CLOSURE handle of img."""
    return handle is not None and img is not None and handle._heap is img._heap


class StoredProcedure(HandleBase):
    """A procedure in the image.  Calling it compiles its core form once (per
    handle) and calls the result; a standard procedure is found by name."""

    __slots__ = ("_proc",)   # the procedure it stands for, once known

    @property
    def scheme_name(self) -> str:
        return self._heap.slot(self._addr, 0)

    def procedure(self) -> Callable:
        """The Python callable this stored procedure stands for."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            env = _environment_of(self._img)
            proc = self._build(env)
            _link(proc, self, env)
            if env is not None:   # the global that holds it calls the procedure directly from now on
                from ._env import mangle
                key = mangle(self.scheme_name)
                if env.namespace.get(key) is self:
                    env.namespace[key] = proc
                    if getattr(proc, "scheme_baked", None):
                        env.track(proc)   # recompiled when a global it baked in changes
        return proc

    def _known(self) -> Any:
        """The procedure, when it is known without compiling; else self."""
        proc = getattr(self, "_proc", None)
        if proc is not None:
            return proc
        if self._heap.slot(self._addr, 1) == "system":
            try:
                return self.procedure()
            except SchemeError:
                return self   # a procedure this version lacks: calling it says so
        return self

    def _build(self, env: Any) -> Callable:
        heap, addr = self._heap, self._addr
        name, kind = heap.slot(addr, 0), heap.slot(addr, 1)
        if kind == "system":
            proc = _system_procedure(name, env)
            if proc is None:
                raise SchemeError(f"the image holds the standard procedure {name}, which this "
                                  "version of imago does not have")
            return proc
        if env is None:
            raise SchemeError(f"{name}: a stored procedure needs an interpreter on its image")
        from ._compile import compile_lambda
        return compile_lambda(to_transient(heap.slot(addr, 2)), env, name)

    def __call__(self, *args: Any) -> Any:
        return self.procedure()(*args)

    def __repr__(self) -> str:
        return f"<StoredProcedure {self.scheme_name} at {self._addr:#x}>"


class _StaleProcedure(StoredProcedure):
    """What a StoredProcedure becomes when its object is gone."""

    __slots__ = ()
    scheme_name = property(_gone)
    procedure = _known = _gone

    def __repr__(self) -> str:
        return f"<stale StoredProcedure at {self._addr:#x}>"


StoredProcedure.stale_class = _StaleProcedure
# A stored procedure not yet compiled in this session (read back after a
# reopen) prints as the procedure it stands for, not as the handle it is.
register_printer(StoredProcedure, lambda p: f"#<procedure {p.scheme_name}>")
register_printer(_StaleProcedure, lambda p: f"#<stale procedure at {p._addr:#x}>")


def _procedure_record(proc: Callable, img: Any) -> tuple:
    """How a procedure is stored: its image's CLOSURE when it has one, else a
    new CLOSURE; TypeError when it cannot be stored."""
    env = _environment_of(img) if img is not None else None
    name = _system_name(proc, env)
    if name is not None:
        known = env.system_closures.get(name) if env is not None else None
        if _usable(known, img):
            return ("same", known)
        return ("object", C_CLOSURE, [name, "system", None])
    known = getattr(proc, "scheme_handle", None)
    if _usable(known, img):
        return ("same", known)
    core = getattr(proc, "scheme_lambda", None)
    if core is None:
        raise TypeError(f"cannot store the procedure {_describe(proc)} in the image")
    if getattr(proc, "__closure__", None):
        raise TypeError(f"cannot store the procedure {_describe(proc)} in the image: it captures "
                        "local variables (only procedures over globals are stored)")
    return ("object", C_CLOSURE, [getattr(proc, "scheme_name", None) or "lambda", "lambda", core])


def _describe(proc: Any) -> str:
    return getattr(proc, "scheme_name", None) or getattr(proc, "__name__", type(proc).__name__)


# -- the encode hook --------------------------------------------------------------------

def encode_value(x: Any, img: Any = None) -> tuple:
    """How img stores a Scheme value it does not know (objmem.c's hook)."""
    t = type(x)
    if t is Char:
        return ("char", x.cp)
    if x is NIL:
        return ("nil",)
    if x is EOF:
        return ("eof",)
    if t is Symbol:
        return ("symbol", x.name)
    if isinstance(x, Pair):
        return ("pair", x.car, x.cdr)
    if isinstance(x, MString):
        return ("object", C_MSTRING, [x.s])
    if isinstance(x, Record):
        return _record_record(x, img)
    if isinstance(x, StoredProcedure):   # of another image, or stale: its callable
        return encode_value(x.procedure(), img)
    if callable(x):
        return _procedure_record(x, img)
    table = _as_dict(x)
    if table is not None:
        return ("same", table)
    raise TypeError(f"cannot store {_kind_of(x)} in the image")


def _encoder(image_ref: "weakref.ref") -> Callable[[Any], tuple]:
    """img's encode hook: encode_value with the image (held weakly: the image holds the hook)."""
    def encode(x: Any) -> tuple:
        if type(x) is Pair:   # the common case, first: a list stores one call per pair
            return ("pair", x.car, x.cdr)
        return encode_value(x, image_ref())
    return encode


def _as_dict(x: Any) -> dict | None:
    from ._builtins import HashTable
    if not isinstance(x, HashTable):
        return None
    return {(k.s if isinstance(k, MString) else k): v for k, v in x.items()}


def _kind_of(x: Any) -> str:
    name = type(x).__name__.lower()
    return f"a {name}" if name[0] not in "aeiou" else f"an {name}"


# -- promotion (become:) -------------------------------------------------------------------

class Promotions:
    """The transients promoted in the running transaction, with what undoes
    each, until the transaction ends (see UNDOING A PROMOTION).  An
    environment owns one.

    ``saved`` is flat, as objmem's turn() appends to it: for each promoted
    transient, its field values, then the transient, then its transient
    class (whose fields say how many values precede).  So a promotion costs
    no tuple, and the log is read from its end."""

    __slots__ = ("saved",)

    def __init__(self) -> None:
        self.saved: list[Any] = []

    def mark(self) -> int:
        """A point undo_to can go back to (a savepoint's)."""
        return len(self.saved)

    def undo_to(self, mark: int) -> None:
        """The transaction (or savepoint) rolled back: every transient promoted
        since mark whose handle went stale is transient again, newest first."""
        for obj, cls, names, values in self._newest_first(mark, pop=True):
            if _is_stale_promotion(obj, cls):
                _restore(obj, cls, names, values)

    def forget(self) -> None:
        """The transaction committed: its promotions stand."""
        self.saved.clear()

    def settle(self) -> None:
        """Outside any transaction: restores what a rollback made stale
        (a transaction the interpreter did not run, Python's), forgets the rest."""
        self.undo_to(0)

    def check(self) -> None:
        """Invariant 3: each logged transient is a live handle of its
        persistent class, or stale (or, its turn having failed, still
        transient: undo leaves it)."""
        for obj, cls, _, _ in self._newest_first(0, pop=False):
            live = type(obj) is _PERSISTENT_CLASSES.get(cls) and obj._heap is not None
            if not (live or type(obj) is cls or _is_stale_promotion(obj, cls)):
                raise AssertionError(f"a promoted {cls.__name__} is neither a live handle nor stale: "
                                     f"{type(obj).__name__}")

    def _newest_first(self, mark: int, pop: bool) -> Iterator[tuple[Any, type, tuple, tuple]]:
        """(transient, class, field names, values) of the entries after mark."""
        saved, end = self.saved, len(self.saved)
        while end > mark:
            cls, obj = saved[end - 1], saved[end - 2]
            names = _fields_of(cls)
            start = end - 2 - len(names)
            if start < mark or not isinstance(cls, type):
                raise AssertionError("the promotion log does not parse")
            values = tuple(saved[start:end - 2])
            if pop:
                del saved[start:]
            end = start
            yield obj, cls, names, values


def _fields_of(cls: type) -> tuple[str, ...]:
    """The fields a transient of cls holds and a promotion clears."""
    return getattr(cls, "transient_fields", None) or tuple(cls.__slots__)


def _is_stale_promotion(obj: Any, cls: type) -> bool:
    persistent = _PERSISTENT_CLASSES.get(cls)
    return persistent is not None and type(obj) is persistent.stale_class


def _restore(obj: Any, cls: type, names: tuple[str, ...], values: tuple) -> None:
    """A stale promoted transient back to its transient class and values."""
    obj.__class__ = cls   # from its stale class: the same layout
    for name in ("_img", "_heap", "_addr"):   # unset, as in every transient
        if hasattr(obj, name):
            delattr(obj, name)
    for name, value in zip(names, values):
        setattr(obj, name, value)


def store(img: Any, value: Any, write: Callable[[], Any]) -> None:
    """write() stores value into img with one image operation (a slot, a
    global, a vector item, a table entry); then every transient pair, string
    and record it copied in turns into the handle of its copy, and every
    procedure is linked to its CLOSURE (see PROMOTION).  Outside a
    transaction the operation committed by itself: nothing to undo is logged.
    Without an interpreter on img (Python's API, a closed image: img None
    or its handle's stale) the value is only copied, or write() says why not."""
    env = _environment_of(img) if img is not None and type(value) not in _ATOMS else None
    heap = getattr(img, "_heap", None) if env is not None else None
    if heap is None:
        write()
        return
    heap.record_made()
    try:
        write()
    finally:
        made = heap.made()
    if made:
        _turn_made(made, heap, env, env.promotions if img._depth else None)


def store_items(vector: Any, start: int, items: list) -> None:
    """vector[start:start + len(items)] = items (an image Vector; they fit),
    in the current transaction or its own, the items stored as one value:
    items that share a transient share its copy ((vector-fill! v s) stores
    s once), which then is the transient (store)."""
    img, heap = getattr(vector, "_img", None), getattr(vector, "_heap", None)
    if heap is None:   # stale: the slice assignment says so
        vector[start:start + len(items)] = items
        return
    addr = vector._addr

    def write() -> None:
        heap.vec_store(addr, start, items)
    if img._depth:
        store(img, items, write)
        return

    def write_committed() -> None:
        with img.transaction():
            write()
    store(img, items, write_committed)   # committed by then: there is nothing to undo


def kept(value: Any, read: Callable[[], Any]) -> Any:
    """What a holder of the value just stored keeps: value itself when it
    was turned, is a handle or a procedure; else (a copied vector or hash
    table, a record stored as another type's) the stored copy, read()."""
    if type(value) in _ATOMS or callable(value) or getattr(value, "_heap", None) is not None:
        return value
    return read()


def _turn_made(made: list, heap: Any, env: Any, log: Promotions | None) -> None:
    """Each (value, address) objmem recorded (see objmem.c, "made objects"):
    a transient pair, string or record becomes the handle of address (in
    bulk, by heap.turn), a procedure is linked to its CLOSURE.  A value seen
    twice (stored twice in one operation) is turned once: the second time
    it is a handle already."""
    saved = log.saved if log is not None else None
    rest = heap.turn(made, _TURNABLE, saved)
    if not rest:
        return
    verdicts: dict[type, bool] = {}   # record class -> it reads back as its own (one decode each)
    procedures = []
    it = iter(rest)
    for transient, addr in zip(it, it):
        cls = type(transient)
        if cls in _PERSISTENT_CLASSES:
            if cls not in verdicts:
                verdicts[cls] = _reads_back_as_own(cls, heap, addr)
        elif callable(transient) and getattr(transient, "_heap", None) is None:
            procedures.append((transient, addr))
    records = {cls: (_PERSISTENT_CLASSES[cls], _fields_of(cls)) for cls, ok in verdicts.items() if ok}
    if records:
        heap.turn(rest, records, saved)
    for proc, addr in procedures:
        handle = heap.decode(addr)
        if type(handle) is StoredProcedure:
            _link(proc, handle, env)


# what heap.turn turns without asking: the classes that always read back as their persistent one
_TURNABLE = {Pair: (PersistentPair, Pair.transient_fields), MString: (PersistentString, ("s",))}


def _reads_back_as_own(cls: type, heap: Any, addr: int) -> bool:
    """Whether records of class cls read back from this image as cls's
    persistent class (another type of the same name and fields may have
    taken the image class over: then the record stays a copy)."""
    return type(heap.decode(addr)) is _PERSISTENT_CLASSES[cls]


# -- reading back for the compiler --------------------------------------------------------

def to_transient(x: Any) -> Any:
    """A transient copy of a datum read from the image (pairs, strings and
    vectors of the image made plain), for the compiler, which builds on
    plain data; standard procedures become the procedures themselves."""
    if isinstance(x, PersistentPair):
        head = tail = None
        while isinstance(x, PersistentPair):
            cell = Pair(to_transient(x.car), NIL)
            if head is None:
                head = cell
            else:
                tail.cdr = cell
            tail = cell
            x = x.cdr
        tail.cdr = to_transient(x)
        return head
    if isinstance(x, PersistentString):
        return MString(x.s)
    if isinstance(x, image.Vector):
        return SVector(to_transient(item) for item in x)
    if isinstance(x, StoredProcedure) and x._heap.slot(x._addr, 1) == "system":
        return x.procedure()
    return x


# Reading Scheme's values back is process-wide (the classes are the image's
# system classes, the same index in every image), so importing vm is enough.
image.register_values(
    {C_PAIR: PersistentPair, C_MSTRING: PersistentString, C_CLOSURE: StoredProcedure},
    {"char": char, "nil": lambda _: NIL, "eof": lambda _: EOF, "symbol": intern})


def install(img: image.Image, env: Any) -> None:
    """Makes img store Scheme values, and stored procedures compile in env
    (which holds the per-image state: own_procedures, own_names,
    system_closures, promotions)."""
    img.set_encode_hook(_encoder(weakref.ref(img)))
    _ENVIRONMENTS[img] = weakref.ref(env)


def check_procedures(env: Any) -> None:
    """Invariant 4 for env's remembered standard CLOSUREs."""
    for name, handle in env.system_closures.items():
        if handle._heap is not None and handle._proc is not _system_procedure(name, env):
            raise AssertionError(f"the CLOSURE remembered for {name} stands for another procedure")
