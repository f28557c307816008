"""The printer: data to text (R7RS 6.13.3 write, write-shared, write-simple,
display) and a pretty-printer with depth and length limits.

WHAT IT OWNS

    write(x), write_shared(x), write_simple(x), display(x)   -> str
    write_abbreviated(x, depth, length)   one line, limited: for error messages
    pretty(x, depth, length, width)       line-broken, limited: for the REPL
    register_printer(cls, fn)             how other types print (fn(x) -> str)
    number_to_string(z, radix)            number->string (R7RS 6.2.7)
    int_to_digits, float_to_string, char_to_string, string_to_literal,
    symbol_to_string, hash_table_text     the texts of atoms

INVARIANTS

 1. Every object prints, and printing terminates: write and display label
    the objects that close a cycle (#0=...#0#), write-shared every object
    met twice; write-simple may not be given a cycle (R7RS), so it shares
    write's scan and labels cycles rather than hang.
 2. Whatever write prints from a datum the reader can make reads back as an
    equal datum: floats round-trip (shortest repr), symbols that would read
    differently (|a b|, |1|, ||) print with bars, strings and characters
    with escapes.
 3. Printing is iterative, like the reader: nesting depth is bounded by
    memory, not by Python's stack.
 4. With limits, the printer reaches only what it prints: a sequence of
    ten million elements costs len() and ``length`` calls of __getitem__;
    nothing is iterated.
 5. Without limits, it still never walks a huge persistent vector: an image
    Vector of more than _IMAGE_VECTOR_WHOLE items prints its first
    _IMAGE_VECTOR_HEAD items and "... (N items)", N its length.  Such a
    vector lives in the image, not in a program's text, so nothing expects
    it to read back; writing it whole would take minutes and gigabytes.

HOW

Two passes over an explicit stack.  The scan (_find_labels) walks the
structure depth first and collects the ids of the pairs, vectors, records and
error objects that need a label: one met again while the frame that first
met it is still open closes a cycle.  A list is one frame walking its spine,
and each car is scanned before the walk moves on, so structure shared
between a car and the rest of its list is not mistaken for a cycle.  The
emitter then walks the same way and feeds a sink three kinds of event: atom
texts, a group opening ("(", "#(", "'", "#<point"...) and a group closing.
Both passes handle runs of atoms in an inner loop.  The flat sink joins the
events with single spaces; the tree sink builds groups that the pretty
layout breaks across lines: a group that fits stays on one line; a group of
atoms fills lines; a list led by an atom keeps its first argument on the
head's line and indents the rest by two; other groups put one item per
line, aligned after the opener.

Objects are classified by type once (the class cache): a registered printer
wins, then the Scheme types of vm/_types (subclasses included, since the
image's persistent objects subclass them) and the image's handles, then any
callable (a procedure), then any other object with __len__ and __getitem__
that is not a str, bytes or mapping (printed as a vector: tuples read from
the image, Python lists), and last ``#<python TypeName>``.

THE VALUES OF THE IMAGE (see vm/_types)

    str                    a string ("..." / raw), like MString
    bytes                  an immutable bytevector: #u8(...)
    image.Vector           a vector: #(...), cut when huge (invariant 5)
    image.Table            #<hash-table N entries>, like a transient HashTable
    image.Blob             #<blob N bytes>
    image.Object           #<object of class C at 0xADDR>
    a stale handle         #<stale handle at 0xADDR> (its image closed, or
                           made in a transaction that rolled back)

DESIGN DECISIONS

 - (quote x), (quasiquote x), (unquote x), (unquote-splicing x) print as 'x
   `x ,x ,@x, as Chez and Racket do.
 - Records print as #<name field=value ...>, with the angle brackets of a
   record type name like <point> dropped; a field never set prints as
   #<unspecified>.  Errors print as #<error "message" irritant ...>,
   multiple values as #<values 1 2>.
 - Inexact complex numbers print with both parts (1.0+2.0i); a zero real
   part is left out when it is +0.0 (+2.0i), which reads back the same.
 - display shows strings (str and MString alike) and characters raw, at
   every depth (R7RS 6.13.3), and symbols without bars; error messages
   inside #<error ...> stay quoted.
 - Uninterned symbols (the expander's renamed locals) print by name.

OPEN QUESTIONS

 - A registered printer returns one string, so a handle that wants to print
   its contents with limits must do so itself.
 - A tuple read from the image (the image's fixed vector) prints as a
   vector, but vm/_types.VECTOR_TYPES leaves it out, so vector? says #f.
 - image.Special (how the image will hold characters, '() and the eof
   object) prints as #<python Special> until the interpreter maps it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from image import Blob, ImageError, Object
from image._handles import is_stale
from native._fastpath import HandleBase     # the C base of every handle, stale ones included
from vm._reader import CHAR_NAMES, parse_number
from vm._types import (EOF, NIL, Char, ErrorObject, ImageTable, ImageVector, MString, Pair, Record,
                       RecordType, SVector, Symbol, Values, _field_slot)

__all__ = [
    "char_to_string", "display", "float_to_string", "hash_table_text", "int_to_digits",
    "number_to_string", "pretty", "register_printer", "string_to_literal", "symbol_to_string",
    "write", "write_abbreviated", "write_shared", "write_simple",
]


# -- atoms ----------------------------------------------------------------------

_SAFE_DIGITS = 600   # see vm/_reader: CPython's int -> str limit is never below 640
_NAMED_CHARS = {ord(text): name for name, text in CHAR_NAMES.items()}   # code point -> name
_STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\t": "\\t",
                   "\n": "\\n", "\r": "\\r"}
_SYMBOL_ESCAPES = {"|": "\\|", "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\t": "\\t",
                   "\n": "\\n", "\r": "\\r"}
_DELIMITING = frozenset("()[]{}\";'`,|\\")   # characters that call for bars
_RADIX_FORMAT = {2: "b", 8: "o", 16: "x"}
# Invariant 5: an image Vector longer than _IMAGE_VECTOR_WHOLE prints its
# first _IMAGE_VECTOR_HEAD items.  Ten thousand items print in milliseconds
# (a screenful of a few hundred lines); a hundred is pretty's default length.
_IMAGE_VECTOR_WHOLE = 10_000
_IMAGE_VECTOR_HEAD = 100


def int_to_digits(n: int, radix: int = 10) -> str:
    """The digits of an int in radix 2, 8, 10 or 16, for any size."""
    if radix == 10 and n.bit_length() < _SAFE_DIGITS * 3:   # 1800 bits: at most 542 digits
        return str(n)
    if radix != 10:
        return format(n, _RADIX_FORMAT[radix])
    if n < 0:
        return "-" + int_to_digits(-n)
    half = int(n.bit_length() * 0.30103) // 2   # log10(2): about half the digits
    high, low = divmod(n, 10 ** half)
    return int_to_digits(high) + int_to_digits(low).rjust(half, "0")


def float_to_string(x: float) -> str:
    """A float the Scheme way: 1.0, -0.0, 1e100, 1.5e-7, +inf.0, +nan.0."""
    if x != x:
        return "+nan.0"
    if x in (math.inf, -math.inf):
        return "+inf.0" if x > 0 else "-inf.0"
    text = repr(x)
    if "e" in text:
        mantissa, _, exponent = text.partition("e")
        return f"{mantissa}e{int(exponent)}"
    return text


def number_to_string(z: Any, radix: int = 10) -> str:
    """number->string: exact numbers in radix 2, 8, 10 or 16; inexact in 10."""
    t = type(z)
    if t is int:
        return int_to_digits(z, radix)
    if t is Fraction:
        return f"{int_to_digits(z.numerator, radix)}/{int_to_digits(z.denominator, radix)}"
    if t is float:
        return float_to_string(z)
    real, imag = z.real, z.imag
    imag_text = float_to_string(imag)
    if imag_text[0] not in "+-":
        imag_text = "+" + imag_text
    if real == 0 and math.copysign(1.0, real) > 0:
        return imag_text + "i"
    return f"{float_to_string(real)}{imag_text}i"


def char_to_string(c: Char) -> str:
    """A character as write prints it: #\\a, #\\space, #\\x3bb is #\\λ, #\\x7f is #\\delete."""
    name = _NAMED_CHARS.get(c.cp)
    if name is not None:
        return "#\\" + name
    text = chr(c.cp)
    if text.isprintable() and not text.isspace():
        return "#\\" + text
    return f"#\\x{c.cp:x}"


def string_to_literal(s: str) -> str:
    """A string as write prints it, with R7RS 6.7 escapes."""
    out = ['"']
    for c in s:
        escaped = _STRING_ESCAPES.get(c)
        if escaped is not None:
            out.append(escaped)
        elif c.isprintable() or c == " ":
            out.append(c)
        else:
            out.append(f"\\x{ord(c):x};")
    out.append('"')
    return "".join(out)


def symbol_to_string(name: str) -> str:
    """A symbol's name as write prints it: with bars when it would not read back as itself."""
    if _needs_bars(name):
        escaped = "".join(_SYMBOL_ESCAPES.get(c) or (c if c.isprintable() else f"\\x{ord(c):x};")
                          for c in name)
        return f"|{escaped}|"
    return name


def _needs_bars(name: str) -> bool:
    if not name or name == "." or name[0] == "#":
        return True
    for c in name:
        if c in _DELIMITING or c.isspace() or not c.isprintable():
            return True
    try:
        return parse_number(name) is not None
    except ValueError:
        return True


def hash_table_text(table: Any) -> str:
    """How a hash table (transient or image Table) prints: #<hash-table 2 entries>."""
    n = len(table)
    return f"#<hash-table {n} {'entry' if n == 1 else 'entries'}>"


def _blob_text(blob: Blob) -> str:
    try:
        return f"#<blob {len(blob)} bytes>"
    except ImageError:           # a damaged length slot: printing must not fail
        return f"#<blob at {blob.address:#x} (damaged)>"


def _object_text(obj: Object) -> str:
    return f"#<object of class {obj.class_index} at {obj.address:#x}>"


def _handle_text(handle: Any) -> str:
    """Any other handle; in practice a stale one (which has no protocol left)."""
    state = "stale handle" if is_stale(handle) else "handle"
    return f"#<{state} at {handle._addr:#x}>"


def _procedure_text(f: Any) -> str:
    name = getattr(f, "scheme_name", None) or getattr(f, "__name__", None)
    if not isinstance(name, str) or name.startswith("<"):
        return "#<procedure>"
    return f"#<procedure {name}>"


def _record_type_name(rtype: RecordType) -> str:
    name = rtype.name
    return name[1:-1] if len(name) > 2 and name[0] == "<" and name[-1] == ">" else name


_WRITE_ATOMS: dict[type, Callable[[Any], str]] = {
    bool: lambda x: "#t" if x else "#f",
    int: int_to_digits,
    float: float_to_string,
    Fraction: number_to_string,
    complex: number_to_string,
    Char: char_to_string,
    str: string_to_literal,
    MString: lambda x: string_to_literal(x.s),
    Symbol: lambda x: symbol_to_string(x.name),
    type(None): lambda x: "#<unspecified>",
    type(NIL): lambda x: "()" if x is NIL else "#<eof>" if x is EOF else repr(x),
    RecordType: lambda x: f"#<record-type {_record_type_name(x)}>",
    ImageTable: hash_table_text,
    Blob: _blob_text,
    Object: _object_text,
    HandleBase: _handle_text,      # reached only by handles that are none of the above
}
_DISPLAY_ATOMS = {**_WRITE_ATOMS, Char: str, str: lambda x: x, MString: lambda x: x.s,
                  Symbol: lambda x: x.name}


# -- classes ----------------------------------------------------------------------

# Kinds of object.  Atoms print as one text; the others are groups.
_ATOM, _PAIR, _SEQUENCE, _BYTES, _RECORD, _ERROR, _VALUES = range(7)
# bytearray covers Bytevector; bytes is the image's immutable bytevector.
_STRUCTURAL = {Pair: _PAIR, SVector: _SEQUENCE, ImageVector: _SEQUENCE, bytearray: _BYTES,
               bytes: _BYTES, Record: _RECORD, ErrorObject: _ERROR, Values: _VALUES}

_printers: dict[type, Callable[[Any], str]] = {}
# type -> (kind, atom text function), one cache for write and one for display
_CACHES: tuple[dict, dict] = ({}, {})


def register_printer(cls: type, fn: Callable[[Any], str]) -> None:
    """Makes instances of cls (and of its subclasses) print as fn(x).
    It takes precedence over every built-in rule."""
    _printers[cls] = fn
    for cache in _CACHES:
        cache.clear()


def _classify(t: type, displaying: bool) -> tuple[int, Callable[[Any], str] | None]:
    """(kind, atom text function) for a type, cached."""
    cache = _CACHES[displaying]
    found = cache.get(t)
    if found is None:
        found = cache[t] = _classify_uncached(t, displaying)
    return found


def _classify_uncached(t: type, displaying: bool) -> tuple[int, Callable[[Any], str] | None]:
    atoms = _DISPLAY_ATOMS if displaying else _WRITE_ATOMS
    for base in t.__mro__:
        if base in _printers:
            return _ATOM, _printers[base]
        if base in atoms:
            return _ATOM, atoms[base]
        if base in _STRUCTURAL:
            return _STRUCTURAL[base], None
    if any("__call__" in vars(base) for base in t.__mro__):
        return _ATOM, _procedure_text
    if (hasattr(t, "__len__") and hasattr(t, "__getitem__")
            and not issubclass(t, (str, bytes, bytearray, Mapping))):
        return _SEQUENCE, None
    return _ATOM, lambda x: f"#<python {type(x).__name__}>"


def _children(x: Any, kind: int) -> Any:
    """The items of a group other than a pair: an indexable sequence."""
    if kind is _SEQUENCE or kind is _BYTES or kind is _VALUES:
        return x
    if kind is _RECORD:
        return [_field_value(x, field) for field in type(x).record_type.fields]
    return x.irritants


def _field_value(record: Any, field: str) -> Any:
    return getattr(record, _field_slot(field), None)


def _cut(items: Any, max_length: int | None) -> tuple[int, str | None]:
    """How many of a group's items print, and the text that stands for the
    rest (None when all print): the caller's length limit, or else the cut
    of a huge image vector (invariant 5)."""
    n = len(items)
    if max_length is not None and n > max_length:
        return max_length, f"... ({n - max_length} more)"
    if n > _IMAGE_VECTOR_WHOLE and isinstance(items, ImageVector):
        return _IMAGE_VECTOR_HEAD, f"... ({n} items)"
    return n, None


# -- the scan: which objects get datum labels ----------------------------------------------

class _ScanFrame:
    """A group being scanned: a list walked along its spine, or indexed items.
    The groups it reached are "on the path" until the frame is done."""

    __slots__ = ("car_done", "count", "depth", "done", "index", "items", "pair")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.pair: Any = None        # a list: the current spine pair
        self.car_done = False        # its car has been scanned
        self.items: Any = None       # or the group's indexable items
        self.index = 0
        self.count = 0
        self.done = False


def _find_labels(root: Any, shared: bool, max_depth: int | None,
                 max_length: int | None) -> tuple[set[int], list]:
    """The ids of the groups to label: those met again while still open (a
    cycle), or, when shared, met twice at all.  Stays within the limits.
    Also returns every group met, which the caller holds until it has
    emitted: an image's pair or vector is a handle that lives only while
    someone holds it, and an id is unique only among live objects, so a
    handle let go during the scan could hand its id to another group and
    give that one a label it never earned.  Held, a handle is also the one
    the image hands out again for its address, so the emitter meets the
    very objects (and ids) the scan labelled.

    ``reached`` maps the id of every group met to the frame that met it: a
    group is on the path while that frame is not done.  Runs of atoms are
    skipped in inner loops (the common case)."""
    labels: set[int] = set()
    reached: dict[int, _ScanFrame] = {}
    keep: list = []      # every group met: held so that ids stay unique (see above)
    stack: list[_ScanFrame] = []
    cache = _CACHES[0]

    def enter(x: Any, depth: int) -> None:
        t = type(x)
        kind = (cache.get(t) or _classify(t, False))[0]
        if kind is _ATOM or kind is _BYTES or (max_depth is not None and depth >= max_depth):
            return
        frame = _ScanFrame(depth)
        if kind is not _VALUES:
            owner = reached.get(id(x))
            if owner is not None:
                if shared or not owner.done:
                    labels.add(id(x))
                return
            reached[id(x)] = frame
            keep.append(x)
        if kind is _PAIR:
            frame.pair = x
        else:
            frame.items = _children(x, kind)
            frame.count = _cut(frame.items, max_length)[0]
        stack.append(frame)

    enter(root, 0)
    while stack:
        frame = stack[-1]
        if frame.pair is not None:
            _scan_spine(frame, enter, reached, labels, keep, shared, max_length, cache)
        elif frame.index < frame.count:
            _scan_items(frame, enter, cache)
        else:
            frame.done = True
            stack.pop()
    return labels, keep


def _scan_items(frame: _ScanFrame, enter: Callable, cache: dict) -> None:
    """Scans the frame's items from its index: atoms in a loop, until a group (entered)."""
    items, i, count = frame.items, frame.index, frame.count
    while i < count:
        item = items[i]
        i += 1
        t = type(item)
        if (cache.get(t) or _classify(t, False))[0] is not _ATOM:
            frame.index = i
            enter(item, frame.depth + 1)
            return
    frame.index = i


def _scan_spine(frame: _ScanFrame, enter: Callable, reached: dict, labels: set, keep: list,
                shared: bool, max_length: int | None, cache: dict) -> None:
    """Walks the frame's list from its current pair: atoms in a loop, until a
    car that is a group (entered first, and the walk resumes after it) or the end.
    A car is scanned before the next pair is reached, so that structure shared
    between a car and the rest of its list is not taken for a cycle."""
    pair, index, car_done = frame.pair, frame.index, frame.car_done
    depth = frame.depth + 1
    frame.pair = None
    while True:
        if not car_done:
            car = pair.car
            t = type(car)
            if (cache.get(t) or _classify(t, False))[0] is not _ATOM:
                frame.pair, frame.index, frame.car_done = pair, index, True
                enter(car, depth)
                return
        car_done = False
        index += 1
        rest = pair.cdr
        if not isinstance(rest, Pair):
            frame.index = index
            enter(rest, depth)
            return
        if max_length is not None and index >= max_length:
            return
        owner = reached.get(id(rest))
        if owner is not None:
            if shared or not owner.done:
                labels.add(id(rest))
            return
        reached[id(rest)] = frame
        keep.append(rest)
        pair = rest


# -- the emitter ------------------------------------------------------------------

_OBJECT, _SPINE, _ITEMS, _TEXT, _CLOSE, _OPEN_FIELD = range(6)
_ABBREVIATIONS = {"quote": "'", "quasiquote": "`", "unquote": ",", "unquote-splicing": ",@"}


class _FlatSink:
    """Joins the printer's events into one line."""

    __slots__ = ("out", "spaced")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.spaced = False     # the next item needs a space before it

    def atom(self, text: str) -> None:
        if self.spaced:
            self.out.append(" ")
        self.out.append(text)
        self.spaced = True

    def atoms(self, texts: list[str]) -> None:
        if self.spaced:
            self.out.append(" ")
        self.out.append(" ".join(texts))
        self.spaced = True

    def open(self, text: str, spaced: bool = False) -> None:
        if self.spaced:
            self.out.append(" ")
        self.out.append(text)
        self.spaced = spaced

    def close(self, text: str) -> None:
        self.out.append(text)
        self.spaced = True


class _Group:
    """A group for the pretty layout: opener, items (str or _Group), closer."""

    __slots__ = ("opener", "items", "closer", "spaced", "width")

    def __init__(self, opener: str, spaced: bool) -> None:
        self.opener = opener
        self.items: list = []
        self.closer = ""
        self.spaced = spaced    # a space between the opener and the first item
        self.width = 0          # the width of the group on one line


class _TreeSink:
    """Builds the group tree that the pretty layout breaks into lines."""

    __slots__ = ("root", "stack")

    def __init__(self) -> None:
        self.root = _Group("", False)
        self.stack = [self.root]

    def atom(self, text: str) -> None:
        self.stack[-1].items.append(text)

    def atoms(self, texts: list[str]) -> None:
        self.stack[-1].items.extend(texts)

    def open(self, text: str, spaced: bool = False) -> None:
        group = _Group(text, spaced)
        self.stack[-1].items.append(group)
        self.stack.append(group)

    def close(self, text: str) -> None:
        self.stack.pop().closer = text


class _Emitter:
    """Walks a datum and feeds its events to a sink (see HOW above)."""

    def __init__(self, sink: Any, labels: set[int], displaying: bool,
                 max_depth: int | None, max_length: int | None) -> None:
        self.sink = sink
        self.labels = labels
        self.numbers: dict[int, int] = {}
        self.displaying = displaying
        self.cache = _CACHES[displaying]
        self.max_depth = max_depth
        self.max_length = max_length
        self.tasks: list[tuple] = []

    def run(self, root: Any) -> None:
        tasks = self.tasks
        tasks.append((_OBJECT, root, 0))
        sink = self.sink
        while tasks:
            task = tasks.pop()
            op = task[0]
            if op is _OBJECT:
                self.emit(task[1], task[2])
            elif op is _SPINE:
                self.spine(task[1], task[2], task[3])
            elif op is _ITEMS:
                self.items(task[1], task[2], task[3], task[4])
            elif op is _TEXT:
                sink.atom(task[1])
            elif op is _CLOSE:
                sink.close(task[1])
            else:
                sink.open(task[1] + "=")

    def emit(self, x: Any, depth: int) -> None:
        t = type(x)
        kind, text = self.cache.get(t) or _classify(t, self.displaying)
        if kind is _ATOM:
            self.sink.atom(text(x))
            return
        if self.max_depth is not None and depth >= self.max_depth:
            self.sink.atom("...")
            return
        prefix = ""
        if id(x) in self.labels:
            number = self.numbers.get(id(x))
            if number is not None:
                self.sink.atom(f"#{number}#")
                return
            number = self.numbers[id(x)] = len(self.numbers)
            prefix = f"#{number}="
        if kind is _PAIR:
            self.open_list(x, depth, prefix)
        elif kind is _RECORD:
            self.open_record(x, depth, prefix)
        else:
            opener, spaced = _OPENERS[kind]
            self.sink.open(prefix + opener, spaced)
            self.tasks.append((_CLOSE, ">" if spaced else ")"))
            items = x.irritants if kind is _ERROR else x
            count, rest = _cut(items, self.max_length)
            if rest is not None:
                self.tasks.append((_TEXT, rest))
            self.tasks.append((_ITEMS, items, 0, count, depth))
            if kind is _ERROR:
                self.tasks.append((_TEXT, string_to_literal(str(x.message))))

    def open_list(self, pair: Pair, depth: int, prefix: str) -> None:
        abbreviation = self.abbreviation(pair)
        if abbreviation is not None:
            self.sink.open(prefix + abbreviation)
            self.tasks.append((_CLOSE, ""))
            self.tasks.append((_OBJECT, pair.cdr.car, depth + 1))
            return
        self.sink.open(prefix + "(")
        self.tasks.append((_CLOSE, ")"))
        self.tasks.append((_SPINE, pair, 0, depth))

    def abbreviation(self, pair: Pair) -> str | None:
        """'x for (quote x) and the like, when that reads back the same."""
        head, rest = pair.car, pair.cdr
        if (type(head) is not Symbol or head.name not in _ABBREVIATIONS
                or not isinstance(rest, Pair) or rest.cdr is not NIL or id(rest) in self.labels
                or (self.max_length is not None and self.max_length < 2)):
            return None
        text = _ABBREVIATIONS[head.name]
        quoted = rest.car
        if text == "," and isinstance(quoted, Symbol) and quoted.name.startswith("@"):
            return None     # ,@x would read as unquote-splicing
        return text

    def open_record(self, record: Any, depth: int, prefix: str) -> None:
        rtype = type(record).record_type
        self.sink.open(f"{prefix}#<{_record_type_name(rtype)}", True)
        self.tasks.append((_CLOSE, ">"))
        fields = rtype.fields
        if self.max_length is not None and len(fields) > self.max_length:
            self.tasks.append((_TEXT, f"... ({len(fields) - self.max_length} more)"))
            fields = fields[:self.max_length]
        for field in reversed(fields):
            self.tasks.append((_CLOSE, ""))
            self.tasks.append((_OBJECT, _field_value(record, field), depth + 1))
            self.tasks.append((_OPEN_FIELD, field))

    def spine(self, pair: Pair, index: int, depth: int) -> None:
        """Prints a list from pair (its item number ``index``): atoms in a
        loop, until an item that is a group (queued, with the rest after it)."""
        cache, labels, max_length, tasks = self.cache, self.labels, self.max_length, self.tasks
        texts: list[str] = []
        while True:
            if max_length is not None and index >= max_length:
                texts.append(_more_text(pair))
                break
            car, rest = pair.car, pair.cdr
            t = type(car)
            kind, text = cache.get(t) or _classify(t, self.displaying)
            continues = isinstance(rest, Pair) and id(rest) not in labels
            if kind is not _ATOM:
                if continues:
                    tasks.append((_SPINE, rest, index + 1, depth))
                elif rest is not NIL:
                    tasks.append((_OBJECT, rest, depth + 1))
                    tasks.append((_TEXT, "."))
                tasks.append((_OBJECT, car, depth + 1))
                break
            texts.append(text(car))
            if not continues:
                if rest is not NIL:
                    tasks.append((_OBJECT, rest, depth + 1))
                    tasks.append((_TEXT, "."))
                break
            pair = rest
            index += 1
        if texts:
            self.sink.atoms(texts)

    def items(self, seq: Any, index: int, count: int, depth: int) -> None:
        """Prints seq[index:count]: atoms in a loop, like spine.  (What stands
        for items past count was queued by emit, after these.)"""
        cache = self.cache
        texts: list[str] = []
        while index < count:
            item = seq[index]
            t = type(item)
            kind, text = cache.get(t) or _classify(t, self.displaying)
            if kind is not _ATOM:
                self.tasks.append((_ITEMS, seq, index + 1, count, depth))
                self.tasks.append((_OBJECT, item, depth + 1))
                break
            texts.append(text(item))
            index += 1
        if texts:
            self.sink.atoms(texts)


_OPENERS = {_SEQUENCE: ("#(", False), _BYTES: ("#u8(", False), _VALUES: ("#<values", True),
            _ERROR: ("#<error", True)}


def _more_text(pair: Pair) -> str:
    """"... (N more)" for the rest of a list cut by the length limit."""
    count, slow, fast = 0, pair, pair
    while isinstance(fast, Pair):
        fast = fast.cdr
        count += 1
        if count % 2 == 0:
            slow = slow.cdr
            if slow is fast:
                return "..."
    return f"... ({count} more)"


# -- the entry points ---------------------------------------------------------------

def _flat(x: Any, shared: bool, displaying: bool, max_depth: int | None = None,
          max_length: int | None = None) -> str:
    kind, text = _classify(type(x), displaying)
    if kind is _ATOM:
        return text(x)
    labels, _held = _find_labels(x, shared, max_depth, max_length)
    sink = _FlatSink()
    _Emitter(sink, labels, displaying, max_depth, max_length).run(x)
    return "".join(sink.out)


def write(x: Any) -> str:
    """write (R7RS 6.13.3): datum labels only for cycles."""
    return _flat(x, False, False)


def write_shared(x: Any) -> str:
    """write-shared: datum labels for every pair, vector or record met twice."""
    return _flat(x, True, False)


def write_simple(x: Any) -> str:
    """write-simple: no labels for shared structure; a cycle (an error in
    R7RS) is labelled as write does rather than printed forever."""
    return _flat(x, False, False)


def display(x: Any) -> str:
    """display: strings and characters raw, symbols without bars; cycles labelled."""
    return _flat(x, False, True)


def write_abbreviated(x: Any, depth: int = 4, length: int = 10) -> str:
    """write on one line, with "..." past depth and past length items: for error messages."""
    return _flat(x, False, False, depth, length)


def pretty(x: Any, depth: int | None = 12, length: int | None = 100, width: int = 79,
           displaying: bool = False) -> str:
    """x written across lines of at most width columns where it can be,
    nested at most depth deep, with at most length items per sequence."""
    kind, text = _classify(type(x), displaying)
    if kind is _ATOM:
        return text(x)
    labels, _held = _find_labels(x, False, depth, length)
    sink = _TreeSink()
    _Emitter(sink, labels, displaying, depth, length).run(x)
    return _layout(sink.root.items[0], width)


# -- the pretty layout ---------------------------------------------------------------

def _measure(root: _Group) -> None:
    """Sets every group's one-line width, children before parents."""
    order: list[_Group] = []
    todo = [root]
    while todo:
        group = todo.pop()
        order.append(group)
        todo.extend(item for item in group.items if type(item) is _Group)
    for group in reversed(order):
        items = group.items
        width = len(group.opener) + len(group.closer) + max(len(items) - 1, 0)
        if items and group.spaced:
            width += 1
        for item in items:
            width += len(item) if type(item) is str else item.width
        group.width = width


def _flat_text(root: _Group) -> str:
    sink = _FlatSink()
    todo: list = [root]
    while todo:
        item = todo.pop()
        if type(item) is str:
            sink.atom(item)
        elif type(item) is tuple:
            sink.close(item[0])
        else:
            sink.open(item.opener, item.spaced)
            todo.append((item.closer,))
            todo.extend(reversed(item.items))
    return "".join(sink.out)


def _layout(root: Any, width: int) -> str:
    """Breaks the group tree into lines (see HOW in the module docstring)."""
    if type(root) is str:
        return root
    _measure(root)
    out: list[str] = []
    column = 0
    todo: list = [root]    # _Group, str (atom), ("\n", indent) or ("", closer)
    while todo:
        item = todo.pop()
        if type(item) is str:
            out.append(item)
            column += len(item)
        elif type(item) is tuple:
            newline, text = item
            if newline:
                out.append("\n" + " " * text)
                column = text
            else:
                out.append(text)
                column += len(text)
        elif column + item.width <= width:
            text = _flat_text(item)
            out.append(text)
            column += len(text)
        else:
            column = _break_group(item, column, width, out, todo)
    return "".join(out)


def _break_group(group: _Group, column: int, width: int, out: list[str], todo: list) -> int:
    """Opens a group that does not fit and queues its items: atoms fill
    lines; a list led by an atom keeps its first argument on the head's line
    and indents the rest by two; other groups put one item per line, aligned
    after the opener.  Returns the new column."""
    items = group.items
    lead = " " if group.spaced and items else ""
    out.append(group.opener + lead)
    column += len(group.opener) + len(lead)
    if all(type(item) is str for item in items):
        return _fill(items, group.closer, column, width, out)
    todo.append(("", group.closer))
    if group.opener.endswith("(") and len(items) >= 2 and type(items[0]) is str:
        indent = column + 1           # two columns right of the parenthesis
        first_on_own_line = 2
    else:
        indent = column
        first_on_own_line = 1
    for i in range(len(items) - 1, 0, -1):
        todo.append(items[i])
        todo.append(("\n", indent) if i >= first_on_own_line else ("", " "))
    todo.append(items[0])
    return column


def _fill(atoms: list[str], closer: str, column: int, width: int, out: list[str]) -> int:
    """Atoms separated by spaces, a new line (aligned at column) when one would pass width."""
    indent = column
    for i, atom in enumerate(atoms):
        if i and column + 1 + len(atom) > width:
            out.append("\n" + " " * indent)
            column = indent
        elif i:
            out.append(" ")
            column += 1
        out.append(atom)
        column += len(atom)
    out.append(closer)
    return column + len(closer)
