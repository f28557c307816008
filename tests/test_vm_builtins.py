"""vm/_builtins: the data procedures of R7RS-small 6.1-6.14 and SRFI 69 hash tables.

The tables are Scheme expressions evaluated by a tiny evaluator (quote, lambda,
let, if, begin and application over PRIMITIVES) so that they read like
Scheme; each expected value is what write prints, or Err(part of the message)."""
from __future__ import annotations

import inspect
import math
import random
import sys
from fractions import Fraction

import pytest

import image
from vm._builtins import (CURRENT_INPUT, CURRENT_OUTPUT, HASH_TABLE_TYPES, PRIMITIVES, HashTable,
                          Parameter, SchemeExit, TextInputPort, TextOutputPort, set_command_line)
from vm._printer import write
from vm._reader import read_one
from vm._types import (EOF, NIL, Bytevector, ImageTable, ImageVector, MString, Pair, SchemeError,
                       SchemeRaise, SVector, Symbol, Values, char, from_iterable, intern, to_list)


class Err:
    """An expected error: a SchemeError whose message contains ``part``."""

    def __init__(self, part: str, kind: str | None = None) -> None:
        self.part = part
        self.kind = kind

    def __repr__(self) -> str:
        return f"Err({self.part!r})"


# -- a tiny evaluator for the tables ---------------------------------------------------------------

def _eval(x, env: dict):
    if isinstance(x, Symbol):
        return env[x.name]
    if not isinstance(x, Pair):
        return x
    head, args = x.car, to_list(x.cdr)
    if head is intern("quote"):
        return args[0]
    if head is intern("if"):
        if _eval(args[0], env) is not False:
            return _eval(args[1], env)
        return _eval(args[2], env) if len(args) > 2 else None
    if head is intern("lambda"):
        return _lambda(args[0], args[1:], env)
    if head is intern("let"):
        local = dict(env)
        for binding in to_list(args[0]):
            local[binding.car.name] = _eval(binding.cdr.car, env)
        return _body(args[1:], local)
    if head is intern("begin"):
        return _body(args, env)
    f = _eval(head, env)
    return f(*[_eval(a, env) for a in args])


def _body(forms: list, env: dict):
    result = None
    for form in forms:
        result = _eval(form, env)
    return result


def _lambda(params, body: list, env: dict):
    def procedure(*args):
        local = dict(env)
        p, i = params, 0
        while isinstance(p, Pair):
            local[p.car.name] = args[i]
            p, i = p.cdr, i + 1
        if isinstance(p, Symbol):
            local[p.name] = from_iterable(args[i:])
        return _body(body, local)
    return procedure


def ev(source: str, **bindings):
    """The value of a Scheme expression over the primitives (and bindings)."""
    return _eval(read_one(source), {**PRIMITIVES, **bindings})


def check(source: str, expected, **bindings) -> None:
    """Evaluates source and compares write(value) to expected, or expects Err."""
    if isinstance(expected, Err):
        with pytest.raises(SchemeError) as info:
            ev(source, **bindings)
        assert expected.part in info.value.payload.message, info.value.payload.message
        if expected.kind is not None:
            assert info.value.payload.kind == expected.kind
    else:
        assert write(ev(source, **bindings)) == expected, source


# -- equivalence (R7RS 6.1) ------------------------------------------------------------------------

EQUIVALENCE = [
    ("(eq? 'a 'a)", "#t"), ("(eq? '() '())", "#t"), ("(eq? #\\λ #\\λ)", "#t"),
    ("(eq? #\\a (string-ref \"abc\" 0))", "#t"), ("(eq? (integer->char 955) #\\λ)", "#t"),
    ("(eq? (string->symbol \"ab\") 'ab)", "#t"), ("(eq? (make-string 1) (make-string 1))", "#f"),
    ("(let ((s (string #\\a))) (eq? s s))", "#t"), ("(eq? (list 1) (list 1))", "#f"),
    ("(eq? car car)", "#t"), ("(eq? (expt 10 30) (expt 10 30))", "#f"),
    ("(let ((n (expt 10 30))) (eq? n n))", "#t"), ("(eq? 1 1.0)", "#f"),
    ("(eqv? 1 1.0)", "#f"), ("(eqv? 1.0 1.0)", "#t"), ("(eqv? 0.0 -0.0)", "#f"),
    ("(eqv? (expt 10 30) (expt 10 30))", "#t"),
    ("(eqv? +nan.0 +nan.0)", "#t"), ("(eqv? 1/2 (/ 2 4))", "#t"),
    ("(eqv? (string #\\a) (string #\\a))", "#f"), ("(eqv? #\\a #\\a)", "#t"),
    ("(eqv? #\\a #\\b)", "#f"), ('(equal? "a" "a")', "#t"), ('(equal? "a" (string #\\a))', "#t"),
    ('(equal? "ab" (string #\\a))', "#f"), ('(equal? "a" #\\a)', "#f"),
    ('(equal? (list "x" #("y")) (list (string #\\x) (vector (string-copy "y"))))', "#t"),
    ("(equal? '(1 #(2 \"x\")) (list 1 (vector 2 \"x\")))", "#t"),
    ("(equal? #u8(1 2) (bytevector 1 2))", "#t"), ("(equal? 2 2.0)", "#f"),
    ("(equal? '#0=(1 . #0#) '#1=(1 1 . #1#))", "#t"), ("(equal? '(1 2) '(1 2 3))", "#f"),
    ("(equal? #(1) #(1 2))", "#f"),
]


@pytest.mark.parametrize("source, expected", EQUIVALENCE)
def test_equivalence_r7rs_6_1(source, expected):
    """R7RS 6.1: eq? is identity (Chars, Symbols interned), eqv? exactness/NaN, equal? kinds."""
    check(source, expected)


# -- numbers (R7RS 6.2.6) --------------------------------------------------------------------------

NUMBER_PREDICATES = [
    ("(number? 1)", "#t"), ("(number? #t)", "#f"), ("(number? 'a)", "#f"),
    ("(complex? 1+2i)", "#t"), ("(real? 1+2i)", "#f"), ("(real? 1.5)", "#t"),
    ("(rational? 1/2)", "#t"), ("(rational? +inf.0)", "#f"), ("(rational? 0.5)", "#t"),
    ("(integer? 3.0)", "#t"), ("(integer? 3.5)", "#f"), ("(integer? 8/4)", "#t"),
    ("(integer? #t)", "#f"), ("(exact? 1/2)", "#t"), ("(exact? 0.5)", "#f"),
    ("(inexact? 1+2i)", "#t"), ("(exact? 'a)", Err("exact?: expected a number, got a")),
    ("(exact-integer? 5)", "#t"), ("(exact-integer? 5.0)", "#f"), ("(exact-rational? 1/2)", "#t"),
    ("(exact-rational? 0.5)", "#f"), ("(nan? +nan.0)", "#t"), ("(nan? 1)", "#f"),
    ("(nan? (make-rectangular 1 +nan.0))", "#t"), ("(infinite? -inf.0)", "#t"),
    ("(infinite? 1e308)", "#f"), ("(finite? +inf.0)", "#f"), ("(finite? 1/3)", "#t"),
    ("(finite? (make-rectangular 1 +inf.0))", "#f"), ("(zero? 0.0)", "#t"), ("(zero? -0.0)", "#t"),
    ("(zero? 1/2)", "#f"), ("(positive? 1e-300)", "#t"), ("(negative? -1/2)", "#t"),
    ("(positive? +nan.0)", "#f"), ("(odd? 3)", "#t"), ("(odd? -3)", "#t"), ("(even? 0)", "#t"),
    ("(even? 4.0)", "#t"), ("(odd? 1.5)", Err("odd?: expected an integer, got 1.5")),
    ("(positive? 1+i)", Err("expected a real number")),
]


@pytest.mark.parametrize("source, expected", NUMBER_PREDICATES)
def test_number_predicates_r7rs_6_2_6(source, expected):
    """R7RS 6.2.6: numerical type predicates, sign and parity tests; a boolean is no number."""
    check(source, expected)


ARITHMETIC = [
    ("(+)", "0"), ("(*)", "1"), ("(+ 1 2 3)", "6"), ("(+ 1/2 1/3)", "5/6"), ("(+ 1/2 1/2)", "1"),
    ("(+ 1 0.5)", "1.5"), ("(- 5)", "-5"), ("(- 5 1 1)", "3"), ("(- 1/2)", "-1/2"),
    ("(* 2 1/2)", "1"), ("(* 1.5 2)", "3.0"), ("(/ 2)", "1/2"), ("(/ 6 3)", "2"),
    ("(/ 1 3)", "1/3"), ("(/ 6 4 3)", "1/2"), ("(/ 1.0 4)", "0.25"),
    ("(/ 1 0)", Err("/: division by zero")), ("(/ 0)", Err("division by zero")),
    ("(/ 1.0 0)", "+inf.0"), ("(/ -1 0.0)", "-inf.0"), ("(/ 1 -0.0)", "-inf.0"),
    ("(/ 0.0 0)", "+nan.0"), ("(/ 0 0.0)", "+nan.0"), ("(+ 1+2i 1)", "2.0+2.0i"),
    ("(* 2+i 2-i)", "5.0+0.0i"), ("(+ 'a 1)", Err("+: expected a number, got a")),
    ("(+ #t 1)", Err("got #t")), ("(* (expt 10 400) 1.0)", "+inf.0"),
    ("(- (expt 10 400) 1.0)", "+inf.0"), ("(+ (- (expt 10 400)) 0.5)", "-inf.0"),
    ("(/ 1.0 (expt 10 400))", "0.0"), ("(/ (expt 10 400) 0.5)", "+inf.0"),
    ("(* 0 +inf.0)", "+nan.0"), ("(+ 99999999999999999999 1)", "100000000000000000000"),
    ("(* 1/3 3.0)", "1.0"), ("(= 1 1.0 1)", "#t"), ("(= 1/2 0.5)", "#t"),
    ("(= 1/3 0.3333333333333333)", "#f"), ("(= 1+2i 1+2i)", "#t"), ("(= +nan.0 +nan.0)", "#f"),
    ("(< 1 2 3)", "#t"), ("(< 1 3 2)", "#f"), ("(<= 1 1 2)", "#t"), ("(> 3 2.5 2)", "#t"),
    ("(>= 2 2 3)", "#f"), ("(< (expt 10 400) +inf.0)", "#t"),
    ("(< 1 'a)", Err("<: expected a real number, got a")),
    ("(< 1 1+i)", Err("expected a real number")), ("(max 1 2 3)", "3"), ("(max 1 2.0)", "2.0"),
    ("(max 3.9 4)", "4.0"), ("(min 1 +nan.0)", "+nan.0"), ("(min 1/2 1/3)", "1/3"),
    ("(abs -5/3)", "5/3"), ("(abs -0.0)", "0.0"), ("(abs 1+i)", Err("abs: expected a real number")),
]


@pytest.mark.parametrize("source, expected", ARITHMETIC)
def test_arithmetic_r7rs_6_2_6(source, expected):
    """R7RS 6.2.6: + - * / (IEEE for inexact zeros), comparisons, max, min and abs."""
    check(source, expected)


DIVISION = [
    ("(floor/ 5 2)", "#<values 2 1>"), ("(floor/ -5 2)", "#<values -3 1>"),
    ("(floor/ 5 -2)", "#<values -3 -1>"), ("(floor/ -5 -2)", "#<values 2 -1>"),
    ("(truncate/ 5 2)", "#<values 2 1>"), ("(truncate/ -5 2)", "#<values -2 -1>"),
    ("(truncate/ 5 -2)", "#<values -2 1>"), ("(truncate/ -5 -2)", "#<values 2 -1>"),
    ("(truncate/ -5.0 2)", "#<values -2.0 -1.0>"), ("(floor/ 7.0 2)", "#<values 3.0 1.0>"),
    ("(floor-quotient 7 2)", "3"), ("(floor-remainder -7 2)", "1"),
    ("(truncate-quotient -7 2)", "-3"), ("(truncate-remainder -7 2)", "-1"),
    ("(quotient 17 -5)", "-3"), ("(remainder 17 -5)", "2"), ("(modulo 17 -5)", "-3"),
    ("(modulo -7 2)", "1"), ("(remainder -7 2)", "-1"),
    ("(quotient (expt 10 30) 7)", "142857142857142857142857142857"),
    ("(modulo 5 0)", Err("modulo: division by zero")),
    ("(quotient 1.5 1)", Err("quotient: expected an integer, got 1.5")),
    ("(floor/ +inf.0 1)", Err("expected an integer")), ("(gcd)", "0"), ("(gcd 32 -36)", "4"),
    ("(gcd 0 5)", "5"), ("(gcd 12.0 18)", "6.0"), ("(lcm)", "1"), ("(lcm 32 -36)", "288"),
    ("(lcm 32.0 -36)", "288.0"), ("(lcm 0 5)", "0"),
    ("(gcd 1/2 2)", Err("gcd: expected an integer")), ("(numerator 6/4)", "3"),
    ("(denominator 6/4)", "2"), ("(denominator 5)", "1"), ("(denominator 0)", "1"),
    ("(numerator 0.5)", "1.0"), ("(denominator 0.5)", "2.0"), ("(denominator (inexact 0))", "1.0"),
    ("(numerator +inf.0)", Err("expected a rational number")),
]


@pytest.mark.parametrize("source, expected", DIVISION)
def test_integer_division_r7rs_6_2_6(source, expected):
    """R7RS 6.2.6: floor/ and truncate/ families, quotient, modulo, gcd, lcm, numerator..."""
    check(source, expected)


ROUNDING = [
    ("(floor -4.3)", "-5.0"), ("(ceiling -4.3)", "-4.0"), ("(truncate -4.3)", "-4.0"),
    ("(round -4.3)", "-4.0"), ("(floor 3.5)", "3.0"), ("(ceiling 3.5)", "4.0"),
    ("(truncate 3.5)", "3.0"), ("(round 3.5)", "4.0"), ("(round 2.5)", "2.0"),
    ("(round -2.5)", "-2.0"), ("(round 7/2)", "4"), ("(round 5/2)", "2"), ("(round 7)", "7"),
    ("(floor -7/2)", "-4"), ("(ceiling -7/2)", "-3"), ("(truncate -7/2)", "-3"),
    ("(ceiling -0.5)", "-0.0"), ("(round -0.4)", "-0.0"), ("(floor +inf.0)", "+inf.0"),
    ("(round +nan.0)", "+nan.0"), ("(floor 1e300)", "1e300"),
    ("(round 'a)", Err("round: expected a real number")), ("(rationalize (exact .3) 1/10)", "1/3"),
    ("(rationalize .3 1/10)", "0.3333333333333333"), ("(rationalize 3/10 0)", "3/10"),
    ("(rationalize -3/10 1/10)", "-1/3"), ("(rationalize 1/4 1/4)", "0"),
    ("(rationalize 5 1/2)", "5"), ("(rationalize 22/7 1/1000)", "22/7"),
    ("(rationalize +inf.0 3)", "+inf.0"), ("(rationalize 3 +inf.0)", "0.0"),
    ("(rationalize +nan.0 1)", "+nan.0"),
]


@pytest.mark.parametrize("source, expected", ROUNDING)
def test_rounding_and_rationalize_r7rs_6_2_6(source, expected):
    """R7RS 6.2.6: floor ceiling truncate round (half to even, -0.0 kept) and rationalize."""
    check(source, expected)


TRANSCENDENTAL = [
    ("(exp 0)", "1.0"), ("(exp 1000)", "+inf.0"), ("(exp -inf.0)", "0.0"), ("(log 1)", "0.0"),
    ("(log 0)", "-inf.0"), ("(log 100 10)", "2.0"), ("(log 8 2)", "3.0"),
    ("(log -1)", "+3.141592653589793i"), ("(log +inf.0)", "+inf.0"), ("(sin 0)", "0.0"),
    ("(cos 0)", "1.0"), ("(tan 0)", "0.0"), ("(asin 1)", "1.5707963267948966"), ("(acos 1)", "0.0"),
    ("(asin 2)", "1.5707963267948966+1.3169578969248166i"), ("(atan 1)", "0.7853981633974483"),
    ("(atan 1 1)", "0.7853981633974483"), ("(atan -1 0)", "-1.5707963267948966"),
    ("(atan 1 -1)", "2.356194490192345"), ("(sin +inf.0)", "+nan.0"),
    ("(exp (expt 10 400))", "+inf.0"), ("(exp 'a)", Err("exp: expected a number")),
    ("(atan 1+i 1)", Err("atan: expected a real number")), ("(square 5)", "25"),
    ("(square -1/2)", "1/4"), ("(square 1.5)", "2.25"), ("(square 1+i)", "+2.0i"),
    ("(sqrt 16)", "4"), ("(sqrt 2)", "1.4142135623730951"), ("(sqrt 16/9)", "4/3"),
    ("(sqrt 1/2)", "0.7071067811865476"), ("(sqrt -4)", "+2.0i"),
    ("(sqrt -2.0)", "+1.4142135623730951i"), ("(sqrt 16.0)", "4.0"), ("(sqrt -0.0)", "-0.0"),
    ("(sqrt +inf.0)", "+inf.0"), ("(sqrt (expt 10 400))", "1" + "0" * 200),
    ("(sqrt (+ (expt 10 400) 1))", "1e200"), ("(sqrt -1+0.0i)", "+1.0i"),
    ("(exact-integer-sqrt 17)", "#<values 4 1>"), ("(exact-integer-sqrt 0)", "#<values 0 0>"),
    ("(exact-integer-sqrt (expt 10 40))", "#<values 100000000000000000000 0>"),
    ("(exact-integer-sqrt -1)", Err("exact-integer-sqrt: expected an exact non-negative integer")),
    ("(exact-integer-sqrt 4.0)", Err("exact-integer-sqrt")),
]


@pytest.mark.parametrize("source, expected", TRANSCENDENTAL)
def test_transcendental_functions_r7rs_6_2_6(source, expected):
    """R7RS 6.2.6: exp, log, the trigonometric functions, square, sqrt, exact-integer-sqrt."""
    check(source, expected)


EXPT = [
    ("(expt 2 10)", "1024"), ("(expt 2 -2)", "1/4"), ("(expt 2/3 2)", "4/9"), ("(expt 0 0)", "1"),
    ("(expt 0.0 0)", "1.0"), ("(expt 0 5)", "0"), ("(expt 0 2.5)", "0.0"),
    ("(expt 0.0 -1)", "+inf.0"), ("(expt 0 -1)", Err("expt: division by zero")),
    ("(expt 4 1/2)", "2"), ("(expt 8 2/3)", "4"), ("(expt 27/8 -1/3)", "2/3"),
    ("(expt 2 1/2)", "1.4142135623730951"), ("(expt 2.0 0.5)", "1.4142135623730951"),
    ("(expt 2 0.5)", "1.4142135623730951"), ("(expt -1 1/2)", "6.123233995736766e-17+1.0i"),
    ("(expt -8 1/3)", "1.0000000000000002+1.7320508075688772i"), ("(expt 10 400.0)", "+inf.0"),
    ("(expt -10.0 401)", "-inf.0"), ("(expt 1+i 2)", "+2.0i"),
    ("(expt 3 100000000)", Err("exact result would have about")), ("(expt 1 100000000)", "1"),
    ("(expt -1 100000001)", "-1"), ("(expt 'a 2)", Err("expt: expected a number")),
]


@pytest.mark.parametrize("source, expected", EXPT)
def test_expt_r7rs_6_2_6(source, expected):
    """R7RS 6.2.6: expt is exact where the result is exact and real, IEEE otherwise."""
    check(source, expected)


EXACTNESS = [
    ("(exact 2.5)", "5/2"), ("(exact 2.0)", "2"), ("(exact -0.0)", "0"),
    ("(exact 0.1)", "3602879701896397/36028797018963968"), ("(exact 1/2)", "1/2"),
    ("(exact +inf.0)", Err("exact: +inf.0 has no exact value")),
    ("(exact +nan.0)", Err("no exact value")), ("(exact 1+2i)", Err("no exact complex")),
    ("(exact (make-rectangular 2.0 0.0))", "2"), ("(inexact 1/3)", "0.3333333333333333"),
    ("(inexact (expt 10 400))", "+inf.0"), ("(inexact (- (expt 10 400)))", "-inf.0"),
    ("(inexact 7)", "7.0"), ("(exact->inexact 1/4)", "0.25"), ("(inexact->exact 0.25)", "1/4"),
    ("(inexact #\\a)", Err("inexact: expected a number")), ("(make-rectangular 1 2)", "1.0+2.0i"),
    ("(make-rectangular 1.5 0)", "1.5"), ("(make-polar 2 0)", "2"),
    ("(make-polar 1 +inf.0)", "+nan.0+nan.0i"), ("(real-part 1+2i)", "1.0"),
    ("(imag-part 1+2i)", "2.0"), ("(real-part 5)", "5"), ("(imag-part 5)", "0"),
    ("(magnitude -5)", "5"), ("(magnitude 3+4i)", "5.0"), ("(angle 1)", "0"),
    ("(angle -1)", "3.141592653589793"), ("(angle -1.0)", "3.141592653589793"),
    ("(angle +i)", "1.5707963267948966"), ("(make-rectangular 'a 1)", Err("expected a real")),
]


@pytest.mark.parametrize("source, expected", EXACTNESS)
def test_exactness_and_complex_r7rs_6_2_6(source, expected):
    """R7RS 6.2.6: exact and inexact (errors for values without an exact form), (scheme complex)."""
    check(source, expected)


NUMBER_STRINGS = [
    ("(number->string 255)", '"255"'), ("(number->string 255 16)", '"ff"'),
    ("(number->string -5 2)", '"-101"'), ("(number->string 1/3 8)", '"1/3"'),
    ("(number->string 1.5)", '"1.5"'), ("(number->string 1e100)", '"1e100"'),
    ("(number->string 1.5 2)", Err("inexact number is written in radix 10 only")),
    ("(number->string 1 3)", Err("radix")),
    ("(number->string 'a)", Err("number->string: expected a number")),
    ('(string->number "100")', "100"), ('(string->number "100" 16)', "256"),
    ('(string->number "#x100" 10)', "256"), ('(string->number "1e2")', "100.0"),
    ('(string->number "#e1.2")', "6/5"), ('(string->number "1/2")', "1/2"),
    ('(string->number "abc")', "#f"), ('(string->number "abc" 16)', "2748"),
    ('(string->number "")', "#f"), ('(string->number " 1")', "#f"),
    ('(string->number "1_000")', "#f"), ('(string->number "1/0")', "#f"),
    ('(string->number "+inf.0")', "+inf.0"), ('(string->number "-i")', "-1.0i"),
    ('(string->number "101" 2)', "5"), ('(string->number "2" 2)', "#f"),
    ('(string->number "#e1e99999999")', "#f"), ("(string->number 5)", Err("expected a string")),
]


@pytest.mark.parametrize("source, expected", NUMBER_STRINGS)
def test_number_string_conversion_r7rs_6_2_7(source, expected):
    """R7RS 6.2.7: number->string and string->number with radix; #f for anything not a number."""
    check(source, expected)


def test_huge_exact_integers():
    """R7RS 6.2.3: exact integers are unbounded; (expt 7 5000) survives number->string."""
    n = ev("(expt 7 5000)")
    assert n == 7 ** 5000
    assert ev("(string->number (number->string (expt 7 5000)))") == n
    assert ev("(quotient (expt 7 5000) (expt 7 4999))") == 7


# -- booleans, pairs and lists (R7RS 6.3, 6.4) -----------------------------------------------------

LISTS = [
    ("(not #f)", "#t"), ("(not '())", "#f"), ("(not 0)", "#f"), ("(boolean? #f)", "#t"),
    ("(boolean? '())", "#f"), ("(boolean=? #t #t #t)", "#t"), ("(boolean=? #f #t)", "#f"),
    ("(boolean=? #t 1)", Err("boolean=?: expected a boolean, got 1")), ("(pair? '(a . b))", "#t"),
    ("(pair? '())", "#f"), ("(pair? #(1))", "#f"), ("(cons 1 2)", "(1 . 2)"),
    ("(cons 1 '())", "(1)"), ("(car '(a b))", "a"), ("(cdr '(a b))", "(b)"),
    ("(car '())", Err("car: expected a pair, got ()")),
    ("(cdr 5)", Err("cdr: expected a pair, got 5")),
    ("(let ((p (list 1 2))) (set-car! p 9) (set-cdr! (cdr p) 3) p)", "(9 2 . 3)"),
    ("(set-car! '() 1)", Err("set-car!: expected a pair")), ("(caar '((1) 2))", "1"),
    ("(cadr '(1 2))", "2"), ("(cdar '((1 . 3)))", "3"), ("(cddr '(1 2 3))", "(3)"),
    ("(caddr '(1 2 3))", "3"), ("(cadddr '(1 2 3 4))", "4"), ("(cddddr '(1 2 3 4 5))", "(5)"),
    ("(caadr '(1 (2)))", "2"), ("(caddr '(1 2))", Err("caddr: expected a pair, got ()")),
    ("(null? '())", "#t"), ("(null? '(1))", "#f"), ("(list? '(1 2))", "#t"), ("(list? '())", "#t"),
    ("(list? '(1 . 2))", "#f"), ("(list? '#0=(1 2 . #0#))", "#f"), ("(list? '#0=(1 . #0#))", "#f"),
    ("(make-list 2 'x)", "(x x)"), ("(length (make-list 3))", "3"), ("(list)", "()"),
    ("(list 1 (list 2))", "(1 (2))"), ("(length '(1 2 3))", "3"), ("(length '())", "0"),
    ("(length '(1 . 2))", Err("length: expected a proper list, got (1 . 2)")),
    ("(length '#0=(1 2 . #0#))",
     Err("length: expected a proper list, got a circular list #0=(1 2 . #0#)")),
    ("(append)", "()"), ("(append '(1))", "(1)"), ("(append '(1) '(2 3) '() '(4))", "(1 2 3 4)"),
    ("(append '(1) 2)", "(1 . 2)"), ("(append 5)", "5"),
    ("(append '(1 . 2) '(3))", Err("append: expected a proper list")),
    ("(let ((x (list 2))) (eq? x (cdr (append '(1) x))))", "#t"),
    ("(reverse '(1 (2) 3))", "(3 (2) 1)"),
    ("(reverse '(1 . 2))", Err("reverse: expected a proper list")),
    ("(list-tail '(1 2 3) 1)", "(2 3)"), ("(list-tail '(1 2 3) 3)", "()"),
    ("(list-tail '(1 2) 3)", Err("list-tail: index 3 is past the end")),
    ("(list-ref '(a b c) 2)", "c"),
    ("(list-ref '(a b c) 3)", Err("list-ref: index 3 is past the end")),
    ("(list-ref '(a) -1)", Err("expected an exact non-negative integer, got -1")),
    ("(list-ref '(a) 1.0)", Err("got 1.0")),
    ("(let ((l (list 1 2 3))) (list-set! l 1 'x) l)", "(1 x 3)"),
    ("(list-set! (list 1) 1 0)", Err("list-set!: index 1")), ("(memq 'c '(a b c d))", "(c d)"),
    ("(memq 'z '(a b))", "#f"), ("(memv 1.0 '(1 1.0))", "(1.0)"),
    ("(member \"b\" '(\"a\" \"b\"))", '("b")'), ("(member 2.0 '(1 2 3) =)", "(2 3)"),
    ("(member 5 '(1 2 . 3))", Err("member: expected a proper list")),
    ("(memq 5 '#0=(1 2 . #0#))", Err("memq: expected a proper list, got a circular list")),
    ("(assq 'b '((a 1) (b 2)))", "(b 2)"), ("(assv 2 '((1 . a) (2 . b)))", "(2 . b)"),
    ("(assoc '(x) '(((x) . 1)))", "((x) . 1)"), ("(assoc 2.0 '((1 a) (2 b)) =)", "(2 b)"),
    ("(assq 'z '((a 1)))", "#f"), ("(assq 'a '(5))", Err("assq: expected an association list")),
    ("(list-copy '(1 2 3))", "(1 2 3)"), ("(list-copy '(1 2 . 3))", "(1 2 . 3)"),
    ("(list-copy 5)", "5"), ("(let ((a (list 1 2))) (eq? a (list-copy a)))", "#f"),
    ("(list-copy '#0=(1 . #0#))", Err("circular")),
]


@pytest.mark.parametrize("source, expected", LISTS)
def test_booleans_pairs_and_lists_r7rs_6_3_6_4(source, expected):
    """R7RS 6.3-6.4: booleans, pairs, all c[ad]r up to four levels, and every list procedure."""
    check(source, expected)


# -- symbols and characters (R7RS 6.5, 6.6) --------------------------------------------------------

SYMBOLS_AND_CHARS = [
    ("(symbol? 'a)", "#t"), ('(symbol? "a")', "#f"), ("(symbol=? 'a 'a 'a)", "#t"),
    ("(symbol=? 'a 'b)", "#f"), ("(symbol=? 'a 1)", Err("symbol=?: expected a symbol, got 1")),
    ("(symbol->string 'abc)", '"abc"'), ("(symbol->string '|a b|)", '"a b"'),
    ('(string->symbol "a b")', "|a b|"), ('(eq? (string->symbol "xyz") \'xyz)', "#t"),
    ('(string->symbol "")', "||"),
    ("(string->symbol 'a)", Err("string->symbol: expected a string")), ("(char? #\\a)", "#t"),
    ('(char? "a")', "#f"), ("(char=? #\\a #\\a #\\a)", "#t"), ("(char<? #\\a #\\b #\\c)", "#t"),
    ("(char<? #\\a #\\c #\\b)", "#f"), ("(char>=? #\\b #\\b #\\a)", "#t"),
    ("(char-ci=? #\\a #\\A)", "#t"), ("(char-ci<? #\\a #\\B)", "#t"),
    ("(char-ci=? #\\σ #\\Σ #\\ς)", "#t"),
    ("(char=? #\\a 1)", Err("char=?: expected a character, got 1")),
    ("(char-alphabetic? #\\λ)", "#t"), ("(char-alphabetic? #\\1)", "#f"),
    ("(char-numeric? #\\7)", "#t"), ("(char-numeric? #\\٣)", "#t"), ("(char-numeric? #\\½)", "#f"),
    ("(char-whitespace? #\\tab)", "#t"), ("(char-whitespace? #\\x3000)", "#t"),
    ("(char-whitespace? #\\x1f)", "#f"), ("(char-upper-case? #\\Λ)", "#t"),
    ("(char-lower-case? #\\λ)", "#t"), ("(char-upper-case? #\\1)", "#f"),
    ("(digit-value #\\3)", "3"), ("(digit-value #\\٣)", "3"), ("(digit-value #\\x0EA6)", "#f"),
    ("(digit-value #\\a)", "#f"), ("(char->integer #\\λ)", "955"), ("(integer->char 955)", "#\\λ"),
    ("(integer->char 0)", "#\\null"), ("(integer->char #xD800)", Err("not a Unicode scalar value")),
    ("(integer->char #x110000)", Err("not a Unicode scalar value")),
    ("(integer->char 1.0)", Err("expected an exact integer")), ("(char-upcase #\\a)", "#\\A"),
    ("(char-upcase #\\ß)", "#\\ß"), ("(char-downcase #\\Σ)", "#\\σ"),
    ("(char-downcase #\\İ)", "#\\İ"), ("(char-foldcase #\\Σ)", "#\\σ"),
    ("(char-foldcase #\\ς)", "#\\σ"), ("(char-foldcase #\\ß)", "#\\ß"),
    ("(char-upcase 'a)", Err("char-upcase: expected a character")),
]


@pytest.mark.parametrize("source, expected", SYMBOLS_AND_CHARS)
def test_symbols_and_characters_r7rs_6_5_6_6(source, expected):
    """R7RS 6.5-6.6, (scheme char): symbols, comparisons (-ci folds), Unicode classes."""
    check(source, expected)


# -- strings (R7RS 6.7) ----------------------------------------------------------------------------

STRINGS = [
    ('(string? "a")', "#t"), ("(string? #\\a)", "#f"), ("(make-string 3 #\\x)", '"xxx"'),
    ("(make-string 2)", '"  "'),
    ("(make-string -1)", Err("make-string: expected an exact non-negative integer")),
    ("(string #\\a #\\λ)", '"aλ"'), ("(string)", '""'),
    ("(string 1)", Err("string: expected a character, got 1")), ('(string-length "λx")', "2"),
    ('(string-ref "abc" 1)', "#\\b"),
    ('(string-ref "abc" 3)', Err("string-ref: index 3 is out of range for a string of length 3")),
    ('(let ((s (make-string 3 #\\a))) (string-set! s 1 #\\λ) s)', '"aλa"'),
    ('(string-set! (make-string 1) 0 "b")', Err("expected a character")),
    ('(string=? "a" "a" "a")', "#t"), ('(string<? "a" "b" "c")', "#t"),
    ('(string<? "a" "b" "b")', "#f"), ('(string<=? "a" "b" "b")', "#t"),
    ('(string>? "b" "a")', "#t"), ('(string>=? "a" "b")', "#f"),
    ('(string-ci=? "Straße" "STRASSE")', "#t"), ('(string-ci<? "apple" "BANANA")', "#t"),
    ('(string=? "a" \'a)', Err("string=?: expected a string")),
    ('(string-upcase "straße")', '"STRASSE"'), ('(string-downcase "ΑΣ")', '"ας"'),
    ('(string-foldcase "ΣΑΣ")', '"σασ"'), ('(substring "hello" 1 3)', '"el"'),
    ('(substring "hello" 3 2)', Err("substring: range 3 to 2 is not within 0 to 5")),
    ('(string-append "a" "b" "c")', '"abc"'), ("(string-append)", '""'),
    ('(string-append "a" #\\b)', Err("expected a string")), ('(string-copy "hello")', '"hello"'),
    ('(string-copy "hello" 2)', '"llo"'), ('(string-copy "hello" 1 3)', '"el"'),
    ('(string-copy "hello" 1 9)', Err("range 1 to 9")),
    ('(let ((s "ab")) (eq? s (string-copy s)))', "#f"),
    ('(let ((s (string-copy "abcde"))) (string-copy! s 1 "XY") s)', '"aXYde"'),
    ('(let ((s (string-copy "abcde"))) (string-copy! s 0 "WXYZ" 1 3) s)', '"XYcde"'),
    ('(let ((s (string-copy "abcde"))) (string-copy! s 1 s 0 3) s)', '"aabce"'),
    ('(string-copy! (make-string 2) 1 "abc")', Err("3 characters do not fit at 1")),
    ('(let ((s (make-string 4 #\\a))) (string-fill! s #\\b) s)', '"bbbb"'),
    ('(let ((s (make-string 4 #\\a))) (string-fill! s #\\b 1 3) s)', '"abba"'),
    ('(string->list "abc")', "(#\\a #\\b #\\c)"), ('(string->list "abc" 1)', "(#\\b #\\c)"),
    ('(string->list "abc" 1 2)', "(#\\b)"), ("(list->string '(#\\a #\\b))", '"ab"'),
    ("(list->string '(#\\a 1))", Err("list->string: expected a character, got 1")),
    ("(list->string '(#\\a . #\\b))", Err("expected a proper list")),
    ('(string->vector "ab")', "#(#\\a #\\b)"), ('(string->vector "abc" 1 2)', "#(#\\b)"),
    ("(vector->string #(#\\a #\\b #\\c) 1)", '"bc"'),
    ("(vector->string #(1))", Err("expected a character")),
]


@pytest.mark.parametrize("source, expected", STRINGS)
def test_strings_r7rs_6_7(source, expected):
    """R7RS 6.7: make, access, mutate, compare (-ci folds fully), case, copy, ranges."""
    check(source, expected)


IMMUTABLE_STRINGS = [
    ('(string-set! "abc" 0 #\\x)', Err("string-set!: the string is immutable")),
    ('(string-fill! "abc" #\\x)', Err("string-fill!: the string is immutable")),
    ('(string-copy! "abc" 0 "x")', Err("string-copy!: the string is immutable")),
    ("(string-set! (symbol->string 'abc) 0 #\\x)", Err("string-set!: the string is immutable")),
    ("(string-set! 'abc 0 #\\x)", Err("string-set!: expected a string, got abc")),
    ('(let ((s (string-copy "abc"))) (string-set! s 0 #\\x) s)', '"xbc"'),
    ('(let ((s (string-append "ab" "c"))) (string-fill! s #\\z 2) s)', '"abz"'),
    ('(let ((s (make-string 3 #\\-))) (string-copy! s 0 (string #\\a #\\b)) s)', '"ab-"'),
    ('(let ((s (substring "hello" 0 2))) (string-set! s 1 #\\a) s)', '"ha"'),
    ('(let ((s (list->string (string->list "ab")))) (string-set! s 0 #\\b) s)', '"bb"'),
    ('(let ((s (number->string 42))) (string-set! s 0 #\\9) s)', '"92"'),
    ('(let ((s (string-upcase "ab"))) (string-set! s 0 #\\x) s)', '"xB"'),
    ('(let ((s (read-line (open-input-string "ab")))) (string-set! s 0 #\\x) s)', '"xb"'),
]


@pytest.mark.parametrize("source, expected", IMMUTABLE_STRINGS)
def test_literal_strings_are_immutable_r7rs_6_7(source, expected):
    """R7RS 6.7, 3.4: mutators refuse literals and symbol names (str), not new strings."""
    check(source, expected)


MIXED_STRINGS = [
    ('(string-append "a" (string #\\b) "c")', '"abc"'),
    ('(string=? "ab" (string #\\a #\\b))', "#t"),
    ('(string<? (string #\\a) "b")', "#t"), ('(string-ci=? (string-copy "AB") "ab")', "#t"),
    ('(string-length (string-copy "λx"))', "2"), ('(string-ref (string-copy "xy") 1)', "#\\y"),
    ('(string->symbol (string #\\a))', "a"), ('(string->number (string #\\1 #\\2))', "12"),
    ('(substring (string-copy "hello") 1 3)', '"el"'),
    ('(string-map char-upcase (string-copy "ab"))', '"AB"'),
    ('(string->utf8 (string #\\λ))', "#u8(206 187)"),
    ('(read (open-input-string (string #\\4 #\\2)))', "42"),
]


@pytest.mark.parametrize("source, expected", MIXED_STRINGS)
def test_procedures_take_both_kinds_of_string_r7rs_6_7(source, expected):
    """vm/_types: every procedure that takes a string takes a str or an MString alike."""
    check(source, expected)


LIST_WALKS = [
    ("(string-length (list->string (make-list 5000 #\\a)))", "5000"),
    ("(list->string (list #\\a #\\λ #\\a))", '"aλa"'),
    ("(list->string (list #\\a (string #\\b)))", Err("list->string: expected a character, got")),
    ("(list->string (list #\\a 'b))", Err("list->string: expected a character, got b")),
    ("(list->string (list (make-vector 1)))", Err("list->string: expected a character, got")),
    ("(list->string '(#\\a . #\\b))", Err("list->string: expected a proper list")),
    ("(list->string '#0=(#\\a . #0#))", Err("list->string: expected a proper list, got a circular")),
    ("(list->vector '#0=(1 2 3 . #0#))", Err("list->vector: expected a proper list, got a circular")),
    ("(list->vector '(1 2 . 3))", Err("list->vector: expected a proper list")),
    ("(list->vector '())", "#()"),
]


@pytest.mark.parametrize("source, expected", LIST_WALKS)
def test_list_to_string_and_vector_walk_r7rs_6_7_6_8(source, expected):
    """R7RS 6.7, 6.8: list->string and list->vector over long, improper and circular lists."""
    check(source, expected)


@pytest.mark.parametrize("tail", [0, 1, 7, 8, 9, 30])
@pytest.mark.parametrize("cycle", [1, 2, 7, 8, 9, 100])
def test_every_cycle_shape_is_found_r7rs_6_4(tail, cycle):
    """R7RS 6.4: a circular list is an error whatever its lead-in and loop lengths."""
    cells = [Pair(char(97), NIL) for _ in range(tail + cycle)]
    for a, b in zip(cells, cells[1:]):
        a.cdr = b
    cells[-1].cdr = cells[tail]
    for name in ("list->string", "list->vector"):
        with pytest.raises(SchemeError) as info:
            PRIMITIVES[name](cells[0])
        assert "circular" in info.value.payload.message


def test_string_and_character_results_have_scheme_types():
    """Invariant 2: new strings are MString, characters Char, symbol names str."""
    for source in ('(make-string 1)', '(string #\\a)', '(string-copy "a")',
                   '(string-append "a")', '(substring "ab" 0 1)', "(list->string '(#\\a))",
                   '(string-map char-upcase "a")', "(number->string 1)", '(utf8->string #u8(97))',
                   '(string-upcase "a")', '(string-downcase "A")', '(string-foldcase "A")',
                   "(vector->string #(#\\a))", '(read-line (open-input-string "a"))',
                   '(read-string 1 (open-input-string "a"))',
                   "(let ((p (open-output-string))) (write 1 p) (get-output-string p))"):
        assert type(ev(source)) is MString, source
    assert type(ev("(symbol->string 'a)")) is str
    chars = [('(string-ref "ab" 0)', "a"), ('(car (string->list "ab"))', "a"),
             ('(vector-ref (string->vector "a") 0)', "a"), ("(integer->char 97)", "a"),
             ("(char-upcase #\\a)", "A"), ("(char-downcase #\\A)", "a"),
             ("(char-foldcase #\\A)", "a"), ('(read-char (open-input-string "a"))', "a"),
             ('(peek-char (open-input-string "a"))', "a")]
    for source, expected in chars:
        assert ev(source) is char(ord(expected)), source


IMMUTABLE_BYTEVECTORS = [
    ("(bytevector? b)", "#t"), ("(bytevector-length b)", "2"), ("(bytevector-u8-ref b 1)", "98"),
    ("(utf8->string b)", '"ab"'), ("(bytevector-copy b 1)", "#u8(98)"),
    ("(bytevector-append b #u8(1))", "#u8(97 98 1)"), ("(equal? b (bytevector 97 98))", "#t"),
    ("(let ((c (make-bytevector 3 0))) (bytevector-copy! c 1 b) c)", "#u8(0 97 98)"),
    ("(read-u8 (open-input-bytevector b))", "97"),
    ("(bytevector-u8-set! b 0 1)", Err("bytevector-u8-set!: the bytevector is immutable")),
    ("(bytevector-copy! b 0 #u8(1))", Err("bytevector-copy!: the bytevector is immutable")),
    ("(read-bytevector! b (open-input-bytevector #u8(1)))",
     Err("read-bytevector!: the bytevector is immutable")),
]


@pytest.mark.parametrize("source, expected", IMMUTABLE_BYTEVECTORS)
def test_python_bytes_is_an_immutable_bytevector_r7rs_6_9(source, expected):
    """R7RS 6.9: a Python bytes is a bytevector every procedure reads and mutators refuse."""
    check(source, expected, b=b"ab")


# -- vectors and bytevectors (R7RS 6.8, 6.9) -------------------------------------------------------

VECTORS = [
    ("(vector? #(1))", "#t"), ("(vector? '(1))", "#f"), ("(make-vector 2 'a)", "#(a a)"),
    ("(vector-length (make-vector 3))", "3"),
    ("(make-vector 1.5)", Err("make-vector: expected an exact non-negative integer")),
    ("(make-vector (expt 2 40))", Err("make-vector: 1099511627776 elements is more than")),
    ("(vector 1 'a \"s\")", '#(1 a "s")'), ("(vector)", "#()"), ("(vector-length #(1 2))", "2"),
    ("(vector-ref #(1 2) 1)", "2"),
    ("(vector-ref #(1 2) 2)", Err("vector-ref: index 2 is out of range for a vector of length 2")),
    ("(let ((v (vector 1 2))) (vector-set! v 0 'x) v)", "#(x 2)"),
    ("(vector-set! '(1) 0 0)", Err("vector-set!: expected a vector")),
    ("(vector->list #(1 2 3))", "(1 2 3)"), ("(vector->list #(1 2 3) 1)", "(2 3)"),
    ("(vector->list #(1 2 3) 1 2)", "(2)"), ("(vector->list #(1) 2)", Err("range 2 to 1")),
    ("(list->vector '(1 2))", "#(1 2)"), ("(list->vector '(1 . 2))", Err("proper list")),
    ("(vector-copy #(1 2 3))", "#(1 2 3)"), ("(vector-copy #(1 2 3) 1)", "#(2 3)"),
    ("(let ((v #(1))) (eq? v (vector-copy v)))", "#f"),
    ("(let ((v (vector 1 2 3 4 5))) (vector-copy! v 1 #(a b)) v)", "#(1 a b 4 5)"),
    ("(let ((v (vector 1 2 3 4 5))) (vector-copy! v 1 v 0 3) v)", "#(1 1 2 3 5)"),
    ("(let ((v (vector 1 2 3 4 5))) (vector-copy! v 0 v 2) v)", "#(3 4 5 4 5)"),
    ("(vector-copy! (vector 1) 0 #(1 2))", Err("2 elements do not fit at 0")),
    ("(vector-append #(1) #() #(2 3))", "#(1 2 3)"), ("(vector-append)", "#()"),
    ("(let ((v (vector 1 2 3))) (vector-fill! v 0) v)", "#(0 0 0)"),
    ("(let ((v (vector 1 2 3))) (vector-fill! v 'x 1 2) v)", "#(1 x 3)"),
    ("(bytevector? #u8(1))", "#t"), ("(bytevector? #(1))", "#f"),
    ("(make-bytevector 3 7)", "#u8(7 7 7)"), ("(make-bytevector 2)", "#u8(0 0)"),
    ("(make-bytevector 2 256)", Err("make-bytevector: expected a byte")),
    ("(bytevector 1 255)", "#u8(1 255)"),
    ("(bytevector -1)",
     Err("bytevector: expected a byte (an exact integer from 0 to 255), got -1")),
    ("(bytevector-length #u8(1 2))", "2"), ("(bytevector-u8-ref #u8(5 6) 1)", "6"),
    ("(bytevector-u8-ref #u8(5) 1)", Err("index 1 is out of range")),
    ("(let ((b (bytevector 1 2))) (bytevector-u8-set! b 0 255) b)", "#u8(255 2)"),
    ("(bytevector-u8-set! (bytevector 1) 0 1.0)", Err("expected a byte")),
    ("(bytevector-copy #u8(1 2 3) 1)", "#u8(2 3)"),
    ("(let ((b (bytevector 1 2 3 4 5))) (bytevector-copy! b 1 #u8(8 9)) b)", "#u8(1 8 9 4 5)"),
    ("(let ((b (bytevector 1 2 3 4 5))) (bytevector-copy! b 1 b 0 3) b)", "#u8(1 1 2 3 5)"),
    ("(bytevector-copy! (bytevector 1 2 3) 2 #u8(7 8))", Err("2 bytes do not fit at 2")),
    ("(bytevector-append #u8(1) #u8() #u8(2))", "#u8(1 2)"),
    ("(utf8->string #u8(206 187 97))", '"λa"'), ("(utf8->string #u8(206 187 97) 2)", '"a"'),
    ("(utf8->string #u8(206 187 97) 0 2)", '"λ"'),
    ("(utf8->string #u8(206 187) 1)", Err("utf8->string: the bytes are not UTF-8")),
    ('(string->utf8 "λa")', "#u8(206 187 97)"), ('(string->utf8 "λab" 1)', "#u8(97 98)"),
    ('(string->utf8 "λab" 0 1)', "#u8(206 187)"),
]


@pytest.mark.parametrize("source, expected", VECTORS)
def test_vectors_and_bytevectors_r7rs_6_8_6_9(source, expected):
    """R7RS 6.8-6.9: every vector and bytevector procedure, ranges, overlapping copies, UTF-8."""
    check(source, expected)


def test_vector_and_bytevector_results_have_scheme_types():
    """Invariant 2: vectors are SVector and bytevectors Bytevector, never list or bytearray."""
    for source in ("(vector 1)", "(make-vector 1)", "(vector-copy #(1))", "(list->vector '(1))",
                   "(vector-append #(1))", "(string->vector \"a\")", "(vector-map + #(1))"):
        assert type(ev(source)) is SVector, source
    for source in ("(bytevector 1)", "(make-bytevector 1)", "(bytevector-copy #u8(1))",
                   "(bytevector-append #u8(1))", "(string->utf8 \"a\")"):
        assert type(ev(source)) is Bytevector, source


# -- iteration (R7RS 6.10) -------------------------------------------------------------------------

ITERATION = [
    ("(map (lambda (x) (* x x)) '(1 2 3))", "(1 4 9)"), ("(map + '(1 2 3) '(10 20))", "(11 22)"),
    ("(map car '())", "()"), ("(map + '(1 2) '#0=(10 . #0#))", "(11 12)"),
    ("(map + '#0=(1 . #0#))", Err("map: expected a proper list, got a circular list")),
    ("(map + '#0=(1 . #0#) '#1=(1 . #1#))", Err("map: all the lists are circular")),
    ("(map car '(1 2))", Err("car: expected a pair, got 1")),
    ("(map 5 '(1))", Err("map: expected a procedure, got 5")),
    ("(map + '(1 . 2))", Err("map: expected a proper list")),
    ("(let ((v (make-vector 3 0))) (for-each (lambda (i) (vector-set! v i (* i i))) '(0 1 2)) v)",
     "#(0 1 4)"),
    ("(let ((v (vector 0 0))) (for-each (lambda (i j) (vector-set! v i j)) '(0 1 2) '(a b)) v)",
     "#(a b)"),
    ("(for-each (lambda (x) x) '#0=(1 . #0#))", Err("circular")),
    ("(for-each + '())", "#<unspecified>"), ('(string-map char-upcase "abc")', '"ABC"'),
    ('(string-map (lambda (a b) (if (char<? a b) a b)) "adc" "bbbb")', '"abb"'),
    ('(string-map (lambda (c) 1) "a")',
     Err("string-map: the procedure returned 1, not a character")),
    ('(let ((v (make-vector 2 #f))) (string-for-each (lambda (c d) (vector-set! v (if (char=? c '
     '#\\a) 0 1) d)) "ab" "xyz") v)',
     "#(#\\x #\\y)"),
    ("(vector-map + #(1 2) #(10 20 30))", "#(11 22)"),
    ("(vector-map (lambda (x) (* 2 x)) #())", "#()"),
    ("(let ((v (make-vector 2 0))) (vector-for-each (lambda (i) (vector-set! v i 'x)) #(1)) v)",
     "#(0 x)"),
    ("(vector-map + '(1))", Err("vector-map: expected a vector")),
]


@pytest.mark.parametrize("source, expected", ITERATION)
def test_iteration_r7rs_6_10(source, expected):
    """R7RS 6.10: map, for-each (to the shortest list), string-map/for-each, vector-map/for-each."""
    check(source, expected)


def test_procedure_arguments_are_called_through_tail_calls():
    """Invariant 3: a procedure argument that returns a TailCall is resolved (_types.call)."""
    from vm._types import TailCall

    def tail_square(x):
        return TailCall(lambda y: y * y, (x,))

    assert write(ev("(map f '(1 2 3))", f=tail_square)) == "(1 4 9)"
    assert write(ev("(vector-map f #(4))", f=tail_square)) == "#(16)"


# -- string and bytevector ports (R7RS 6.13) -------------------------------------------------------

PORTS = [
    ('(let ((p (open-input-string "(a b) 42 \\"s\\" x"))) (list (read p) (read-char p) '
     '(peek-char p) (read p) (read p) (read p) (read p)))',
     '((a b) #\\space #\\4 42 "s" x #<eof>)'),
    ('(let ((p (open-input-string "one\\r\\ntwo\\nlast"))) (list (read-line p) (read-line p) '
     '(read-line p) (read-line p)))',
     '("one" "two" "last" #<eof>)'),
    ('(let ((p (open-input-string "\\n"))) (list (read-line p) (read-line p)))', '("" #<eof>)'),
    ('(let ((p (open-input-string "abcdef"))) (list (read-string 2 p) (read-string 10 p) '
     '(read-string 1 p) (read-string 0 p)))',
     '("ab" "cdef" #<eof> "")'),
    ('(let ((p (open-input-string ""))) (list (read-char p) (peek-char p) (read p) (read-line '
     'p) (char-ready? p)))',
     "(#<eof> #<eof> #<eof> #<eof> #t)"),
    ('(let ((p (open-input-string "#!fold-case A B"))) (list (read p) (read p)))', "(a b)"),
    ('(read (open-input-string "(1 2"))', Err("string:1:5: unterminated list", kind="read")),
    ('(read (open-input-string ")"))', Err("unexpected ')'", kind="read")),
    ("(let ((p (open-output-string))) (write '(a \"b\" #\\c) p) (display '(a \"b\" #\\c) p) "
     "(newline p) (get-output-string p))",
     '"(a \\"b\\" #\\\\c)(a b c)\\n"'),
    ('(let ((p (open-output-string))) (write-string "hello" p 1 3) (write-char #\\λ p) '
     '(write-string "!" p) (get-output-string p))',
     '"elλ!"'),
    ('(let ((p (open-output-string))) (write-string "abc" p 0) (write-string "abc" p 2 3) '
     '(write-string (string-copy "de") p) (get-output-string p))',
     '"abccde"'),
    ('(write-string "abc" (open-output-string) #f)',
     Err("write-string: expected an exact non-negative integer, got #f")),
    ("(write-char #\\a (open-output-bytevector))", Err("write-char: expected a textual output port")),
    ('(write-char "a" (open-output-string))', Err("write-char: expected a character")),
    ("(let ((p (open-output-string))) (write-shared (let ((x (list 1))) (list x x)) p) "
     "(write-simple '(1) p) (get-output-string p))",
     '"(#0=(1) #0#)(1)"'),
    ("(let ((p (open-output-string))) (write '#0=(1 . #0#) p) (get-output-string p))",
     '"#0=(1 . #0#)"'),
    ('(let ((p (open-input-bytevector #u8(1 2 3 4 5)))) (list (read-u8 p) (peek-u8 p) '
     '(read-bytevector 2 p) (read-bytevector 9 p) (read-u8 p) (peek-u8 p) (read-bytevector 3 p) '
     '(u8-ready? p)))',
     "(1 2 #u8(2 3) #u8(4 5) #<eof> #<eof> #<eof> #t)"),
    ("(let ((p (open-input-bytevector #u8(1 2 3))) (b (make-bytevector 5 0))) (list "
     "(read-bytevector! b p 1) b (read-bytevector! b p)))",
     "(3 #u8(0 1 2 3 0) #<eof>)"),
    ("(let ((p (open-input-bytevector #u8(1 2 3))) (b (make-bytevector 4 0))) (list "
     "(read-bytevector! b p 1 3) b (read-bytevector! b p 0 0)))",
     "(2 #u8(0 1 2 0) 0)"),
    ("(let ((p (open-output-bytevector))) (write-u8 7 p) (write-bytevector #u8(1 2 3 4) p 1 3) "
     "(get-output-bytevector p))",
     "#u8(7 2 3)"),
    ('(list (input-port? (open-input-string "")) (output-port? (open-input-string "")) '
     '(textual-port? (open-output-string)) (binary-port? (open-output-bytevector)) (port? 1) '
     '(input-port? (open-input-bytevector #u8())))',
     "(#t #f #t #t #f #t)"),
    ('(let ((p (open-input-string ""))) (list (input-port-open? p) (output-port-open? p) (begin '
     '(close-input-port p) (input-port-open? p))))',
     "(#t #f #f)"),
    ('(let ((p (open-output-string))) (close-port p) (close-port p) (output-port-open? p))', "#f"),
    ('(let ((p (open-input-string "x"))) (close-port p) (read-char p))',
     Err("read-char: #<textual-input-port string> is closed")),
    ("(let ((p (open-output-string))) (close-output-port p) (write 1 p))",
     Err("write: #<textual-output-port string> is closed")),
    ('(read-u8 (open-input-string "x"))', Err("read-u8: expected a binary input port")),
    ("(read-char (open-input-bytevector #u8(1)))", Err("read-char: expected a textual input port")),
    ("(write-u8 1 (open-output-string))", Err("write-u8: expected a binary output port")),
    ('(write 1 (open-input-string ""))', Err("write: expected a textual output port")),
    ("(close-input-port (open-output-string))", Err("close-input-port: expected an input port")),
    ("(get-output-string (open-output-bytevector))",
     Err("get-output-string: expected a port made by open-output-string")),
    ('(call-with-port (open-input-string "abc") (lambda (p) (read-char p)))', "#\\a"),
    ('(let ((p (open-input-string "abc"))) (call-with-port p read-char) (input-port-open? p))',
     "#f"),
    ("(list (eof-object? (eof-object)) (eof-object? '()))", "(#t #f)"),
    ("(open-input-string \"\")", "#<textual-input-port string>"),
    ("(open-output-bytevector)", "#<binary-output-port bytevector>"),
]


@pytest.mark.parametrize("source, expected", PORTS)
def test_string_and_bytevector_ports_r7rs_6_13(source, expected):
    """R7RS 6.13: string and bytevector ports, every read and write procedure, closing."""
    check(source, expected)


def test_current_ports_are_parameter_objects(capsys):
    """R7RS 6.13.1: current-output-port is a parameter object that parameterize rebinds."""
    assert isinstance(PRIMITIVES["current-output-port"], Parameter)
    ev('(begin (display "hi") (write "x") (newline) (write-char #\\λ))')
    assert capsys.readouterr().out == 'hi"x"\nλ'
    ev('(begin (display "err" (current-error-port)) (flush-output-port))')
    assert capsys.readouterr().err == "err"
    string_port = ev("(open-output-string)")
    saved = CURRENT_OUTPUT.value
    CURRENT_OUTPUT.value = CURRENT_OUTPUT.converter(string_port)   # what parameterize does
    try:
        ev("(display 42)")
    finally:
        CURRENT_OUTPUT.value = saved
    assert string_port.getvalue() == "42"
    assert capsys.readouterr().out == ""
    with pytest.raises(SchemeError, match="current-output-port: expected an output port"):
        CURRENT_OUTPUT.converter(ev('(open-input-string "")'))
    assert write(PRIMITIVES["current-input-port"]) == "#<parameter current-input-port>"


def test_reading_the_current_input_port():
    """R7RS 6.13.2: read, read-char and read-line default to (current-input-port)."""
    saved = CURRENT_INPUT.value
    CURRENT_INPUT.value = TextInputPort("(a) b\nrest of line\n", "test")
    try:
        got = ev("(list (read) (read) (read-char) (read-line) (read-line))")
        assert write(got) == '((a) b #\\newline "rest of line" #<eof>)'
    finally:
        CURRENT_INPUT.value = saved


def test_console_input_reads_lines_as_needed(monkeypatch):
    """The console port fetches a line at a time, so a datum may span several lines."""
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("(1\n 2)\nnext\n"))
    port = TextInputPort("", "stdin", refill=lambda: sys.stdin.readline())
    got = ev("(list (read p) (read-line p) (read p) (read p))", p=port)
    assert write(got) == '((1 2) "" next #<eof>)'


# -- file ports (R7RS 6.13.1, 6.14) ----------------------------------------------------------------

def test_file_ports(tmp_path):
    """R7RS 6.13.1: text and binary file ports, call-with-*, with-*, file-exists?, delete-file."""
    path = MString(str(tmp_path / "data.txt"))
    check("(file-exists? f)", "#f", f=path)
    check('(call-with-output-file f (lambda (p) (write \'(1 "two" #\\3) p) (display " λ" p)'
          ' (newline p) 7))', "7", f=path)
    assert (tmp_path / "data.txt").read_text(encoding="utf-8") == '(1 "two" #\\3) λ\n'
    check("(file-exists? f)", "#t", f=path)
    check("(call-with-input-file f"
          " (lambda (p) (list (read p) (read-char p) (read-line p) (read p))))",
          '((1 "two" #\\3) #\\space "λ" #<eof>)', f=path)
    check('(with-output-to-file f (lambda () (display "via parameter") 8))', "8", f=path)
    check("(with-input-from-file f read-line)", '"via parameter"', f=path)
    check("(let ((p (open-input-file f)))"
          " (let ((line (read-line p))) (close-port p) (list line (input-port-open? p))))",
          '("via parameter" #f)', f=path)
    binary = MString(str(tmp_path / "data.bin"))
    check("(let ((p (open-binary-output-file f)))"
          " (write-bytevector #u8(0 1 255) p) (write-u8 9 p) (close-port p))",
          "#<unspecified>", f=binary)
    check("(let ((p (open-binary-input-file f)))"
          " (list (read-u8 p) (read-bytevector 10 p) (read-u8 p)))",
          "(0 #u8(1 255 9) #<eof>)", f=binary)
    check("(delete-file f)", "#<unspecified>", f=path)
    check("(file-exists? f)", "#f", f=path)


def test_large_files_are_read_in_chunks(tmp_path):
    """A text file longer than a chunk reads whole, with line numbers counted across chunks."""
    path = tmp_path / "big.scm"
    lines = "".join(f"(item {i} \"{'x' * 50}\")\n" for i in range(3000))
    path.write_text(lines + "(oops]\n", encoding="utf-8")
    port = ev("(open-input-file f)", f=MString(str(path)))
    try:
        for i in range(3000):
            datum = port.reader.read()
            assert datum.cdr.car == i
        with pytest.raises(SchemeError) as info:
            port.reader.read()
        assert info.value.payload.message.startswith(f"{path}:3001:6: ")
    finally:
        port.close()


FILE_ERRORS = [
    ('(open-input-file "/nonexistent/dir/x")',
     Err('open-input-file: cannot open "/nonexistent/dir/x"', kind="file")),
    ('(open-output-file "/nonexistent/dir/x")', Err("open-output-file: cannot open", kind="file")),
    ('(open-binary-input-file "/nonexistent/dir/x")', Err("cannot open", kind="file")),
    ('(delete-file "/nonexistent/dir/x")', Err("delete-file: cannot delete", kind="file")),
    ("(open-input-file 'x)", Err("open-input-file: expected a string")),
    ('(call-with-input-file "/nonexistent/x" 5)', Err("expected a procedure")),
]


@pytest.mark.parametrize("source, expected", FILE_ERRORS)
def test_file_errors_are_file_errors_r7rs_6_13_1(source, expected):
    """R7RS 6.13.1: a file that cannot be opened raises an error of kind "file" (file-error?)."""
    check(source, expected)


def test_undecodable_file_is_a_scheme_error(tmp_path):
    """A file that is not UTF-8 gives a Scheme error naming the file, not UnicodeDecodeError."""
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9\n")
    port = ev("(open-input-file f)", f=MString(str(path)))
    try:
        with pytest.raises(SchemeError, match=r"latin1\.txt: the file is not UTF-8 text"):
            ev("(read-line p)", p=port)
    finally:
        port.close()


# -- the process (R7RS 6.14) -----------------------------------------------------------------------

def test_process_context_r7rs_6_14(monkeypatch):
    """R7RS 6.14: command-line, environment, exit codes (SchemeExit), time and features."""
    set_command_line(["prog", "arg"])
    try:
        check("(command-line)", '("prog" "arg")')
    finally:
        set_command_line(None)
    monkeypatch.setenv("IMAGO_TEST_VAR", "λ value")
    check('(get-environment-variable "IMAGO_TEST_VAR")', '"λ value"')
    check('(get-environment-variable "IMAGO_NO_SUCH_VARIABLE")', "#f")
    assert ev('(assoc "IMAGO_TEST_VAR" (get-environment-variables))').cdr == "λ value"
    exits = [("(exit)", 0, False), ("(exit #t)", 0, False), ("(exit #f)", 1, False),
             ("(exit 3)", 3, False), ("(exit 'x)", 1, False), ("(emergency-exit 4)", 4, True)]
    for source, code, emergency in exits:
        with pytest.raises(SchemeExit) as info:
            ev(source)
        assert (info.value.code, info.value.emergency) == (code, emergency)
    assert not issubclass(SchemeExit, Exception)
    assert SchemeExit(False).code == 1
    assert isinstance(ev("(current-second)"), float) and ev("(current-second)") > 1.6e9
    first = ev("(current-jiffy)")
    assert type(first) is int and ev("(current-jiffy)") >= first
    assert ev("(jiffies-per-second)") == 10 ** 9
    features = [s.name for s in to_list(ev("(features)"))]
    assert "r7rs" in features and "full-unicode" in features and "ratios" in features


# -- hash tables (SRFI 69) -------------------------------------------------------------------------

HASH_TABLES = [
    ('(let ((t (make-hash-table))) (hash-table-set! t "a" 1) (hash-table-set! t (list 1 #(2)) '
     '2) (hash-table-set! t "a" 3) (list (hash-table-ref t "a") (hash-table-ref/default t (list '
     '1 (vector 2)) 0) (hash-table-ref/default t (list 1 3) 0) (hash-table-size t)))',
     "(3 2 0 2)"),
    ('(let ((t (make-hash-table eq?))) (hash-table-set! t (string #\\a) 1) (hash-table-ref/default '
     't (string #\\a) \'none))',
     "none"),
    ("(let ((t (make-hash-table eq?)) (n (expt 10 20))) (hash-table-set! t 'a 1) "
     "(hash-table-set! t n 2) (hash-table-set! t #\\a 3) (list (hash-table-ref t 'a) "
     "(hash-table-ref t n) (hash-table-ref t (integer->char 97)) "
     "(hash-table-ref/default t (expt 10 20) 'other-bignum)))",
     "(1 2 3 other-bignum)"),
    ("(let ((t (make-hash-table eqv?))) (hash-table-set! t (expt 10 20) 2) "
     "(hash-table-ref t 100000000000000000000))",
     "2"),
    ('(let ((t (make-hash-table))) (hash-table-set! t "k" 1) (hash-table-set! t (string #\\k) 2) '
     '(list (hash-table-ref t "k") (hash-table-size t)))',
     "(2 1)"),
    ('(let ((t (make-hash-table string=?))) (hash-table-set! t (string #\\k) 1) '
     '(hash-table-ref t "k"))',
     "1"),
    ("(let ((t (make-hash-table char=?))) (hash-table-set! t #\\a 1) (hash-table-ref t "
     "(string-ref \"a\" 0)))",
     "1"),
    ('(let ((t (make-hash-table string=?))) (hash-table-set! t "k" 1) (hash-table-ref t (string '
     '#\\k)))',
     "1"),
    ('(let ((t (make-hash-table string-ci=?))) (hash-table-set! t "ABC" 1) (hash-table-ref t '
     '"abc"))',
     "1"),
    ("(let ((t (make-hash-table eqv?))) (hash-table-set! t +nan.0 1) (hash-table-set! t 1.0 2) "
     "(hash-table-set! t 1 3) (hash-table-set! t -0.0 4) (hash-table-set! t 0.0 5) "
     "(hash-table->alist t))",
     "((+nan.0 . 1) (1.0 . 2) (1 . 3) (-0.0 . 4) (0.0 . 5))"),
    ("(let ((t (make-hash-table =))) (hash-table-set! t 1 'one) (list (hash-table-ref t 1.0) "
     "(hash-table-ref/default t 2 #f)))",
     "(one #f)"),
    ("(let ((t (make-hash-table char-ci=?))) (hash-table-set! t #\\A 1) (hash-table-ref t #\\a))",
     "1"),
    ("(let ((t (make-hash-table equal?))) (hash-table-set! t '#0=(1 . #0#) 'cyclic) "
     "(hash-table-ref t '#1=(1 1 . #1#)))",
     "cyclic"),
    ("(let ((t (make-hash-table (lambda (a b) (= (abs a) (abs b)))))) (hash-table-set! t 1 "
     "'one) (hash-table-ref t -1))",
     "one"),
    ("(let ((t (make-hash-table = (lambda (x) (exact (floor x)))))) (hash-table-set! t 1 'one) "
     "(hash-table-ref t 1.0))",
     "one"),
    ("(let ((t (make-hash-table eq? (lambda (x) 'bad)))) (hash-table-set! t 1 1))",
     Err("the hash function returned bad")),
    ("(hash-table-ref (make-hash-table) 1)", Err("hash-table-ref: no value for the key 1")),
    ("(hash-table-ref (make-hash-table) 1 (lambda () 'missing))", "missing"),
    ("(let ((t (make-hash-table))) (hash-table-set! t 1 2) (hash-table-ref t 1 (lambda () 0) "
     "(lambda (v) (* v 10))))",
     "20"),
    ("(let ((t (make-hash-table))) (hash-table-set! t 1 2) (hash-table-delete! t 1) "
     "(hash-table-delete! t 1) (list (hash-table-exists? t 1) (hash-table-contains? t 1) "
     "(hash-table-size t)))",
     "(#f #f 0)"),
    ("(let ((t (alist->hash-table '((a . 1) (b . 2) (a . 3)) eq?))) (hash-table-update! t 'a "
     "(lambda (x) (+ x 10))) (hash-table-update!/default t 'c (lambda (x) (+ x 1)) 0) (list "
     "(hash-table->alist t) (hash-table-keys t) (hash-table-values t)))",
     "(((a . 11) (b . 2) (c . 1)) (a b c) (11 2 1))"),
    ("(let ((t (make-hash-table))) (hash-table-update! t 'x (lambda (v) (+ v 1)) (lambda () "
     "41)) (hash-table-ref t 'x))",
     "42"),
    ("(hash-table-update! (make-hash-table) 'x car)",
     Err("hash-table-ref: no value for the key x")),
    ("(let ((t (alist->hash-table '((a . 1) (b . 2))))) (hash-table-fold t (lambda (k v acc) "
     "(cons k acc)) '()))",
     "(b a)"),
    ("(let ((t (alist->hash-table '((a . 1) (b . 2))))) (hash-table-fold (lambda (k v acc) (+ v "
     "acc)) 0 t))",
     "3"),
    ("(let ((t (alist->hash-table '((a . 1)))) (v (vector #f))) (hash-table-walk t (lambda (k "
     "val) (vector-set! v 0 (list k val)))) v)",
     "#((a 1))"),
    ("(let ((t (alist->hash-table '((a . 1))))) (let ((c (hash-table-copy t #t))) "
     "(hash-table-set! c 'b 2) (list (hash-table-size t) (hash-table-size c))))",
     "(1 2)"),
    ("(let ((t (alist->hash-table '((a . 1))))) (hash-table-merge! t (alist->hash-table '((b . "
     "2) (a . 9)))) (hash-table->alist t))",
     "((a . 9) (b . 2))"),
    ("(let ((t (alist->hash-table '((a . 1))))) (hash-table-clear! t) (hash-table-size t))", "0"),
    ("(let ((t (make-hash-table eqv?))) (list (eq? (hash-table-equivalence-function t) eqv?) "
     "(eq? (hash-table-hash-function t) hash-by-identity)))",
     "(#t #t)"),
    ("(eq? (hash-table-hash-function (make-hash-table)) hash)", "#t"),
    ("(hash-table? (make-hash-table))", "#t"), ("(hash-table? '())", "#f"),
    ("(hash-table-set! '() 1 2)", Err("hash-table-set!: expected a hash table, got ()")),
    ("(make-hash-table 5)", Err("expected a procedure")),
    ("(alist->hash-table '(1))", Err("expected an association list")),
    ("(make-hash-table)", "#<hash-table 0 entries>"),
    ("(alist->hash-table '((a . 1)))", "#<hash-table 1 entry>"),
    ('(= (hash (list 1 "a" #(2))) (hash (list 1 (string #\\a) (vector 2))))', "#t"),
    ("(< (hash '#0=(1 . #0#) 100) 100)", "#t"),
    ('(= (string-hash "abc") (string-hash (string #\\a #\\b #\\c)))', "#t"),
    ('(= (string-ci-hash "ABC") (string-ci-hash "abc"))', "#t"),
    ("(< -1 (hash-by-identity 'a 10) 10)", "#t"),
    ("(hash 1 0)", Err("hash: expected a positive exact integer bound")),
    ("(string-hash 'a)", Err("string-hash: expected a string")),
]


@pytest.mark.parametrize("source, expected", HASH_TABLES)
def test_hash_tables_srfi_69(source, expected):
    """SRFI 69: tables keyed by equal?, eqv?, eq?, string=?, string-ci=?, =, char-ci=?, any."""
    check(source, expected)


def test_hash_table_with_many_keys_and_mutation_during_walk():
    """A table with 10 000 keys finds each; walking while deleting sees a snapshot."""
    table = ev("(make-hash-table)")
    for i in range(10_000):
        table.set(from_iterable([i, MString(str(i))]), i)
    for i in range(0, 10_000, 7):
        assert table.get(from_iterable([i, MString(str(i))]), None) == i
    ev("(hash-table-walk t (lambda (k v) (hash-table-delete! t k)))", t=table)
    assert len(table) == 0 and isinstance(table, HashTable)


# -- the image's values (vm/_types: persistent objects are Scheme values) --------------------------

MAILS = [
    {"subject": "Hello", "from": "ann", "size": 120, "raw": b"Subject: Hello"},
    {"subject": "Re: Hello", "from": "bob", "size": 80, "raw": b"Subject: Re: Hello"},
    {"subject": "Straße", "from": "ann", "size": 7, "raw": b""},
]


def _fill(img) -> None:
    """Python data in the image's root: a list of dicts of str, int and bytes values."""
    img.root["mails"] = MAILS
    img.root["counts"] = {"ann": 2, "bob": 1}


@pytest.fixture(scope="module")
def shared_image(tmp_path_factory):
    """One image for the module (creating one takes a few hundred milliseconds)."""
    img = image.open(str(tmp_path_factory.mktemp("image") / "t.image"))
    yield img
    img.close()


@pytest.fixture
def mailbox(shared_image):
    """The shared image, with fresh mails and counts (tests may change them)."""
    _fill(shared_image)
    return shared_image


@pytest.fixture
def own_mailbox(tmp_path):
    """(image, path): an image of the test's own, for tests that close or reopen it."""
    path = str(tmp_path / "t.image")
    img = image.open(path)
    _fill(img)
    yield img, path
    if not img.closed:
        img.close()


def ev_image(source: str, img, **bindings):
    """ev with mails and counts bound to the image's Vector and Table."""
    return ev(source, mails=img.root["mails"], counts=img.root["counts"], **bindings)


IMAGE_VECTORS = [
    ("(vector? mails)", "#t"), ("(vector-length mails)", "3"),
    ('(hash-table-ref (vector-ref mails 1) "from")', '"bob"'),
    ('(map (lambda (m) (hash-table-ref m "size")) (vector->list mails))', "(120 80 7)"),
    ('(vector->list mails 2)', "(#<hash-table 4 entries>)"),
    ('(vector-map (lambda (m) (hash-table-ref m "from")) mails)', '#("ann" "bob" "ann")'),
    ("(let ((box (vector 0))) (vector-for-each (lambda (m) (vector-set! box 0 (+ (vector-ref "
     "box 0) (hash-table-ref m \"size\")))) mails) box)", "#(207)"),
    ("(vector-length (vector-copy mails 1))", "2"),
    ("(vector? (vector-copy mails))", "#t"),
    ("(vector-length (vector-append mails #(1)))", "4"),
    ("(equal? (vector-ref mails 0) (vector-ref mails 0))", "#t"),
    ("(eq? (vector-ref mails 0) (vector-ref mails 0))", "#t"),
    ("(vector-ref mails 3)", Err("vector-ref: index 3 is out of range for a vector of length 3")),
    ("(vector->list mails 4)", Err("vector->list: range 4 to 3")),
]


@pytest.mark.parametrize("source, expected", IMAGE_VECTORS)
def test_image_vectors_are_vectors_r7rs_6_8(mailbox, source, expected):
    """R7RS 6.8: an image Vector is a vector to every vector procedure (read in place)."""
    assert type(mailbox.root["mails"]) is ImageVector
    check(source, expected, mails=mailbox.root["mails"], counts=mailbox.root["counts"])


def test_vectors_made_from_image_vectors_are_transient(mailbox):
    """R7RS 6.8: what vector-map, vector-copy and vector-append make is a new SVector."""
    for source in ("(vector-map (lambda (m) 1) mails)", "(vector-copy mails)",
                   "(vector-append mails)", "(list->vector (vector->list mails))"):
        made = ev_image(source, mailbox)
        assert type(made) is SVector and len(made) == 3, source
    assert ev_image("(vector-ref (vector-copy mails) 0)", mailbox) is mailbox.root["mails"][0]


IMAGE_STRINGS = [
    ('(string? s)', "#t"), ('(string-length s)', "6"), ('(string-upcase s)', '"STRASSE"'),
    ('(string-ref s 4)', "#\\ß"), ('(substring s 0 3)', '"Str"'),
    ('(string->list s 4)', "(#\\ß #\\e)"), ('(string-append s "!")', '"Straße!"'),
    ('(string=? s (string-copy "Straße"))', "#t"), ('(equal? s (string-copy "Straße"))', "#t"),
    ('(equal? (string-copy "Straße") s)', "#t"), ('(string-ci=? s "STRASSE")', "#t"),
    ('(string->symbol s)', "Straße"),
    ('(string-set! s 0 #\\s)', Err("string-set!: the string is immutable")),
    ('(string-fill! s #\\x)', Err("string-fill!: the string is immutable")),
    ('(let ((c (string-copy s))) (string-set! c 0 #\\s) (list c s))', '("straße" "Straße")'),
]


@pytest.mark.parametrize("source, expected", IMAGE_STRINGS)
def test_strings_from_the_image_are_immutable_strings_r7rs_6_7(mailbox, source, expected):
    """R7RS 6.7: an image str is a string to every procedure, equal? to an MString, immutable."""
    s = ev_image('(hash-table-ref (vector-ref mails 2) "subject")', mailbox)
    assert type(s) is str
    check(source, expected, s=s)


IMAGE_TABLES = [
    ("(hash-table? counts)", "#t"), ('(hash-table-ref counts "ann")', "2"),
    ('(hash-table-ref counts (string #\\b #\\o #\\b))', "1"),
    ('(hash-table-ref counts (string-copy "bob"))', "1"),
    ('(hash-table-ref/default counts "eve" 0)', "0"),
    ('(hash-table-ref counts "eve" (lambda () \'none))', "none"),
    ('(hash-table-ref counts "ann" (lambda () 0) (lambda (n) (* n 10)))', "20"),
    ('(hash-table-exists? counts "ann")', "#t"), ('(hash-table-contains? counts "eve")', "#f"),
    ("(hash-table-size counts)", "2"), ("(hash-table-keys counts)", '("ann" "bob")'),
    ("(hash-table-values counts)", "(2 1)"),
    ("(hash-table->alist counts)", '(("ann" . 2) ("bob" . 1))'),
    ("(hash-table-fold counts (lambda (k v acc) (+ v acc)) 0)", "3"),
    ("(hash-table-fold (lambda (k v acc) (cons k acc)) '() counts)", '("bob" "ann")'),
    ('(begin (hash-table-set! counts (string-copy "eve") 5) (hash-table-ref counts "eve"))', "5"),
    ('(begin (hash-table-update! counts "ann" (lambda (n) (+ n 1))) (hash-table-ref counts "ann"))',
     "3"),
    ('(begin (hash-table-update!/default counts "zed" (lambda (n) (+ n 1)) 0) '
     '(hash-table-ref counts "zed"))', "1"),
    ('(begin (hash-table-delete! counts (string-copy "bob")) (hash-table-keys counts))', '("ann")'),
    ("(let ((c (hash-table-copy counts))) (hash-table-set! c 'x 1) "
     "(list (hash-table-size c) (hash-table-size counts)"
     " (hash-table-ref c (string-copy \"ann\"))))",
     "(3 2 2)"),
    ("(begin (hash-table-merge! counts (alist->hash-table (list (cons \"ann\" 9) (cons "
     "(string-copy \"cy\") 4)))) (hash-table->alist counts))",
     '(("ann" . 9) ("bob" . 1) ("cy" . 4))'),
    ("(begin (hash-table-clear! counts) (hash-table-size counts))", "0"),
    ("(let ((v (vector '()))) (hash-table-walk counts (lambda (k n) (vector-set! v 0 (cons k "
     "(vector-ref v 0))))) v)", '#(("bob" "ann"))'),
    ("(eq? (hash-table-equivalence-function counts) equal?)", "#t"),
    ("(eq? (hash-table-hash-function counts) hash)", "#t"),
    ("counts", "#<hash-table 2 entries>"),
    ("(hash-table-ref counts #\\a)",
     Err("hash-table-ref: cannot use a character as a key of a persistent table")),
    ("(hash-table-set! counts #\\a 1)",
     Err("hash-table-set!: cannot use a character as a key of a persistent table")),
    ("(hash-table-set! counts (list 1) 1)",
     Err("hash-table-set!: cannot use a pair as a key of a persistent table")),
    ("(hash-table-exists? counts (vector 1))",
     Err("hash-table-exists?: cannot use a vector as a key of a persistent table")),
    ('(hash-table-set! counts "ann" (string-copy "x"))',
     Err('hash-table-set!: the image cannot hold "x"')),
    ('(hash-table-set! counts "ann" #\\x)', Err("hash-table-set!: the image cannot hold #\\x")),
    ("(hash-table-set! counts 'sym 1)",
     Err("hash-table-set!: cannot use sym as a key of a persistent table")),
    ("(hash-table-ref/default counts 1/2 0)",
     Err("hash-table-ref/default: cannot use 1/2 as a key of a persistent table")),
    ("(hash-table-delete! counts (list 1))",
     Err("hash-table-delete!: cannot use a pair as a key of a persistent table")),
    ("(begin (hash-table-set! counts (bytevector 1 2) 3) (list (hash-table-ref counts #u8(1 2))"
     " (hash-table-keys counts)))", '(3 ("ann" "bob" #u8(1 2)))'),
]


@pytest.mark.parametrize("source, expected", IMAGE_TABLES)
def test_image_tables_are_hash_tables_srfi_69(mailbox, source, expected):
    """SRFI 69: an image Table is a hash table (MString keys by text; bad keys refused)."""
    check(source, expected, mails=mailbox.root["mails"], counts=mailbox.root["counts"])


def compiled_probe(source: str, **bindings):
    """source compiled as the body of a procedure over the bindings (globals):
    there vector-ref, hash-table-ref and the like are inlined by vm/_compile."""
    from vm._env import Environment
    from vm._runtime import eval_text, run
    env = Environment.standard()
    for name, value in bindings.items():
        env.define(intern(name), value)
    return run(lambda: eval_text(f"(define (probe) {source}) probe", env, "<test>"))


def check_compiled(source: str, expected, **bindings) -> None:
    """check through compiled_probe: the inlined fast paths must agree with the procedures."""
    from vm._runtime import run
    probe = compiled_probe(source, **bindings)
    if isinstance(expected, Err):
        with pytest.raises(SchemeRaise) as info:
            run(probe)
        assert expected.part in info.value.payload.message, info.value.payload.message
    else:
        assert write(run(probe)) == expected, source


@pytest.mark.parametrize("source, expected", IMAGE_VECTORS + IMAGE_TABLES)
def test_compiled_code_reads_image_vectors_and_tables_r7rs_6_8_srfi_69(mailbox, source, expected):
    """R7RS 6.8, SRFI 69: the inlined vector-ref, vector-length and hash-table-ref
    on image Vectors and Tables give the procedures' values and errors."""
    check_compiled(source, expected, mails=mailbox.root["mails"], counts=mailbox.root["counts"])


@pytest.mark.parametrize("source, expected", IMAGE_STRINGS)
def test_compiled_code_reads_strings_from_the_image_r7rs_6_7(mailbox, source, expected):
    """R7RS 6.7: the inlined string-length and string-ref on an image str."""
    s = ev_image('(hash-table-ref (vector-ref mails 2) "subject")', mailbox)
    check_compiled(source, expected, s=s)


COMPILED_IMAGE_EDGES = [
    ("(vector-ref mails -1)", Err("vector-ref: expected an exact non-negative integer, got -1")),
    ("(vector-ref mails #t)", Err("vector-ref: expected an exact non-negative integer, got #t")),
    ("(vector-ref counts 0)", Err("vector-ref: expected a vector, got")),
    ('(hash-table-ref counts "eve")', Err('hash-table-ref: no value for the key "eve"')),
    ('(hash-table-ref (vector-ref mails 0) "size")', "120"),
    ('(let ((key "from")) (hash-table-ref (vector-ref mails 1) key))', '"bob"'),
    ("(let ((key 7)) (hash-table-ref/default counts key 'none))", "none"),
    ('(let ((key (string-copy "ann"))) (hash-table-ref counts key))', "2"),
    ("(let ((key #t)) (hash-table-ref/default counts key 'none))", "none"),
    ('(hash-table-ref/default mails "ann" 0)', Err("hash-table-ref/default: expected a hash table")),
    ('(hash-table-ref/default (make-hash-table) "ann" 0)', "0"),
]


@pytest.mark.parametrize("source, expected", COMPILED_IMAGE_EDGES)
def test_compiled_image_reads_at_their_edges_r7rs_6_8_srfi_69(mailbox, source, expected):
    """Negative and boolean indices, missing keys, keys of other types, other tables."""
    check_compiled(source, expected, mails=mailbox.root["mails"], counts=mailbox.root["counts"])


def test_stale_image_handles_give_scheme_errors_in_compiled_code(own_mailbox):
    """A handle whose image is closed fails through the procedure, as a Scheme error."""
    from vm._runtime import run
    img, _ = own_mailbox
    probes = [compiled_probe(source, mails=img.root["mails"], counts=img.root["counts"])
              for source in ("(vector-ref mails 0)", '(hash-table-ref counts "ann")')]
    img.close()
    for probe, who in zip(probes, ("vector-ref:", "hash-table-ref:")):
        with pytest.raises(SchemeRaise) as info:
            run(probe)
        assert info.value.payload.message.startswith(who)


def test_hash_table_types_export():
    """HASH_TABLE_TYPES names the transient and the persistent hash table."""
    assert HASH_TABLE_TYPES == (HashTable, ImageTable)


IMAGE_WRITES = [
    ("(vector-set! v 0 'sym)", Err("vector-set!: the image cannot hold sym")),
    ("(vector-set! v 0 #\\a)", Err("vector-set!: the image cannot hold #\\a")),
    ("(vector-set! v 0 (string-copy \"s\"))", Err('vector-set!: the image cannot hold "s"')),
    ("(vector-set! v 0 (list 1))", Err("vector-set!: the image cannot hold (1)")),
    ("(vector-set! v 0 1/2)", Err("vector-set!: the image cannot hold 1/2")),
    ("(vector-set! v 0 (make-hash-table))",
     Err("vector-set!: the image cannot hold #<hash-table 0 entries>")),
    ("(vector-fill! v (cons 1 2))", Err("vector-fill!: the image cannot hold (1 . 2)")),
    ("(vector-fill! v #\\a 1)", Err("vector-fill!: the image cannot hold #\\a")),
    ("(vector-copy! v 0 (vector 7 #\\a))",
     Err("vector-copy!: the image cannot hold an item of #(7 #\\a)")),
    ("(vector-set! v 9 1)", Err("vector-set!: index 9 is out of range")),
]


@pytest.mark.parametrize("source, expected", IMAGE_WRITES)
def test_what_the_image_cannot_hold_is_refused(mailbox, source, expected):
    """Invariant 7: what the image refuses is a Scheme error naming it, and nothing is written."""
    mailbox.root["v"] = [0, 1, 2]
    check(source, expected, v=mailbox.root["v"])
    assert list(mailbox.root["v"]) == [0, 1, 2]


def test_transient_containers_are_copied_into_the_image(mailbox):
    """The image copies a vector or bytevector in: the image's copy, not the transient, is kept."""
    mailbox.root["v"] = [0, 1]
    v = mailbox.root["v"]
    transient = ev("(vector 1 2)")
    ev("(begin (vector-set! v 0 x) (vector-set! v 1 (bytevector 9)))", v=v, x=transient)
    ev("(vector-set! x 0 'changed)", x=transient)
    check("(list (vector-ref v 0) (vector-ref v 1) (eq? (vector-ref v 0) x))",
          "(#(1 2) #u8(9) #f)", v=v, x=transient)
    assert type(v[0]) is ImageVector and type(v[1]) is bytes


def test_vector_set_on_an_image_vector_persists(own_mailbox):
    """R7RS 6.8: writes into an image Vector or Table persist across close and reopen."""
    img, path = own_mailbox
    img.root["v"] = [0, 1, 2, 3, 4]
    ev('(vector-set! v 0 "zero")', v=img.root["v"])
    ev("(vector-fill! v #t 3)", v=img.root["v"])
    ev("(vector-copy! v 1 (vector 1.5 b))", v=img.root["v"], b=b"\t")
    ev('(hash-table-set! (vector-ref mails 0) "read" #t)', mails=img.root["mails"])
    img.close()
    reopened = image.open(path)
    try:
        assert list(reopened.root["v"]) == ["zero", 1.5, b"\t", True, True]
        assert reopened.root["mails"][0]["read"] is True
        assert write(ev("(vector-ref v 0)", v=reopened.root["v"])) == '"zero"'
    finally:
        reopened.close()


def test_bytes_from_the_image_are_immutable_bytevectors(mailbox):
    """R7RS 6.9: bytes read from the image are bytevectors; mutators refuse them."""
    raw = ev_image('(hash-table-ref (vector-ref mails 0) "raw")', mailbox)
    check("(utf8->string b 0 7)", '"Subject"', b=raw)
    check("(bytevector-u8-set! b 0 0)", Err("the bytevector is immutable"), b=raw)


def test_closed_and_read_only_images_give_scheme_errors(own_mailbox):
    """Stale handles and read-only images give Scheme errors naming the procedure."""
    img, path = own_mailbox
    mails, counts = img.root["mails"], img.root["counts"]
    img.close()
    check("(vector-ref m 0)", Err("vector-ref: expected a vector, got #<stale handle at"), m=mails)
    check("(hash-table-ref t 1)", Err("hash-table-ref: expected a hash table, got #<stale"),
          t=counts)
    reader = image.open(path, readonly=True)
    try:
        check("(vector-set! m 0 1)", Err("vector-set!: this image was opened read-only"),
              m=reader.root["mails"])
        check('(hash-table-set! t "k" 1)', Err("hash-table-set!: this image was opened read-only"),
              t=reader.root["counts"])
        check('(hash-table-ref t "ann")', "2", t=reader.root["counts"])
    finally:
        reader.close()


# -- the table of primitives -----------------------------------------------------------------------

RUNTIME_NAMES = """
apply call/cc call-with-current-continuation values call-with-values dynamic-wind raise
raise-continuable error with-exception-handler error-object? error-object-message
error-object-irritants make-parameter force make-promise eval procedure? file-error? read-error?
load environment interaction-environment
""".split()

R7RS_NAMES = """
* + - / < <= = > >= abs append assoc assq assv binary-port? boolean=? boolean? bytevector
bytevector-append bytevector-copy bytevector-copy! bytevector-length bytevector-u8-ref
bytevector-u8-set! bytevector? caar cadr call-with-port car cdar cddr cdr ceiling char->integer
char-ready? char<=? char<? char=? char>=? char>? char? close-input-port close-output-port
close-port complex? cons current-error-port current-input-port current-output-port denominator
eof-object eof-object? eq? equal? eqv? even? exact exact-integer-sqrt exact-integer? exact? expt
features floor floor-quotient floor-remainder floor/ flush-output-port for-each gcd
get-output-bytevector get-output-string inexact inexact? input-port-open? input-port? integer->char
integer? lcm length list list->string list->vector list-copy list-ref list-set! list-tail list?
make-bytevector make-list make-string make-vector map max member memq memv min modulo negative?
newline not null? number->string number? numerator odd? open-input-bytevector open-input-string
open-output-bytevector open-output-string output-port-open? output-port? pair? peek-char peek-u8
port? positive? quotient rational? rationalize read-bytevector read-bytevector! read-char read-line
read-string read-u8 real? remainder reverse round set-car! set-cdr! square string string->list
string->number string->symbol string->utf8 string->vector string-append string-copy string-copy!
string-fill! string-for-each string-length string-map string-ref string-set! string<=? string<?
string=? string>=? string>? string? substring symbol->string symbol=? symbol? textual-port?
truncate truncate-quotient truncate-remainder truncate/ u8-ready? utf8->string vector vector->list
vector->string vector-append vector-copy vector-copy! vector-fill! vector-for-each vector-length
vector-map vector-ref vector-set! vector? write-bytevector write-char write-string write-u8 zero?
char-alphabetic? char-ci<=? char-ci<? char-ci=? char-ci>=? char-ci>? char-downcase char-foldcase
char-lower-case? char-numeric? char-upcase char-upper-case? char-whitespace? digit-value
string-ci<=? string-ci<? string-ci=? string-ci>=? string-ci>? string-downcase string-foldcase
string-upcase caaar caadr cadar caddr cdaar cdadr cddar cdddr caaaar caaadr caadar caaddr cadaar
cadadr caddar cadddr cdaaar cdaadr cdadar cdaddr cddaar cddadr cdddar cddddr angle imag-part
magnitude make-polar make-rectangular real-part acos asin atan cos exp finite? infinite? log nan?
sin sqrt tan call-with-input-file call-with-output-file delete-file file-exists?
open-binary-input-file open-binary-output-file open-input-file open-output-file
with-input-from-file with-output-to-file command-line emergency-exit exit get-environment-variable
get-environment-variables read display write write-shared write-simple current-jiffy current-second
jiffies-per-second
""".split()


def test_every_r7rs_data_procedure_is_defined():
    """R7RS 6.1-6.14: every data procedure of (scheme base) and the small libraries is here."""
    assert [name for name in R7RS_NAMES if name not in PRIMITIVES] == []


def test_control_procedures_are_left_to_the_runtime():
    """The control procedures belong to vm/_runtime; PRIMITIVES does not define them."""
    assert [name for name in RUNTIME_NAMES if name in PRIMITIVES] == []


def test_every_primitive_knows_its_scheme_name():
    """Each primitive's scheme_name is its name (or the one it aliases): #<procedure name>."""
    aliases = {"inexact->exact": "exact", "exact->inexact": "inexact",
               "hash-table-contains?": "hash-table-exists?"}
    for name, fn in PRIMITIVES.items():
        assert fn.scheme_name == aliases.get(name, name), name
    assert write(PRIMITIVES["string-ref"]) == "#<procedure string-ref>"


# -- no Python exception for bad arguments (invariant 1) -------------------------------------------

def _fuzz_pool(img):
    """Arguments of every kind.  Its procedures take any number of arguments: calling a
    procedure argument with the wrong count is a TypeError by design (the runtime's)."""
    cyclic = from_iterable([1, 2])
    cyclic.cdr.cdr = cyclic
    string_port = TextInputPort("(a) b", "fuzz")
    img.root["fuzz"] = {"vector": [1, "a", b"b", (1, 2)], "table": {"a": 1, 2: "b"}}
    persistent = img.root["fuzz"]
    return [0, -1, 7, 2 ** 100, 1.5, -0.0, math.nan, math.inf, Fraction(1, 3), complex(1, 2),
            True, False, char(ord("a")), char(ord("λ")), "a", "λx", "", MString("abc"),
            MString(""), intern("sym"), NIL, from_iterable([1, 2]), from_iterable([Pair(1, 2)]),
            cyclic, Pair(1, 2), SVector([1, "a"]), SVector(), Bytevector(b"ab"), b"\xff",
            None, EOF, Values((1, 2)), (1, "t"), lambda *args: 0, PRIMITIVES["list"],
            string_port, TextOutputPort("fuzz"), ev("(make-hash-table)"),
            persistent["vector"], persistent["table"], persistent]


# Procedures left out: they end the process, touch files or wait for the console.
_UNFUZZED = {"exit", "emergency-exit", "delete-file", "open-input-file", "open-output-file",
             "open-binary-input-file", "open-binary-output-file", "call-with-input-file",
             "call-with-output-file", "with-input-from-file", "with-output-to-file", "file-exists?"}


def test_bad_arguments_raise_scheme_errors_only(shared_image):
    """Invariant 1: seeded random arguments (image handles too) give a value or a SchemeError."""
    rng = random.Random(2024)
    pool = _fuzz_pool(shared_image)
    saved = CURRENT_INPUT.value, CURRENT_OUTPUT.value
    CURRENT_INPUT.value = TextInputPort("x", "fuzz-stdin")
    CURRENT_OUTPUT.value = TextOutputPort("fuzz-stdout")
    calls = 0
    try:
        for name, fn in sorted(PRIMITIVES.items()):
            if name in _UNFUZZED:
                continue
            signature = inspect.signature(fn)
            for _ in range(40):
                args = [rng.choice(pool) for _ in range(rng.randint(0, 4))]
                try:
                    signature.bind(*args)
                except TypeError:
                    continue            # a wrong argument count: the runtime's TypeError
                calls += 1
                try:
                    fn(*args)
                except SchemeRaise:
                    pass
    finally:
        CURRENT_INPUT.value, CURRENT_OUTPUT.value = saved
    assert calls > 3000
