"""The reader: R7RS-small external representations to data (R7RS 2, 7.1.2),
the parser behind the ``read`` procedure (R7RS 6.13.2).

WHAT IT OWNS

    parse_number(text, radix)   the number syntax (R7RS 7.1.1), shared with
                                string->number and with the printer (which
                                must know which symbols look like numbers)
    Reader                      a text and a position; read() returns one
                                datum at a time, then EOF
    read_all, read_one          the two ways the rest of vm/ reads
    ReadError, Incomplete       what goes wrong

INVARIANTS

 1. The data are the values of vm/_types: strings are str (immutable, as
    R7RS 6.7 allows for literals: string-set! on one is an error), vectors
    SVector, bytevectors Bytevector, characters Char (interned, so eq?
    holds between two reads of #\\a), symbols interned (case-folded under
    #!fold-case), lists Pair/NIL.
 2. Malformed text raises ReadError -- an ErrorObject of kind "read" whose
    message is "source:line:column: what is wrong" -- never another Python
    exception.  Text that merely ends inside a datum (an open list, string,
    block comment, a quote with nothing after it...) raises Incomplete, a
    ReadError subclass, so that a REPL can ask for another line.
 3. The parser keeps its open lists on an explicit stack of frames, so the
    nesting depth of a datum is bounded by memory, not by Python's stack.
 4. A datum is read whole or not at all: when read() raises Incomplete, the
    position and the fold-case flag are where they were before the datum, so
    a caller can append text and read again.

DESIGN DECISIONS

 - Identifiers are lenient: a token that is not a number, is not "." and does
   not start with "#" is a symbol.  R7RS forbids e.g. ``1+`` or ``a'b``;
   Guile, Chez and Gauche read them, and rejecting them helps nobody.  The
   printer writes with bars every symbol that would read back differently.
 - ``[ ]`` are parentheses too, each closing its own kind (R7RS reserves
   them; Chez, Guile and Racket read them as lists).  ``{ }`` are an error.
 - Complex numbers are Python complex, so always inexact: "1+2i" reads as
   1.0+2.0i, and #e with a non-zero imaginary part is an error.  An exact
   zero imaginary part gives the real number (1+0i is 1, R7RS 6.2.6).
 - An exact decimal (#e1e400) with an exponent beyond +-_MAX_EXACT_EXPONENT is
   an error rather than a multi-megabyte integer built by accident.
 - Integers longer than CPython's int/str conversion limit (4300 digits by
   default) are converted piecewise, so any size reads.
 - Lines and columns count from 1; a column counts characters (code points).
 - ``positions`` maps id(pair) to (source, line, column) for every pair the
   reader makes: the first pair of a list gets its open parenthesis, every
   later pair the position of its car (so the expander can point at the bad
   argument), a quote's pairs the quote mark and the quoted datum.  Ids are
   reused after garbage collection: the map is valid only while the caller
   keeps the data alive.
 - A first line starting "#!/" (a script's interpreter line) is a comment.
 - #!fold-case folds identifiers and character names with str.casefold, as
   string-foldcase does; |barred| identifiers and strings are never folded.
   A bare character (#\\A) is a character, not a name, and is not folded.

PORTS

A Reader may be given a ``refill`` function returning more text ("" at the
end): a file port reads in chunks, the console by lines.  When a datum runs
into the end of the text, read() asks for more and starts the datum again
(invariant 4); only when refill has nothing left does the end of the text end
a token or raise Incomplete.  read_char-style access uses ``text``, ``pos``
and ``fetch()`` directly.  Consumed lines are dropped from ``text`` when it
grows past _COMPACT_AT, so a long file is not held whole.

OPEN QUESTIONS

 - A datum spanning many refills is re-parsed from its start after each one
   (quadratic in the number of chunks).  Chunks are 64 KiB and data are
   rarely that large; a resumable parser would fix it if that changes.
"""
from __future__ import annotations

import bisect
import cmath
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from vm._types import (EOF, NIL, Bytevector, Char, MString, Pair, SchemeError, SVector, char,
                       intern)

__all__ = [
    "CHAR_NAMES", "Incomplete", "ReadError", "Reader", "int_from_digits", "normalize",
    "parse_number", "read_all", "read_one", "to_float",
]


class ReadError(SchemeError):
    """Malformed text; its ErrorObject has kind "read" (read-error? is true of it)."""

    def __init__(self, source: str, line: int, column: int, reason: str) -> None:
        super().__init__(f"{source}:{line}:{column}: {reason}", kind="read")
        self.source = source
        self.line = line
        self.column = column
        self.reason = reason


class Incomplete(ReadError):
    """The text ends inside a datum: more text could complete it."""


# -- numbers (R7RS 7.1.1) -----------------------------------------------------

# #e1e100000 is a 330 kbit integer, made in milliseconds; a thousand times
# that takes seconds and is almost surely a typo.
_MAX_EXACT_EXPONENT = 100_000
# CPython refuses int <-> decimal str conversions longer than
# sys.get_int_max_str_digits() (4300 by default, never below 640).
_SAFE_DIGITS = 600

_DIGITS = {2: "01", 8: "0-7", 10: "0-9", 16: "0-9a-f"}
_UINTEGER = {radix: re.compile(f"[{d}]+") for radix, d in _DIGITS.items()}
_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?")
_INFNAN = {"+inf.0": math.inf, "-inf.0": -math.inf, "+nan.0": math.nan, "-nan.0": math.nan}
_RADIX_PREFIX = {"x": 16, "b": 2, "o": 8, "d": 10}


def parse_number(text: str, radix: int = 10) -> Any:
    """The number ``text`` denotes, or None if it is not number syntax.

    Raises ValueError (with the reason) for text that is number syntax but
    names no number we can make: 1/0, #e+inf.0, #e1+2i, #e1e999999."""
    exactness = None
    radix_seen = False
    low = text.lower()
    i = 0
    while low.startswith("#", i):
        mark = low[i + 1:i + 2]
        if mark in _RADIX_PREFIX and not radix_seen:
            radix, radix_seen = _RADIX_PREFIX[mark], True
        elif mark in ("e", "i") and exactness is None:
            exactness = mark
        else:
            return None
        i += 2
    body = low[i:]
    if not body:
        return None
    return _parse_complex(body, radix, exactness)


def _parse_complex(body: str, radix: int, exactness: str | None) -> Any:
    if body.endswith("i") and body not in _INFNAN:
        split = _imaginary_split(body, radix)
        if split is None:
            return None
        real_text, imag_text = body[:split], body[split:-1]
        if imag_text in ("+", "-"):
            imag: Any = 1 if imag_text == "+" else -1
            if exactness == "i":
                imag = float(imag)
        else:
            imag = _parse_real(imag_text, radix, exactness)
        real = _parse_real(real_text, radix, exactness) if real_text else 0
        if real is None or imag is None:
            return None
        return _make_rectangular(real, imag, exactness)
    if "@" in body:
        magnitude_text, _, angle_text = body.partition("@")
        magnitude = _parse_real(magnitude_text, radix, exactness)
        angle = _parse_real(angle_text, radix, exactness)
        if magnitude is None or angle is None:
            return None
        if angle == 0 and type(angle) is int:
            return magnitude
        if exactness == "e":
            raise ValueError("exact complex numbers are not supported")
        return cmath.rect(to_float(magnitude), to_float(angle))
    return _parse_real(body, radix, exactness)


def _imaginary_split(body: str, radix: int) -> int | None:
    """Where the imaginary part of "<real>[+-]<ureal>i" starts: the last sign
    that is not an exponent's (radix 10 only: in hex, e is a digit)."""
    for j in range(len(body) - 2, -1, -1):
        if body[j] in "+-" and not (radix == 10 and j > 0 and body[j - 1] == "e"):
            return j
    return None


def _make_rectangular(real: Any, imag: Any, exactness: str | None) -> Any:
    if imag == 0 and type(imag) is int:
        return real
    if exactness == "e":
        raise ValueError("exact complex numbers are not supported")
    return complex(to_float(real), to_float(imag))


def _parse_real(text: str, radix: int, exactness: str | None) -> Any:
    """A signed real in ``radix``, or None; ``text`` is lower case."""
    if text in _INFNAN:
        if exactness == "e":
            raise ValueError(f"{text} has no exact value")
        return _INFNAN[text]
    sign = -1 if text[:1] == "-" else 1
    body = text[1:] if text[:1] in "+-" else text
    uinteger = _UINTEGER[radix]
    if uinteger.fullmatch(body):
        value: Any = sign * int_from_digits(body, radix)
    elif "/" in body:
        num_text, _, den_text = body.partition("/")
        if not (uinteger.fullmatch(num_text) and uinteger.fullmatch(den_text)):
            return None
        den = int_from_digits(den_text, radix)
        if den == 0:
            raise ValueError("division by zero")
        value = normalize(Fraction(sign * int_from_digits(num_text, radix), den))
    elif radix == 10 and _DECIMAL.fullmatch(body):
        if exactness == "e":
            return sign * _exact_decimal(body)
        return sign * float(body)
    else:
        return None
    return to_float(value) if exactness == "i" else value


def _exact_decimal(body: str) -> Any:
    """The exact value of a decimal like 1.25e-3 (#e prefix)."""
    mantissa, _, exponent_text = body.partition("e")
    whole, _, fraction = mantissa.partition(".")
    if len(exponent_text.lstrip("+-")) > 9:
        raise ValueError(f"exponent too large for an exact number: {body}")
    exponent = int(exponent_text or "0") - len(fraction)
    if abs(exponent) > _MAX_EXACT_EXPONENT:
        raise ValueError(f"exponent too large for an exact number: {body}")
    digits = int_from_digits((whole + fraction) or "0", 10)
    if exponent >= 0:
        return digits * 10 ** exponent
    return normalize(Fraction(digits, 10 ** -exponent))


def int_from_digits(digits: str, radix: int) -> int:
    """int(digits, radix) for any length (past CPython's conversion limit)."""
    if radix != 10 or len(digits) <= _SAFE_DIGITS:
        return int(digits, radix)
    half = len(digits) // 2
    return int_from_digits(digits[:-half], 10) * 10 ** half + int_from_digits(digits[-half:], 10)


def normalize(q: Fraction) -> Any:
    """An exact rational in canonical form: an int when the denominator is 1."""
    return q.numerator if q.denominator == 1 else q


def to_float(x: Any) -> float:
    """The nearest float to a real (infinite when it is out of range)."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


# -- lexical classes ------------------------------------------------------------

_ATMOSPHERE = re.compile(r"(?:\s+|;[^\n]*)+")
_TOKEN = re.compile(r"[^\s()\[\]{}\";|]+")   # up to a delimiter (R7RS 7.1.1)
_BLOCK_MARK = re.compile(r"#\||\|#")
_LABEL = re.compile(r"[0-9]+")
_HEX_ESCAPE = re.compile(r"x([0-9a-fA-F]+);")
_LINE_CONTINUATION = re.compile(r"\\[ \t]*(?:\r\n|\n|\r)[ \t]*")
_INTRALINE = re.compile(r"[ \t]*")
_PLAIN_RUN = {'"': re.compile(r'[^"\\]*'), "|": re.compile(r"[^|\\]*")}

# R7RS 6.6 character names -> the one-code-point text of the character.
CHAR_NAMES = {
    "alarm": "\a", "backspace": "\b", "delete": "\x7f", "escape": "\x1b",
    "newline": "\n", "null": "\0", "return": "\r", "space": " ", "tab": "\t",
}
_MNEMONIC_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "r": "\r",
                     '"': '"', "\\": "\\", "|": "|"}
_NUMBER_START = frozenset("0123456789+-.")   # a token starting otherwise is no number
_PREFIXES = {"'": "quote", "`": "quasiquote", ",": "unquote", ",@": "unquote-splicing"}
_CLOSERS = {"(": ")", "[": "]"}
# Drop consumed text from a refilled reader once this much has accumulated:
# copying a short prefix costs more than it saves.
_COMPACT_AT = 1 << 16


def _scalar(value: int) -> str | None:
    """The character of a Unicode scalar value, or None (surrogate, too large)."""
    if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        return None
    return chr(value)


# -- the parser's frames ------------------------------------------------------

_LIST, _VECTOR, _BYTES, _PREFIX, _LABEL_DEF, _COMMENT = range(6)
_FRAME_NAMES = {_LIST: "list", _VECTOR: "vector", _BYTES: "bytevector",
                _PREFIX: "quotation", _LABEL_DEF: "datum label", _COMMENT: "datum comment"}
_NO_TAIL = object()


class _Frame:
    """Something open: a list, vector or bytevector collecting items, or a
    quote, label or datum comment waiting for its one datum."""

    __slots__ = ("kind", "start", "closer", "items", "starts", "dotted", "tail", "payload")

    def __init__(self, kind: int, start: int, closer: str = "", payload: Any = None) -> None:
        self.kind = kind
        self.start = start          # offset of the opening text
        self.closer = closer        # ")" or "]" for sequences
        self.items: list = []
        self.starts: list[int] = []  # offset of each item (for list positions)
        self.dotted = False
        self.tail: Any = _NO_TAIL
        self.payload = payload      # the quote symbol, or the label's placeholder


class _Placeholder:
    """What #n# stands for until the datum labelled #n= is complete."""

    __slots__ = ("label", "used")

    def __init__(self, label: int) -> None:
        self.label = label
        self.used = False


class Reader:
    """A text with a position: read() returns its data one at a time, then EOF.

    ``refill``, when given, returns more text ("" at the end of input); see
    the module docstring.  ``positions``, when given, receives the source
    position of every pair read.  ``fold_case`` is the #!fold-case state and
    persists across reads, as R7RS 2.1 asks of a port."""

    def __init__(self, text: str, source: str = "<input>", *, positions: dict | None = None,
                 fold_case: bool = False, refill: Callable[[], str] | None = None) -> None:
        self.text = text
        self.pos = 0
        self.source = source
        self.positions = positions
        self.fold_case = fold_case
        self._refill = refill
        self.exhausted = refill is None   # True once no more text can come
        self._line_starts = [0]           # offsets in text where lines start
        self._indexed = 0                 # text[:_indexed] is in _line_starts
        self._lines_dropped = 0           # lines compacted away before text

    # -- the public protocol ----------------------------------------------

    def read(self) -> Any:
        """The next datum, or EOF when only atmosphere is left."""
        while True:
            mark, fold_case = self.pos, self.fold_case
            try:
                return self._datum()
            except Incomplete:
                if self.exhausted:
                    raise
                self.pos, self.fold_case = mark, fold_case
                self.fetch()

    def fetch(self) -> bool:
        """Appends more text from refill; False (and exhausted) at the end of input."""
        if self.exhausted:
            return False
        more = self._refill()
        if not more:
            self.exhausted = True
            return False
        self._compact()
        self.text += more
        return True

    def location(self, offset: int) -> tuple[int, int]:
        """(line, column) of an offset in text, both counted from 1."""
        self._index_lines()
        i = bisect.bisect_right(self._line_starts, offset) - 1
        return self._lines_dropped + i + 1, offset - self._line_starts[i] + 1

    # -- positions and errors ---------------------------------------------

    def _index_lines(self) -> None:
        text, starts = self.text, self._line_starts
        j = text.find("\n", self._indexed)
        while j != -1:
            starts.append(j + 1)
            j = text.find("\n", j + 1)
        self._indexed = len(text)

    def _compact(self) -> None:
        cut = self.text.rfind("\n", 0, self.pos) + 1
        if cut < _COMPACT_AT:
            return
        self._index_lines()
        dropped = bisect.bisect_right(self._line_starts, cut) - 1
        self._lines_dropped += dropped
        self._line_starts = [s - cut for s in self._line_starts[dropped:]]
        self._indexed -= cut
        self.text = self.text[cut:]
        self.pos -= cut

    def _where(self, offset: int) -> tuple[str, int, int]:
        line, column = self.location(offset)
        return self.source, line, column

    def _error(self, reason: str, offset: int | None = None) -> ReadError:
        return ReadError(*self._where(self.pos if offset is None else offset), reason)

    def _incomplete(self, reason: str, offset: int) -> Incomplete:
        line, column = self.location(offset)
        where = self._where(len(self.text))
        return Incomplete(*where, f"{reason} (opened at {line}:{column})")

    def _at_end(self, offset: int) -> bool:
        """True if offset is the end of the text and more text may follow it."""
        return offset >= len(self.text) and not self.exhausted

    # -- atmosphere: whitespace, comments, directives (R7RS 2.2) ------------

    def _skip_atmosphere(self) -> None:
        text = self.text
        while True:
            m = _ATMOSPHERE.match(text, self.pos)
            if m:
                self.pos = m.end()
            if text.startswith("#|", self.pos):
                self._skip_block_comment()
            elif text.startswith("#!", self.pos):
                self._directive()
            else:
                break
        if self._at_end(self.pos):
            raise self._incomplete("more text may follow", self.pos)

    def _skip_block_comment(self) -> None:
        start, depth, i = self.pos, 0, self.pos
        while True:
            m = _BLOCK_MARK.search(self.text, i)
            if m is None:
                raise self._incomplete("unterminated block comment #|", start)
            depth += 1 if m.group() == "#|" else -1
            i = m.end()
            if depth == 0:
                self.pos = i
                return

    def _directive(self) -> None:
        start = self.pos
        m = _TOKEN.match(self.text, start + 2)
        end = m.end() if m else start + 2
        if self._at_end(end):
            raise self._incomplete("unfinished directive", start)
        name = m.group() if m else ""
        if start == 0 and self._lines_dropped == 0 and name.startswith("/"):
            end = self.text.find("\n")     # "#!/usr/bin/env ..." on a script's first line
            self.pos = len(self.text) if end == -1 else end
            return
        if name.lower() == "fold-case":
            self.fold_case = True
        elif name.lower() == "no-fold-case":
            self.fold_case = False
        else:
            raise self._error(f"unknown directive #!{name}", start)
        self.pos = end

    # -- the datum loop -----------------------------------------------------

    def _datum(self) -> Any:
        """One datum (or EOF): the iterative parser over a stack of frames."""
        stack: list[_Frame] = []
        labels: dict[int, Any] = {}
        positions: dict | None = {} if self.positions is not None else None
        while True:
            self._skip_atmosphere()
            start = self.pos
            if start >= len(self.text):
                if stack:
                    frame = stack[-1]
                    raise self._incomplete(f"unterminated {_FRAME_NAMES[frame.kind]}", frame.start)
                return EOF
            if self.text[start] in ")]":
                frame = self._close(stack, self.text[start])
                value, start = self._build(frame, positions), frame.start
            else:
                value = self._token(stack, labels)
                if value is _NOTHING:
                    continue
            value = self._deliver(value, start, stack, labels, positions)
            if value is not _NOTHING:
                if positions:
                    self.positions.update(positions)
                return value

    def _token(self, stack: list[_Frame], labels: dict) -> Any:
        """Consumes one token other than a closer: returns its value, or
        _NOTHING when it opened a frame or was a dot."""
        text, start = self.text, self.pos
        c = text[start]
        if c in "([":
            stack.append(_Frame(_LIST, start, _CLOSERS[c]))
            self.pos += 1
            return _NOTHING
        if c in "'`,":
            prefix = ",@" if text.startswith(",@", start) else c
            stack.append(_Frame(_PREFIX, start, payload=intern(_PREFIXES[prefix])))
            self.pos += len(prefix)
            return _NOTHING
        if c == '"':
            return self._delimited('"', "string")
        if c == "|":
            return intern(self._delimited("|", "|identifier|"))
        if c == "#":
            return self._hash_syntax(stack, labels)
        if c in "{}":
            raise self._error(f"'{c}' is reserved (R7RS 2.3)")
        return self._atom(stack)

    def _close(self, stack: list[_Frame], closer: str) -> _Frame:
        """Checks that closer ends the innermost frame and pops it."""
        if not stack:
            raise self._error(f"unexpected '{closer}'")
        frame = stack[-1]
        if frame.kind in (_PREFIX, _LABEL_DEF, _COMMENT):
            what = _FRAME_NAMES[frame.kind]
            raise self._error(f"expected a datum after the {what}, got '{closer}'")
        if frame.closer != closer:
            line, column = self.location(frame.start)
            raise self._error(f"expected '{frame.closer}' to close the {_FRAME_NAMES[frame.kind]}"
                              f" opened at {line}:{column}, got '{closer}'")
        if frame.dotted and frame.tail is _NO_TAIL:
            raise self._error("expected a datum after '.'")
        self.pos += 1
        return stack.pop()

    def _build(self, frame: _Frame, positions: dict | None) -> Any:
        items = frame.items
        if frame.kind is _VECTOR:
            return SVector(items)
        if frame.kind is _BYTES:
            for item in items:
                if type(item) is not int or not 0 <= item <= 255:
                    raise self._error("a bytevector holds bytes (exact 0..255),"
                                      f" not {_brief(item)}", frame.start)
            return Bytevector(items)
        result = NIL if frame.tail is _NO_TAIL else frame.tail
        for k in range(len(items) - 1, -1, -1):
            result = Pair(items[k], result)
            if positions is not None:
                positions[id(result)] = self._where(frame.start if k == 0 else frame.starts[k])
        return result

    def _deliver(self, value: Any, start: int, stack: list[_Frame], labels: dict,
                 positions: dict | None) -> Any:
        """Gives a complete value to the frames waiting for it.  Returns the
        value when it completes the datum (stack empty), else _NOTHING."""
        while stack:
            frame = stack[-1]
            kind = frame.kind
            if kind is _LIST or kind is _VECTOR or kind is _BYTES:
                if frame.dotted:
                    if frame.tail is not _NO_TAIL:
                        raise self._error("only one datum may follow '.'", start)
                    frame.tail = value
                else:
                    frame.items.append(value)
                    frame.starts.append(start)
                return _NOTHING
            stack.pop()
            if kind is _COMMENT:
                return _NOTHING
            if kind is _PREFIX:
                inner = Pair(value, NIL)
                value = Pair(frame.payload, inner)
                if positions is not None:
                    positions[id(inner)] = self._where(start)
                    positions[id(value)] = self._where(frame.start)
            else:
                value = self._define_label(frame, value, labels)
            start = frame.start
        return value

    def _define_label(self, frame: _Frame, value: Any, labels: dict) -> Any:
        placeholder = frame.payload
        if value is placeholder:
            raise self._error(f"#{placeholder.label}= labels nothing but itself", frame.start)
        labels[placeholder.label] = value
        if placeholder.used:
            _patch(value, placeholder)
        return value

    # -- tokens ---------------------------------------------------------------

    def _token_end(self, start: int) -> int:
        m = _TOKEN.match(self.text, start)
        end = m.end() if m else start
        if self._at_end(end):
            raise self._incomplete("unfinished token", start)
        return end

    def _atom(self, stack: list[_Frame]) -> Any:
        start = self.pos
        end = self._token_end(start)
        token = self.text[start:end]
        self.pos = end
        if token == ".":
            self._dot(stack, start)
            return _NOTHING
        if token[0] in _NUMBER_START:
            try:
                number = parse_number(token)
            except ValueError as exc:
                raise self._error(f"bad number {token}: {exc}", start) from None
            if number is not None:
                return number
        return intern(token.casefold() if self.fold_case else token)

    def _dot(self, stack: list[_Frame], start: int) -> None:
        frame = stack[-1] if stack else None
        if frame is None or frame.kind is not _LIST:
            raise self._error("'.' outside a list", start)
        if not frame.items:
            raise self._error("'.' needs a datum before it", start)
        if frame.dotted:
            raise self._error("more than one '.' in a list", start)
        frame.dotted = True

    def _delimited(self, quote: str, what: str) -> str:
        """The contents of "..." or |...| with escapes (R7RS 6.7, 2.1)."""
        text, start = self.text, self.pos
        run = _PLAIN_RUN[quote]
        pieces = []
        i = start + 1
        while True:
            m = run.match(text, i)
            pieces.append(m.group())
            i = m.end()
            if i >= len(text):
                raise self._incomplete(f"unterminated {what}", start)
            if text[i] == quote:
                self.pos = i + 1
                return "".join(pieces)
            i = self._escape(i, pieces, start, what)

    def _escape(self, i: int, pieces: list[str], start: int, what: str) -> int:
        """Decodes the escape at text[i] (a backslash); returns the offset after it."""
        text = self.text
        if i + 1 >= len(text):
            raise self._incomplete(f"unterminated {what}", start)
        e = text[i + 1]
        if e in _MNEMONIC_ESCAPES:
            pieces.append(_MNEMONIC_ESCAPES[e])
            return i + 2
        if e == "x":
            m = _HEX_ESCAPE.match(text, i + 1)
            if m is None:
                if _at_partial_hex(text, i + 2):
                    raise self._incomplete(f"unterminated {what}", start)
                raise self._error(r"a \x escape is \x<hex digits>; (with the semicolon)", i)
            scalar = _scalar(int(m.group(1), 16))
            if scalar is None:
                raise self._error(f"\\x{m.group(1)}; is not a Unicode scalar value", i)
            pieces.append(scalar)
            return m.end()
        m = _LINE_CONTINUATION.match(text, i)
        if m and m.end() < len(text):
            return m.end()
        if m or _INTRALINE.match(text, i + 1).end() >= len(text):
            raise self._incomplete(f"unterminated {what}", start)
        raise self._error(f"unknown escape \\{e} in a {what}", i)

    def _hash_syntax(self, stack: list[_Frame], labels: dict) -> Any:
        """Everything that starts with '#' except #| and #! (atmosphere)."""
        text, start = self.text, self.pos
        nxt = text[start + 1:start + 2]
        if not nxt:
            raise self._incomplete("unfinished # syntax", start)
        if nxt == "(":
            stack.append(_Frame(_VECTOR, start, ")"))
            self.pos += 2
            return _NOTHING
        if nxt in "uU" and text[start + 1:start + 4].lower() == "u8(":
            stack.append(_Frame(_BYTES, start, ")"))
            self.pos += 4
            return _NOTHING
        if nxt == "\\":
            return self._character()
        if nxt == ";":
            stack.append(_Frame(_COMMENT, start))
            self.pos += 2
            return _NOTHING
        if nxt in "0123456789":
            return self._label(stack, labels)
        end = self._token_end(start)
        token = text[start:end]
        self.pos = end
        low = token.lower()
        if low in ("#t", "#true"):
            return True
        if low in ("#f", "#false"):
            return False
        try:
            number = parse_number(token)
        except ValueError as exc:
            raise self._error(f"bad number {token}: {exc}", start) from None
        if number is None:
            raise self._error(f"unknown syntax {token}", start)
        return number

    def _character(self) -> Char:
        """#\\a, #\\space, #\\x41 (R7RS 6.6)."""
        text, start = self.text, self.pos
        if start + 2 >= len(text):
            raise self._incomplete("unfinished character", start)
        first = text[start + 2]
        m = _TOKEN.match(text, start + 3)
        end = m.end() if m else start + 3
        if self._at_end(end):
            raise self._incomplete("unfinished character", start)
        self.pos = end
        if end == start + 3:
            return char(ord(first))
        name = text[start + 2:end]
        if self.fold_case:
            name = name.casefold()
        if name in CHAR_NAMES:
            return char(ord(CHAR_NAMES[name]))
        if name[0] == "x" and all(c in "0123456789abcdefABCDEF" for c in name[1:]):
            scalar = _scalar(int(name[1:], 16))
            if scalar is not None:
                return char(ord(scalar))
            raise self._error(f"#\\{name} is not a Unicode scalar value", start)
        raise self._error(f"unknown character name #\\{name}", start)

    def _label(self, stack: list[_Frame], labels: dict) -> Any:
        """#n= (define a datum label) and #n# (refer to one), R7RS 2.4."""
        text, start = self.text, self.pos
        m = _LABEL.match(text, start + 1)
        end = m.end()
        n = int(m.group())
        mark = text[end:end + 1]
        if not mark:
            raise self._incomplete("unfinished datum label", start)
        self.pos = end + 1
        if mark == "=":
            if n in labels:
                raise self._error(f"datum label #{n}= defined twice", start)
            placeholder = labels[n] = _Placeholder(n)
            stack.append(_Frame(_LABEL_DEF, start, payload=placeholder))
            return _NOTHING
        if mark == "#":
            if n not in labels:
                raise self._error(f"#{n}# refers to no datum label", start)
            value = labels[n]
            if type(value) is _Placeholder:
                value.used = True
            return value
        raise self._error(f"#{n} must be followed by '=' or '#'", start)


_NOTHING = object()


def _at_partial_hex(text: str, i: int) -> bool:
    """True if text[i:] is hex digits up to the end (a \\x escape cut short)."""
    return all(c in "0123456789abcdefABCDEF" for c in text[i:])


def _brief(x: Any) -> str:
    """A datum named in a message about a bytevector's items (no printer here)."""
    if type(x) is str:
        return f'"{x}"'
    if isinstance(x, Pair) or x is NIL:
        return "a list"
    if type(x) is Char:
        return f"#\\{x}"
    return str(x)


def _patch(root: Any, placeholder: _Placeholder) -> None:
    """Replaces every occurrence of placeholder inside root by root (#n= ... #n#)."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, Pair):
            if x.car is placeholder:
                x.car = root
            else:
                todo.append(x.car)
            if x.cdr is placeholder:
                x.cdr = root
            else:
                todo.append(x.cdr)
        elif isinstance(x, SVector):
            for i, item in enumerate(x):
                if item is placeholder:
                    x[i] = root
                else:
                    todo.append(item)


# -- entry points ---------------------------------------------------------------

def read_all(text: str, source: str = "<input>", positions: dict | None = None) -> list:
    """Every datum of text, in order."""
    reader = Reader(text, source, positions=positions)
    data = []
    while True:
        datum = reader.read()
        if datum is EOF:
            return data
        data.append(datum)


def read_one(port_or_text: Any) -> Any:
    """The first datum of a text (str or MString), or the next datum of a
    Reader or of a port that has one (its ``reader`` attribute); EOF if none."""
    if isinstance(port_or_text, MString):
        port_or_text = port_or_text.s
    if type(port_or_text) is str:
        return Reader(port_or_text).read()
    if isinstance(port_or_text, Reader):
        return port_or_text.read()
    reader = getattr(port_or_text, "reader", None)
    if isinstance(reader, Reader):
        return reader.read()
    raise SchemeError("read: expected a textual input port or a string")
