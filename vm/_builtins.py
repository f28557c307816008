"""The data procedures of R7RS-small (6.1-6.14 but the control procedures,
which vm/_runtime owns) and SRFI 69 hash tables, as Python functions.

WHAT IT OWNS

    PRIMITIVES      Scheme name -> function; each function's ``scheme_name``
                    is that name (the printer shows #<procedure car>)
    Parameter       the parameter objects of the current ports (below)
    CURRENT_INPUT, CURRENT_OUTPUT, CURRENT_ERROR
    Port and its subclasses, HashTable, HASH_TABLE_TYPES, SchemeExit,
    set_command_line
    StringOutputPort, IMAGE_PLAIN_KEYS   what vm/_compile's inlined copies of
                    write-char, write-string and the image table reads rely on

Not here (vm/_runtime): apply, call/cc, values, call-with-values,
dynamic-wind, raise, error, with-exception-handler, error-object?,
error-object-message, error-object-irritants, make-parameter, force,
make-promise, eval, environments, load, procedure?, file-error?, read-error?.

INVARIANTS

 1. A primitive given an argument of the wrong type raises SchemeError
    "<name>: expected <what>, got <value written briefly>"; an index out of
    range, a division by zero or an unopenable file likewise name the
    procedure.  No other Python exception escapes for bad arguments (a wrong
    argument count is a TypeError, which the runtime turns into an error).
 2. Values follow vm/_types: exact integers stay int (bool is never a
    number), exact rationals are normalised Fractions, characters Char.
    Every procedure that takes a string takes both kinds (str, immutable,
    and MString, mutable); every one that takes a vector takes an SVector
    or an image Vector; every one that takes a bytevector takes a
    bytearray or a bytes (immutable); every SRFI 69 procedure takes a
    HashTable or an image Table (HASH_TABLE_TYPES).  What R7RS calls newly
    allocated is a fresh MString, SVector or Bytevector, whatever the kind
    of the arguments.
 3. Procedure arguments are called through _types.call (tail calls resolved).
 4. List walks detect cycles (Floyd): a circular list is an error where a
    proper list is required, never a hang.  ``map`` and ``for-each`` stop at
    the shortest list and accept circular lists as long as one is finite.
 5. Containers are reached only through the protocol of vm/_types (x.car,
    s.s, v[i], len(v), slices, slice assignment), so the image's persistent
    subclasses and handles work.
 6. Mutators refuse the immutable kinds with "<name>: the string is
    immutable" (a str), "... the bytevector is immutable" (a bytes).
 7. A write into an image object (vector-set! on an image Vector,
    hash-table-set! on an image Table...) goes through _image_call, and
    table keys through _image_key: what the image refuses is a
    SchemeError naming the procedure and the value, never a TypeError.

DESIGN DECISIONS

 - Speed: the procedures that inner loops call (vector-ref, hash-table-ref,
   hash-table-ref/default, write-char, write-string, list->string and
   list->vector) test the common case first -- exact types, an open string
   port, a transient list -- and run the checks only when it fails, so the
   checks and their error messages stay as they are.  Compiled code inlines
   several of them (vm/_compile, "data procedures"), with this module's
   procedure as the fallback: their semantics here are what it copies.
 - eq? is identity (``is``), the same test the compiler inlines.  R7RS 6.1
   leaves eq? on numbers unspecified, and two equal bignums (or floats) are
   two objects here; characters are interned Chars and symbols interned
   Symbols, so eq? on them is what R7RS asks.  CPython happens to share
   small integers and strs of one character: nothing may rely on it.
 - Strings.  Literals and strings from the image or Python are str; the
   procedures that make strings make MString (symbol->string returns the
   symbol's name, a str: R7RS 6.5 makes mutating it an error, and here that
   error is reported).  The strings of the world outside are str too:
   command-line and get-environment-variable(s) return str.
 - The image's containers.  An image Vector is a vector and an image Table
   a hash table to every procedure, read and written in place (each write
   is its own transaction unless one is open; vector-fill! and vector-copy!
   write with one slice assignment, so one transaction).  A value goes in
   as it is: what the image makes of it is the image's business (by
   itself it holds #t/#f, exact integers, floats, str, bytes, tuples and
   handles, and copies in lists (so SVectors) and bytearrays; with
   vm/_persist's encode hook installed, also characters, symbols, pairs,
   strings, records and procedures).  The transients a write stores are
   promoted (vm/_persist.store: a list put into an image vector is eq? to
   the item read back), and a stored procedure read from an image vector
   or table is the procedure (vm/_persist.read_back).  What it refuses is a
   Scheme error.
 - An image Table compares keys the Python way: a str and an MString of
   the same text are one key (an MString is looked up by its text, a
   bytearray by its bytes), and so are equal numbers of either exactness --
   and #t and 1, #f and 0 (Python hashes bool as int).  Its equivalence
   function is reported as equal? and its hash function as hash, which is
   what it is closest to.  A character cannot be its key yet (the image
   cannot hash one), nor can a pair or a transient vector.
 - Numbers: (/ 1 0) is an error; division of or by an inexact zero follows
   IEEE (+inf.0, -inf.0, +nan.0).  Overflow to float gives +-inf.0, never an
   exception.  sqrt, exact-integer-sqrt and expt give exact results whenever
   the true result is exact and real ((sqrt 16/9) is 4/3, (expt 8 2/3) is 4);
   (sqrt -4) is the inexact +2.0i since complex numbers are inexact here.
   An exact expt whose result would exceed _MAX_EXACT_BITS is an error
   rather than a hang, and so is a make-vector (-string, -list, -bytevector)
   past _MAX_ALLOCATION elements.  Transcendental functions return floats
   (also for exact arguments), or complex numbers outside the real domain.
 - Characters and strings are Unicode: char-upcase, char-downcase and
   char-foldcase use simple (one character) mappings; string-upcase,
   -downcase and -foldcase full ones ("ß" upcases to "SS"), as R7RS 6.7 asks.
 - Ports.  A textual input port wraps a vm/_reader.Reader, so read-char and
   read share one position; files are read in 64 KiB chunks, the console by
   lines.  read-line ends a line at "\\n" and drops a "\\r" before it.
   char-ready? and u8-ready? are always #t (a string, a file or the end of
   the input never block; the console is not polled).  Files are UTF-8; a
   text file is closed as soon as it is read to the end.
 - Parameter objects: ``param()`` returns ``param.value``.  parameterize
   (vm/_runtime) computes ``param.converter(v)`` when converter is not None,
   assigns ``param.value`` and restores it on exit.  The current-port
   parameters' converters check that the new value is a port of the right
   direction.
 - exit raises SchemeExit (a BaseException, so "except Exception" handlers
   do not stop it) carrying the exit code; emergency-exit raises it with
   ``emergency=True`` and leaves the host to decide whether to skip cleanup.
 - current-second is POSIX time (UTC seconds, no leap-second offset);
   a jiffy is a nanosecond of time.perf_counter_ns.
 - Hash tables (SRFI 69) keep insertion order.  The built-in equivalences
   (eq? eqv? equal? string=? string-ci=? = char=? char-ci=?) get matching
   hash functions; a user equivalence given without a hash function puts
   every key in one bucket (correct, but linear) since no hash is known to
   agree with it.  hash (equal-hash) looks at most _HASH_BUDGET nodes of a
   key, so it is bounded for long and cyclic keys.  hash-table-fold takes
   its arguments in either the SRFI 69 or the SRFI 125 order.
   hash-table-copy always makes a mutable transient copy (no immutable
   tables), also of an image Table.  Under equal? (and string=?) a str and
   an MString of the same text are one key of a transient table.

OPEN QUESTIONS

 - Characters, pairs and transient vectors as keys of an image Table wait
   for the image to hash them; _image_key is the one place to change.
 - Literal vectors and bytevectors are still mutable: (vector-set! '#(1) 0 2)
   works.  Only string literals are immutable (str).
 - A tuple read from the image (a fixed vector) is not in VECTOR_TYPES, so
   it is no vector here (vector? is #f), though the printer shows #(...).
 - emergency-exit's cleanup policy belongs to the REPL/CLI.
 - vm/_runtime defines exit too (it must run dynamic-wind afters); the
   environment takes the runtime's, which raises this module's SchemeExit.
"""
from __future__ import annotations

import cmath
import math
import os
import sys
import time
import unicodedata
from collections.abc import Callable
from fractions import Fraction
from itertools import pairwise
from typing import Any, NoReturn

from image import ImageError
from vm import _persist
from native._fastpath import pair_chars_text, pair_list_items, pair_reverse
from vm._printer import (display, hash_table_text, number_to_string, register_printer, write,
                         write_abbreviated, write_shared, write_simple)
from vm._reader import Reader, parse_number, to_float
from vm._types import (BYTEVECTOR_TYPES, EOF, NIL, VECTOR_TYPES, Bytevector, Char, ImageTable,
                       ImageVector, MString, Pair, SchemeError, SVector, Symbol, Values, call,
                       char, equal, eqv, from_iterable, intern, to_list)
from vm._types import is_string as _is_string

__all__ = [
    "CURRENT_ERROR", "CURRENT_INPUT", "CURRENT_OUTPUT", "HASH_TABLE_TYPES", "HashTable",
    "IMAGE_PLAIN_KEYS", "PRIMITIVES", "Parameter", "Port", "SchemeExit", "StringOutputPort",
    "set_command_line",
]

PRIMITIVES: dict[str, Callable] = {}


def primitive(name: str) -> Callable[[Callable], Callable]:
    """Registers the decorated function as the Scheme procedure ``name``."""
    def register(fn: Callable) -> Callable:
        fn.scheme_name = name
        PRIMITIVES[name] = fn
        return fn
    return register


class _Absent:
    """The default of optional arguments (None is Scheme's unspecified value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


# -- argument checks ------------------------------------------------------------

def _type_error(who: str, what: str, x: Any) -> SchemeError:
    return SchemeError(f"{who}: expected {what}, got {write_abbreviated(x)}")


def _fail(who: str, message: str) -> NoReturn:
    raise SchemeError(f"{who}: {message}")


_NUMBER = frozenset((int, float, Fraction, complex))
_REAL = frozenset((int, float, Fraction))
_EXACT = frozenset((int, Fraction))


def _number(who: str, x: Any) -> Any:
    if type(x) not in _NUMBER:
        raise _type_error(who, "a number", x)
    return x


def _real(who: str, x: Any) -> Any:
    if type(x) not in _REAL:
        raise _type_error(who, "a real number", x)
    return x


def _integer(who: str, x: Any) -> Any:
    t = type(x)
    if t is int or (t is float and x.is_integer()):
        return x
    raise _type_error(who, "an integer", x)


def _exact_integer(who: str, x: Any) -> int:
    if type(x) is not int:
        raise _type_error(who, "an exact integer", x)
    return x


def _count(who: str, k: Any) -> int:
    """A size or an index: an exact non-negative integer."""
    if type(k) is not int or k < 0:
        raise _type_error(who, "an exact non-negative integer", k)
    return k


# make-vector, make-string, make-list and make-bytevector refuse sizes past
# 2**28 (256 Mi elements, 2 GiB of pointers in a list): larger is almost
# surely a mistake, and would exhaust memory rather than fail cleanly.
_MAX_ALLOCATION = 1 << 28


def _size(who: str, k: Any) -> int:
    """A size to allocate: an exact non-negative integer within _MAX_ALLOCATION."""
    _count(who, k)
    if k > _MAX_ALLOCATION:
        _fail(who, f"{k} elements is more than the {_MAX_ALLOCATION} this system allocates at once")
    return k


def _index(who: str, k: Any, size: int, what: str) -> int:
    _count(who, k)
    if k >= size:
        _fail(who, f"index {k} is out of range for a {what} of length {size}")
    return k


def _range(who: str, size: int, start: Any, end: Any) -> tuple[int, int]:
    """The optional [start, end) of R7RS 6.7-6.9, checked against size."""
    _count(who, start)
    end = size if end is _ABSENT else _count(who, end)
    if not start <= end <= size:
        _fail(who, f"range {start} to {end} is not within 0 to {size}")
    return start, end


def _procedure(who: str, f: Any) -> Callable:
    if not callable(f):
        raise _type_error(who, "a procedure", f)
    return f


def _pair(who: str, x: Any) -> Pair:
    if not isinstance(x, Pair):
        raise _type_error(who, "a pair", x)
    return x


def _char(who: str, x: Any) -> Char:
    if type(x) is not Char:
        raise _type_error(who, "a character", x)
    return x


def _text(who: str, x: Any) -> str:
    """The Python str of a string argument of either kind."""
    if type(x) is str:
        return x
    if isinstance(x, MString):
        return x.s
    raise _type_error(who, "a string", x)


def _mutable_string(who: str, x: Any) -> MString:
    if isinstance(x, MString):
        return x
    if type(x) is str:
        _fail(who, "the string is immutable")
    raise _type_error(who, "a string", x)


def _vector(who: str, x: Any) -> Any:
    """A vector argument: an SVector or an image Vector."""
    if not isinstance(x, VECTOR_TYPES):
        raise _type_error(who, "a vector", x)
    return x


def _bytevector(who: str, x: Any) -> Any:
    """A bytevector argument: a bytearray (Bytevector) or a bytes (immutable)."""
    if not isinstance(x, BYTEVECTOR_TYPES):
        raise _type_error(who, "a bytevector", x)
    return x


def _mutable_bytevector(who: str, x: Any) -> bytearray:
    if isinstance(x, bytearray):
        return x
    if isinstance(x, bytes):
        _fail(who, "the bytevector is immutable")
    raise _type_error(who, "a bytevector", x)


def _char_of(c: str) -> Char:
    """The Char of a one-character str."""
    return char(ord(c))


def _chars_text(who: str, items: Any) -> str:
    """The text of a sequence of Chars (each checked).  The common case runs
    in C: each item is looked up in _CHAR_TEXT, which holds only Chars, so a
    miss is a character not seen yet or not a character at all."""
    try:
        return "".join(map(_char_text_of, items))
    except (KeyError, TypeError):   # TypeError: an unhashable item
        pass
    for c in items:
        if type(c) is not Char:
            raise _type_error(who, "a character", c)
        _CHAR_TEXT[c] = chr(c.cp)
    return "".join(map(_char_text_of, items))


_CHAR_TEXT: dict[Char, str] = {}    # a Char -> its one-character str (Chars hash by identity)
_char_text_of = _CHAR_TEXT.__getitem__


# -- values into the image (invariant 7) ------------------------------------------

def _image_key(who: str, key: Any) -> Any:
    """key as a key of an image Table.  An MString is its text and a
    bytearray its bytes: the image compares keys as Python does, which is
    equal? for them.  A character, a pair or a transient vector is refused
    (the image cannot hash them yet); anything else goes to the image as it
    is, and _image_call reports what the image refuses."""
    if isinstance(key, MString):
        return key.s
    if isinstance(key, bytearray):
        return bytes(key)
    if type(key) is Char:
        _fail(who, "cannot use a character as a key of a persistent table")
    if isinstance(key, (Pair, SVector)):
        _fail(who, _bad_key("a pair" if isinstance(key, Pair) else "a vector"))
    return key


def _bad_key(what: str) -> str:
    return f"cannot use {what} as a key of a persistent table"


def _cannot_hold(items: list) -> str:
    """What a refused write into the image says about its values."""
    if all(x is items[0] for x in items):
        return f"the image cannot hold {write_abbreviated(items[0])}"
    return f"the image cannot hold an item of {write_abbreviated(SVector(items))}"


def _image_call(who: str, action: Callable[[], Any], refused: Callable[[], str]) -> Any:
    """Runs an operation on an image object.  What the image refuses becomes
    a Scheme error naming who: a value it cannot hold or a key it cannot
    hash (a TypeError; refused() says which), a read-only image or a
    failed commit (an ImageError, whose message says so)."""
    try:
        return action()
    except TypeError:
        raise SchemeError(f"{who}: {refused()}") from None
    except ImageError as exc:
        raise SchemeError(f"{who}: {exc}") from None


def _byte(who: str, x: Any) -> int:
    if type(x) is not int or not 0 <= x <= 255:
        raise _type_error(who, "a byte (an exact integer from 0 to 255)", x)
    return x


def _symbol(who: str, x: Any) -> Symbol:
    if not isinstance(x, Symbol):
        raise _type_error(who, "a symbol", x)
    return x


def _list_items(who: str, x: Any) -> list:
    """The elements of a proper list (an error for improper and circular lists)."""
    items = pair_list_items(x)  # transient pairs, the common case, in C (None otherwise)
    if items is not None:
        return items
    try:
        return to_list(x)
    except ValueError as exc:
        if "circular" in str(exc):
            _fail(who, f"expected a proper list, got a circular list {write_abbreviated(x)}")
        raise _type_error(who, "a proper list", x) from None


def _pairs(who: str, lst: Any):
    """Yields the pairs of a proper list, lazily; errors at an improper end or a cycle."""
    slow = fast = lst
    n = 0
    while isinstance(fast, Pair):
        yield fast
        fast = fast.cdr
        n += 1
        if not n & 1:
            slow = slow.cdr
            if slow is fast:
                _fail(who, f"expected a proper list, got a circular list {write_abbreviated(lst)}")
    if fast is not NIL:
        raise _type_error(who, "a proper list", lst)


# -- equivalence (R7RS 6.1) ---------------------------------------------------------

@primitive("eq?")
def eq(a: Any, b: Any) -> bool:
    return a is b


@primitive("eqv?")
def eqv_(a: Any, b: Any) -> bool:
    return eqv(a, b)


@primitive("equal?")
def equal_(a: Any, b: Any) -> bool:
    return equal(a, b)


# -- numbers (R7RS 6.2.6) -------------------------------------------------------------

# An exact result past 2**24 bits (5 million digits) takes seconds to make and
# minutes to print; asking for one is almost surely a mistake.
_MAX_EXACT_BITS = 1 << 24


def _normal(x: Any) -> Any:
    """Fractions with denominator 1 become ints (the exact canonical form)."""
    return x.numerator if type(x) is Fraction and x.denominator == 1 else x


def _inexact(x: Any) -> Any:
    t = type(x)
    return x if t is float or t is complex else to_float(x)


@primitive("number?")
def is_number(x: Any) -> bool:
    return type(x) in _NUMBER


@primitive("complex?")
def is_complex(x: Any) -> bool:
    return type(x) in _NUMBER


@primitive("real?")
def is_real(x: Any) -> bool:
    return type(x) in _REAL


@primitive("rational?")
def is_rational(x: Any) -> bool:
    t = type(x)
    return t is int or t is Fraction or (t is float and math.isfinite(x))


@primitive("integer?")
def is_integer(x: Any) -> bool:
    t = type(x)
    return t is int or (t is float and x.is_integer())


@primitive("exact?")
def is_exact(z: Any) -> bool:
    return type(_number("exact?", z)) in _EXACT


@primitive("inexact?")
def is_inexact(z: Any) -> bool:
    return type(_number("inexact?", z)) not in _EXACT


@primitive("exact-integer?")
def is_exact_integer(x: Any) -> bool:
    return type(x) is int


@primitive("exact-rational?")
def is_exact_rational(x: Any) -> bool:
    return type(x) in _EXACT


@primitive("nan?")
def is_nan(z: Any) -> bool:
    t = type(_number("nan?", z))
    if t is float:
        return z != z
    return t is complex and (z.real != z.real or z.imag != z.imag)


@primitive("infinite?")
def is_infinite(z: Any) -> bool:
    t = type(_number("infinite?", z))
    if t is float:
        return math.isinf(z)
    return t is complex and (math.isinf(z.real) or math.isinf(z.imag))


@primitive("finite?")
def is_finite(z: Any) -> bool:
    t = type(_number("finite?", z))
    if t is float:
        return math.isfinite(z)
    return t is not complex or (math.isfinite(z.real) and math.isfinite(z.imag))


def _numeric_comparison(name: str, holds: Callable[[Any, Any], bool],
                        check: Callable[[str, Any], Any]) -> Callable:
    def compare(first: Any, *rest: Any) -> bool:
        check(name, first)
        for x in rest:
            check(name, x)
        a = first
        for b in rest:
            if not holds(a, b):
                return False
            a = b
        return True
    compare.__name__ = compare.__qualname__ = name
    return primitive(name)(compare)


_numeric_comparison("=", lambda a, b: a == b, _number)
_numeric_comparison("<", lambda a, b: a < b, _real)
_numeric_comparison(">", lambda a, b: a > b, _real)
_numeric_comparison("<=", lambda a, b: a <= b, _real)
_numeric_comparison(">=", lambda a, b: a >= b, _real)


@primitive("zero?")
def is_zero(z: Any) -> bool:
    return _number("zero?", z) == 0


@primitive("positive?")
def is_positive(x: Any) -> bool:
    return _real("positive?", x) > 0


@primitive("negative?")
def is_negative(x: Any) -> bool:
    return _real("negative?", x) < 0


@primitive("odd?")
def is_odd(n: Any) -> bool:
    return _integer("odd?", n) % 2 == 1


@primitive("even?")
def is_even(n: Any) -> bool:
    return _integer("even?", n) % 2 == 0


def _extremum(name: str, pick: Callable) -> Callable:
    def extremum(first: Any, *rest: Any) -> Any:
        args = (first, *rest)
        inexact = False
        for x in args:
            if type(_real(name, x)) is float:
                inexact = True
                if x != x:
                    return math.nan
        result = pick(args)
        return _inexact(result) if inexact else result
    extremum.__name__ = extremum.__qualname__ = name
    return primitive(name)(extremum)


_extremum("max", max)
_extremum("min", min)


@primitive("+")
def add(*args: Any) -> Any:
    total: Any = 0
    for x in args:
        if type(x) not in _NUMBER:
            raise _type_error("+", "a number", x)
        try:
            total = total + x
        except OverflowError:
            total = _inexact(total) + _inexact(x)
    return _normal(total)


@primitive("*")
def multiply(*args: Any) -> Any:
    product: Any = 1
    for x in args:
        if type(x) not in _NUMBER:
            raise _type_error("*", "a number", x)
        try:
            product = product * x
        except OverflowError:
            product = _inexact(product) * _inexact(x)
    return _normal(product)


@primitive("-")
def subtract(first: Any, *rest: Any) -> Any:
    _number("-", first)
    if not rest:
        return _normal(-first)
    result = first
    for x in rest:
        _number("-", x)
        try:
            result = result - x
        except OverflowError:
            result = _inexact(result) - _inexact(x)
    return _normal(result)


@primitive("/")
def divide(first: Any, *rest: Any) -> Any:
    _number("/", first)
    if not rest:
        return _divide(1, first)
    result = first
    for x in rest:
        result = _divide(result, _number("/", x))
    return result


def _divide(a: Any, b: Any) -> Any:
    if b == 0:
        if type(a) in _EXACT and type(b) in _EXACT:
            raise SchemeError("/: division by zero")
        return _divide_by_zero(a, b)
    if type(a) is int and type(b) is int:
        return _normal(Fraction(a, b))
    try:
        return _normal(a / b)
    except OverflowError:
        return _divide(_inexact(a), _inexact(b))
    except ZeroDivisionError:     # b underflowed to 0.0 on its way to float
        return _divide_by_zero(_inexact(a), 0.0)


def _divide_by_zero(a: Any, b: Any) -> Any:
    """IEEE division by a zero when one side is inexact."""
    if type(a) is complex or type(b) is complex:
        return complex(math.nan, math.nan)
    a = _inexact(a)
    if a == 0 or a != a:
        return math.nan
    sign = math.copysign(1.0, b) if type(b) is float else 1.0
    return math.copysign(math.inf, a) * sign


@primitive("abs")
def abs_(x: Any) -> Any:
    return abs(_real("abs", x))


def _integer_operands(who: str, n: Any, d: Any) -> tuple[Any, Any, bool]:
    _integer(who, n)
    _integer(who, d)
    if d == 0:
        _fail(who, "division by zero")
    if type(n) is int and type(d) is int:
        return n, d, True
    return _inexact(n), _inexact(d), False


def _floor_division(who: str, n: Any, d: Any) -> tuple[Any, Any]:
    n, d, _ = _integer_operands(who, n, d)
    return divmod(n, d)


def _truncate_division(who: str, n: Any, d: Any) -> tuple[Any, Any]:
    n, d, exact = _integer_operands(who, n, d)
    if exact:
        q = abs(n) // abs(d)
        if (n < 0) != (d < 0):
            q = -q
        return q, n - q * d
    r = math.fmod(n, d)
    return (n - r) / d, r


@primitive("floor/")
def floor_div(n: Any, d: Any) -> Values:
    return Values(_floor_division("floor/", n, d))


@primitive("floor-quotient")
def floor_quotient(n: Any, d: Any) -> Any:
    return _floor_division("floor-quotient", n, d)[0]


@primitive("floor-remainder")
def floor_remainder(n: Any, d: Any) -> Any:
    return _floor_division("floor-remainder", n, d)[1]


@primitive("modulo")
def modulo(n: Any, d: Any) -> Any:
    return _floor_division("modulo", n, d)[1]


@primitive("truncate/")
def truncate_div(n: Any, d: Any) -> Values:
    return Values(_truncate_division("truncate/", n, d))


@primitive("truncate-quotient")
def truncate_quotient(n: Any, d: Any) -> Any:
    return _truncate_division("truncate-quotient", n, d)[0]


@primitive("quotient")
def quotient(n: Any, d: Any) -> Any:
    return _truncate_division("quotient", n, d)[0]


@primitive("truncate-remainder")
def truncate_remainder(n: Any, d: Any) -> Any:
    return _truncate_division("truncate-remainder", n, d)[1]


@primitive("remainder")
def remainder(n: Any, d: Any) -> Any:
    return _truncate_division("remainder", n, d)[1]


def _integers(who: str, args: tuple) -> tuple[list[int], bool]:
    exact = True
    ints = []
    for x in args:
        if type(_integer(who, x)) is float:
            exact = False
        ints.append(int(x))
    return ints, exact


@primitive("gcd")
def gcd(*args: Any) -> Any:
    ints, exact = _integers("gcd", args)
    result = math.gcd(*ints)
    return result if exact else float(result)


@primitive("lcm")
def lcm(*args: Any) -> Any:
    ints, exact = _integers("lcm", args)
    result = math.lcm(*ints)
    return result if exact else float(result)


def _rational(who: str, q: Any) -> Fraction:
    if not is_rational(q):
        raise _type_error(who, "a rational number", q)
    return Fraction(q)


@primitive("numerator")
def numerator(q: Any) -> Any:
    n = _rational("numerator", q).numerator
    return float(n) if type(q) is float else n


@primitive("denominator")
def denominator(q: Any) -> Any:
    d = _rational("denominator", q).denominator
    return float(d) if type(q) is float else d


def _rounding(name: str, exact_rounding: Callable[[Any], int]) -> Callable:
    def rounding(x: Any) -> Any:
        t = type(x)
        if t is int:
            return x
        if t is Fraction:
            return exact_rounding(x)
        if t is float:
            if not math.isfinite(x):
                return x
            # The sign of the zero results too: (ceiling -0.5) is -0.0.
            return math.copysign(float(exact_rounding(x)), x)
        raise _type_error(name, "a real number", x)
    rounding.__name__ = rounding.__qualname__ = name
    return primitive(name)(rounding)


_rounding("floor", math.floor)
_rounding("ceiling", math.ceil)
_rounding("truncate", math.trunc)
_rounding("round", round)    # round half to even, for floats and Fractions alike


@primitive("rationalize")
def rationalize(x: Any, y: Any) -> Any:
    _real("rationalize", x)
    _real("rationalize", y)
    inexact = type(x) is float or type(y) is float
    if inexact:
        x, y = _inexact(x), abs(_inexact(y))
        if x != x or y != y:
            return math.nan
        if math.isinf(y):
            return 0.0 if math.isfinite(x) else math.nan
        if math.isinf(x):
            return x
    y = abs(y)
    result = _simplest_between(Fraction(x) - Fraction(y), Fraction(x) + Fraction(y))
    return to_float(result) if inexact else _normal(result)


def _simplest_between(low: Fraction, high: Fraction) -> Fraction:
    """The rational with the smallest denominator in [low, high] (then the
    smallest magnitude), by continued fractions (R7RS 6.2.6)."""
    if low <= 0 <= high:
        return Fraction(0)
    if high < 0:
        return -_simplest_between(-high, -low)
    terms = []
    while True:
        whole = math.floor(low)
        if whole == low:
            terms.append(Fraction(whole))
            break
        if whole < math.floor(high):
            terms.append(Fraction(whole + 1))
            break
        terms.append(Fraction(whole))
        low, high = 1 / (high - whole), 1 / (low - whole)
    result = terms.pop()
    while terms:
        result = terms.pop() + 1 / result
    return result


def _complex_value(fn: Callable, z: complex) -> Any:
    try:
        return fn(z)
    except (ValueError, OverflowError):
        return complex(math.nan, math.nan)


def _transcendental(name: str, real_fn: Callable, complex_fn: Callable) -> Callable:
    def transcendental(z: Any) -> Any:
        t = type(z)
        if t is complex:
            return _complex_value(complex_fn, z)
        x = _inexact(_number(name, z))
        try:
            return real_fn(x)
        except OverflowError:
            return math.inf
        except ValueError:        # outside the real domain: asin 2, log -1, sin inf
            try:
                return complex_fn(complex(x))
            except (ValueError, OverflowError):
                return math.nan
    transcendental.__name__ = transcendental.__qualname__ = name
    return primitive(name)(transcendental)


_transcendental("exp", math.exp, cmath.exp)
_transcendental("sin", math.sin, cmath.sin)
_transcendental("cos", math.cos, cmath.cos)
_transcendental("tan", math.tan, cmath.tan)
_transcendental("asin", math.asin, cmath.asin)
_transcendental("acos", math.acos, cmath.acos)
_natural_log = _transcendental("%log", lambda x: -math.inf if x == 0 else math.log(x), cmath.log)
del PRIMITIVES["%log"]


@primitive("log")
def log(z: Any, base: Any = _ABSENT) -> Any:
    if base is _ABSENT:
        return _natural_log(z)
    _number("log", base)
    return _divide(_natural_log(z), _natural_log(base))


@primitive("atan")
def atan(y: Any, x: Any = _ABSENT) -> Any:
    if x is _ABSENT:
        if type(y) is complex:
            return _complex_value(cmath.atan, y)
        return math.atan(_inexact(_number("atan", y)))
    return math.atan2(_inexact(_real("atan", y)), _inexact(_real("atan", x)))


@primitive("square")
def square(z: Any) -> Any:
    return multiply(z, z)


def _int_root(a: int, n: int) -> int | None:
    """The exact n-th root of a >= 0, or None if it is not an integer."""
    if a < 2:
        return a
    if n == 2:
        root = math.isqrt(a)
    else:
        if n >= a.bit_length():      # 1 < root < 2
            return None
        root = 1 << -(-a.bit_length() // n)   # at least the root: Newton descends
        while True:
            smaller = ((n - 1) * root + a // root ** (n - 1)) // n
            if smaller >= root:
                break
            root = smaller
    return root if root ** n == a else None


def _exact_root(q: Any, n: int) -> Any:
    """The exact n-th root of an exact q >= 0, or None."""
    if type(q) is int:
        return _int_root(q, n)
    num, den = _int_root(q.numerator, n), _int_root(q.denominator, n)
    return None if num is None or den is None else _normal(Fraction(num, den))


def _inexact_sqrt(q: Any) -> float:
    try:
        return math.sqrt(q)
    except OverflowError:
        if type(q) is Fraction:
            return _inexact_sqrt(q.numerator) / _inexact_sqrt(q.denominator)
        return to_float(math.isqrt(q))


@primitive("sqrt")
def sqrt(z: Any) -> Any:
    t = type(z)
    if t is int or t is Fraction:
        magnitude = abs(z)
        root = _exact_root(magnitude, 2)
        if root is None:
            root = _inexact_sqrt(magnitude)
        return root if z >= 0 else complex(0.0, float(root))
    if t is float:
        return math.sqrt(z) if z >= 0 or z != z else complex(0.0, math.sqrt(-z))
    if t is complex:
        return cmath.sqrt(z)
    raise _type_error("sqrt", "a number", z)


@primitive("exact-integer-sqrt")
def exact_integer_sqrt(k: Any) -> Values:
    root = math.isqrt(_count("exact-integer-sqrt", k))
    return Values((root, k - root * root))


@primitive("expt")
def expt(base: Any, power: Any) -> Any:
    _number("expt", base)
    _number("expt", power)
    if type(base) in _EXACT and type(power) in _EXACT:
        exact = _exact_expt(base, power)
        if exact is not None:
            return exact
    if base == 0:
        if power == 0:
            return 1.0
        if power.real > 0:
            return 0.0
        return math.inf
    try:
        return _inexact(base) ** _inexact(power)
    except (OverflowError, ZeroDivisionError):
        odd = type(power) is not complex and is_integer(power) and power % 2 == 1
        return -math.inf if odd and base.real < 0 else math.inf


def _exact_expt(base: Any, power: Any) -> Any:
    """base ** power when both are exact and the result is exact and real; else None."""
    if type(power) is Fraction:
        if base < 0:
            return None
        root = _exact_root(base, power.denominator)
        if root is None:
            return None
        base, power = root, power.numerator
    if base == 0 and power < 0:
        raise SchemeError("expt: division by zero")
    if abs(base) not in (0, 1):
        size = max(Fraction(base).numerator.bit_length(), Fraction(base).denominator.bit_length())
        if size * abs(power) > _MAX_EXACT_BITS:
            _fail("expt", f"the exact result would have about {size * abs(power)} bits,"
                          f" more than {_MAX_EXACT_BITS}")
    return _normal(Fraction(base) ** power)


@primitive("exact")
def exact(z: Any) -> Any:
    t = type(z)
    if t is int or t is Fraction:
        return z
    if t is float:
        if not math.isfinite(z):
            _fail("exact", f"{number_to_string(z)} has no exact value")
        return _normal(Fraction(z))
    if t is complex:
        if z.imag == 0:
            return exact(z.real)
        _fail("exact", f"{number_to_string(z)} has no exact value (no exact complex numbers)")
    raise _type_error("exact", "a number", z)


@primitive("inexact")
def inexact(z: Any) -> Any:
    return _inexact(_number("inexact", z))


PRIMITIVES["inexact->exact"] = exact
PRIMITIVES["exact->inexact"] = inexact


@primitive("make-rectangular")
def make_rectangular(x: Any, y: Any) -> Any:
    _real("make-rectangular", x)
    if type(_real("make-rectangular", y)) is int and y == 0:
        return x
    return complex(_inexact(x), _inexact(y))


@primitive("make-polar")
def make_polar(magnitude: Any, angle: Any) -> Any:
    _real("make-polar", magnitude)
    if type(_real("make-polar", angle)) is int and angle == 0:
        return magnitude
    try:
        return cmath.rect(_inexact(magnitude), _inexact(angle))
    except ValueError:          # an infinite angle: no direction at all
        return complex(math.nan, math.nan)


@primitive("real-part")
def real_part(z: Any) -> Any:
    return z.real if type(_number("real-part", z)) is complex else z


@primitive("imag-part")
def imag_part(z: Any) -> Any:
    return z.imag if type(_number("imag-part", z)) is complex else 0


@primitive("magnitude")
def magnitude(z: Any) -> Any:
    return abs(_number("magnitude", z))


@primitive("angle")
def angle(z: Any) -> Any:
    t = type(_number("angle", z))
    if t is complex:
        return cmath.phase(z)
    if t is float:
        return math.atan2(0.0, z)
    return 0 if z >= 0 else math.pi


_RADIXES = (2, 8, 10, 16)


@primitive("number->string")
def number_to_string_(z: Any, radix: Any = 10) -> MString:
    _number("number->string", z)
    if radix not in _RADIXES or type(radix) is not int:
        raise _type_error("number->string", "a radix of 2, 8, 10 or 16", radix)
    if radix != 10 and type(z) not in _EXACT:
        _fail("number->string", "an inexact number is written in radix 10 only")
    return MString(number_to_string(z, radix))


@primitive("string->number")
def string_to_number(s: Any, radix: Any = 10) -> Any:
    digits = _text("string->number", s)
    if radix not in _RADIXES or type(radix) is not int:
        raise _type_error("string->number", "a radix of 2, 8, 10 or 16", radix)
    try:
        number = parse_number(digits, radix)
    except ValueError:
        return False
    return False if number is None else number


# -- booleans (R7RS 6.3) ----------------------------------------------------------------

@primitive("not")
def not_(x: Any) -> bool:
    return x is False


@primitive("boolean?")
def is_boolean(x: Any) -> bool:
    return x is True or x is False


@primitive("boolean=?")
def boolean_eq(a: Any, b: Any, *rest: Any) -> bool:
    args = (a, b, *rest)
    for x in args:
        if x is not True and x is not False:
            raise _type_error("boolean=?", "a boolean", x)
    return all(x is a for x in args)


# -- pairs and lists (R7RS 6.4) -----------------------------------------------------------

@primitive("pair?")
def is_pair(x: Any) -> bool:
    return isinstance(x, Pair)


@primitive("cons")
def cons(a: Any, d: Any) -> Pair:
    return Pair(a, d)


@primitive("car")
def car(p: Any) -> Any:
    if isinstance(p, Pair):
        return p.car
    raise _type_error("car", "a pair", p)


@primitive("cdr")
def cdr(p: Any) -> Any:
    if isinstance(p, Pair):
        return p.cdr
    raise _type_error("cdr", "a pair", p)


@primitive("set-car!")
def set_car(p: Any, x: Any) -> None:
    _pair("set-car!", p).car = x


@primitive("set-cdr!")
def set_cdr(p: Any, x: Any) -> None:
    _pair("set-cdr!", p).cdr = x


def _make_cxr(name: str) -> Callable:
    steps = name[-2:0:-1]     # cadr: d first, then a
    def cxr(x: Any) -> Any:
        for step in steps:
            if not isinstance(x, Pair):
                raise _type_error(name, "a pair", x)
            x = x.car if step == "a" else x.cdr
        return x
    cxr.__name__ = cxr.__qualname__ = name
    return primitive(name)(cxr)


def _cxr_names() -> list[str]:
    names = [""]
    out = []
    for _ in range(4):
        names = [n + c for n in names for c in "ad"]
        out.extend(f"c{n}r" for n in names if len(n) >= 2)
    return out


for _name in _cxr_names():     # caar ... cddddr: (scheme base) and (scheme cxr)
    _make_cxr(_name)


@primitive("null?")
def is_null(x: Any) -> bool:
    return x is NIL


@primitive("list?")
def is_list(x: Any) -> bool:
    slow = fast = x
    while True:
        if fast is NIL:
            return True
        if not isinstance(fast, Pair):
            return False
        fast = fast.cdr
        if fast is NIL:
            return True
        if not isinstance(fast, Pair):
            return False
        fast = fast.cdr
        slow = slow.cdr
        if fast is slow:
            return False


@primitive("make-list")
def make_list(k: Any, fill: Any = None) -> Any:
    result = NIL
    for _ in range(_size("make-list", k)):
        result = Pair(fill, result)
    return result


@primitive("list")
def list_(*items: Any) -> Any:
    return from_iterable(items)


@primitive("length")
def length(lst: Any) -> int:
    n = _finite_length("length", lst)
    if n is None:
        _fail("length", f"expected a proper list, got a circular list {write_abbreviated(lst)}")
    return n


@primitive("append")
def append(*lists: Any) -> Any:
    if not lists:
        return NIL
    result = lists[-1]
    for lst in reversed(lists[:-1]):
        result = from_iterable(_list_items("append", lst), result)
    return result


@primitive("reverse")
def reverse(lst: Any) -> Any:
    result = pair_reverse(lst)  # transient pairs, in C (None otherwise)
    if result is not None:
        return result
    result = NIL
    for x in _list_items("reverse", lst):
        result = Pair(x, result)
    return result


def _tail(who: str, lst: Any, k: Any) -> Any:
    _count(who, k)
    for _ in range(k):
        if not isinstance(lst, Pair):
            _fail(who, f"index {k} is past the end of the list")
        lst = lst.cdr
    return lst


@primitive("list-tail")
def list_tail(lst: Any, k: Any) -> Any:
    return _tail("list-tail", lst, k)


@primitive("list-ref")
def list_ref(lst: Any, k: Any) -> Any:
    pair = _tail("list-ref", lst, k)
    if not isinstance(pair, Pair):
        _fail("list-ref", f"index {k} is past the end of the list")
    return pair.car


@primitive("list-set!")
def list_set(lst: Any, k: Any, x: Any) -> None:
    pair = _tail("list-set!", lst, k)
    if not isinstance(pair, Pair):
        _fail("list-set!", f"index {k} is past the end of the list")
    pair.car = x


def _member(who: str, same: Callable[[Any, Any], bool]) -> Callable:
    def member(x: Any, lst: Any) -> Any:
        for pair in _pairs(who, lst):
            if same(x, pair.car):
                return pair
        return False
    member.__name__ = member.__qualname__ = who
    return primitive(who)(member)


def _assoc(who: str, same: Callable[[Any, Any], bool]) -> Callable:
    def assoc(x: Any, alist: Any) -> Any:
        for pair in _pairs(who, alist):
            entry = pair.car
            if not isinstance(entry, Pair):
                raise _type_error(who, "an association list (of pairs)", alist)
            if same(x, entry.car):
                return entry
        return False
    assoc.__name__ = assoc.__qualname__ = who
    return primitive(who)(assoc)


_memq = _member("memq", eq)
_memv = _member("memv", eqv)
_assq = _assoc("assq", eq)
_assv = _assoc("assv", eqv)
_member_equal = _member("%member", equal)
_assoc_equal = _assoc("%assoc", equal)
del PRIMITIVES["%member"], PRIMITIVES["%assoc"]


def _scheme_predicate(who: str, compare: Callable) -> Callable[[Any, Any], bool]:
    _procedure(who, compare)
    return lambda a, b: call(compare, a, b) is not False


@primitive("member")
def member(x: Any, lst: Any, compare: Any = _ABSENT) -> Any:
    if compare is _ABSENT:
        return _member_equal(x, lst)
    same = _scheme_predicate("member", compare)
    for pair in _pairs("member", lst):
        if same(x, pair.car):
            return pair
    return False


@primitive("assoc")
def assoc(x: Any, alist: Any, compare: Any = _ABSENT) -> Any:
    if compare is _ABSENT:
        return _assoc_equal(x, alist)
    same = _scheme_predicate("assoc", compare)
    for pair in _pairs("assoc", alist):
        entry = pair.car
        if not isinstance(entry, Pair):
            raise _type_error("assoc", "an association list (of pairs)", alist)
        if same(x, entry.car):
            return entry
    return False


@primitive("list-copy")
def list_copy(x: Any) -> Any:
    items = []
    slow = fast = x
    while isinstance(fast, Pair):
        items.append(fast.car)
        fast = fast.cdr
        if not len(items) & 1:
            slow = slow.cdr
            if slow is fast:
                _fail("list-copy", f"expected a list, got a circular list {write_abbreviated(x)}")
    return from_iterable(items, fast)


# -- symbols (R7RS 6.5) --------------------------------------------------------------------

@primitive("symbol?")
def is_symbol(x: Any) -> bool:
    return isinstance(x, Symbol)


@primitive("symbol=?")
def symbol_eq(a: Any, b: Any, *rest: Any) -> bool:
    args = (a, b, *rest)
    for x in args:
        _symbol("symbol=?", x)
    return all(x is a for x in args)


@primitive("symbol->string")
def symbol_to_string(sym: Any) -> str:
    return _symbol("symbol->string", sym).name     # immutable: see DESIGN DECISIONS


@primitive("string->symbol")
def string_to_symbol(s: Any) -> Symbol:
    return intern(_text("string->symbol", s))


# -- characters (R7RS 6.6, (scheme char)) --------------------------------------------------

def _fold_text(c: str) -> str:
    """Simple case folding of a one-character str: one character to one character."""
    folded = c.casefold()
    if len(folded) == 1:
        return folded
    lower = c.lower()
    return lower if len(lower) == 1 else c


def _fold_char(c: Char) -> Char:
    folded = _fold_text(chr(c.cp))
    return c if ord(folded) == c.cp else char(ord(folded))


def _char_comparison(name: str, holds: Callable[[int, int], bool], fold: bool) -> Callable:
    def compare(first: Any, second: Any, *rest: Any) -> bool:
        args = (first, second, *rest)
        for c in args:
            _char(name, c)
        points = [_fold_char(c).cp if fold else c.cp for c in args]
        return all(holds(a, b) for a, b in pairwise(points))
    compare.__name__ = compare.__qualname__ = name
    return primitive(name)(compare)


_ORDERINGS = (("=?", lambda a, b: a == b), ("<?", lambda a, b: a < b), (">?", lambda a, b: a > b),
              ("<=?", lambda a, b: a <= b), (">=?", lambda a, b: a >= b))
for _suffix, _holds in _ORDERINGS:
    _char_comparison("char" + _suffix, _holds, False)
    _char_comparison("char-ci" + _suffix, _holds, True)


@primitive("char?")
def is_char(x: Any) -> bool:
    return type(x) is Char


def _char_text(who: str, c: Any) -> str:
    """The one-character str of a character argument."""
    return chr(_char(who, c).cp)


@primitive("char-alphabetic?")
def is_char_alphabetic(c: Any) -> bool:
    return _char_text("char-alphabetic?", c).isalpha()


@primitive("char-numeric?")
def is_char_numeric(c: Any) -> bool:
    return unicodedata.category(_char_text("char-numeric?", c)) == "Nd"


# Python's isspace counts the information separators U+001C..U+001F, which
# are not White_Space in Unicode (R7RS 6.6 follows Unicode).
_NOT_WHITESPACE = frozenset("\x1c\x1d\x1e\x1f")


@primitive("char-whitespace?")
def is_char_whitespace(c: Any) -> bool:
    text = _char_text("char-whitespace?", c)
    return text.isspace() and text not in _NOT_WHITESPACE


@primitive("char-upper-case?")
def is_char_upper_case(c: Any) -> bool:
    return _char_text("char-upper-case?", c).isupper()


@primitive("char-lower-case?")
def is_char_lower_case(c: Any) -> bool:
    return _char_text("char-lower-case?", c).islower()


@primitive("digit-value")
def digit_value(c: Any) -> Any:
    value = unicodedata.decimal(_char_text("digit-value", c), None)
    return False if value is None else value


@primitive("char->integer")
def char_to_integer(c: Any) -> int:
    return _char("char->integer", c).cp


@primitive("integer->char")
def integer_to_char(n: Any) -> Char:
    _exact_integer("integer->char", n)
    if not (0 <= n <= 0x10FFFF) or 0xD800 <= n <= 0xDFFF:
        _fail("integer->char", f"{n} is not a Unicode scalar value")
    return char(n)


def _simple_case(who: str, c: Any, convert: Callable[[str], str]) -> Char:
    """c converted by a one-to-one case mapping; c itself where the mapping
    gives several characters (char-upcase of ß is ß)."""
    converted = convert(_char_text(who, c))
    return _char_of(converted) if len(converted) == 1 else c


@primitive("char-upcase")
def char_upcase(c: Any) -> Char:
    return _simple_case("char-upcase", c, str.upper)


@primitive("char-downcase")
def char_downcase(c: Any) -> Char:
    return _simple_case("char-downcase", c, str.lower)


@primitive("char-foldcase")
def char_foldcase(c: Any) -> Char:
    return _fold_char(_char("char-foldcase", c))


# -- strings (R7RS 6.7) --------------------------------------------------------------------

_SPACE = char(ord(" "))


@primitive("string?")
def is_string(x: Any) -> bool:
    return _is_string(x)


@primitive("make-string")
def make_string(k: Any, fill: Any = _SPACE) -> MString:
    return MString(_char_text("make-string", fill) * _size("make-string", k))


@primitive("string")
def string(*chars: Any) -> MString:
    return MString(_chars_text("string", chars))


@primitive("string-length")
def string_length(s: Any) -> int:
    return len(_text("string-length", s))


@primitive("string-ref")
def string_ref(s: Any, k: Any) -> Char:
    text = _text("string-ref", s)
    return _char_of(text[_index("string-ref", k, len(text), "string")])


@primitive("string-set!")
def string_set(s: Any, k: Any, c: Any) -> None:
    text = _mutable_string("string-set!", s).s
    _index("string-set!", k, len(text), "string")
    s.s = text[:k] + _char_text("string-set!", c) + text[k + 1:]


def _string_comparison(name: str, holds: Callable[[str, str], bool], fold: bool) -> Callable:
    def compare(first: Any, second: Any, *rest: Any) -> bool:
        texts = [_text(name, s) for s in (first, second, *rest)]
        if fold:
            texts = [t.casefold() for t in texts]
        return all(holds(a, b) for a, b in pairwise(texts))
    compare.__name__ = compare.__qualname__ = name
    return primitive(name)(compare)


for _suffix, _holds in _ORDERINGS:
    _string_comparison("string" + _suffix, _holds, False)
    _string_comparison("string-ci" + _suffix, _holds, True)


@primitive("string-upcase")
def string_upcase(s: Any) -> MString:
    return MString(_text("string-upcase", s).upper())


@primitive("string-downcase")
def string_downcase(s: Any) -> MString:
    return MString(_text("string-downcase", s).lower())


@primitive("string-foldcase")
def string_foldcase(s: Any) -> MString:
    return MString(_text("string-foldcase", s).casefold())


@primitive("substring")
def substring(s: Any, start: Any, end: Any) -> MString:
    text = _text("substring", s)
    start, end = _range("substring", len(text), start, end)
    return MString(text[start:end])


@primitive("string-append")
def string_append(*strings: Any) -> MString:
    return MString("".join([_text("string-append", s) for s in strings]))


@primitive("string-copy")
def string_copy(s: Any, start: Any = 0, end: Any = _ABSENT) -> MString:
    text = _text("string-copy", s)
    start, end = _range("string-copy", len(text), start, end)
    return MString(text[start:end])


@primitive("string-copy!")
def string_copy_to(to: Any, at: Any, source: Any, start: Any = 0, end: Any = _ABSENT) -> None:
    target = _mutable_string("string-copy!", to).s
    text = _text("string-copy!", source)
    start, end = _range("string-copy!", len(text), start, end)
    _count("string-copy!", at)
    if at + (end - start) > len(target):
        _fail("string-copy!", f"{end - start} characters do not fit at {at}"
                              f" in a string of length {len(target)}")
    to.s = target[:at] + text[start:end] + target[at + end - start:]


@primitive("string-fill!")
def string_fill(s: Any, c: Any, start: Any = 0, end: Any = _ABSENT) -> None:
    text = _mutable_string("string-fill!", s).s
    fill = _char_text("string-fill!", c)
    start, end = _range("string-fill!", len(text), start, end)
    s.s = text[:start] + fill * (end - start) + text[end:]


@primitive("string->list")
def string_to_list(s: Any, start: Any = 0, end: Any = _ABSENT) -> Any:
    text = _text("string->list", s)
    start, end = _range("string->list", len(text), start, end)
    return from_iterable(map(_char_of, text[start:end]))


@primitive("list->string")
def list_to_string(lst: Any) -> MString:
    text = pair_chars_text(lst)   # a transient list of characters, in C (None otherwise)
    if text is None:
        text = _chars_text("list->string", _list_items("list->string", lst))
    return MString(text)


@primitive("string->vector")
def string_to_vector(s: Any, start: Any = 0, end: Any = _ABSENT) -> SVector:
    text = _text("string->vector", s)
    start, end = _range("string->vector", len(text), start, end)
    return SVector(map(_char_of, text[start:end]))


@primitive("vector->string")
def vector_to_string(v: Any, start: Any = 0, end: Any = _ABSENT) -> MString:
    _vector("vector->string", v)
    start, end = _range("vector->string", len(v), start, end)
    return MString(_chars_text("vector->string", v[start:end]))


# -- vectors (R7RS 6.8) ----------------------------------------------------------------------

@primitive("vector?")
def is_vector(x: Any) -> bool:
    return isinstance(x, VECTOR_TYPES)


@primitive("make-vector")
def make_vector(k: Any, fill: Any = None) -> SVector:
    return SVector([fill] * _size("make-vector", k))


@primitive("vector")
def vector(*items: Any) -> SVector:
    return SVector(items)


@primitive("vector-length")
def vector_length(v: Any) -> int:
    return len(_vector("vector-length", v))


@primitive("vector-ref")
def vector_ref(v: Any, k: Any) -> Any:
    if type(v) in _VECTOR_CLASSES and type(k) is int and k >= 0:
        try:
            x = v[k]                        # the common case first (no len: see _compile)
        except Exception:   # out of range, or a stale handle: the checks below say which
            pass
        else:
            return x if type(x) is not _StoredProcedure else x._known()
    _vector("vector-ref", v)
    return _read_back(v[_index("vector-ref", k, len(v), "vector")])


_StoredProcedure, _read_back = _persist.StoredProcedure, _persist.read_back


def _items(v: Any, start: int, end: int) -> list:
    """v[start:end] as Scheme code sees it: from an image Vector, a stored
    procedure is the procedure (vm/_persist, PROCEDURES)."""
    items = v[start:end]
    if type(v) is ImageVector:
        return [x if type(x) is not _StoredProcedure else x._known() for x in items]
    return items


_VECTOR_CLASSES = frozenset(VECTOR_TYPES)   # exact types, for the fast paths


def _store(who: str, v: Any, start: int, items: list) -> None:
    """v[start:start + len(items)] = items.  An image Vector gets its items
    checked (invariant 7) and written by one slice assignment: one
    transaction, rather than one commit per item."""
    if not isinstance(v, ImageVector):
        for i, x in enumerate(items):
            v[start + i] = x
        return

    _image_call(who, lambda: _persist.store_items(v, start, items), lambda: _cannot_hold(items))


@primitive("vector-set!")
def vector_set(v: Any, k: Any, x: Any) -> None:
    _vector("vector-set!", v)
    k = _index("vector-set!", k, len(v), "vector")
    if not isinstance(v, ImageVector):
        v[k] = x
        return

    def write_item() -> None:
        v[k] = x
    _image_call("vector-set!", lambda: _persist.store(getattr(v, "_img", None), x, write_item),
                lambda: _cannot_hold([x]))


@primitive("vector->list")
def vector_to_list(v: Any, start: Any = 0, end: Any = _ABSENT) -> Any:
    _vector("vector->list", v)
    start, end = _range("vector->list", len(v), start, end)
    return from_iterable(_items(v, start, end))


@primitive("list->vector")
def list_to_vector(lst: Any) -> SVector:
    return SVector(_list_items("list->vector", lst))


@primitive("vector-copy")
def vector_copy(v: Any, start: Any = 0, end: Any = _ABSENT) -> SVector:
    _vector("vector-copy", v)
    start, end = _range("vector-copy", len(v), start, end)
    return SVector(_items(v, start, end))


@primitive("vector-copy!")
def vector_copy_to(to: Any, at: Any, source: Any, start: Any = 0, end: Any = _ABSENT) -> None:
    _vector("vector-copy!", to)
    _vector("vector-copy!", source)
    start, end = _range("vector-copy!", len(source), start, end)
    _count("vector-copy!", at)
    if at + (end - start) > len(to):
        _fail("vector-copy!", f"{end - start} elements do not fit at {at}"
                              f" in a vector of length {len(to)}")
    _store("vector-copy!", to, at, _items(source, start, end))   # a copy first: the two may overlap


@primitive("vector-append")
def vector_append(*vectors: Any) -> SVector:
    out: list = []
    for v in vectors:
        out.extend(_items(_vector("vector-append", v), 0, len(v)))
    return SVector(out)


@primitive("vector-fill!")
def vector_fill(v: Any, x: Any, start: Any = 0, end: Any = _ABSENT) -> None:
    _vector("vector-fill!", v)
    start, end = _range("vector-fill!", len(v), start, end)
    _store("vector-fill!", v, start, [x] * (end - start))


# -- bytevectors (R7RS 6.9) ------------------------------------------------------------------

@primitive("bytevector?")
def is_bytevector(x: Any) -> bool:
    return isinstance(x, BYTEVECTOR_TYPES)


@primitive("make-bytevector")
def make_bytevector(k: Any, fill: Any = 0) -> Bytevector:
    return Bytevector(bytes((_byte("make-bytevector", fill),)) * _size("make-bytevector", k))


@primitive("bytevector")
def bytevector(*items: Any) -> Bytevector:
    for b in items:
        _byte("bytevector", b)
    return Bytevector(items)


@primitive("bytevector-length")
def bytevector_length(bv: Any) -> int:
    return len(_bytevector("bytevector-length", bv))


@primitive("bytevector-u8-ref")
def bytevector_u8_ref(bv: Any, k: Any) -> int:
    _bytevector("bytevector-u8-ref", bv)
    return bv[_index("bytevector-u8-ref", k, len(bv), "bytevector")]


@primitive("bytevector-u8-set!")
def bytevector_u8_set(bv: Any, k: Any, b: Any) -> None:
    _mutable_bytevector("bytevector-u8-set!", bv)
    bv[_index("bytevector-u8-set!", k, len(bv), "bytevector")] = _byte("bytevector-u8-set!", b)


@primitive("bytevector-copy")
def bytevector_copy(bv: Any, start: Any = 0, end: Any = _ABSENT) -> Bytevector:
    _bytevector("bytevector-copy", bv)
    start, end = _range("bytevector-copy", len(bv), start, end)
    return Bytevector(bv[start:end])


@primitive("bytevector-copy!")
def bytevector_copy_to(to: Any, at: Any, source: Any, start: Any = 0,
                       end: Any = _ABSENT) -> None:
    _mutable_bytevector("bytevector-copy!", to)
    _bytevector("bytevector-copy!", source)
    start, end = _range("bytevector-copy!", len(source), start, end)
    _count("bytevector-copy!", at)
    if at + (end - start) > len(to):
        _fail("bytevector-copy!", f"{end - start} bytes do not fit at {at}"
                                  f" in a bytevector of length {len(to)}")
    for i, b in enumerate(bytes(source[start:end])):
        to[at + i] = b


@primitive("bytevector-append")
def bytevector_append(*bytevectors: Any) -> Bytevector:
    out = Bytevector()
    for bv in bytevectors:
        out += bytes(_bytevector("bytevector-append", bv)[0:len(bv)])
    return out


@primitive("utf8->string")
def utf8_to_string(bv: Any, start: Any = 0, end: Any = _ABSENT) -> MString:
    _bytevector("utf8->string", bv)
    start, end = _range("utf8->string", len(bv), start, end)
    try:
        return MString(bytes(bv[start:end]).decode("utf-8"))
    except UnicodeDecodeError as exc:
        _fail("utf8->string", f"the bytes are not UTF-8 ({exc.reason} at byte {start + exc.start})")


@primitive("string->utf8")
def string_to_utf8(s: Any, start: Any = 0, end: Any = _ABSENT) -> Bytevector:
    text = _text("string->utf8", s)
    start, end = _range("string->utf8", len(text), start, end)
    return Bytevector(text[start:end].encode("utf-8"))


# -- iteration (R7RS 6.10) -------------------------------------------------------------------

def _finite_length(who: str, lst: Any) -> int | None:
    """The number of pairs of a proper list, None for a circular one."""
    n = 0
    slow = fast = lst
    while isinstance(fast, Pair):
        fast = fast.cdr
        n += 1
        if not n & 1:
            slow = slow.cdr
            if slow is fast:
                return None
    if fast is not NIL:
        raise _type_error(who, "a proper list", lst)
    return n


def _columns(who: str, lists: tuple) -> list[tuple]:
    """The argument tuples for mapping over several lists, up to the shortest."""
    lengths = [n for n in (_finite_length(who, lst) for lst in lists) if n is not None]
    if not lengths:
        _fail(who, "all the lists are circular")
    cursors = list(lists)
    columns = []
    for _ in range(min(lengths)):
        columns.append(tuple(p.car for p in cursors))
        cursors = [p.cdr for p in cursors]
    return columns


@primitive("map")
def map_(f: Any, first: Any, *rest: Any) -> Any:
    _procedure("map", f)
    if not rest:
        return from_iterable([call(f, x) for x in _list_items("map", first)])
    return from_iterable([call(f, *column) for column in _columns("map", (first, *rest))])


@primitive("for-each")
def for_each(f: Any, first: Any, *rest: Any) -> None:
    _procedure("for-each", f)
    if not rest:
        for pair in _pairs("for-each", first):
            call(f, pair.car)
        return None
    for column in _columns("for-each", (first, *rest)):
        call(f, *column)
    return None


def _vector_columns(who: str, vectors: tuple) -> list[tuple]:
    for v in vectors:
        _vector(who, v)
    return list(zip(*(_items(v, 0, len(v)) for v in vectors), strict=False))   # to the shortest


@primitive("vector-map")
def vector_map(f: Any, first: Any, *rest: Any) -> SVector:
    _procedure("vector-map", f)
    return SVector([call(f, *column) for column in _vector_columns("vector-map", (first, *rest))])


@primitive("vector-for-each")
def vector_for_each(f: Any, first: Any, *rest: Any) -> None:
    _procedure("vector-for-each", f)
    for column in _vector_columns("vector-for-each", (first, *rest)):
        call(f, *column)


def _string_columns(who: str, strings: tuple) -> list[tuple]:
    """The Chars of the strings, column by column, to the shortest."""
    texts = [_text(who, s) for s in strings]
    return [tuple(map(_char_of, column)) for column in zip(*texts, strict=False)]


@primitive("string-map")
def string_map(f: Any, first: Any, *rest: Any) -> MString:
    _procedure("string-map", f)
    out = []
    for column in _string_columns("string-map", (first, *rest)):
        c = call(f, *column)
        if type(c) is not Char:
            _fail("string-map", f"the procedure returned {write_abbreviated(c)}, not a character")
        out.append(chr(c.cp))
    return MString("".join(out))


@primitive("string-for-each")
def string_for_each(f: Any, first: Any, *rest: Any) -> None:
    _procedure("string-for-each", f)
    for column in _string_columns("string-for-each", (first, *rest)):
        call(f, *column)


# -- ports (R7RS 6.13) -------------------------------------------------------------------------

_CHUNK = 1 << 16    # bytes or characters read from a file at a time


class Port:
    """Base of the ports.  Direction and kind are class facts; ``closed`` is per port."""

    __slots__ = ("name", "closed")
    is_input = False
    is_output = False
    is_textual = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def describe(self) -> str:
        kind = "textual" if self.is_textual else "binary"
        direction = "input" if self.is_input else "output"
        return f"#<{kind}-{direction}-port {self.name}>"


def _guarded_refill(name: str, read: Callable[[], Any]) -> Callable[[], Any]:
    """A refill function whose I/O and decoding errors become Scheme errors."""
    def refill() -> Any:
        try:
            return read()
        except UnicodeDecodeError as exc:
            raise SchemeError(f"{name}: the file is not UTF-8 text ({exc.reason})",
                              kind="file") from None
        except OSError as exc:
            raise SchemeError(f"{name}: {exc.strerror or exc}", kind="file") from None
    return refill


class TextInputPort(Port):
    """Characters from a string, a file or the console.  Its Reader holds the
    text and the position, so read-char and read share them."""

    __slots__ = ("reader", "_file")
    is_input = True

    def __init__(self, text: str, name: str, refill: Callable[[], str] | None = None,
                 file: Any = None) -> None:
        super().__init__(name)
        if refill is not None:
            refill = _guarded_refill(name, refill)
        self.reader = Reader(text, name, refill=refill)
        self._file = file

    def close(self) -> None:
        if not self.closed and self._file is not None:
            self._file.close()
        self.closed = True

    def _available(self) -> bool:
        """True if a character is buffered, after fetching more if need be."""
        reader = self.reader
        while reader.pos >= len(reader.text):
            if not reader.fetch():
                return False
        return True

    def read_char(self) -> Any:
        if not self._available():
            return EOF
        reader = self.reader
        c = reader.text[reader.pos]
        reader.pos += 1
        return _char_of(c)

    def peek_char(self) -> Any:
        return _char_of(self.reader.text[self.reader.pos]) if self._available() else EOF

    def read_line(self) -> Any:
        reader = self.reader
        pieces = []
        while self._available():
            end = reader.text.find("\n", reader.pos)
            if end == -1:
                pieces.append(reader.text[reader.pos:])
                reader.pos = len(reader.text)
                continue
            pieces.append(reader.text[reader.pos:end])
            reader.pos = end + 1
            line = "".join(pieces)
            return MString(line[:-1] if line.endswith("\r") else line)
        return MString("".join(pieces)) if pieces else EOF

    def read_string(self, k: int) -> Any:
        reader = self.reader
        pieces: list[str] = []
        wanted = k
        while wanted and self._available():
            piece = reader.text[reader.pos:reader.pos + wanted]
            reader.pos += len(piece)
            wanted -= len(piece)
            pieces.append(piece)
        if k and not pieces:
            return EOF
        return MString("".join(pieces))


class TextOutputPort(Port):
    """Characters into a string (get-output-string) or a file.  ``chunks``
    is the string's text so far, in pieces (unused for a file)."""

    __slots__ = ("chunks", "_file")
    is_output = True

    def __init__(self, name: str, file: Any = None) -> None:
        super().__init__(name)
        self.chunks: list[str] = []
        self._file = file

    def write_text(self, text: str) -> None:
        if self._file is None:
            self.chunks.append(text)
        else:
            self._file.write(text)

    def getvalue(self) -> str:
        text = "".join(self.chunks)
        self.chunks = [text]
        return text

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if not self.closed and self._file is not None:
            self._file.close()
        self.closed = True


class StringOutputPort(TextOutputPort):
    """What open-output-string makes.  Its exact type tells write-char and
    write-string (and the compiler's inlined copies of them, vm/_compile)
    that writing is appending to ``chunks`` while the port is open."""

    __slots__ = ()

    def __init__(self, name: str = "string") -> None:
        super().__init__(name)


class ConsoleOutputPort(TextOutputPort):
    """sys.stdout or sys.stderr, looked up at each write (so redirection works)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._stream = stream

    def write_text(self, text: str) -> None:
        getattr(sys, self._stream).write(text)

    def flush(self) -> None:
        getattr(sys, self._stream).flush()

    def close(self) -> None:
        self.closed = True    # the process's stream stays open


class BinaryInputPort(Port):
    """Bytes from a bytevector or a file."""

    __slots__ = ("_data", "_pos", "_file")
    is_input = True
    is_textual = False

    def __init__(self, data: bytes, name: str, file: Any = None) -> None:
        super().__init__(name)
        self._data = data
        self._pos = 0
        self._file = file

    def close(self) -> None:
        if not self.closed and self._file is not None:
            self._file.close()
        self.closed = True

    def _buffered(self, wanted: int) -> int:
        """How many bytes are buffered (reading up to ``wanted`` from the file)."""
        while len(self._data) - self._pos < wanted and self._file is not None:
            try:
                chunk = self._file.read(_CHUNK)
            except OSError as exc:
                raise SchemeError(f"{self.name}: {exc.strerror or exc}", kind="file") from None
            if not chunk:
                self._file.close()
                self._file = None
                break
            self._data = self._data[self._pos:] + chunk
            self._pos = 0
        return len(self._data) - self._pos

    def read_bytes(self, k: int, advance: bool = True) -> bytes:
        available = min(self._buffered(k), k)
        data = self._data[self._pos:self._pos + available]
        if advance:
            self._pos += available
        return data


class BinaryOutputPort(Port):
    """Bytes into a bytevector (get-output-bytevector) or a file."""

    __slots__ = ("_buffer", "_file")
    is_output = True
    is_textual = False

    def __init__(self, name: str, file: Any = None) -> None:
        super().__init__(name)
        self._buffer = bytearray()
        self._file = file

    def write_bytes(self, data: bytes) -> None:
        if self._file is None:
            self._buffer += data
        else:
            self._file.write(data)

    def getvalue(self) -> bytes:
        return bytes(self._buffer)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if not self.closed and self._file is not None:
            self._file.close()
        self.closed = True


class Parameter:
    """A parameter object (R7RS 4.2.6) of this module: the current ports.

    ``param()`` returns ``param.value``.  parameterize (vm/_runtime) sets
    ``param.value = param.converter(v)`` (or v when converter is None) and
    restores the old value on exit."""

    __slots__ = ("value", "converter", "scheme_name")

    def __init__(self, value: Any, converter: Callable[[Any], Any] | None = None,
                 name: str = "parameter") -> None:
        self.value = value
        self.converter = converter
        self.scheme_name = name

    def __call__(self) -> Any:
        return self.value


def _port_converter(name: str, direction: str) -> Callable[[Any], Any]:
    def convert(port: Any) -> Any:
        if not isinstance(port, Port) or not getattr(port, f"is_{direction}"):
            raise _type_error(name, f"an {direction} port", port)
        return port
    return convert


CURRENT_INPUT = Parameter(TextInputPort("", "stdin", refill=lambda: sys.stdin.readline()),
                          _port_converter("current-input-port", "input"), "current-input-port")
CURRENT_OUTPUT = Parameter(ConsoleOutputPort("stdout"),
                           _port_converter("current-output-port", "output"), "current-output-port")
CURRENT_ERROR = Parameter(ConsoleOutputPort("stderr"),
                          _port_converter("current-error-port", "output"), "current-error-port")
PRIMITIVES["current-input-port"] = CURRENT_INPUT
PRIMITIVES["current-output-port"] = CURRENT_OUTPUT
PRIMITIVES["current-error-port"] = CURRENT_ERROR


def _port(who: str, port: Any, direction: str, textual: bool | None) -> Any:
    """The port argument (or the current one when absent), checked and open."""
    if port is _ABSENT:
        port = (CURRENT_INPUT if direction == "input" else CURRENT_OUTPUT).value
    if not isinstance(port, Port) or not getattr(port, f"is_{direction}") or (
            textual is not None and port.is_textual != textual):
        kind = "" if textual is None else "textual " if textual else "binary "
        raise _type_error(who, f"a {kind}{direction} port", port)
    if port.closed:
        _fail(who, f"{port.describe()} is closed")
    return port


def _text_output_port(who: str, port: Any) -> Any:
    """_port(who, port, "output", True) with the common cases first."""
    if port is _ABSENT:
        port = CURRENT_OUTPUT.value
    if type(port) in _TEXT_OUTPUT_TYPES and not port.closed:
        return port
    return _port(who, port, "output", True)


_STRING_PORT_TYPES = (TextOutputPort, StringOutputPort)   # get-output-string takes these
_TEXT_OUTPUT_TYPES = frozenset((TextOutputPort, StringOutputPort, ConsoleOutputPort))


@primitive("input-port?")
def is_input_port(x: Any) -> bool:
    return isinstance(x, Port) and x.is_input


@primitive("output-port?")
def is_output_port(x: Any) -> bool:
    return isinstance(x, Port) and x.is_output


@primitive("textual-port?")
def is_textual_port(x: Any) -> bool:
    return isinstance(x, Port) and x.is_textual


@primitive("binary-port?")
def is_binary_port(x: Any) -> bool:
    return isinstance(x, Port) and not x.is_textual


@primitive("port?")
def is_port(x: Any) -> bool:
    return isinstance(x, Port)


@primitive("input-port-open?")
def is_input_port_open(port: Any) -> bool:
    if not isinstance(port, Port):
        raise _type_error("input-port-open?", "a port", port)
    return port.is_input and not port.closed


@primitive("output-port-open?")
def is_output_port_open(port: Any) -> bool:
    if not isinstance(port, Port):
        raise _type_error("output-port-open?", "a port", port)
    return port.is_output and not port.closed


@primitive("close-port")
def close_port(port: Any) -> None:
    if not isinstance(port, Port):
        raise _type_error("close-port", "a port", port)
    port.close()


@primitive("close-input-port")
def close_input_port(port: Any) -> None:
    if not isinstance(port, Port) or not port.is_input:
        raise _type_error("close-input-port", "an input port", port)
    port.close()


@primitive("close-output-port")
def close_output_port(port: Any) -> None:
    if not isinstance(port, Port) or not port.is_output:
        raise _type_error("close-output-port", "an output port", port)
    port.close()


@primitive("call-with-port")
def call_with_port(port: Any, proc: Any) -> Any:
    if not isinstance(port, Port):
        raise _type_error("call-with-port", "a port", port)
    result = call(_procedure("call-with-port", proc), port)
    port.close()
    return result


@primitive("open-input-string")
def open_input_string(s: Any) -> TextInputPort:
    return TextInputPort(_text("open-input-string", s), "string")


@primitive("open-output-string")
def open_output_string() -> StringOutputPort:
    return StringOutputPort()


@primitive("get-output-string")
def get_output_string(port: Any) -> MString:
    if type(port) not in _STRING_PORT_TYPES or port._file is not None:
        raise _type_error("get-output-string", "a port made by open-output-string", port)
    return MString(port.getvalue())


@primitive("open-input-bytevector")
def open_input_bytevector(bv: Any) -> BinaryInputPort:
    return BinaryInputPort(bytes(_bytevector("open-input-bytevector", bv)), "bytevector")


@primitive("open-output-bytevector")
def open_output_bytevector() -> BinaryOutputPort:
    return BinaryOutputPort("bytevector")


@primitive("get-output-bytevector")
def get_output_bytevector(port: Any) -> Bytevector:
    if type(port) is not BinaryOutputPort or port._file is not None:
        raise _type_error("get-output-bytevector", "a port made by open-output-bytevector", port)
    return Bytevector(port.getvalue())


# -- input (R7RS 6.13.2) -----------------------------------------------------------------------

@primitive("read")
def read(port: Any = _ABSENT) -> Any:
    return _port("read", port, "input", True).reader.read()


@primitive("read-char")
def read_char(port: Any = _ABSENT) -> Any:
    return _port("read-char", port, "input", True).read_char()


@primitive("peek-char")
def peek_char(port: Any = _ABSENT) -> Any:
    return _port("peek-char", port, "input", True).peek_char()


@primitive("read-line")
def read_line(port: Any = _ABSENT) -> Any:
    return _port("read-line", port, "input", True).read_line()


@primitive("eof-object?")
def is_eof_object(x: Any) -> bool:
    return x is EOF


@primitive("eof-object")
def eof_object() -> Any:
    return EOF


@primitive("char-ready?")
def is_char_ready(port: Any = _ABSENT) -> bool:
    _port("char-ready?", port, "input", True)
    return True


@primitive("read-string")
def read_string(k: Any, port: Any = _ABSENT) -> Any:
    _count("read-string", k)
    return _port("read-string", port, "input", True).read_string(k)


@primitive("read-u8")
def read_u8(port: Any = _ABSENT) -> Any:
    data = _port("read-u8", port, "input", False).read_bytes(1)
    return data[0] if data else EOF


@primitive("peek-u8")
def peek_u8(port: Any = _ABSENT) -> Any:
    data = _port("peek-u8", port, "input", False).read_bytes(1, advance=False)
    return data[0] if data else EOF


@primitive("u8-ready?")
def is_u8_ready(port: Any = _ABSENT) -> bool:
    _port("u8-ready?", port, "input", False)
    return True


@primitive("read-bytevector")
def read_bytevector(k: Any, port: Any = _ABSENT) -> Any:
    _count("read-bytevector", k)
    data = _port("read-bytevector", port, "input", False).read_bytes(k)
    return Bytevector(data) if data or not k else EOF


@primitive("read-bytevector!")
def read_bytevector_into(bv: Any, port: Any = _ABSENT, start: Any = 0, end: Any = _ABSENT) -> Any:
    _mutable_bytevector("read-bytevector!", bv)
    start, end = _range("read-bytevector!", len(bv), start, end)
    data = _port("read-bytevector!", port, "input", False).read_bytes(end - start)
    if not data and end > start:
        return EOF
    for i, b in enumerate(data):
        bv[start + i] = b
    return len(data)


# -- output (R7RS 6.13.3) ----------------------------------------------------------------------

def _writer(name: str, render: Callable[[Any], str]) -> Callable:
    def write_datum(obj: Any, port: Any = _ABSENT) -> None:
        _text_output_port(name, port).write_text(render(obj))
    write_datum.__name__ = write_datum.__qualname__ = name
    return primitive(name)(write_datum)


_writer("write", write)
_writer("write-shared", write_shared)
_writer("write-simple", write_simple)
_writer("display", display)


@primitive("newline")
def newline(port: Any = _ABSENT) -> None:
    _text_output_port("newline", port).write_text("\n")


@primitive("write-char")
def write_char(c: Any, port: Any = _ABSENT) -> None:
    if type(c) is Char and type(port) is StringOutputPort and not port.closed:
        port.chunks.append(chr(c.cp))       # the common case, without a call
        return
    text = _char_text("write-char", c)
    _text_output_port("write-char", port).write_text(text)


@primitive("write-string")
def write_string(s: Any, port: Any = _ABSENT, start: Any = 0, end: Any = _ABSENT) -> None:
    if type(s) is str and type(port) is StringOutputPort and not port.closed \
            and type(start) is int and start == 0 and end is _ABSENT:
        port.chunks.append(s)               # the common case, without a call
        return
    text = _text("write-string", s)
    start, end = _range("write-string", len(text), start, end)
    _text_output_port("write-string", port).write_text(text[start:end])


@primitive("write-u8")
def write_u8(b: Any, port: Any = _ABSENT) -> None:
    _byte("write-u8", b)
    _port("write-u8", port, "output", False).write_bytes(bytes((b,)))


@primitive("write-bytevector")
def write_bytevector(bv: Any, port: Any = _ABSENT, start: Any = 0, end: Any = _ABSENT) -> None:
    _bytevector("write-bytevector", bv)
    start, end = _range("write-bytevector", len(bv), start, end)
    _port("write-bytevector", port, "output", False).write_bytes(bytes(bv[start:end]))


@primitive("flush-output-port")
def flush_output_port(port: Any = _ABSENT) -> None:
    _port("flush-output-port", port, "output", None).flush()


# -- files (R7RS 6.13.1, 6.14) -----------------------------------------------------------------

def _path(who: str, filename: Any) -> str:
    return _text(who, filename)


def _open(who: str, filename: Any, mode: str) -> Any:
    path = _path(who, filename)
    try:
        if "b" in mode:
            return open(path, mode)
        return open(path, mode, encoding="utf-8")
    except OSError as exc:
        raise SchemeError(f"{who}: cannot open {write(filename)}: {exc.strerror or exc}",
                          filename, kind="file") from None


@primitive("open-input-file")
def open_input_file(filename: Any) -> TextInputPort:
    file = _open("open-input-file", filename, "r")

    def refill() -> str:
        chunk = file.read(_CHUNK)
        if not chunk:
            file.close()      # at the end: the port stays open, the file need not
        return chunk

    return TextInputPort("", _path("open-input-file", filename), refill=refill, file=file)


@primitive("open-binary-input-file")
def open_binary_input_file(filename: Any) -> BinaryInputPort:
    file = _open("open-binary-input-file", filename, "rb")
    return BinaryInputPort(b"", _path("open-binary-input-file", filename), file=file)


@primitive("open-output-file")
def open_output_file(filename: Any) -> TextOutputPort:
    file = _open("open-output-file", filename, "w")
    return TextOutputPort(_path("open-output-file", filename), file)


@primitive("open-binary-output-file")
def open_binary_output_file(filename: Any) -> BinaryOutputPort:
    file = _open("open-binary-output-file", filename, "wb")
    return BinaryOutputPort(_path("open-binary-output-file", filename), file)


@primitive("call-with-input-file")
def call_with_input_file(filename: Any, proc: Any) -> Any:
    _procedure("call-with-input-file", proc)
    return call_with_port(open_input_file(filename), proc)


@primitive("call-with-output-file")
def call_with_output_file(filename: Any, proc: Any) -> Any:
    _procedure("call-with-output-file", proc)
    return call_with_port(open_output_file(filename), proc)


def _with_port(parameter: Parameter, port: Port, thunk: Any) -> Any:
    saved = parameter.value
    parameter.value = port
    try:
        return call(thunk)
    finally:
        parameter.value = saved
        port.close()


@primitive("with-input-from-file")
def with_input_from_file(filename: Any, thunk: Any) -> Any:
    _procedure("with-input-from-file", thunk)
    return _with_port(CURRENT_INPUT, open_input_file(filename), thunk)


@primitive("with-output-to-file")
def with_output_to_file(filename: Any, thunk: Any) -> Any:
    _procedure("with-output-to-file", thunk)
    return _with_port(CURRENT_OUTPUT, open_output_file(filename), thunk)


@primitive("file-exists?")
def file_exists(filename: Any) -> bool:
    return os.path.exists(_path("file-exists?", filename))


@primitive("delete-file")
def delete_file(filename: Any) -> None:
    try:
        os.remove(_path("delete-file", filename))
    except OSError as exc:
        raise SchemeError(f"delete-file: cannot delete {write(filename)}: {exc.strerror or exc}",
                          filename, kind="file") from None


# -- the process (R7RS 6.14: (scheme process-context), (scheme time)) --------------------------

class SchemeExit(BaseException):
    """exit or emergency-exit: the program ends with exit status ``code``.
    A BaseException, so that handlers of Exception (which turn Python errors
    into Scheme conditions) let it through.  Given a Scheme object rather than
    a status, it converts it as R7RS 6.14 says (#t success, #f failure)."""

    def __init__(self, code: Any = 0, emergency: bool = False) -> None:
        code = _exit_code(code)
        super().__init__(code)
        self.code = code
        self.emergency = emergency


def _exit_code(obj: Any) -> int:
    """R7RS 6.14: #t (or nothing) is success, #f failure, an integer is itself."""
    if obj is True:
        return 0
    if type(obj) is int:
        return obj
    return 1


_command_line: list[str] | None = None


def set_command_line(arguments: list[str] | None) -> None:
    """What (command-line) returns: the program's name, then its arguments
    (None: sys.argv, the default)."""
    global _command_line
    _command_line = None if arguments is None else list(arguments)


@primitive("command-line")
def command_line() -> Any:
    arguments = sys.argv if _command_line is None else _command_line
    return from_iterable(arguments)


@primitive("exit")
def exit_(obj: Any = True) -> NoReturn:
    raise SchemeExit(obj)


@primitive("emergency-exit")
def emergency_exit(obj: Any = True) -> NoReturn:
    raise SchemeExit(obj, emergency=True)


@primitive("get-environment-variable")
def get_environment_variable(name: Any) -> Any:
    value = os.environ.get(_text("get-environment-variable", name))
    return False if value is None else value


@primitive("get-environment-variables")
def get_environment_variables() -> Any:
    return from_iterable(Pair(k, v) for k, v in os.environ.items())


@primitive("current-second")
def current_second() -> float:
    return time.time()


@primitive("current-jiffy")
def current_jiffy() -> int:
    return time.perf_counter_ns()


@primitive("jiffies-per-second")
def jiffies_per_second() -> int:
    return 1_000_000_000


_FEATURES = ("r7rs", "exact-closed", "ratios", "full-unicode", "python", "imago",
             "srfi-69", sys.platform, *(("posix",) if os.name == "posix" else ()))


@primitive("features")
def features() -> Any:
    return from_iterable(intern(name) for name in _FEATURES)


# -- hash tables (SRFI 69) ---------------------------------------------------------------------

# hash (equal-hash) looks at this many nodes of a key at most: enough to tell
# typical keys apart, and bounded for long or circular ones.
_HASH_BUDGET = 64
_HASH_MASK = (1 << 61) - 1


def _hash_eqv(x: Any) -> int:
    """A hash consistent with eqv? (and so with eq?, identity)."""
    t = type(x)
    if t is float:
        return 0 if x != x else hash(x)     # every NaN is eqv to every NaN
    if t is int or t is Fraction or t is complex or t is bool:
        return hash(x)
    return id(x)


def _hash_equal(x: Any) -> int:
    """A hash consistent with equal?: structure, within _HASH_BUDGET nodes."""
    h = 0
    todo = [x]
    budget = _HASH_BUDGET
    while todo and budget:
        y = todo.pop()
        budget -= 1
        if isinstance(y, Pair):
            v = 1
            todo.append(y.cdr)
            todo.append(y.car)
        elif type(y) is str:
            v = hash(y)
        elif isinstance(y, MString):
            v = hash(y.s)                   # a str and an MString of one text are equal?
        elif isinstance(y, VECTOR_TYPES):
            v = 2 + len(y)
            todo.extend(y[0:min(len(y), 8)])
        elif isinstance(y, BYTEVECTOR_TYPES):
            v = hash(bytes(y))
        else:
            v = _hash_eqv(y)
        h = (h * 1_000_003 + v) & _HASH_MASK
    return h


def _string_key(x: Any) -> str:
    return _text("hash table", x)


def _number_key(x: Any) -> Any:
    _number("hash table", x)
    return 0 if x != x else x   # a NaN is never = anything: any hash will do


_BUILTIN_EQUIVALENCES: dict[Any, tuple[Callable, Callable]] = {}


def _builtin_equivalences() -> dict[Any, tuple[Callable, Callable]]:
    """(same?, hash) for the equivalence procedures a table may be made with."""
    if not _BUILTIN_EQUIVALENCES:
        p = PRIMITIVES
        _BUILTIN_EQUIVALENCES.update({
            p["eq?"]: (eq, _hash_eqv),
            p["eqv?"]: (eqv, _hash_eqv),
            p["equal?"]: (equal, _hash_equal),
            p["string=?"]: (lambda a, b: _string_key(a) == _string_key(b),
                            lambda k: hash(_string_key(k))),
            p["string-ci=?"]: (lambda a, b: _string_key(a).casefold() == _string_key(b).casefold(),
                               lambda k: hash(_string_key(k).casefold())),
            p["="]: (lambda a, b: _number_key(a) == _number_key(b),
                     lambda k: hash(_number_key(k))),
            p["char=?"]: (lambda a, b: _char("hash table", a) is _char("hash table", b),
                          lambda k: _char("hash table", k).cp),
            p["char-ci=?"]: (lambda a, b: _char_ci_key(a) == _char_ci_key(b), _char_ci_key),
        })
    return _BUILTIN_EQUIVALENCES


def _char_ci_key(c: Any) -> int:
    return _fold_char(_char("hash table", c)).cp


class HashTable:
    """A SRFI 69 hash table: buckets keyed by a hash, entries compared with
    the table's equivalence, iterated in insertion order.  Transient.

    get, set, delete, items, clear and len are the protocol every SRFI 69
    procedure uses; _ImageTableView speaks it for an image Table."""

    __slots__ = ("equivalence", "hash_function", "_same", "_hash", "_buckets", "_entries",
                 "__weakref__")

    def __init__(self, equivalence: Any, hash_function: Any) -> None:
        self.equivalence = equivalence        # the Scheme procedures, as given
        self.hash_function = hash_function
        builtin = _builtin_equivalences().get(equivalence)
        if builtin is not None:
            self._same, default_hash = builtin
        else:
            self._same = lambda a, b: call(equivalence, a, b) is not False
            default_hash = _constant_hash
        self._hash = default_hash if hash_function is None else _scheme_hash(hash_function)
        self._buckets: dict[int, list[list]] = {}
        self._entries: dict[int, list] = {}   # id(entry) -> [key, value], in insertion order

    def _find(self, key: Any) -> tuple[int, list | None]:
        h = self._hash(key)
        bucket = self._buckets.get(h)
        if bucket:
            same = self._same
            for entry in bucket:
                if same(entry[0], key):
                    return h, entry
        return h, None

    def get(self, key: Any, default: Any) -> Any:
        entry = self._find(key)[1]
        return default if entry is None else entry[1]

    def set(self, key: Any, value: Any) -> None:
        h, entry = self._find(key)
        if entry is not None:
            entry[1] = value
            return
        entry = [key, value]
        self._buckets.setdefault(h, []).append(entry)
        self._entries[id(entry)] = entry

    def delete(self, key: Any) -> None:
        h, entry = self._find(key)
        if entry is not None:
            bucket = self._buckets[h]
            bucket.remove(entry)
            if not bucket:
                del self._buckets[h]
            del self._entries[id(entry)]

    def items(self) -> list[tuple[Any, Any]]:
        """A snapshot of the (key, value) pairs: safe to mutate the table meanwhile."""
        return [(entry[0], entry[1]) for entry in self._entries.values()]

    def clear(self) -> None:
        self._buckets.clear()
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


HASH_TABLE_TYPES = (HashTable, ImageTable)


class _ImageTableView:
    """An image Table seen through HashTable's protocol, for one call of
    the procedure ``who``: keys go through _image_key, and the image's
    refusals become Scheme errors naming who (invariant 7)."""

    __slots__ = ("table", "who")

    def __init__(self, table: ImageTable, who: str) -> None:
        self.table = table
        self.who = who

    @property
    def equivalence(self) -> Callable:
        return PRIMITIVES["equal?"]      # what Python's key equality is closest to

    hash_function = None                 # so hash-table-hash-function reports hash

    def get(self, key: Any, default: Any) -> Any:
        key = _image_key(self.who, key)
        return _read_back(_image_call(self.who, lambda: self.table.get(key, default),
                                      lambda: _bad_key(write_abbreviated(key))))

    def set(self, key: Any, value: Any) -> None:
        key = _image_key(self.who, key)
        table = self.table
        _image_call(self.who, lambda: _persist.store(getattr(table, "_img", None), value,
                                                         lambda: table.__setitem__(key, value)),
                    lambda: self._refusal(key, value))

    def delete(self, key: Any) -> None:
        key = _image_key(self.who, key)
        _image_call(self.who, lambda: self.table.pop(key, None),
                    lambda: _bad_key(write_abbreviated(key)))

    def _refusal(self, key: Any, value: Any) -> str:
        """Which of key and value the image refused (a lookup tells a bad key)."""
        try:
            self.table.get(key)
        except TypeError:
            return _bad_key(write_abbreviated(key))
        return _cannot_hold([value])

    def items(self) -> list[tuple[Any, Any]]:
        """A list (a snapshot, as HashTable's); stored procedures read back as procedures."""
        return [(k, v if type(v) is not _StoredProcedure else v._known()) for k, v in self.table.items()]

    def clear(self) -> None:
        _image_call(self.who, self.table.clear, lambda: "the table cannot be cleared")

    def __len__(self) -> int:
        return len(self.table)


def _constant_hash(key: Any) -> int:
    return 0


def _scheme_hash(proc: Any) -> Callable[[Any], int]:
    def hash_key(key: Any) -> int:
        h = call(proc, key)
        if type(h) is not int:
            _fail("hash table", f"the hash function returned {write_abbreviated(h)},"
                                " not an exact integer")
        return h
    return hash_key


def _table(who: str, x: Any) -> Any:
    """A hash table argument: a HashTable, or a view of an image Table."""
    if isinstance(x, HashTable):
        return x
    if isinstance(x, ImageTable):
        return _ImageTableView(x, who)
    raise _type_error(who, "a hash table", x)


_MISSING = object()


@primitive("make-hash-table")
def make_hash_table(equivalence: Any = _ABSENT, hash_function: Any = _ABSENT,
                    *ignored: Any) -> HashTable:
    if equivalence is _ABSENT:
        equivalence = PRIMITIVES["equal?"]
    _procedure("make-hash-table", equivalence)
    if hash_function is _ABSENT:
        hash_function = None
    else:
        _procedure("make-hash-table", hash_function)
    return HashTable(equivalence, hash_function)


@primitive("hash-table?")
def is_hash_table(x: Any) -> bool:
    return isinstance(x, HASH_TABLE_TYPES)


# Keys an image Table takes as they are (_image_key is the identity on them),
# for the fast paths: a lookup with one of them is the Table's own.
IMAGE_PLAIN_KEYS = frozenset((str, int))


@primitive("hash-table-ref")
def hash_table_ref(table: Any, key: Any, fail: Any = _ABSENT, succeed: Any = _ABSENT) -> Any:
    if type(table) is ImageTable and type(key) in IMAGE_PLAIN_KEYS and succeed is _ABSENT:
        try:
            value = table[key]              # the common case first
        except Exception:   # missing, or refused: the general path says which
            pass
        else:
            return value if type(value) is not _StoredProcedure else value._known()
    value = _table("hash-table-ref", table).get(key, _MISSING)
    if value is _MISSING:
        if fail is _ABSENT:
            _fail("hash-table-ref", f"no value for the key {write_abbreviated(key)}")
        return call(_procedure("hash-table-ref", fail))
    if succeed is _ABSENT:
        return value
    return call(_procedure("hash-table-ref", succeed), value)


@primitive("hash-table-ref/default")
def hash_table_ref_default(table: Any, key: Any, default: Any) -> Any:
    if type(table) is ImageTable and type(key) in IMAGE_PLAIN_KEYS:
        try:
            value = table[key]              # the common case first
        except Exception:   # missing, or refused: the general path says which
            pass
        else:
            return value if type(value) is not _StoredProcedure else value._known()
    return _table("hash-table-ref/default", table).get(key, default)


@primitive("hash-table-set!")
def hash_table_set(table: Any, key: Any, value: Any) -> None:
    _table("hash-table-set!", table).set(key, value)


@primitive("hash-table-delete!")
def hash_table_delete(table: Any, key: Any) -> None:
    _table("hash-table-delete!", table).delete(key)


@primitive("hash-table-exists?")
def hash_table_exists(table: Any, key: Any) -> bool:
    return _table("hash-table-exists?", table).get(key, _MISSING) is not _MISSING


PRIMITIVES["hash-table-contains?"] = hash_table_exists


@primitive("hash-table-update!")
def hash_table_update(table: Any, key: Any, proc: Any, fail: Any = _ABSENT) -> None:
    _procedure("hash-table-update!", proc)
    value = hash_table_ref(table, key, fail)
    _table("hash-table-update!", table).set(key, call(proc, value))


@primitive("hash-table-update!/default")
def hash_table_update_default(table: Any, key: Any, proc: Any, default: Any) -> None:
    _procedure("hash-table-update!/default", proc)
    view = _table("hash-table-update!/default", table)
    view.set(key, call(proc, view.get(key, default)))


@primitive("hash-table-size")
def hash_table_size(table: Any) -> int:
    return len(_table("hash-table-size", table))


@primitive("hash-table-keys")
def hash_table_keys(table: Any) -> Any:
    return from_iterable(k for k, _ in _table("hash-table-keys", table).items())


@primitive("hash-table-values")
def hash_table_values(table: Any) -> Any:
    return from_iterable(v for _, v in _table("hash-table-values", table).items())


@primitive("hash-table-walk")
def hash_table_walk(table: Any, proc: Any) -> None:
    _procedure("hash-table-walk", proc)
    for key, value in _table("hash-table-walk", table).items():
        call(proc, key, value)


@primitive("hash-table-fold")
def hash_table_fold(a: Any, b: Any, c: Any) -> Any:
    """(hash-table-fold table kons knil) of SRFI 69, or (... kons knil table) of SRFI 125."""
    if isinstance(a, HASH_TABLE_TYPES):
        table, kons, acc = _table("hash-table-fold", a), b, c
    else:
        kons, acc, table = a, b, _table("hash-table-fold", c)
    _procedure("hash-table-fold", kons)
    for key, value in table.items():
        acc = call(kons, key, value, acc)
    return acc


@primitive("hash-table->alist")
def hash_table_to_alist(table: Any) -> Any:
    return from_iterable(Pair(k, v) for k, v in _table("hash-table->alist", table).items())


@primitive("hash-table-copy")
def hash_table_copy(table: Any, mutable: Any = False) -> HashTable:
    source = _table("hash-table-copy", table)
    copy = HashTable(source.equivalence, source.hash_function)
    for key, value in source.items():
        copy.set(key, value)
    return copy


@primitive("hash-table-merge!")
def hash_table_merge(target: Any, source: Any) -> Any:
    view = _table("hash-table-merge!", target)
    for key, value in _table("hash-table-merge!", source).items():
        view.set(key, value)
    return target


@primitive("hash-table-clear!")
def hash_table_clear(table: Any) -> None:
    _table("hash-table-clear!", table).clear()


@primitive("hash-table-equivalence-function")
def hash_table_equivalence_function(table: Any) -> Any:
    return _table("hash-table-equivalence-function", table).equivalence


@primitive("hash-table-hash-function")
def hash_table_hash_function(table: Any) -> Any:
    source = _table("hash-table-hash-function", table)
    if source.hash_function is not None:
        return source.hash_function
    builtin = _builtin_equivalences().get(source.equivalence)
    if builtin is None:
        return _constant_hash_procedure
    return hash_by_identity if builtin[1] is _hash_eqv else hash_


@primitive("alist->hash-table")
def alist_to_hash_table(alist: Any, equivalence: Any = _ABSENT,
                        hash_function: Any = _ABSENT, *ignored: Any) -> HashTable:
    table = make_hash_table(equivalence, hash_function)
    for pair in _pairs("alist->hash-table", alist):
        entry = pair.car
        if not isinstance(entry, Pair):
            raise _type_error("alist->hash-table", "an association list (of pairs)", alist)
        if table.get(entry.car, _MISSING) is _MISSING:   # the first association wins
            table.set(entry.car, entry.cdr)
    return table


def _bounded(who: str, h: int, bound: Any) -> int:
    if bound is _ABSENT:
        return h & _HASH_MASK
    if type(bound) is not int or bound <= 0:
        raise _type_error(who, "a positive exact integer bound", bound)
    return h % bound


@primitive("hash")
def hash_(obj: Any, bound: Any = _ABSENT) -> int:
    return _bounded("hash", _hash_equal(obj), bound)


@primitive("string-hash")
def string_hash(s: Any, bound: Any = _ABSENT) -> int:
    return _bounded("string-hash", hash(_text("string-hash", s)), bound)


@primitive("string-ci-hash")
def string_ci_hash(s: Any, bound: Any = _ABSENT) -> int:
    return _bounded("string-ci-hash", hash(_text("string-ci-hash", s).casefold()), bound)


@primitive("hash-by-identity")
def hash_by_identity(obj: Any, bound: Any = _ABSENT) -> int:
    return _bounded("hash-by-identity", _hash_eqv(obj), bound)


def _constant_hash_procedure(obj: Any, bound: Any = _ABSENT) -> int:
    return 0


_constant_hash_procedure.scheme_name = "constant-hash"


# -- how this module's objects print ------------------------------------------------------------

register_printer(Port, lambda port: port.describe())
register_printer(Parameter, lambda p: "#<parameter>" if p.scheme_name == "parameter"
                 else f"#<parameter {p.scheme_name}>")
register_printer(HashTable, hash_table_text)
