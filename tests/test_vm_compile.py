"""vm/_compile.py and vm/_env.py: core forms -> Python code -> values.

Self-contained: core forms are built here (``core`` parses a small
s-expression syntax into _types data, locals are plain interned symbols,
which the compiler scopes itself) and the environment holds the few
primitives defined below, so these tests need neither the reader, the
expander nor the builtins.  End-to-end tests from source text are in
test_vm_scheme.py.
"""
from __future__ import annotations

import re
from fractions import Fraction

import pytest

from vm import _runtime, _types
from vm._compile import compile_toplevel, python_source
from vm._env import Environment, demangle, mangle
from vm._runtime import run
from vm._types import (
    NIL,
    ErrorObject,
    MString,
    Pair,
    SchemeError,
    SchemeRaise,
    SVector,
    Symbol,
    TailCall,
    from_iterable,
    intern,
    resolve,
    to_list,
)

# -- a tiny s-expression parser for writing core forms -----------------------------------------

# A character is a Char where _types has that class, else a one-character str.
CHAR = (lambda c: _types.char(ord(c))) if hasattr(_types, "char") else (lambda c: c)

_TOKEN = re.compile(r'\s*(?:(\()|(\))|(\.)(?=[\s()])|(\')|"((?:[^"\\]|\\.)*)"|#\\(\S)|([^\s()\']+))')


def core(text: str):
    """The datum written in text: integers, floats, "strings", #\\c, #t, #f,
    symbols, (lists), (dotted . pairs) and 'quote."""
    tokens = [m for m in _TOKEN.finditer(text) if m.group(0).strip()]
    datum, rest = _read(tokens, 0)
    assert rest == len(tokens), text
    return datum


def _read(tokens, i):
    m = tokens[i]
    if m.group(1):
        items, tail = [], NIL
        i += 1
        while not tokens[i].group(2):
            if tokens[i].group(3):
                tail, i = _read(tokens, i + 1)
                continue
            item, i = _read(tokens, i)
            items.append(item)
        return from_iterable(items, tail), i + 1
    if m.group(4):
        quoted, i = _read(tokens, i + 1)
        return from_iterable([intern("quote"), quoted]), i
    if m.group(5) is not None:
        return MString(m.group(5)), i + 1
    if m.group(6):
        return CHAR(m.group(6)), i + 1
    atom = m.group(7)
    if atom in ("#t", "#f"):
        return atom == "#t", i + 1
    for kind in (int, float):
        try:
            return kind(atom), i + 1
        except ValueError:
            pass
    return intern(atom), i + 1


# -- a small primitive set ---------------------------------------------------------------------

def _number(who, x):
    if type(x) not in (int, float, Fraction, complex):
        raise SchemeError(f"{who}: expected a number, got", x)
    return x


def _arith(who, op):
    def proc(a, b):
        return op(_number(who, a), _number(who, b))
    proc.__qualname__ = proc.__name__ = who
    return proc


def _car(x):
    if not isinstance(x, Pair):
        raise SchemeError("car: expected a pair, got", x)
    return x.car


def _cdr(x):
    if not isinstance(x, Pair):
        raise SchemeError("cdr: expected a pair, got", x)
    return x.cdr


PRIMITIVES = {
    "+": _arith("+", lambda a, b: a + b),
    "-": lambda a, b=None: -_number("-", a) if b is None else _number("-", a) - _number("-", b),
    "*": _arith("*", lambda a, b: a * b),
    "=": _arith("=", lambda a, b: a == b),
    "<": _arith("<", lambda a, b: a < b),
    ">": _arith(">", lambda a, b: a > b),
    "zero?": lambda a: _number("zero?", a) == 0,
    "car": _car,
    "cdr": _cdr,
    "cons": Pair,
    "pair?": lambda x: isinstance(x, Pair),
    "null?": lambda x: x is NIL,
    "not": lambda x: x is False,
    "eq?": lambda a, b: a is b,
    "list": lambda *xs: from_iterable(xs),
    "vector": lambda *xs: SVector(xs),
    "apply": _runtime.apply,
}


@pytest.fixture
def env():
    return Environment(PRIMITIVES)


def run_core(env, *forms):
    """Compiles and runs each form in turn (on the evaluation thread); the last value."""
    result = None
    for form in forms:
        thunk = compile_toplevel(core(form) if isinstance(form, str) else form, env)
        result = run(thunk)
    return result


def scheme_list(value):
    return to_list(value) if value is NIL or isinstance(value, Pair) else value


def error_message(env, *forms) -> str:
    with pytest.raises(SchemeRaise) as info:
        run_core(env, *forms)
    payload = info.value.payload
    assert isinstance(payload, ErrorObject), payload
    return payload.message


# -- expressions ---------------------------------------------------------------------------------

QUOTE_CASES = [
    ("(quote 42)", 42),
    ("(quote -7)", -7),
    ("(quote 2.5)", 2.5),
    ("(quote #t)", True),
    ("(quote #f)", False),
    ("(quote #\\a)", CHAR("a")),
    ("(quote abc)", intern("abc")),
    ("(quote (1 2 3))", [1, 2, 3]),
    ("(quote ())", []),
    ('(quote "text")', MString("text")),
]


@pytest.mark.parametrize("form, expected", QUOTE_CASES)
def test_quote_r7rs_4_1_2(env, form, expected):
    """(quote datum) evaluates to the datum, literal or not (R7RS 4.1.2)."""
    assert scheme_list(run_core(env, form)) == expected


@pytest.mark.parametrize("value", [10 ** 400, float("inf"), float("-inf"), Fraction(1, 3),
                                   complex(1, 2), -0.0, None])
def test_quote_values_without_python_literal_r7rs_4_1_2(env, value):
    """Quoted numbers with no short Python literal come back as the same value."""
    form = from_iterable([intern("quote"), value])
    result = run_core(env, form)
    assert result == value and type(result) is type(value)
    if value == 0.0:
        assert str(result) == "-0.0"


def test_quoted_datum_is_the_same_object_each_time_r7rs_4_1_2(env):
    """A quoted list is one constant: evaluating the lambda twice gives the same object."""
    run_core(env, "(define f (lambda () (quote (1 2))))")
    f = env.lookup(intern("f"))
    assert resolve(f()) is resolve(f())


def test_quote_of_nan_r7rs_6_2_6(env):
    """+nan.0 survives compilation as a float NaN."""
    result = run_core(env, from_iterable([intern("quote"), float("nan")]))
    assert result != result


IF_CASES = [
    ("(if #t 1 2)", 1),
    ("(if #f 1 2)", 2),
    ("(if 0 1 2)", 1),
    ("(if (quote ()) 1 2)", 1),
    ('(if "" 1 2)', 1),
    ("(if (quote #f) 1 2)", 2),
    ("(if (< 1 2) (quote yes) (quote no))", intern("yes")),
    ("(if (not (< 1 2)) (quote yes) (quote no))", intern("no")),
    ("(if #f #f)", None),
    ("(if (< 2 1) 1 (if (< 3 1) 2 (if (< 1 4) 3 4)))", 3),
    ("((lambda (x) (if (< x 0) (quote neg) (if (= x 0) (quote zero) (quote pos)))) 0)",
     intern("zero")),
    ("((lambda (x) (+ 1 (if (< x 0) (- x) x))) -5)", 6),
]


@pytest.mark.parametrize("form, expected", IF_CASES)
def test_if_r7rs_4_1_5(env, form, expected):
    """Only #f is false; nested ifs in tail and value position (R7RS 4.1.5)."""
    assert run_core(env, form) == expected


LAMBDA_CASES = [
    ("((lambda (x y) (+ x y)) 1 2)", 3),
    ("((lambda () 7))", 7),
    ("((lambda args args) 1 2 3)", [1, 2, 3]),
    ("((lambda args args))", []),
    ("((lambda (a . rest) (cons a rest)) 1 2 3)", [1, 2, 3]),
    ("((lambda (a b . rest) rest) 1 2)", []),
    ("(((lambda (x) (lambda (y) (+ x y))) 3) 4)", 7),
    ("((lambda (f) (f (f 1))) (lambda (n) (* n 10)))", 100),
]


@pytest.mark.parametrize("form, expected", LAMBDA_CASES)
def test_lambda_and_rest_arguments_r7rs_4_1_4(env, form, expected):
    """Fixed, rest and all-rest formals; closures capture their environment (R7RS 4.1.4)."""
    assert scheme_list(run_core(env, form)) == expected


ARITY_CASES = [
    ("((lambda (x y) x) 1)", "lambda: expected 2 arguments, got 1"),
    ("((lambda (x y) x) 1 2 3)", "lambda: expected 2 arguments, got 3"),
    ("((lambda (x . r) x))", "lambda: expected at least 1 argument, got 0"),
    ("((lambda () 1) 5)", "lambda: expected 0 arguments, got 1"),
]


@pytest.mark.parametrize("form, message", ARITY_CASES)
def test_arity_errors_are_scheme_errors_r7rs_4_1_4(env, form, message):
    """A wrong argument count is a Scheme error naming the procedure and counts."""
    assert error_message(env, form) == message


def test_arity_error_names_the_defined_procedure(env):
    """The procedure's Scheme name, not a Python name, appears in the message."""
    assert error_message(env, "(define list->pair (lambda (a b) (cons a b)))",
                         "(list->pair 1)") == "list->pair: expected 2 arguments, got 1"


LET_CASES = [
    ("(let ((x 1) (y 2)) (+ x y))", 3),
    ("(let ((x 1)) (let ((x 2) (y x)) (+ x y)))", 3),      # inits see the outer x
    ("(letrec* ((a 1) (b (+ a 1))) (* a b))", 2),
    ("(letrec* ((ev (lambda (n) (if (= n 0) #t (od (- n 1)))))"
     "          (od (lambda (n) (if (= n 0) #f (ev (- n 1))))))"
     "  (ev 101))", False),
    ("(let ((x 1)) (set! x (+ x 10)) x)", 11),
    ("(let ((n 0)) (let ((inc (lambda () (set! n (+ n 1)) n))) (inc) (inc) n))", 2),
    ("(let ((x 1)) (begin (set! x 5) (+ x 1)))", 6),
]


@pytest.mark.parametrize("form, expected", LET_CASES)
def test_let_letrec_and_local_set_r7rs_4_2_2(env, form, expected):
    """let, letrec*, and set! of locals including captured ones (R7RS 4.2.2, 4.1.6)."""
    assert run_core(env, form) == expected


def test_letrec_reference_before_definition_is_an_error_r7rs_4_2_2(env):
    """Using a letrec* variable before its init is a Scheme error, not a traceback."""
    message = error_message(env, "(letrec* ((a b) (b 1)) a)")
    assert message == "b: variable used before its definition"


CASE_LAMBDA_CASES = [
    ("(f 1)", [intern("one"), 1]),
    ("(f 1 2)", [intern("two"), 1, 2]),
    ("(f 1 2 3 4)", [intern("many"), 1]),
]


@pytest.mark.parametrize("call, expected", CASE_LAMBDA_CASES)
def test_case_lambda_r7rs_4_2_9(env, call, expected):
    """case-lambda picks the first clause whose formals accept the arguments (R7RS 4.2.9)."""
    run_core(env, "(define f (case-lambda ((x) (list (quote one) x))"
                  "                       ((x y) (list (quote two) x y))"
                  "                       ((x . r) (list (quote many) x))))")
    assert scheme_list(run_core(env, call)) == expected


def test_case_lambda_without_matching_clause_r7rs_4_2_9(env):
    """No clause for the argument count is a Scheme error."""
    run_core(env, "(define f (case-lambda ((x) x) ((x y) y)))")
    assert error_message(env, "(f)") == "f: no case-lambda clause takes 0 arguments"


ORDER_CASES = [
    "(list (note 1) (note 2) (note 3))",
    "(list (note 1) (let ((x (note 2))) x) (note 3))",
    "(cons (note 1) (begin (note 2) (note 3)))",
    "(list (note 1) (if (note 2) (note 3) 0))",
    "((begin (note 1) list) (note 2) ((lambda () (note 3))))",
    "(list (if (note 1) (note 2) 0) (let ((x (note 3))) x))",
]


@pytest.mark.parametrize("form", ORDER_CASES)
def test_calls_among_arguments_run_left_to_right_r7rs_4_1_3(env, form):
    """Calls in operands happen left to right even when later operands need statements."""
    run_core(env, "(define trace (quote ()))",
             "(define note (lambda (n) (set! trace (cons n trace)) n))")
    run_core(env, form)
    assert to_list(env.lookup(intern("trace"))) == [3, 2, 1]


def test_begin_sequences_effects_r7rs_4_2_3(env):
    """begin evaluates left to right and returns the last value (R7RS 4.2.3)."""
    run_core(env, "(define trace (quote ()))")
    result = run_core(env, "(begin (set! trace (cons 1 trace)) (set! trace (cons 2 trace)) 3)")
    assert result == 3
    assert to_list(env.lookup(intern("trace"))) == [2, 1]


# -- globals: define, set!, the environment -------------------------------------------------------

def test_define_and_global_set_r7rs_5_3(env):
    """Top-level define binds; set! rebinds; both go through Environment.define/set."""
    run_core(env, "(define x 10)", "(set! x (+ x 1))")
    assert env.lookup(intern("x")) == 11
    assert run_core(env, "(begin (define y 2) (* x y))") == 22


def test_set_of_unbound_global_is_an_error_r7rs_4_1_6(env):
    """set! of a global that was never defined signals an error."""
    assert error_message(env, "(set! nowhere 1)") == "set!: unbound variable nowhere"


def test_unbound_global_reference_r7rs_4_1_1(env):
    """Referencing an unbound global is a Scheme error naming it (mangled names demangled)."""
    assert error_message(env, "(list->vector* 1)") == "unbound variable: list->vector*"
    assert error_message(env, "(begin never-defined 1)") == "unbound variable: never-defined"


def test_python_builtins_are_not_scheme_globals(env):
    """Names like len, print or list are unbound unless Scheme defines them."""
    for name in ("len", "print", "type", "int"):
        assert error_message(env, f"({name} 1)") == f"unbound variable: {name}"


def test_writes_go_through_define_and_set_methods():
    """A subclass overriding define/set sees every global write (the image's door)."""
    class Recording(Environment):
        def __init__(self, *args):
            self.writes = []
            super().__init__(*args)

        def define(self, sym, value):
            self.writes.append(("define", sym.name))
            super().define(sym, value)

        def set(self, sym, value):
            self.writes.append(("set", sym.name))
            super().set(sym, value)

    env = Recording(PRIMITIVES)
    run_core(env, "(define a 1)", "(set! a 2)", "(define f (lambda () (set! a 3)))", "(f)")
    assert env.writes == [("define", "a"), ("set", "a"), ("define", "f"), ("set", "a")]
    assert env.lookup(intern("a")) == 3


MANGLE_CASES = [
    ("fib", "fib"),
    ("tak2", "tak2"),
    ("list->vector", "_list_x2d__x3e_vector"),
    ("if", "_if"),
    ("None", "_None"),
    ("R_define", "_R_x5f_define"),
    ("__builtins__", "__x5f__x5f_builtins_x5f__x5f_"),
    ("1+", "_1_x2b_"),
    ("λ", "__x3bb_"),
    ("a_x2d_b", "_a_x5f_x2d_x5f_b"),
]


@pytest.mark.parametrize("name, key", MANGLE_CASES)
def test_mangle_is_readable_and_invertible(name, key):
    """Plain names are kept, others escaped; demangle inverts mangle."""
    assert mangle(name) == key
    assert demangle(key) == name


def test_mangled_names_never_collide():
    """Distinct Scheme names map to distinct keys, and never to compiler or builtin names."""
    names = [n for n, _ in MANGLE_CASES] + ["a-b", "a_b", "a b", "_", "-", "_x2d_", "R_int"]
    keys = [mangle(n) for n in names]
    assert len(set(keys)) == len(keys)
    assert not any(k.startswith("R_") or k == "__builtins__" for k in keys)


def test_environment_lookup_names_and_is_bound(env):
    """lookup, is_bound and names reflect definitions; lookup of unbound is a SchemeError."""
    run_core(env, "(define zz-top 1)")
    assert env.is_bound(intern("zz-top")) and not env.is_bound(intern("zz-bottom"))
    assert intern("zz-top") in env.names() and intern("car") in env.names()
    with pytest.raises(SchemeError, match="unbound variable: zz-bottom"):
        env.lookup(intern("zz-bottom"))


# -- procedures as the image sees them ---------------------------------------------------------------

def test_procedure_carries_its_lambda_and_name(env):
    """fn.scheme_lambda is the core lambda form and fn.scheme_name its defined name."""
    lam = core("(lambda (x) (* x 2))")
    run_core(env, from_iterable([intern("define"), intern("double"), lam]))
    double = env.lookup(intern("double"))
    assert double.scheme_lambda is lam
    assert double.scheme_name == "double"
    assert double.__code__.co_name == "double"


def test_closures_are_real_python_cells(env):
    """A closure's captured variables are Python closure cells, shared with set!."""
    run_core(env, "(define make (lambda (n) (lambda () (set! n (+ n 1)) n)))",
             "(define c (make 10))")
    counter = env.lookup(intern("c"))
    assert len(counter.__code__.co_freevars) == 1
    assert [cell.cell_contents for cell in counter.__closure__] == [10]
    assert run_core(env, "(c)") == 11
    assert counter.__closure__[0].cell_contents == 11
    assert counter.scheme_free[0][0] is intern("n")


def test_toplevel_case_lambda_has_no_closure_cells_r7rs_4_2_9(env):
    """A case-lambda over globals has an empty __closure__, like a lambda (storable)."""
    run_core(env, "(define f (case-lambda ((x) x) ((x y) (+ x y))))")
    f = env.lookup(intern("f"))
    assert not f.__closure__ and f.scheme_lambda.car is intern("case-lambda")
    assert to_list(run_core(env, "(list (f 1) (f 1 2))")) == [1, 3]


COMPILE_LAMBDA_CASES = [
    ("(lambda (n acc) (if (= n 0) acc (count (- n 1) (+ acc 1))))", "count", "(count 100000 0)",
     100000),
    ("(case-lambda ((x) x) ((x y) (* x y)))", "pick", "(pick 6 7)", 42),
]


@pytest.mark.parametrize("source, name, call, expected", COMPILE_LAMBDA_CASES)
def test_compile_lambda_makes_a_named_procedure(env, source, name, call, expected):
    """compile_lambda compiles a stored lambda as its define would, without binding it."""
    from vm._compile import compile_lambda
    proc = compile_lambda(core(source), env, name)
    assert proc.scheme_name == name and not env.is_bound(intern(name))
    env.define(intern(name), proc)
    assert run_core(env, call) == expected


def test_compile_lambda_rejects_other_forms(env):
    """Only lambda and case-lambda forms are procedures."""
    from vm._compile import compile_lambda
    with pytest.raises(SchemeError, match="expected a lambda"):
        compile_lambda(core("(+ 1 2)"), env, "x")


def test_anonymous_procedure_has_no_name(env):
    """An anonymous lambda's scheme_name is None."""
    proc = run_core(env, "(lambda (x) x)")
    assert proc.scheme_name is None and proc.scheme_lambda.car is intern("lambda")


# -- tail calls and deep recursion ---------------------------------------------------------------------

def test_self_tail_call_is_a_loop_r7rs_3_5(env):
    """A define'd procedure calling itself in tail position becomes a while loop (R7RS 3.5)."""
    form = "(define count-down (lambda (n acc) (if (= n 0) acc (count-down (- n 1) (+ acc 1)))))"
    text = python_source(core(form), env)
    assert "while True:" in text and "continue" in text and "R_TailCall" not in text
    run_core(env, form)
    assert run_core(env, "(count-down 1000000 0)") == 1000000


def test_named_let_style_letrec_loop_r7rs_4_2_4(env):
    """A letrec*-bound loop calling itself in tail position loops too (named let, R7RS 4.2.4)."""
    form = ("(define sum-to (lambda (n) (letrec* ((loop (lambda (i acc)"
            "  (if (> i n) acc (loop (+ i 1) (+ acc i)))))) (loop 0 0))))")
    assert "while True:" in python_source(core(form), env)
    run_core(env, form)
    assert run_core(env, "(sum-to 100000)") == 5000050000


def test_mutual_tail_calls_run_in_constant_stack_r7rs_3_5(env):
    """A million mutual tail calls (even?/odd?) trampoline without growing the stack."""
    run_core(env, "(define ev? (lambda (n) (if (= n 0) #t (od? (- n 1)))))",
             "(define od? (lambda (n) (if (= n 0) #f (ev? (- n 1)))))")
    assert "R_TailCall(od_x3f_" not in python_source(core("(ev? 1)"), env)
    thunk = compile_toplevel(core("(ev? 1000000)"), env)
    assert resolve(thunk()) is True      # no run(): the default recursion limit suffices


def test_tail_call_through_apply_r7rs_6_10(env):
    """apply in tail position stays in constant stack (it returns a tail call)."""
    run_core(env, "(define spin (lambda (n) (if (= n 0) (quote done) (apply spin (list (- n 1))))))")
    thunk = compile_toplevel(core("(spin 100000)"), env)
    assert resolve(thunk()) is intern("done")


def test_deep_non_tail_recursion_million_r7rs_3_5(env):
    """(count 1000000) non-tail recursion works on the evaluation thread."""
    run_core(env, "(define count (lambda (n) (if (= n 0) 0 (+ 1 (count (- n 1))))))")
    assert run_core(env, "(count 1000000)") == 1000000


def test_recursion_too_deep_is_a_scheme_error(env, monkeypatch):
    """Exhausting the stack is the Scheme error "recursion too deep", not a crash."""
    monkeypatch.setattr(_runtime, "RECURSION_LIMIT", 20_000)
    monkeypatch.setattr(_runtime, "STACK_BYTES", 20_000 * 512)
    run_core(env, "(define forever (lambda (n) (+ 1 (forever n))))")
    assert error_message(env, "(forever 1)").startswith("recursion too deep")


def test_loop_with_captured_variables_keeps_fresh_bindings_r7rs_3_1(env):
    """Closures made in successive iterations see their own binding, not the last one."""
    run_core(env, "(define collect (lambda (i acc) (if (= i 3) acc"
                  "  (collect (+ i 1) (cons (lambda () i) acc)))))")
    closures = to_list(run_core(env, "(collect 0 (quote ()))"))
    assert [resolve(c()) for c in closures] == [2, 1, 0]


def test_nontail_self_call_has_no_trampoline_check(env):
    """fib's recursive calls skip the TailCall check: fib never returns one."""
    text = python_source(core("(define fib (lambda (n) (if (< n 2) n"
                              " (+ (fib (- n 1)) (fib (- n 2))))))"), env)
    assert "R_TailCall" not in text and "R_resolve" not in text


def test_unknown_callee_gets_the_trampoline_check(env):
    """A call of an unknown procedure is followed by the inline TailCall check."""
    text = python_source(core("(lambda (f) (+ 1 (f 2)))"), env)
    assert "if R_type(_t" in text and "R_resolve(" in text


# -- integer-specialised bodies --------------------------------------------------------------------------

SPECIALISED = [
    "(define sum-loop (lambda (i acc) (if (= i 0) acc (sum-loop (- i 1) (+ acc i)))))",
    "(define halve-at-5 (lambda (i x) (if (= i 0) x"
    "  (halve-at-5 (- i 1) (if (= i 5) (half x) (+ x 1))))))",
    "(define half (lambda (x) (* x 0.5)))",
    "(define countdown (lambda (n) (if (= n 0) (quote done) (countdown (- n 1)))))",
    "(define fib (lambda (n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2))))))",
]

SPECIALISED_CASES = [
    ("(sum-loop 100 0)", 5050),
    ("(sum-loop 4 0.5)", 10.5),                      # a float: the generic body throughout
    ("(sum-loop 3 (quote 1/2))", None),              # replaced below by a Fraction
    ("(halve-at-5 10 1)", 7.0),                      # leaves the fast loop when x turns float
    ("(countdown 100000)", intern("done")),          # returns a symbol: no int hypothesis
    ("(fib 20)", 6765),
    ("(fib 10.0)", 55.0),
]


@pytest.mark.parametrize("form, expected", SPECIALISED_CASES)
def test_integer_specialised_bodies_keep_results_r7rs_6_2_6(env, form, expected):
    """Integer fast bodies and generic bodies agree, and switch where the types change."""
    run_core(env, *SPECIALISED)
    if expected is None:
        form = from_iterable([intern("sum-loop"), 3, Fraction(1, 2)])
        expected = Fraction(13, 2)
    result = run_core(env, form)
    assert result == expected and type(result) is type(expected)


def test_specialised_body_in_generated_code(env):
    """A leaf lambda over integers gets one entry test and an unguarded inner loop."""
    text = python_source(core(SPECIALISED[0]), env)
    assert "if R_type(i_" in text and " is R_int and R_type(acc_" in text
    fast = text.split("else:")[0]
    assert "(i_" in fast and "R_sub" not in fast and "R_add" not in fast


def test_integer_hypothesis_follows_redefinition_r7rs_5_3(env):
    """fib's fast body assumes fib returns integers; redefining fib drops that assumption."""
    run_core(env, SPECIALISED[-1], "(define old-fib fib)",
             "(define fib (lambda (n) (quote not-a-number)))")
    assert error_message(env, "(old-fib 5)").startswith("+: expected a number")


def test_booleans_never_take_the_fast_body_r7rs_6_2_6(env):
    """#t is not an integer to the entry test, so + still rejects it."""
    run_core(env, SPECIALISED[0])
    assert error_message(env, "(sum-loop 2 #t)").startswith("+: expected a number")


def test_lambdas_containing_lambdas_are_not_specialised(env):
    """Only leaf lambdas get a second body (no doubling per nesting level)."""
    text = python_source(core("(define f (lambda (n) (+ n ((lambda (m) (+ m 1)) n))))"), env)
    assert text.count("def _f") + text.count("def lambda") <= 2
    run_core(env, "(define f (lambda (n) (+ n ((lambda (m) (+ m 1)) n))))")
    assert run_core(env, "(f 1)") == 3


def test_recursive_leaf_gets_a_fast_entry(env):
    """fib's integer self calls go to a fast entry (no entry test per call), reached
    through defaults: no closure cell, no extra positional parameter."""
    text = python_source(core(SPECIALISED[-1]), env)
    assert "R_self=None" in text and ", *, R_fast=" in text and "R_fast((n_" in text
    run_core(env, SPECIALISED[-1])
    fib = env.lookup(intern("fib"))
    assert fib.__closure__ is None and fib.__code__.co_argcount == 1
    assert run_core(env, "(fib 15)") == 610


def test_recompiled_procedure_drops_its_fast_entry_r7rs_5_3(env):
    """A procedure that is no longer its global's value loses the fast entry with the loop."""
    run_core(env, SPECIALISED[-1], "(define old-fib fib)", "(define fib (lambda (n) 1))")
    old = env.lookup(intern("old-fib"))
    assert old.__kwdefaults__ is None and run_core(env, "(old-fib 5)") == 2


def test_closure_facts_cover_its_free_variables_r7rs_4_2_2(env):
    """A loop's test of an enclosing let-bound integer is made once per call."""
    form = ("(define count-to (lambda (n) (letrec* ((loop (lambda (i acc)"
            " (if (< i n) (loop (+ i 1) (+ acc 1)) acc)))) (loop 0 0))))")
    fast = python_source(core(form), env).split("else:")[0]
    assert "and R_type(n_" in fast and "(i_" in fast and "R_lt" not in fast
    run_core(env, form)
    assert run_core(env, "(count-to 100)") == 100
    assert run_core(env, "(count-to 2.5)") == 3


def test_letrec_variables_are_not_read_before_their_use_r7rs_4_2_2(env):
    """A letrec* variable a closure reads only on some path is not read at its entry."""
    form = "(letrec* ((f (lambda (x) (if x 1 (+ n 1)))) (a (f #t)) (n 5)) (+ a (f #f)))"
    assert run_core(env, form) == 7


# -- inlined primitives keep Scheme semantics ------------------------------------------------------------

INLINE_CASES = [
    ("(+ 1 2)", 3),
    ("((lambda (a b) (+ a b)) 1 2.5)", 3.5),
    ("((lambda (a b) (- a b)) 10 4)", 6),
    ("((lambda (a) (- a)) 5)", -5),
    ("((lambda (a b) (* a b)) 6 7)", 42),
    ("((lambda (a b) (< a b)) 1 2)", True),
    ("((lambda (a b) (< a b)) 2.5 2)", False),
    ("((lambda (a b) (= a b)) 1 1.0)", True),
    ("((lambda (a) (zero? a)) 0)", True),
    ("((lambda (p) (car p)) (quote (1 2)))", 1),
    ("((lambda (p) (cdr p)) (quote (1)))", NIL),
    ("((lambda (a b) (eq? a b)) (quote x) (quote x))", True),
    ("((lambda (x) (not x)) 0)", False),
    ("((lambda (x) (null? x)) (quote ()))", True),
    ("((lambda (x) (pair? x)) (quote (1)))", True),
    ("((lambda (a b) (car (cons a b))) 1 2)", 1),
]


@pytest.mark.parametrize("form, expected", INLINE_CASES)
def test_inlined_primitives_values_r7rs_6_2_6(env, form, expected):
    """Inlined +, -, *, =, <, zero?, car, cdr, cons, eq?, not, null?, pair? give Scheme values."""
    result = run_core(env, form)
    assert result == expected and type(result) is type(expected)


INLINE_ERROR_CASES = [
    ('((lambda (a b) (+ a b)) "a" "b")', "+: expected a number, got"),
    ("((lambda (a b) (+ a b)) #\\a #\\b)", "+: expected a number, got"),
    ("((lambda (a b) (+ a b)) #t 1)", "+: expected a number, got"),
    ("((lambda (a) (- a 1)) #t)", "-: expected a number, got"),
    ("((lambda (a b) (< a b)) #\\a #\\b)", "<: expected a number, got"),
    ("((lambda (a) (= a 0)) (quote x))", "=: expected a number, got"),
    ("((lambda (v w) (* v w)) (vector 1) 2)", "*: expected a number, got"),
    ("((lambda (p) (car p)) 5)", "car: expected a pair, got"),
    ("(car (quote ()))", "car: expected a pair, got"),
]


@pytest.mark.parametrize("form, message", INLINE_ERROR_CASES)
def test_inlined_primitives_still_signal_errors_r7rs_6_2_6(env, form, message):
    """Strings, characters, booleans and vectors do not slip through Python operators."""
    assert error_message(env, form).startswith(message)


def test_inlining_shows_in_generated_code(env):
    """car on a Pair is an attribute read, + on integers a Python +."""
    text = python_source(core("(lambda (p n) (+ (car p) n))"), env)
    assert ".car if R_type(" in text and " + " in text


def test_no_inlining_of_a_primitive_the_form_redefines(env):
    """A top-level form that defines + does not inline + anywhere in itself."""
    result = run_core(env, "(begin (define + (lambda (a b) (quote mine))) (+ 1 2))")
    assert result is intern("mine")


# -- compiled code is a cache: dependencies -------------------------------------------------------------

def test_redefining_plus_recompiles_callers(env):
    """Callers that inlined + see a new + (through aliases and escaped closures too)."""
    run_core(env, "(define add1 (lambda (x) (+ x 1)))", "(define alias add1)",
             "(define counter (let ((n 0)) (lambda () (set! n (+ n 1)) n)))",
             "(define make-adder (lambda (k) (lambda (x) (+ x k))))",
             "(define add5 (make-adder 5))")
    assert scheme_list(run_core(env, "(list (add1 1) (counter) (add5 1))")) == [2, 1, 6]
    add1 = env.lookup(intern("add1"))
    assert add1 in env.dependents(intern("+"))
    run_core(env, "(define + (lambda (a b) (* 100 (- a (- 0 b)))))")
    assert scheme_list(run_core(env, "(list (add1 1) (alias 1) (counter) (add5 1))")) == \
        [200, 200, 200, 600]
    assert env.lookup(intern("add1")) is add1      # same procedure object, new code


def test_set_of_an_inlined_primitive_recompiles_too(env):
    """set! of a baked global invalidates like define."""
    run_core(env, "(define first (lambda (p) (car p)))")
    run_core(env, "(set! car (lambda (p) (quote swapped)))")
    assert run_core(env, "(first (quote (1)))") is intern("swapped")


def test_redefining_a_self_looping_procedure_r7rs_5_3(env):
    """The old procedure's self call goes to the new global definition."""
    run_core(env, "(define f (lambda (n) (if (= n 0) (quote done) (f (- n 1)))))",
             "(define g f)", "(define f (lambda (n) (quote new)))")
    assert scheme_list(run_core(env, "(list (g 5) (f 5))")) == [intern("new"), intern("new")]


def test_callee_that_starts_returning_tail_calls_recompiles_callers(env):
    """A caller that skipped the trampoline check is recompiled when its callee changes."""
    run_core(env, "(define h (lambda (x) (car x)))",
             "(define caller (lambda (y) (list (h y))))")
    assert "R_resolve" not in python_source(core("(lambda (y) (list (h y)))"), env)
    run_core(env, "(define car (lambda (p) (quote new-car)))")   # h now tail-calls a lambda
    assert scheme_list(run_core(env, "(caller (quote (1 2)))")) == [intern("new-car")]


def test_closures_that_cannot_escape_are_not_tracked(env):
    """A named-let style loop is not registered; its enclosing definition is."""
    run_core(env, "(define sum (lambda (n) (letrec* ((loop (lambda (i a)"
                  "  (if (= i 0) a (loop (- i 1) (+ a i)))))) (loop n 0))))")
    assert run_core(env, "(sum 10)") == 55
    deps = env.dependents(intern("+"))
    assert deps == [env.lookup(intern("sum"))]


# -- malformed core -------------------------------------------------------------------------------------

MALFORMED_CASES = [
    "(if)",
    "(if 1 2 3 4)",
    "(lambda)",
    "(lambda (x x) x)",
    "(lambda (1) 1)",
    "(let ((x)) x)",
    "(set! 5 1)",
    "(define)",
    "(quote)",
    "(f . 1)",
    "()",
]


@pytest.mark.parametrize("form", MALFORMED_CASES)
def test_malformed_core_is_a_scheme_error(env, form):
    """A malformed core form is a SchemeError from the compiler, never a Python traceback."""
    with pytest.raises(SchemeError, match="compile: "):
        compile_toplevel(core(form), env)


def test_deeply_nested_form_is_a_scheme_error(env):
    """A form nested beyond Python's limits is reported, not crashed on."""
    form = "x"
    for _ in range(300):
        form = f"((lambda (x) {form}) 1)"
    with pytest.raises(SchemeError, match="too deeply nested"):
        compile_toplevel(core(form), env)


def test_long_cond_chain_compiles_to_elif(env):
    """A 300-clause if chain (what cond expands to) does not nest Python blocks."""
    form = "(quote none)"
    for i in range(300):
        form = f"(if (= x {i}) {i} {form})"
    run_core(env, f"(define pick (lambda (x) {form}))")
    assert run_core(env, "(pick 299)") == 299
    assert run_core(env, "(pick 300)") is intern("none")


def test_generated_source_is_inspectable(env):
    """python_source returns the Python text with its constants listed."""
    text = python_source(core("(define greet (lambda () (quote (hello world))))"), env)
    assert text.startswith("# K1 = ")
    assert "def R_unit():" in text and "R_define(" in text
    compile(text, "<check>", "exec")


def test_toplevel_thunk_follows_the_calling_convention(env):
    """The compiled form is a procedure that may return a TailCall for its caller."""
    run_core(env, "(define id (lambda (x) x))")
    result = compile_toplevel(core("((lambda (f) (f 5)) id)"), env)()
    assert isinstance(result, TailCall) and resolve(result) == 5


def test_symbols_are_interned_constants(env):
    """A quoted symbol is the interned Symbol (eq? to any other use)."""
    assert run_core(env, "(eq? (quote abc) (quote abc))") is True
    assert isinstance(run_core(env, "(quote abc)"), Symbol)
