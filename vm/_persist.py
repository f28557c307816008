"""Scheme values in the image: how they are stored, read back, and become handles.

The image (image/, native/objmem.c) stores Python's values by itself; this
module teaches it Scheme's, through the two doors the image offers:

- the encode hook (objmem.c, "the encode hook"): ``encode_value(x)`` says
  how a Scheme value the image does not know is stored:

      Scheme value             stored as                    read back as
      -----------------------  ---------------------------  ---------------------
      Char                     a character immediate        the interned Char
      '() / eof                the nil / eof specials       NIL / EOF
      Symbol                   the image's one SYMBOL       the interned Symbol
      Pair (transient)         a PAIR object                PersistentPair
      MString (transient)      an MSTRING object (1 slot)   PersistentString
      compiled procedure       a CLOSURE: name, "lambda",   StoredProcedure
                               its core lambda form
      standard procedure       a CLOSURE: name, "system"    StoredProcedure
      record                   an object of the image class the type's stored
                               "record:NAME" (its fields)   subclass (see below)
      SVector, str, numbers,   as Python's (a Vector, a     a Vector handle, ...
      bool, None, bytes        string, ...)
      HashTable (transient)    a Table (as a dict)          a Table handle

- register_values: the classes and makers above, process-wide.

PersistentPair and PersistentString are subclasses of Pair and MString (and
a stored record's class a subclass of its type's class), so every isinstance
check of the Scheme layer takes them as they are; their fields are
properties that read and write the image.  A transient pair, string or
record bound to a global becomes the handle of its image copy (``become``:
its class is switched and the image adopts it), so code still holding it
sees later changes and keeps eq? right.

WHAT CANNOT BE STORED: a procedure that captures local variables (a closure
over a let), a continuation, a port, a parameter object, a promise.  Bound
to a global, such a value lives for the session and its definition is kept
as source and run again when the image boots (_interp); put into a stored
object, it is a clear error and the form rolls back.  Record types are
replayed the same way, before the root is read, so that stored records
read back as records of the type.  A transient vector or hash table is copied in: code that still
holds the transient after storing it changes the copy it holds, not the
image's (the image's is what every later read of the global returns).

INVARIANTS
1. A StoredProcedure compiles its core form at most once per process and
   image (``_compiled``), in the environment of the interpreter that owns the
   image.
2. Nothing here commits: every store happens in the caller's transaction.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable

import image
from image import LAYOUT
from native._fastpath import HandleBase

from ._types import (EOF, NIL, RECORD_TYPE_HOOKS, Char, MString, Pair, Record, RecordType,
                     SchemeError, SVector, Symbol, char, field_slot, intern)

C_PAIR, C_MSTRING, C_CLOSURE = LAYOUT["C_PAIR"], LAYOUT["C_MSTRING"], LAYOUT["C_CLOSURE"]

__all__ = ["PersistentPair", "PersistentString", "StoredProcedure", "encode_value", "install",
           "to_transient"]


def _set(handle: HandleBase, index: int, value: Any) -> None:
    """Writes slot index of handle's object, in the current transaction (or one of its own)."""
    img = handle._img
    if img._depth:
        handle._heap.set_slot(handle._addr, index, value)
    else:
        with img.transaction():
            handle._heap.set_slot(handle._addr, index, value)


class PersistentPair(Pair):
    """A pair in the image: car and cdr read and write its two slots."""

    __slots__ = ()

    @property
    def car(self) -> Any:
        return self._heap.slot(self._addr, 0)

    @car.setter
    def car(self, value: Any) -> None:
        _set(self, 0, value)

    @property
    def cdr(self) -> Any:
        return self._heap.slot(self._addr, 1)

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
# stored records as they are.  The class index lives on the RecordType, per
# image the interpreter runs on.

_RECORD_IMAGES: "weakref.WeakSet[Any]" = weakref.WeakSet()   # images whose record types are kept
_PERSISTENT_CLASSES: dict[type, type] = {Pair: PersistentPair, MString: PersistentString}


def _record_field(index: int) -> property:
    def get(self: Any) -> Any:
        return self._heap.slot(self._addr, index)

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


def _record_type_made(rtd: RecordType) -> None:
    """A new record type: its class in each image an interpreter runs on."""
    global record_types_made
    record_types_made += 1
    for img in list(_RECORD_IMAGES):
        if img.closed:
            continue
        try:
            index = img.class_index(f"record:{rtd.name}", rtd.fields)
        except image.ReadOnlyImage:
            continue   # a read-only image cannot hold records of a type it does not know
        img.set_handle_class(index, persistent_record_class(rtd))
        rtd_indexes = _RECORD_INDEX.get(rtd)
        if rtd_indexes is None:
            rtd_indexes = _RECORD_INDEX[rtd] = weakref.WeakKeyDictionary()
        rtd_indexes[img] = index


_RECORD_INDEX: "weakref.WeakKeyDictionary[RecordType, dict]" = weakref.WeakKeyDictionary()
RECORD_TYPE_HOOKS.append(_record_type_made)


def _record_record(x: Record) -> tuple:
    rtd = type(x).record_type
    for img, index in _RECORD_INDEX.get(rtd, {}).items():
        return ("object", index, [getattr(x, field_slot(f)) for f in rtd.fields])
    raise TypeError(f"cannot store a {rtd.name} record: its type was defined with no image open")


# -- procedures -----------------------------------------------------------------------

_SYSTEM_NAMES: dict[int, str] = {}          # id(procedure) -> its registry name
_SYSTEM_PROCEDURES: dict[str, Callable] = {}  # registry name -> procedure
# image -> a weak reference to the environment its stored procedures compile
# in (weak both ways: an image and its interpreter are freed when closed).
_ENVIRONMENTS: "weakref.WeakKeyDictionary[Any, weakref.ref]" = weakref.WeakKeyDictionary()
# A stored procedure's compiled code, keyed by its handle: an address can be
# freed (rollback, gc, rewind) and reused by another procedure, whose new
# handle then compiles its own code.
_compiled: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def _environment_of(img: Any) -> Any:
    ref = _ENVIRONMENTS.get(img)
    return ref() if ref is not None else None


def register_system_procedures(procedures: dict[str, Callable]) -> None:
    """Procedures that are stored by name: the standard ones and the runtime's
    helpers that expanded code embeds as constants."""
    for name, proc in procedures.items():
        if callable(proc):   # a later registration of a name (a new interpreter's) replaces it
            _SYSTEM_NAMES[id(proc)] = name
            _SYSTEM_PROCEDURES[name] = proc


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


class StoredProcedure(HandleBase):
    """A procedure in the image.  Calling it compiles its core form once (per
    process) and calls the result; a standard procedure is found by name."""

    __slots__ = ()

    @property
    def scheme_name(self) -> str:
        return self._heap.slot(self._addr, 0)

    def procedure(self) -> Callable:
        """The Python callable this stored procedure stands for."""
        proc = _compiled.get(self)
        if proc is None:
            proc = _compiled[self] = self._build()
            env = _environment_of(self._img)
            if env is not None:   # the global that holds it calls the procedure directly from now on
                from ._env import mangle
                key = mangle(self.scheme_name)
                if env.namespace.get(key) is self:
                    env.namespace[key] = proc
                    if getattr(proc, "scheme_baked", None):
                        env.track(proc)   # recompiled when a global it baked in changes
        return proc

    def _build(self) -> Callable:
        heap, addr = self._heap, self._addr
        name, kind = heap.slot(addr, 0), heap.slot(addr, 1)
        if kind == "system":
            proc = _SYSTEM_PROCEDURES.get(name)
            if proc is None:
                raise SchemeError(f"the image holds the standard procedure {name}, which this "
                                  "version of imago does not have")
            return proc
        env = _environment_of(self._img)
        if env is None:
            raise SchemeError(f"{name}: a stored procedure needs an interpreter on its image")
        from ._compile import compile_lambda
        return compile_lambda(to_transient(heap.slot(addr, 2)), env, name)

    def __call__(self, *args: Any) -> Any:
        return self.procedure()(*args)

    def __repr__(self) -> str:
        return f"<StoredProcedure {self.scheme_name} at {self._addr:#x}>"


def _procedure_record(proc: Callable) -> tuple:
    """The CLOSURE a procedure is stored as, or TypeError when it cannot be."""
    name = _SYSTEM_NAMES.get(id(proc))
    if name is not None and _SYSTEM_PROCEDURES.get(name) is proc:   # an id can be reused
        return ("object", C_CLOSURE, [name, "system", None])
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

def encode_value(x: Any) -> tuple:
    """How the image stores a Scheme value it does not know (objmem.c's hook)."""
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
        return _record_record(x)
    if isinstance(x, StoredProcedure):   # of another image, or stale: its callable
        return encode_value(x.procedure())
    if callable(x):
        return _procedure_record(x)
    table = _as_dict(x)
    if table is not None:
        return ("same", table)
    raise TypeError(f"cannot store {_kind_of(x)} in the image")


def _as_dict(x: Any) -> dict | None:
    from ._builtins import HashTable
    if not isinstance(x, HashTable):
        return None
    return {(k.s if isinstance(k, MString) else k): v for k, v in x.items()}


def _kind_of(x: Any) -> str:
    name = type(x).__name__.lower()
    return f"a {name}" if name[0] not in "aeiou" else f"an {name}"


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
    """Makes img store Scheme values, and stored procedures compile in env."""
    img.set_encode_hook(encode_value)
    _ENVIRONMENTS[img] = weakref.ref(env)
    _RECORD_IMAGES.add(img)


def become(value: Any, handle: Any, img: image.Image) -> Any:
    """The transient value stored as handle's object turns into that handle
    (a Pair or an MString); other values are replaced by the handle."""
    persistent = _PERSISTENT_CLASSES.get(type(value))
    if persistent is None or type(handle) is not persistent:
        return handle
    # The transient's own fields: the image holds them now.
    for name in getattr(type(value), "transient_fields", type(value).__slots__):
        if hasattr(value, name):
            delattr(value, name)
    value.__class__ = persistent
    img.adopt(value, handle._addr)
    return value
