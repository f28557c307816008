"""vm/_printer: write, write-shared, write-simple, display (R7RS 6.13.3) and pretty."""
from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

import image
import vm._printer as printer_module
from vm._printer import (display, number_to_string, pretty, register_printer, write,
                         write_abbreviated, write_shared, write_simple)
from vm._reader import read_all
from vm._types import (EOF, NIL, Bytevector, ErrorObject, MString, Pair, RecordType, SVector,
                       Values, char, equal, from_iterable, gensym, intern)


def read1(text: str):
    return read_all(text)[0]


# -- atoms (R7RS 6.2.7, 6.3, 6.5, 6.6, 6.7) --------------------------------------------------------

ATOMS = [
    (True, "#t"), (False, "#f"), (0, "0"), (-42, "-42"), (Fraction(1, 3), "1/3"),
    (Fraction(-7, 2), "-7/2"), (1.0, "1.0"), (-0.0, "-0.0"), (0.1, "0.1"), (1e100, "1e100"),
    (1.5e-7, "1.5e-7"), (1e21, "1e21"), (123.456, "123.456"), (-1.5e-300, "-1.5e-300"),
    (math.inf, "+inf.0"), (-math.inf, "-inf.0"), (math.nan, "+nan.0"), (complex(1, 2), "1.0+2.0i"),
    (complex(1.5, -0.5), "1.5-0.5i"), (2j, "+2.0i"), (complex(-0.0, 1), "-0.0+1.0i"),
    (complex(0, -0.0), "-0.0i"), (complex(math.nan, math.inf), "+nan.0+inf.0i"), (NIL, "()"),
    (EOF, "#<eof>"), (None, "#<unspecified>"), (intern("abc"), "abc"), (intern("λ"), "λ"),
    (intern("+"), "+"), (intern("..."), "..."), (intern("->x"), "->x"), (intern("1+"), "1+"),
]


@pytest.mark.parametrize("value, expected", ATOMS)
def test_write_atoms(value, expected):
    """R7RS 6.13.3: booleans, numbers (the Scheme way), (), #<eof>, unspecified, symbols."""
    assert write(value) == expected


BARRED_SYMBOLS = [
    ("", "||"), ("a b", "|a b|"), ("1", "|1|"), ("+5", "|+5|"), ("-i", "|-i|"), ("1/2", "|1/2|"),
    ("1/0", "|1/0|"), (".", "|.|"), ("#a", "|#a|"), ("a|b", "|a\\|b|"), ("a\\b", "|a\\\\b|"),
    ("a\nb", "|a\\nb|"), ("a;b", "|a;b|"), ("(", "|(|"), ("a\"b", '|a"b|'), ("'a", "|'a|"),
    ("\x01", "|\\x1;|"), ("+inf.0", "|+inf.0|"),
]


@pytest.mark.parametrize("name, expected", BARRED_SYMBOLS)
def test_symbols_that_would_read_differently_get_bars(name, expected):
    """R7RS 2.1: a symbol whose name is not an identifier is written |...| with escapes."""
    text = write(intern(name))
    assert text == expected
    assert read1(text) is intern(name)
    assert display(intern(name)) == name


CHARACTERS = [
    ("a", "#\\a"), ("A", "#\\A"), ("λ", "#\\λ"), ("(", "#\\("), (" ", "#\\space"),
    ("\n", "#\\newline"), ("\t", "#\\tab"), ("\r", "#\\return"), ("\0", "#\\null"),
    ("\a", "#\\alarm"), ("\b", "#\\backspace"), ("\x7f", "#\\delete"), ("\x1b", "#\\escape"),
    ("\x01", "#\\x1"), ("\u00a0", "#\\xa0"), ("\u200b", "#\\x200b"),
]


@pytest.mark.parametrize("text, expected", CHARACTERS)
def test_write_characters_r7rs_6_6(text, expected):
    """R7RS 6.6: characters (Char) write as #\\c, a name, or #\\x<hex>; display shows them raw."""
    c = char(ord(text))
    assert write(c) == expected
    assert read1(expected) is c
    assert display(c) == text


STRINGS = [
    ("", '""'), ("abc", '"abc"'), ('a"b', '"a\\"b"'), ("a\\b", '"a\\\\b"'), ("a\nb", '"a\\nb"'),
    ("\t\r\a\b", '"\\t\\r\\a\\b"'), ("\x01", '"\\x1;"'), ("λ ☃", '"λ ☃"'), ("\u00a0", '"\\xa0;"'),
    ("|", '"|"'),
]


@pytest.mark.parametrize("text, expected", STRINGS)
def test_write_strings_r7rs_6_7(text, expected):
    """R7RS 6.7: write escapes str and MString alike so that they read back; display is raw."""
    for string in (text, MString(text)):
        assert write(string) == expected
        assert display(string) == text
    assert read1(expected) == text


def test_one_character_str_is_a_string_not_a_character():
    """vm/_types: a str is always a string, even of one character; a character is a Char."""
    assert write("a") == '"a"' and write(char(ord("a"))) == "#\\a"
    assert write(from_iterable(["a", char(ord("a")), MString("a")])) == '("a" #\\a "a")'
    assert display(from_iterable(["a", char(ord("a")), MString("a")])) == "(a a a)"


NUMBER_TO_STRING = [
    (255, 16, "ff"), (-255, 16, "-ff"), (5, 2, "101"), (8, 8, "10"), (Fraction(-1, 10), 16, "-1/a"),
    (0, 2, "0"), (10 ** 30, 10, "1" + "0" * 30), (Fraction(1, 3), 10, "1/3"),
]


@pytest.mark.parametrize("z, radix, expected", NUMBER_TO_STRING)
def test_number_to_string_with_radix_r7rs_6_2_7(z, radix, expected):
    """R7RS 6.2.7: exact numbers in radix 2, 8, 10 and 16."""
    assert number_to_string(z, radix) == expected


def test_huge_integers_print_past_the_conversion_limit():
    """Exact integers of any size print (beyond CPython's 4300-digit int->str limit)."""
    n = 7 ** 20_000
    text = write(n)
    assert len(text) == 16_902 and text.startswith("9136") and read1(text) == n
    assert write(-n) == "-" + text


def test_floats_round_trip():
    """Invariant 2: every float prints as the shortest text that reads back as itself."""
    rng = random.Random(69)
    for _ in range(2000):
        x = rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randint(-320, 308),
                        -rng.random() * 10 ** rng.randint(-320, 308)])
        assert read1(write(x)) == x


# -- compound data ---------------------------------------------------------------------------------

COMPOUND = [
    ("(1 2 3)", "(1 2 3)", "(1 2 3)"), ("(1 . 2)", "(1 . 2)", "(1 . 2)"),
    ("(a (b) . c)", "(a (b) . c)", "(a (b) . c)"), ('#(1 "s" #\\c)', '#(1 "s" #\\c)', "#(1 s c)"),
    ("#u8(0 255)", "#u8(0 255)", "#u8(0 255)"), ("#()", "#()", "#()"), ("'a", "'a", "'a"),
    ("`(a ,b ,@c)", "`(a ,b ,@c)", "`(a ,b ,@c)"), ("(quote a b)", "(quote a b)", "(quote a b)"),
    ("(quote . a)", "(quote . a)", "(quote . a)"), ("(quote)", "(quote)", "(quote)"),
    ("(unquote @x)", "(unquote @x)", "(unquote @x)"),
    ('("a" (#\\b |c d|))', '("a" (#\\b |c d|))', "(a (b c d))"),
]


@pytest.mark.parametrize("text, written, displayed", COMPOUND)
def test_write_and_display_compound_data(text, written, displayed):
    """R7RS 6.13.3: lists, vectors, bytevectors, quote forms; display is raw at every depth."""
    datum = read1(text)
    assert write(datum) == written
    assert display(datum) == displayed
    assert equal(read1(written), datum)


LABELLED = [
    ("#0=(a . #0#)", "#0=(a . #0#)", "#0=(a . #0#)"),
    ("#0=(a b c . #0#)", "#0=(a b c . #0#)", "#0=(a b c . #0#)"),
    ("(1 . #0=(2 3 . #0#))", "(1 . #0=(2 3 . #0#))", "(1 . #0=(2 3 . #0#))"),
    ("#0=(#0# . 1)", "#0=(#0# . 1)", "#0=(#0# . 1)"), ("#0=#(1 #0#)", "#0=#(1 #0#)", "#0=#(1 #0#)"),
    ("#0=(1 #1=(2 #0# #1#))", "#0=(1 #1=(2 #0# #1#))", "#0=(1 #1=(2 #0# #1#))"),
    ("(#0=(1 2) #0#)", "((1 2) (1 2))", "(#0=(1 2) #0#)"),
    ("(#0=(a) . #0#)", "((a) a)", "(#0=(a) . #0#)"),
    ("((a . #0=(b)) . #0#)", "((a b) b)", "((a . #0=(b)) . #0#)"),
    ("#(#0=#() #0#)", "#(#() #())", "#(#0=#() #0#)"),
    ("(#0=(x) #1=(#0#) #1#)", "((x) ((x)) ((x)))", "(#0=(x) #1=(#0#) #1#)"),
]


@pytest.mark.parametrize("text, written, shared", LABELLED)
def test_datum_labels_r7rs_6_13_3(text, written, shared):
    """R7RS 6.13.3: write labels cycles, write-shared all sharing; both read back."""
    datum = read1(text)
    assert write(datum) == written
    assert write_shared(datum) == shared
    assert display(datum) == written
    assert equal(read1(written), datum) and equal(read1(shared), datum)


def test_write_simple_labels_cycles_rather_than_hang():
    """R7RS 6.13.3: write-simple must not be given a cycle; ours labels it instead of looping."""
    assert write_simple(read1("#0=(1 . #0#)")) == "#0=(1 . #0#)"
    assert write_simple(read1("(#0=(1) #0#)")) == "((1) (1))"


def test_long_and_deep_data_print_without_recursion():
    """Invariant 3: a 50 000-element list and a 20 000-deep nest print."""
    assert write(from_iterable(range(50_000))).count(" ") == 49_999
    deep = NIL
    for _ in range(20_000):
        deep = Pair(deep, NIL)
    assert write(deep) == "(" * 20_000 + "()" + ")" * 20_000
    vec = SVector()
    for _ in range(20_000):
        vec = SVector([vec])
    assert write(vec).count("#(") == 20_001


def test_round_trip_of_random_data():
    """Invariant 2: seeded random data (with sharing and cycles) write and read back equal."""
    rng = random.Random(7)
    atoms = [0, -5, 10 ** 40, Fraction(2, 3), 1.5, -0.0, math.inf, True, False, NIL,
             char(ord("a")), char(ord(" ")), char(ord("\n")), char(ord("λ")), intern("sym"),
             intern("a b"), intern(""), intern("1"), MString('q"\\\n'), "imm\tutable", "",
             Bytevector(b"\x00\xff"), b"\x01"]

    def build(depth):
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(atoms)
        if rng.random() < 0.6:
            items = [build(depth - 1) for _ in range(rng.randint(0, 4))]
            tail = build(0) if rng.random() < 0.2 and items else NIL
            return from_iterable(items, tail)
        return SVector(build(depth - 1) for _ in range(rng.randint(0, 4)))

    for _ in range(300):
        datum = build(5)
        if isinstance(datum, Pair) and rng.random() < 0.3:
            last = datum
            while isinstance(last.cdr, Pair):
                last = last.cdr
            last.cdr = datum          # a cycle through the spine
        for printer in (write, write_shared):
            assert equal(read1(printer(datum)), datum), printer(datum)


# -- other objects ---------------------------------------------------------------------------------

def test_records_print_with_their_fields():
    """Records print as #<name field=value ...>; a record in its own field is labelled."""
    point = RecordType("<point>", ("x", "y"))
    p = point.cls.__new__(point.cls)
    p.f_x, p.f_y = 1, MString("s")
    assert write(p) == '#<point x=1 y="s">'
    assert display(p) == "#<point x=1 y=s>"
    p.f_y = p
    assert write(p) == "#0=#<point x=1 y=#0#>"
    q = RecordType("node", ("a-b?",)).cls.__new__(RecordType("node", ("a-b?",)).cls)
    assert write(q) == "#<node a-b?=#<unspecified>>"
    assert write(point) == "#<record-type point>"


def test_errors_values_procedures_and_unknown_objects():
    """Error objects, multiple values, procedures and foreign objects have #<...> forms."""
    error = ErrorObject("bad thing", (1, MString("s"), intern("x")))
    assert write(error) == '#<error "bad thing" 1 "s" x>'
    assert display(error) == '#<error "bad thing" 1 s x>'
    assert write(Values((1, 2))) == "#<values 1 2>"

    def helper():
        return 0

    helper.scheme_name = "my-proc"
    assert write(helper) == "#<procedure my-proc>"
    assert write(len) == "#<procedure len>"
    assert write(lambda: 0) == "#<procedure>"
    assert write(object()) == "#<python object>"
    assert write({1: 2}) == "#<python dict>"
    assert write(gensym("loop")).startswith("loop.")


def test_python_sequences_print_as_vectors():
    """Other indexable objects (tuples read from the image, lists) print as vectors."""
    assert write([1, [MString("a")]]) == '#(1 #("a"))'
    assert write((1, 2)) == "#(1 2)"


def test_bytes_print_as_bytevectors_r7rs_6_9():
    """R7RS 6.9: a Python bytes (the image's immutable bytevector) prints like a Bytevector."""
    assert write(b"ab") == "#u8(97 98)" == write(Bytevector(b"ab"))
    assert write(SVector([b"", bytearray(b"\xff")])) == "#(#u8() #u8(255))"


def test_register_printer_takes_precedence_and_covers_subclasses():
    """register_printer(cls, fn): instances of cls and its subclasses print as fn(x)."""
    class Handle:
        pass

    class SubHandle(Handle):
        pass

    class Cell(SVector):
        pass

    assert write(Handle()) == "#<python Handle>"
    register_printer(Handle, lambda h: "#<handle>")
    register_printer(Cell, lambda c: f"#<cell {len(c)}>")
    assert write(SubHandle()) == "#<handle>"
    assert write(from_iterable([Handle(), Cell([1, 2])])) == "(#<handle> #<cell 2>)"


# -- pretty and limits -----------------------------------------------------------------------------

class HugeSequence:
    """Ten million elements that may be indexed but never iterated."""

    def __len__(self):
        return 10_000_000

    def __getitem__(self, i):
        if not 0 <= i < 10_000_000:
            raise IndexError(i)
        return i * 2

    def __iter__(self):
        raise AssertionError("the printer iterated the sequence")


def test_pretty_prints_the_head_of_a_huge_sequence_without_iterating():
    """pretty and write_abbreviated use len() and indexing only: '... (N more)'."""
    assert pretty(HugeSequence(), length=5) == "#(0 2 4 6 8 ... (9999995 more))"
    nested = write_abbreviated(SVector([HugeSequence()]), length=3)
    assert nested == "#(#(0 2 4 ... (9999997 more)))"
    assert pretty(from_iterable(range(10)), length=3) == "(0 1 2 ... (7 more))"


LIMITS = [
    ("(1 (2 (3 (4 (5)))))", 3, None, "(1 (2 (3 ...)))"),
    ("(1 (2 (3 (4 (5)))))", 1, None, "(1 ...)"), ("#(#(#(1)))", 2, None, "#(#(...))"),
    ("(a b c d e)", None, 2, "(a b ... (3 more))"), ("(a b . c)", None, 1, "(a ... (1 more))"),
    ("#0=(1 2 . #0#)", None, 5, "#0=(1 2 . #0#)"), ("#0=(1 #0#)", 3, 3, "#0=(1 #0#)"),
    ("'(a b c)", None, 2, "'(a b ... (1 more))"), ("'x", None, 1, "(quote ... (1 more))"),
]


@pytest.mark.parametrize("text, depth, length, expected", LIMITS)
def test_depth_and_length_limits(text, depth, length, expected):
    """write_abbreviated: "..." past depth, "... (N more)" past length; cycles stay labelled."""
    assert write_abbreviated(read1(text), depth=depth, length=length) == expected


def test_pretty_breaks_lines_within_the_width():
    """pretty: what fits stays on one line; a head keeps its first argument; atoms fill lines."""
    code = read1("(define (f x) (let ((a 1) (b 2)) (if (> x 0) (+ a b x) (- a b x))))")
    assert pretty(code, width=100) == write(code)
    assert pretty(code, width=30) == (
        "(define (f x)\n"
        "  (let ((a 1) (b 2))\n"
        "    (if (> x 0)\n"
        "      (+ a b x)\n"
        "      (- a b x))))")
    numbers = pretty(from_iterable(range(30)), width=20)
    assert all(len(line) <= 20 for line in numbers.splitlines())
    assert numbers.splitlines()[:2] == ["(0 1 2 3 4 5 6 7 8 9", " 10 11 12 13 14 15"]
    assert numbers.split() == write(from_iterable(range(30))).split()
    data = read1("((alpha 1) (beta 2) (gamma #(1 2 3)))")
    assert pretty(data, width=20) == "((alpha 1)\n (beta 2)\n (gamma #(1 2 3)))"


def test_pretty_of_cycles_and_atoms():
    """pretty labels cycles like write, and prints an atom as write does."""
    assert pretty(read1("#0=(a . #0#)")) == "#0=(a . #0#)"
    assert pretty(MString("x")) == '"x"'
    assert pretty(MString("x"), displaying=True) == "x"


# -- the image's values (vm/_types: persistent objects are Scheme values) ----------------------

@pytest.fixture
def img(tmp_path):
    """A fresh image, closed after the test."""
    opened = image.open(str(tmp_path / "t.image"))
    yield opened
    if not opened.closed:
        opened.close()


def test_image_values_print_as_scheme_data(img):
    """Image values print as Scheme data: Vector as #(...), Table, Blob, Object as #<...>."""
    point = img.define_class("point", ("x", "y"))
    obj = img.new(point, [1, 2])
    img.root["v"] = [1, "s\n", b"ab", (1, "t"), {"a": 1, "b": 2}, {"k": 0}, [2.5, None],
                     obj, img.blob(b"xyz")]
    v = img.root["v"]
    assert write(v) == ('#(1 "s\\n" #u8(97 98) #(1 "t") #<hash-table 2 entries>'
                        ' #<hash-table 1 entry> #(2.5 #<unspecified>)'
                        f' #<object of class {point} at {obj.address:#x}> #<blob 3 bytes>)')
    assert display(v).startswith("#(1 s\n #u8(97 98) #(1 t) ")
    assert write(img.root["v"][4]) == "#<hash-table 2 entries>"


def test_image_vector_cycles_are_labelled(img):
    """Invariant 1: an image Vector that holds itself prints with a datum label."""
    img.root["v"] = [1]
    v = img.root["v"]
    v.append(v)
    assert write(v) == "#0=#(1 #0#)"
    assert write_shared(SVector([v, v])) == "#(#0=#(1 #0#) #0#)"


def test_stale_handles_print_rather_than_raise(img):
    """A handle whose image is closed prints as #<stale handle at 0x...>, never raises."""
    img.root["v"] = [1]
    img.root["t"] = {"a": 1}
    v, t = img.root["v"], img.root["t"]
    blob = img.blob(b"x")
    img.close()
    for handle in (v, t, blob):
        assert write(handle) == f"#<stale handle at {handle._addr:#x}>"


def test_huge_image_vectors_are_cut_by_write(img, monkeypatch):
    """Invariant 5: an image Vector past the limit prints its head and "... (N items)"."""
    monkeypatch.setattr(printer_module, "_IMAGE_VECTOR_WHOLE", 5)
    monkeypatch.setattr(printer_module, "_IMAGE_VECTOR_HEAD", 3)
    img.root["long"] = list(range(6))
    img.root["short"] = list(range(5))
    assert write(img.root["long"]) == "#(0 1 2 ... (6 items))"
    assert display(SVector([img.root["long"]])) == "#(#(0 1 2 ... (6 items)))"
    assert write(img.root["short"]) == "#(0 1 2 3 4)"
    assert write(SVector(range(6))) == "#(0 1 2 3 4 5)"
    assert write_abbreviated(img.root["long"], length=2) == "#(0 1 ... (4 more))"


def test_write_of_ten_million_image_items_does_not_hang(img):
    """Invariant 5: writing a 10-million-item image Vector reads its first 100 items only."""
    img.root["big"] = [7] * 10_000_000
    big = img.root["big"]
    assert write(big) == "#(" + "7 " * 100 + "... (10000000 items))"
    assert pretty(big, length=3) == "#(7 7 7 ... (9999997 more))"
