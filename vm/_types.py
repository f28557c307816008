"""The Scheme values while they live in the Python heap, and the calling convention.

Every other module of vm/ builds on this one; it imports nothing of vm/.

VALUES (transient: made while computing, never touching the image)

    Scheme            Python                          notes
    ----------------  ------------------------------  ---------------------------------
    #t #f             True False                      bool is checked before int
    exact integer     int (never bool)
    exact rational    fractions.Fraction              normalised: denominator 1 -> int
    inexact real      float
    inexact complex   complex                         (scheme complex)
    character         Char (.cp, the code point)      interned: char(cp) (or CHARS[cp])
                                                      is one object
    string            str (immutable) or MString      literals and strings from the
                      (mutable; .s is a Python str)   image or Python are str; make-string,
                                                      string-copy, string-append ... make
                                                      MString; string-set! needs an MString
    symbol            Symbol                          interned: one object per name
    empty list        NIL
    pair              Pair (.car, .cdr assignable)
    vector            SVector (a list subclass)       never a plain list
    bytevector        Bytevector (bytearray subclass)
    procedure         any Python callable              may return a TailCall (below)
    unspecified       None                            the REPL prints nothing for it
    end of file       EOF
    multiple values   Values (a tuple), for 0 or 2+   one value is just the value
    record            an instance of a Record subclass made by define-record-type

Why Char and not a one-character str: the image is shared with Python, whose
strings (a mail's subject) are Scheme strings as they are, with no copy at the
boundary; so a str is always a string, and a character needs a type of its
own.  ``text(x)`` gives the Python str of either kind of string.

Why subclasses and slots: a transient object that is stored into the image
(bound to a global, put into a persistent object) is promoted, and then its
class is switched to a persistent subclass that reads and writes the image
copy (Smalltalk's become:).  That keeps identity (eq?) and later mutation
right for code that still holds the transient.  So code must reach these
values only through their documented protocol, which the persistent
subclasses keep: pair.car / pair.cdr (get and set), string.s (get and set; a
Python str), v[i], v[i] = x, len(v), iter(v) and slicing (which returns a
plain list) on vectors and bytevectors, and isinstance() checks against the
classes here.  Never rely on list internals (list.sort on a vector in place,
PySequence_Fast paths like str.join(v) are fine only on a copy: list(v)).

CALLING CONVENTION

A Scheme procedure is a Python callable.  Any of them may return a TailCall
instead of its value: that is how a call in tail position leaves its frame
before the callee runs, so mutual tail calls run in constant Python stack.
Whoever needs the value of a call resolves it: ``call(f, *args)`` does, and
compiled code inlines the same loop.  A procedure never receives a TailCall
as an argument.

ERRORS

``SchemeRaise`` carries a raised object through Python frames (``raise`` and
``raise-continuable`` with no handler that returns; escapes to a ``guard``).
An ``ErrorObject`` is what ``error`` and the primitives raise: message,
irritants and a kind (None, "file" or "read").  A Python exception from a
primitive (TypeError, ZeroDivisionError, ...) is converted to an ErrorObject
by ``as_condition`` wherever a condition is caught.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Iterable

from image import Table as ImageTable, Vector as ImageVector
from native._fastpath import HandleBase, PairBase, set_char_class, set_pair_class


class _Singleton:
    """The empty list and the end-of-file object: named, unique, false to nothing."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self):
        return self._name   # pickles as the module global of that name


NIL = _Singleton("NIL")
EOF = _Singleton("EOF")


class Symbol:
    """An identifier as data.  Interned: ``intern(name)`` returns one object
    per name, so eq? is ``is``.  ``gensym`` makes uninterned ones (the
    expander's renamed locals), which no name reaches."""

    __slots__ = ("name", "__weakref__")

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Symbol({self.name!r})"

    def __reduce__(self):
        return (intern, (self.name,))


_SYMBOLS: dict[str, Symbol] = {}
_gensym_counter = 0


def intern(name: str) -> Symbol:
    """The one symbol of this name."""
    sym = _SYMBOLS.get(name)
    if sym is None:
        sym = _SYMBOLS[name] = Symbol(name)
    return sym


def gensym(base: str = "g") -> Symbol:
    """A fresh uninterned symbol, printed with a number so messages stay readable."""
    global _gensym_counter
    _gensym_counter += 1
    return Symbol(f"{base}.{_gensym_counter}")


def is_interned(sym: Symbol) -> bool:
    return _SYMBOLS.get(sym.name) is sym


class Pair(PairBase):
    """A cons cell: .car and .cdr, both assignable.  Its layout is
    native/fastpath.c's PairBase: the image's handle fields (unset while
    transient), so that, once stored, it can become the handle of its image
    copy (vm/_persist.py), then car and cdr.

    ``Pair(car, cdr)`` and ``cons(car, cdr)`` (native._fastpath, what
    compiled code calls) make one in C.  A pair that reaches only immutable
    values (numbers, strings, characters, symbols, '() and such pairs) is not
    tracked by the cyclic collector until a car or cdr is written: see
    fastpath.c, "Scheme pairs", for the invariants (``check_pairs()``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Pair({self.car!r}, {self.cdr!r})"


# become: (vm/_persist.py) clears a transient's own fields; a Pair's are PairBase's, in C.
Pair.transient_fields = ("car", "cdr")


class Char:
    """A character.  Interned by code point (``char(cp)``), so eq? is ``is``
    and a Char is a dict key by value."""

    __slots__ = ("cp", "__weakref__")

    def __init__(self, cp: int) -> None:
        self.cp = cp

    def __repr__(self) -> str:
        return f"Char({chr(self.cp)!r})"

    def __reduce__(self):
        return (char, (self.cp,))

    def __str__(self) -> str:
        return chr(self.cp)


class _CharTable(dict):
    """The interned characters by code point.  A lookup of one not made yet
    makes it, so ``CHARS[cp]`` is char(cp) without a Python frame (compiled
    string-ref uses it); only valid code points may be looked up."""

    __slots__ = ()

    def __missing__(self, cp: int) -> Char:
        c = self[cp] = Char(cp)
        return c


CHARS = _CHARS = _CharTable()


def char(cp: int) -> Char:
    """The one Char of this code point (0..0x10FFFF)."""
    return _CHARS[cp]


def is_string(x: Any) -> bool:
    return type(x) is str or isinstance(x, MString)


def text(x: Any) -> str:
    """The Python str of a Scheme string (str or MString)."""
    return x if type(x) is str else x.s


class MString(HandleBase):
    """A Scheme string: mutable, with identity.  .s is its Python str;
    string-set! and string-fill! assign a new .s (strings are short, and a
    str keeps every other operation in C).  On the image's handle base, as
    Pair is."""

    __slots__ = ("s",)

    def __init__(self, s: str = "") -> None:
        self.s = s

    def __repr__(self) -> str:
        return f"MString({self.s!r})"

    def __eq__(self, other: object) -> bool:
        # Python-side convenience (tests, the API); Scheme's equal? is equal().
        return isinstance(other, MString) and other.s == self.s

    __hash__ = None   # mutable: never a dict key; hash tables key by content


class SVector(list):
    """A Scheme vector.  A list subclass so that v[i] and len(v) stay in C."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"SVector({list.__repr__(self)})"

    __hash__ = None


# Instances of these hold only numbers and strs (their contract), so a pair
# holding one may stay out of the cyclic collector (native/fastpath.c).
set_pair_class(Pair, NIL, (Char, Symbol, _Singleton, MString))
set_char_class(Char)   # list->string reads the code points in C


# Values that live in the image are Scheme values as they are: a persistent
# Vector handle is a vector (v[i], len(v), v[i] = x write through to the
# image), a Python bytes is an immutable bytevector, a persistent Table handle
# is a hash table (vm/_builtins.HASH_TABLE_TYPES).  Type checks use these.
VECTOR_TYPES = (SVector, ImageVector)
BYTEVECTOR_TYPES = (bytearray, bytes)


def is_vector(x: Any) -> bool:
    return isinstance(x, VECTOR_TYPES)


class Bytevector(bytearray):
    """A Scheme bytevector."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Bytevector({bytes(self)!r})"


class Values(tuple):
    """Zero or two or more values, as (values ...) returns them."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Values{tuple.__repr__(self)}"


class Record(HandleBase):
    """Base of every record type's class (define-record-type makes one
    subclass per type, with __slots__ of its fields).  On the image's handle
    base, as Pair is, so that a stored record can become its image copy."""

    __slots__ = ()
    record_type: "RecordType"


# Called with each new RecordType: the image layer (vm/_persist.py) gives it a
# class in the image and a persistent subclass.
RECORD_TYPE_HOOKS: list[Callable[["RecordType"], None]] = []


class RecordType:
    """What define-record-type defines: a name, field names and the class of its instances."""

    __slots__ = ("name", "fields", "cls", "__weakref__")

    def __init__(self, name: str, fields: tuple[str, ...]) -> None:
        self.name = name
        self.fields = fields
        self.cls = type(f"record:{name}", (Record,),
                        {"__slots__": tuple(field_slot(f) for f in fields)})
        self.cls.record_type = self
        for hook in RECORD_TYPE_HOOKS:
            hook(self)

    def __repr__(self) -> str:
        return f"#<record-type {self.name}>"


def field_slot(field: str) -> str:
    """A Python slot name for any Scheme field name (which may be 'a-b?')."""
    return "f_" + "".join(c if c.isalnum() else f"_{ord(c):x}_" for c in field)


_field_slot = field_slot   # the name the printer and the runtime import


# -- calling convention -----------------------------------------------------

class TailCall:
    """A call a procedure left for its caller to make (see module docstring)."""

    __slots__ = ("proc", "args")

    def __init__(self, proc: Callable, args: tuple) -> None:
        self.proc = proc
        self.args = args


def call(proc: Callable, *args: Any) -> Any:
    """Calls a Scheme procedure and returns its value (resolving tail calls)."""
    result = proc(*args)
    while type(result) is TailCall:
        result = result.proc(*result.args)
    return result


def resolve(result: Any) -> Any:
    """The value of a call whose result may be a TailCall."""
    while type(result) is TailCall:
        result = result.proc(*result.args)
    return result


# -- conditions ---------------------------------------------------------------

class ErrorObject:
    """What (error msg irritant ...) makes, and what primitives signal.
    kind is None, "file" (file-error?) or "read" (read-error?)."""

    __slots__ = ("message", "irritants", "kind", "__weakref__")

    def __init__(self, message: str, irritants: tuple = (), kind: str | None = None) -> None:
        self.message = message
        self.irritants = irritants
        self.kind = kind

    def __repr__(self) -> str:
        return f"ErrorObject({self.message!r}, {self.irritants!r}, {self.kind!r})"


class SchemeRaise(Exception):
    """A raised Scheme object in flight through Python frames."""

    def __init__(self, payload: Any, continuable: bool = False) -> None:
        super().__init__(payload)
        self.payload = payload
        self.continuable = continuable


class SchemeError(SchemeRaise):
    """A raised ErrorObject (a convenience: raise SchemeError(msg, *irritants))."""

    def __init__(self, message: str, *irritants: Any, kind: str | None = None) -> None:
        super().__init__(ErrorObject(message, irritants, kind))


def as_condition(exc: BaseException) -> Any:
    """The Scheme object a caught Python exception stands for."""
    if isinstance(exc, SchemeRaise):
        return exc.payload
    if isinstance(exc, RecursionError):
        return ErrorObject("recursion too deep (the stack is exhausted)")
    if isinstance(exc, ZeroDivisionError):
        return ErrorObject("division by zero")
    if isinstance(exc, OSError):
        return ErrorObject(exc.strerror or str(exc), (), "file")
    return ErrorObject(str(exc) or type(exc).__name__)


# -- equivalence --------------------------------------------------------------

def is_number(x: Any) -> bool:
    return type(x) in _NUMBER_TYPES


_NUMBER_TYPES = frozenset((int, float, Fraction, complex))


def eqv(a: Any, b: Any) -> bool:
    """eqv? (R7RS 6.1): identity, or equal numbers of one exactness, or equal characters."""
    if a is b:
        return True
    ta = type(a)
    if ta is not type(b):
        return False
    if ta is float:
        # 0.0 and -0.0 differ; a NaN is eqv to itself.
        return a == b and str(a) == str(b) or (a != a and b != b)
    if ta is int or ta is Fraction or ta is complex:
        return a == b
    return False


def equal(a: Any, b: Any) -> bool:
    """equal? (R7RS 6.1): eqv?, or the same structure of pairs, strings,
    vectors and bytevectors.  Iterative on the cdr, and terminates on cycles
    (a pair of objects already being compared is taken as equal).

    ``seen`` maps the ids of each pair of objects compared to the objects
    themselves: an image's pair is a handle that lives only while held, and
    a freed one's id can be handed to the next handle made, which would then
    pass for "already compared" (and so equal) without being looked at."""
    return _equal(a, b, {})


def _equal(a: Any, b: Any, seen: dict) -> bool:
    while True:
        if eqv(a, b):
            return True
        if isinstance(a, Pair) and isinstance(b, Pair):
            key = (id(a), id(b))
            if key in seen:
                return True
            seen[key] = (a, b)
            if not _equal(a.car, b.car, seen):
                return False
            a, b = a.cdr, b.cdr
            continue
        if is_string(a) and is_string(b):
            return text(a) == text(b)
        if isinstance(a, VECTOR_TYPES) and isinstance(b, VECTOR_TYPES):
            if len(a) != len(b):
                return False
            key = (id(a), id(b))
            if key in seen:
                return True
            seen[key] = (a, b)
            return all(_equal(x, y, seen) for x, y in zip(a, b))
        if isinstance(a, BYTEVECTOR_TYPES) and isinstance(b, BYTEVECTOR_TYPES):
            return bytes(a) == bytes(b)
        return False


# -- lists --------------------------------------------------------------------

def from_iterable(items: Iterable, tail: Any = NIL) -> Any:
    """A Scheme list of the items, ending in tail."""
    items = list(items)
    result = tail
    for item in reversed(items):
        result = Pair(item, result)
    return result


def to_list(x: Any) -> list:
    """The items of a proper Scheme list; ValueError if it is not one (cycles included)."""
    out = []
    slow = x
    while isinstance(x, Pair):
        out.append(x.car)
        x = x.cdr
        if len(out) % 2 == 0:
            slow = slow.cdr
            if slow is x and isinstance(x, Pair):
                raise ValueError("circular list")
    if x is not NIL:
        raise ValueError("not a proper list")
    return out


__all__ = [
    "CHARS", "EOF", "NIL", "Bytevector", "Char", "ErrorObject", "MString", "Pair", "Record",
    "RecordType", "SVector", "SchemeError", "SchemeRaise", "Symbol", "TailCall", "Values",
    "as_condition", "call", "char", "eqv", "equal", "from_iterable", "gensym", "intern",
    "BYTEVECTOR_TYPES", "RECORD_TYPE_HOOKS", "ImageTable", "ImageVector", "VECTOR_TYPES", "is_interned",
    "is_number", "is_string", "is_vector", "resolve", "text", "to_list",
]
