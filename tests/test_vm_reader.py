"""vm/_reader: the external representations of R7RS 2 and 7.1.2, read into vm/_types values."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest

import vm._reader as reader_module
from vm._printer import write
from vm._reader import Incomplete, Reader, ReadError, parse_number, read_all, read_one
from vm._types import (EOF, NIL, Bytevector, Char, MString, Pair, SVector, Symbol, char, intern,
                       to_list)


def read1(text: str):
    """The one datum of text."""
    data = read_all(text)
    assert len(data) == 1, data
    return data[0]


def same_number(a, b) -> bool:
    """Equal value and the same type (so exactness counts); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, float) and a == 0:
        return math.copysign(1, a) == math.copysign(1, b)
    return a == b


# -- numbers (R7RS 7.1.1, 6.2) ---------------------------------------------------------------------

NUMBERS = [
    ("0", 0), ("-0", 0), ("42", 42), ("+42", 42), ("-17", -17), ("1/3", Fraction(1, 3)),
    ("-6/4", Fraction(-3, 2)), ("4/2", 2), ("0/5", 0), ("1.5", 1.5), ("-0.0", -0.0), (".5", 0.5),
    ("-.5", -0.5), ("1.", 1.0), ("+.25", 0.25), ("1e3", 1000.0), ("1E3", 1000.0), ("1e-3", 0.001),
    ("2.5e+2", 250.0), ("1e400", math.inf), ("#x-ff", -255), ("#XfF", 255), ("#b101", 5),
    ("#o17", 15), ("#d10", 10), ("#x1/10", Fraction(1, 16)), ("#e1.5", Fraction(3, 2)),
    ("#e1e3", 1000), ("#e1.25e-1", Fraction(1, 8)), ("#e.1", Fraction(1, 10)), ("#i1/4", 0.25),
    ("#i3", 3.0), ("#e#x10", 16), ("#x#e10", 16), ("#i#x10", 16.0), ("#x#i10", 16.0), ("#x1e", 30),
    ("+inf.0", math.inf), ("-inf.0", -math.inf), ("+nan.0", math.nan), ("-nan.0", math.nan),
    ("+INF.0", math.inf), ("#i1e400", math.inf), ("1+2i", complex(1, 2)), ("+i", 1j), ("-i", -1j),
    ("-2.5i", -2.5j), ("1.5-0.5i", complex(1.5, -0.5)), ("3+0i", 3), ("#e1+0i", 1), ("1@0", 1),
    ("+inf.0i", complex(0, math.inf)), ("1e-5+1e5i", complex(1e-5, 1e5)),
    ("#x1+ai", complex(1, 10)), ("#i1+0i", complex(1, 0)),
]


@pytest.mark.parametrize("text, expected", NUMBERS)
def test_numbers_r7rs_7_1_1(text, expected):
    """R7RS 7.1.1: every number syntax reads as the value and exactness it denotes."""
    value = read1(text)
    if isinstance(expected, complex):
        assert type(value) is complex and value == expected
    else:
        assert same_number(value, expected), (value, expected)


def test_huge_integers_read_past_the_conversion_limit():
    """R7RS 6.2.3: exact integers of any size, beyond CPython's 4300-digit str->int limit."""
    digits = "9" * 12_000
    assert read1(digits) == 10 ** 12_000 - 1
    assert read1("-" + digits) == -(10 ** 12_000 - 1)
    assert read1("#x" + "f" * 5000) == 16 ** 5000 - 1


def test_polar_numbers_r7rs_6_2_6():
    """R7RS 6.2.6: magnitude@angle reads as an inexact complex number."""
    value = read1("2@1.5707963267948966")
    assert abs(value - 2j) < 1e-12


NOT_NUMBERS = ["+", "-", "...", "->x", "+.foo", "1+", "1/2/3", "a1", "+a", "-i-", "1e", "e1",
               "1.2.3", "@", "1@", "i", "+-1"]


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_not_numbers_read_as_symbols_r7rs_2_1(text):
    """R7RS 2.1: peculiar identifiers (and, leniently, other non-numbers) are symbols."""
    assert parse_number(text) is None
    assert read1(text) is intern(text)


@pytest.mark.parametrize("text", ["1/0", "#e+inf.0", "#e+nan.0", "#e1+2i", "#e1e999999"])
def test_number_syntax_without_a_value_is_a_read_error(text):
    """R7RS 6.2: 1/0, an exact infinity, an exact complex and a gigantic exact are errors."""
    with pytest.raises(ReadError) as info:
        read_all(text)
    assert "bad number" in info.value.payload.message


# -- identifiers, booleans, characters, strings (R7RS 2.1, 6.3, 6.6, 6.7) --------------------------

IDENTIFIERS = [
    ("abc", "abc"), ("λx", "λx"), ("list->vector", "list->vector"), ("<=?", "<=?"), ("a.b", "a.b"),
    ("|a b|", "a b"), ("||", ""), (r"|a\x41;b|", "aAb"), (r"|a\|b|", "a|b"), (r"|\t|", "\t"),
    ("|ABC|", "ABC"), ("ABC", "ABC"), ("a#b", "a#b"), ("@x", "@x"),
]


@pytest.mark.parametrize("text, name", IDENTIFIERS)
def test_identifiers_r7rs_2_1(text, name):
    """R7RS 2.1: identifiers, including |...| with escapes, read as interned symbols."""
    sym = read1(text)
    assert isinstance(sym, Symbol) and sym.name == name and sym is intern(name)


BOOLEANS = [
    ("#t", True), ("#f", False), ("#true", True), ("#false", False), ("#T", True),
]


@pytest.mark.parametrize("text, expected", BOOLEANS)
def test_booleans_r7rs_6_3(text, expected):
    """R7RS 6.3: #t #f #true #false."""
    assert read1(text) is expected


CHARACTERS = [
    (r"#\a", "a"), (r"#\A", "A"), (r"#\(", "("), (r"#\)", ")"), (r"#\;", ";"), (r"#\\", "\\"),
    (r"#\ ", " "), (r"#\λ", "λ"), (r"#\x", "x"), (r"#\x41", "A"), (r"#\x3bb", "λ"), (r"#\x0", "\0"),
    (r"#\alarm", "\a"), (r"#\backspace", "\b"), (r"#\delete", "\x7f"), (r"#\escape", "\x1b"),
    (r"#\newline", "\n"), (r"#\null", "\0"), (r"#\return", "\r"), (r"#\space", " "),
    (r"#\tab", "\t"),
]


@pytest.mark.parametrize("text, expected", CHARACTERS)
def test_characters_r7rs_6_6(text, expected):
    """R7RS 6.6: #\\c, every named character and #\\x<hex> read as the interned Char."""
    value = read1(text)
    assert type(value) is Char and value.cp == ord(expected) and value is char(ord(expected))


def test_characters_are_interned_so_eq_holds_r7rs_6_1():
    """R7RS 6.1: two reads of one character are one object (eq?), whatever the spelling."""
    a, b, c = read_all(r"#\A #\x41 #\A")
    assert a is b is c is char(65)
    assert read1(r"#\space") is read1(r"#\ ")


def test_characters_are_delimited():
    """R7RS 6.6: a character ends at a delimiter: #\\a) closes the list."""
    assert to_list(read1(r"(#\a #\) #\b)")) == [char(ord("a")), char(ord(")")), char(ord("b"))]
    with pytest.raises(ReadError):
        read_all(r"#\)#\b")        # not delimited: the name ")#\b" is unknown


STRINGS = [
    ('""', ""), ('"abc"', "abc"), (r'"a\"b"', 'a"b'), (r'"a\\b"', "a\\b"),
    (r'"\a\b\t\n\r"', "\a\b\t\n\r"), (r'"\x41;\x3bb;"', "Aλ"), ('"line\none"', "line\none"),
    ('"a\\  \n   b"', "ab"), ('"a\\\n\tb"', "ab"), ('"a\\\r\n  b"', "ab"), ('"λ ☃"', "λ ☃"),
    (r'"\|"', "|"),
]


@pytest.mark.parametrize("text, expected", STRINGS)
def test_strings_r7rs_6_7(text, expected):
    """R7RS 6.7: strings with every escape and line continuations read as (immutable) str."""
    value = read1(text)
    assert type(value) is str and value == expected


def test_string_literals_are_immutable_str_r7rs_4_1_2():
    """R7RS 4.1.2, 6.7: string literals read as immutable str, also nested; \"a\" is no Char."""
    items = to_list(read1('("a" #("bc") #\\a)'))
    assert type(items[0]) is str and items[0] == "a"
    assert type(items[1][0]) is str and items[1][0] == "bc"
    assert type(items[2]) is Char


# -- compound data (R7RS 6.4, 6.8, 6.9, 4.1.2, 4.2.8) ----------------------------------------------

COMPOUND = [
    ("()", "()"), ("(1 2 3)", "(1 2 3)"), ("(1 . 2)", "(1 . 2)"), ("(1 2 . 3)", "(1 2 . 3)"),
    ("(1 . (2 3))", "(1 2 3)"), ("[1 2]", "(1 2)"), ("([a] (b))", "((a) (b))"),
    ("( a  b\n c )", "(a b c)"), ("#()", "#()"), ("#(1 (2) #(3))", "#(1 (2) #(3))"),
    ("#u8()", "#u8()"), ("#u8(0 255 #xff)", "#u8(0 255 255)"), ("#U8(1)", "#u8(1)"), ("'a", "'a"),
    ("`(a ,b ,@c)", "`(a ,b ,@c)"), ("'()", "'()"), ("''a", "''a"), ("(quote a)", "'a"),
    ("(a . b)", "(a . b)"), ("(a .b)", "(a .b)"), ("(... ...)", "(... ...)"),
]


@pytest.mark.parametrize("text, expected", COMPOUND)
def test_lists_vectors_bytevectors_and_quotes(text, expected):
    """R7RS 6.4, 6.8, 6.9, 4.1.2: lists, dotted pairs, vectors, bytevectors and quote forms."""
    assert write(read1(text)) == expected


def test_compound_types():
    """R7RS 6.8-6.9: vectors read as SVector, bytevectors as Bytevector, lists as Pair/NIL."""
    assert type(read1("#(1)")) is SVector
    assert type(read1("#u8(1)")) is Bytevector
    assert type(read1("(1)")) is Pair and read1("()") is NIL
    quoted = read1("'x")
    assert quoted.car is intern("quote") and quoted.cdr.car is intern("x") and quoted.cdr.cdr is NIL


def test_deep_nesting_uses_no_python_stack():
    """Invariant 3: a datum nested 20 000 deep (20 times Python's recursion limit) reads."""
    depth = 20_000
    datum = read1("(" * depth + ")" * depth)
    for _ in range(depth - 2):
        datum = datum.car
    assert datum.car is NIL and datum.cdr is NIL


# -- comments and directives (R7RS 2.2) ------------------------------------------------------------

COMMENTS = [
    ("; comment\n1", [1]), ("1 ; two\n3", [1, 3]), ("#| block |# 1", [1]),
    ("#| a #| nested |# b |# 1", [1]), ("#|#|#||#|#|# 1", [1]), ("#;(a b) 1", [1]),
    ("#; #; a b c", ["c"]), ("(1 #;2 3)", ["(1 3)"]), ("(1 . #;2 3)", ["(1 . 3)"]), ("#;1", []),
    ("", []), ("   \n\t ", []), ("1;x", [1]), ("(a #|x|#b)", ["(a b)"]), ("#;#(1 2)x", ["x"]),
]


@pytest.mark.parametrize("text, expected", COMMENTS)
def test_comments_r7rs_2_2(text, expected):
    """R7RS 2.2: ; line comments, nested #| |# block comments and #; datum comments."""
    assert [d if isinstance(d, int) else write(d) for d in read_all(text)] == expected


FOLD_CASE = [
    ("#!fold-case ABC", ["abc"]), ("#!fold-case |ABC|", ["ABC"]),
    ("#!fold-case \"ABC\"", ['"ABC"']), ("#!fold-case #\\SPACE #\\A", ["#\\space", "#\\A"]),
    ("#!fold-case Straße", ["strasse"]), ("#!fold-case A #!no-fold-case A", ["a", "A"]),
    ("#!FOLD-CASE XY", ["xy"]), ("(a #!fold-case B)", ["(a b)"]), ("#!fold-case #X1F", ["31"]),
]


@pytest.mark.parametrize("text, expected", FOLD_CASE)
def test_fold_case_directives_r7rs_2_1(text, expected):
    """R7RS 2.1: #!fold-case folds identifiers and character names until #!no-fold-case."""
    assert [write(d) for d in read_all(text)] == expected


def test_script_interpreter_line_is_a_comment():
    """A first line "#!/usr/bin/env ..." is skipped; elsewhere #!/ is an unknown directive."""
    assert [write(d) for d in read_all("#!/usr/bin/env imago\n(display 1)")] == ["(display 1)"]
    with pytest.raises(ReadError, match="unknown directive"):
        read_all("1 #!/x")


def test_fold_case_persists_across_reads_of_one_reader():
    """R7RS 6.13.2: the directive affects later reads from the same port."""
    r = Reader("#!fold-case A B")
    assert r.read() is intern("a") and r.read() is intern("b") and r.read() is EOF
    assert Reader("X", fold_case=True).read() is intern("x")


# -- datum labels (R7RS 2.4) -----------------------------------------------------------------------

def test_datum_label_makes_a_cyclic_list():
    """R7RS 2.4: #0=(a . #0#) is a list whose cdr is itself."""
    x = read1("#0=(a b . #0#)")
    assert x.car is intern("a") and x.cdr.cdr is x


def test_datum_label_in_a_car_and_a_vector():
    """R7RS 2.4: labels work in cars and in vectors."""
    x = read1("#0=(#0# . 1)")
    assert x.car is x and x.cdr == 1
    v = read1("#1=#(1 #1# (#1#))")
    assert v[1] is v and v[2].car is v


def test_datum_label_for_shared_structure():
    """R7RS 2.4: #n# after #n= is the same object (eq?), not a copy."""
    x = read1("(#0=(1 2) #0# #1=\"s\" #1#)")
    items = to_list(x)
    assert items[0] is items[1] and items[2] is items[3]


def test_datum_labels_nest_and_are_per_datum():
    """R7RS 2.4: nested labels; a label's scope is the outermost datum."""
    x = read1("#0=(1 #1=(2 #0# #1#))")
    inner = x.cdr.car
    assert inner.cdr.car is x and inner.cdr.cdr.car is inner
    with pytest.raises(ReadError):
        read_all("#0=(1) #0#")


# -- errors (R7RS 6.13.2: read signals read-error?) ------------------------------------------------

READ_ERRORS = [
    (")", 1, 1, "unexpected ')'"), ("(a))", 1, 4, "unexpected ')'"),
    ("(1 2]", 1, 5, "expected ')'"), ("[1 2)", 1, 5, "expected ']'"),
    ("(a . b c)", 1, 8, "only one datum may follow '.'"),
    ("(a .)", 1, 5, "expected a datum after '.'"), ("( . a)", 1, 3, "'.' needs a datum before it"),
    ("(a . . b)", 1, 6, "more than one '.'"), ("#(a . b)", 1, 5, "'.' outside a list"),
    (".", 1, 1, "'.' outside a list"), ("{a}", 1, 1, "reserved"), ("#u8(256)", 1, 1, "bytes"),
    ("#u8(a)", 1, 1, "bytes"), ("#u8(1.0)", 1, 1, "bytes"),
    ("#\\foo", 1, 1, "unknown character name"), ("#\\xd800", 1, 1, "not a Unicode scalar value"),
    ("#\\x110000", 1, 1, "not a Unicode scalar value"), ('"\\q"', 1, 2, "unknown escape"),
    ('"\\x41"', 1, 2, "semicolon"), ('"\\xd800;"', 1, 2, "not a Unicode scalar value"),
    ("#0#", 1, 1, "refers to no"), ("#0=#0#", 1, 1, "labels nothing but itself"),
    ("(#0=a #0=b)", 1, 7, "defined twice"), ("#1x", 1, 1, "followed by"),
    ("#!foo", 1, 1, "unknown directive"), ("#q", 1, 1, "unknown syntax #q"),
    ("#tru", 1, 1, "unknown syntax"), ("#x1.5", 1, 1, "unknown syntax"),
    ("#٣", 1, 1, "unknown syntax"), ("#e#e1", 1, 1, "unknown syntax"),
    ("'\n)", 2, 1, "expected a datum after the quotation"), ("#;)", 1, 3, "datum comment"),
    ("(a\n  b))", 2, 5, "unexpected ')'"), ("\n\n   1/0", 3, 4, "division by zero"),
]


@pytest.mark.parametrize("text, line, column, reason", READ_ERRORS)
def test_read_errors_name_the_place(text, line, column, reason):
    """A malformed text raises ReadError "source:line:column: reason", of kind "read"."""
    with pytest.raises(ReadError) as info:
        read_all(text, "t.scm")
    error = info.value
    assert not isinstance(error, Incomplete)
    assert (error.line, error.column) == (line, column), error.payload.message
    assert error.payload.kind == "read"
    assert error.payload.message.startswith(f"t.scm:{line}:{column}: ")
    assert reason in error.reason


INCOMPLETE = ["(", "(1 2", "(a . ", "(a .", "#(", "#u8(1", '"abc', '"a\\', '"a\\x4', "|ab", "#|",
              "#| #| |#", "'", "`", ",@", "#;", "#; ", "#0=", "#0", "#", "#\\", "(a #;", "[",
              "(1 #|", '"a\\   ']


@pytest.mark.parametrize("text", INCOMPLETE)
def test_truncated_text_is_incomplete(text):
    """Text that ends inside a datum raises Incomplete (a ReadError), so a REPL can ask for more."""
    with pytest.raises(Incomplete) as info:
        read_all(text)
    assert info.value.payload.kind == "read"


@pytest.mark.parametrize("text", ["(1 2", '"abc', "#| x", "'"])
def test_incomplete_text_completes_with_more_text(text):
    """Invariant 4: appending the rest of the datum to incomplete text reads it."""
    rest = {"(1 2": ")", '"abc': '"', "#| x": "|# 5", "'": "q"}[text]
    assert len(read_all(text + rest)) == 1


def test_incomplete_names_where_the_open_datum_starts():
    """The message of Incomplete says where the unterminated datum opened."""
    with pytest.raises(Incomplete) as info:
        read_all("1\n  (a\n b", "src")
    assert "opened at 2:3" in info.value.reason


# -- positions -------------------------------------------------------------------------------------

def test_positions_of_every_pair():
    """Every pair gets (source, line, column): a list its '(', later pairs their car."""
    positions: dict = {}
    form = read_all("(define (f x)\n  '(+ x 1))", "f.scm", positions=positions)[0]
    assert positions[id(form)] == ("f.scm", 1, 1)
    assert positions[id(form.cdr)] == ("f.scm", 1, 9)          # the pair holding (f x)
    assert positions[id(form.cdr.car)] == ("f.scm", 1, 9)      # (f x) itself
    assert positions[id(form.cdr.car.cdr)] == ("f.scm", 1, 12)  # x
    body = form.cdr.cdr.car
    assert positions[id(body)] == ("f.scm", 2, 3)              # the quote mark
    assert positions[id(body.cdr)] == ("f.scm", 2, 4)          # the quoted list
    assert positions[id(body.cdr.car)] == ("f.scm", 2, 4)
    pairs = 0
    stack = [form]
    while stack:
        x = stack.pop()
        if isinstance(x, Pair):
            pairs += 1
            assert id(x) in positions
            stack += [x.car, x.cdr]
    assert pairs == len(positions)


def test_positions_are_not_recorded_for_a_failed_read():
    """A read that fails leaves the positions map as it was."""
    positions: dict = {}
    with pytest.raises(ReadError):
        read_all("(a b) (c d]", positions=positions)
    assert len(positions) == 2


def test_columns_count_characters_not_bytes():
    """Columns count code points: an error after 'λλ' is at column 3."""
    with pytest.raises(ReadError) as info:
        read_all("λλ)")
    assert info.value.column == 3


# -- the Reader over a growing text (ports) --------------------------------------------------------

SAMPLES = [
    "(define (f x) (if (< x 2) x (+ (f (- x 1)) (f (- x 2)))))",
    '(a "str\\x41;ing" #\\space #\\x41 |sym bol| 1/2 -1.5e3 #u8(1 2) #(1 #(2)))',
    "#| nested #| comment |# |# foo #;(skipped) bar ; end\n baz",
    "#0=(1 2 . #0#) 'q `(,a ,@b) #!fold-case ABC #\\NEWLINE",
    "12345678901234567890 abc\ndef\n\n(x . y)",
]


def chunked(text: str, size: int):
    """A refill function that hands out text in pieces of size characters."""
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    return lambda: pieces.pop(0) if pieces else ""


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("text", SAMPLES)
def test_reading_in_chunks_gives_the_same_data(text, size):
    """Invariant 4: a Reader fed by refill in tiny chunks reads what read_all reads."""
    expected = [write(d) for d in read_all(text)]
    r = Reader("", refill=chunked(text, size))
    got = []
    while (datum := r.read()) is not EOF:
        got.append(write(datum))
    assert got == expected


def test_chunked_reading_reports_incomplete_only_at_the_real_end():
    """A datum cut by a chunk boundary is not Incomplete; one cut by the end of input is."""
    r = Reader("", refill=chunked("(a b", 1))
    with pytest.raises(Incomplete):
        r.read()


def test_compaction_keeps_line_numbers(monkeypatch):
    """Consumed lines dropped from a long refilled text still count in line numbers."""
    monkeypatch.setattr(reader_module, "_COMPACT_AT", 8)
    text = "".join(f"(line {i})\n" for i in range(1, 200)) + "(bad]\n"
    r = Reader("", "big.scm", refill=chunked(text, 5))
    for i in range(1, 200):
        assert write(r.read()) == f"(line {i})"
    assert len(r.text) < 100
    with pytest.raises(ReadError) as info:
        r.read()
    assert (info.value.line, info.value.column) == (200, 5)


# -- read_one --------------------------------------------------------------------------------------

def test_read_one_accepts_text_readers_and_ports():
    """read_one reads the first datum of a str or MString, or the next one of a Reader or port."""
    assert read_one("1 2") == 1
    assert write(read_one(MString("(a)"))) == "(a)"
    assert read_one("") is EOF

    class FakePort:
        reader = Reader("x y")

    port = FakePort()
    assert read_one(port) is intern("x") and read_one(port) is intern("y") and read_one(port) is EOF
    with pytest.raises(ReadError.__mro__[1]):      # SchemeError
        read_one(42)
