"""Scheme end to end: source text -> reader -> expander -> compiler -> runtime -> value.

Needs the reader, the printer, the builtins and the expander (helpers A and B);
the whole module is skipped when one of them is missing.  Each case runs in a
fresh standard environment and is compared by its written form, so a table
row reads like a REPL transcript.  Most examples are the report's own
(R7RS section in the test name).
"""
from __future__ import annotations

import pytest

pytest.importorskip("vm._reader")
pytest.importorskip("vm._expand")
pytest.importorskip("vm._builtins")
_printer = pytest.importorskip("vm._printer")

from vm._env import Environment
from vm._runtime import eval_text, run
from vm._types import ErrorObject, SchemeRaise


def evaluate(text: str) -> str:
    """The written value of the last form of text, in a fresh environment."""
    env = Environment.standard()
    return _printer.write(run(lambda: eval_text(text, env, "<test>")))


def error_message(text: str) -> str:
    env = Environment.standard()
    with pytest.raises(SchemeRaise) as info:
        run(lambda: eval_text(text, env, "<test>"))
    payload = info.value.payload
    return payload.message if isinstance(payload, ErrorObject) else _printer.write(payload)


def check(cases):
    return pytest.mark.parametrize("source, expected", cases)


# -- expressions (R7RS 4.1) ---------------------------------------------------------------------

@check([
    ("(+ 3 4)", "7"),
    ("((if #f + *) 3 4)", "12"),
    ("((lambda (x) (+ x x)) 4)", "8"),
    ("(define reverse-subtract (lambda (x y) (- y x))) (reverse-subtract 7 10)", "3"),
    ("(define add4 (let ((x 4)) (lambda (y) (+ x y)))) (add4 6)", "10"),
    ("((lambda x x) 3 4 5 6)", "(3 4 5 6)"),
    ("((lambda (x y . z) z) 3 4 5 6)", "(5 6)"),
    ("(if (> 3 2) 'yes 'no)", "yes"),
    ("(if (> 2 3) 'yes 'no)", "no"),
    ("(if (> 3 2) (- 3 2) (+ 3 2))", "1"),
    ("(define x 2) (+ x 1)", "3"),
    ("(define x 2) (set! x 4) (+ x 1)", "5"),
    ("'#(a b c)", "#(a b c)"),
    ("'\"abc\"", '"abc"'),
    ("(quote (+ 1 2))", "(+ 1 2)"),
])
def test_primitive_expressions_r7rs_4_1(source, expected):
    """Variable references, literals, calls, lambda, if and set! (R7RS 4.1)."""
    assert evaluate(source) == expected


# -- derived expressions (R7RS 4.2) ---------------------------------------------------------------

@check([
    ("(cond ((> 3 2) 'greater) ((< 3 2) 'less))", "greater"),
    ("(cond ((> 3 3) 'greater) ((< 3 3) 'less) (else 'equal))", "equal"),
    ("(cond ((assv 'b '((a 1) (b 2))) => cadr) (else #f))", "2"),
    ("(case (* 2 3) ((2 3 5 7) 'prime) ((1 4 6 8 9) 'composite))", "composite"),
    ("(case (car '(c d)) ((a e i o u) 'vowel) ((w y) 'semivowel) (else => (lambda (x) x)))",
     "c"),
    ("(and (= 2 2) (> 2 1))", "#t"),
    ("(and 1 2 'c '(f g))", "(f g)"),
    ("(and)", "#t"),
    ("(or (= 2 2) (> 2 1))", "#t"),
    ("(or #f #f #f)", "#f"),
    ("(or (memq 'b '(a b c)) (/ 3 0))", "(b c)"),
    ("(let ((x 0)) (when (= x 0) (set! x 1) (set! x (+ x 1))) x)", "2"),
    ("(let ((x 0)) (unless (= x 0) (set! x 5)) x)", "0"),
])
def test_conditionals_r7rs_4_2_1(source, expected):
    """cond with =>, case with => and else, and, or, when, unless (R7RS 4.2.1)."""
    assert evaluate(source) == expected


@check([
    ("(let ((x 2) (y 3)) (* x y))", "6"),
    ("(let ((x 2) (y 3)) (let ((x 7) (z (+ x y))) (* z x)))", "35"),
    ("(let ((x 2) (y 3)) (let* ((x 7) (z (+ x y))) (* z x)))", "70"),
    ("(letrec ((even? (lambda (n) (if (zero? n) #t (odd? (- n 1)))))"
     "         (odd? (lambda (n) (if (zero? n) #f (even? (- n 1))))))"
     "  (even? 88))", "#t"),
    ("(letrec* ((p (lambda (x) (+ 1 (q (- x 1)))))"
     "          (q (lambda (y) (if (zero? y) 0 (+ 1 (p (- y 1))))))"
     "          (x (p 5)) (y x))"
     "  y)", "5"),
    ("(let-values (((root rem) (exact-integer-sqrt 32))) (* root rem))", "35"),
    ("(let ((a 'a) (b 'b) (x 'x) (y 'y))"
     "  (let*-values (((a b) (values x y)) ((x y) (values a b))) (list a b x y)))",
     "(x y x y)"),
])
def test_binding_constructs_r7rs_4_2_2(source, expected):
    """let, let*, letrec, letrec*, let-values, let*-values (R7RS 4.2.2)."""
    assert evaluate(source) == expected


@check([
    ("(do ((vec (make-vector 5)) (i 0 (+ i 1))) ((= i 5) vec) (vector-set! vec i i))",
     "#(0 1 2 3 4)"),
    ("(let ((x '(1 3 5 7 9))) (do ((x x (cdr x)) (sum 0 (+ sum (car x)))) ((null? x) sum)))",
     "25"),
    ("(let loop ((numbers '(3 -2 1 6 -5)) (nonneg '()) (neg '()))"
     "  (cond ((null? numbers) (list nonneg neg))"
     "        ((>= (car numbers) 0) (loop (cdr numbers) (cons (car numbers) nonneg) neg))"
     "        ((< (car numbers) 0) (loop (cdr numbers) nonneg (cons (car numbers) neg)))))",
     "((6 1 3) (-5 -2))"),
    ("(define x 0) (begin (set! x 5) (+ x 1))", "6"),
])
def test_sequencing_and_iteration_r7rs_4_2_3_and_4_2_4(source, expected):
    """begin, do and named let (R7RS 4.2.3, 4.2.4)."""
    assert evaluate(source) == expected


STREAMS = """
(define integers (letrec ((next (lambda (n) (delay (cons n (next (+ n 1))))))) (next 0)))
(define (head stream) (car (force stream)))
(define (tail stream) (cdr (force stream)))
(define (stream-filter p? s)
  (delay-force
    (if (null? (force s))
        (delay '())
        (let ((h (car (force s))) (t (cdr (force s))))
          (if (p? h) (delay (cons h (stream-filter p? t))) (stream-filter p? t))))))
"""


@check([
    ("(force (delay (+ 1 2)))", "3"),
    ("(let ((p (delay (+ 1 2)))) (list (force p) (force p)))", "(3 3)"),
    (STREAMS + "(head (tail (tail integers)))", "2"),
    (STREAMS + "(head (tail (tail (stream-filter odd? integers))))", "5"),
    ("(define count 0)"
     "(define p (delay (begin (set! count (+ count 1)) (if (> count x) count (force p)))))"
     "(define x 5)"
     "(list (force p) (begin (set! x 10) (force p)))", "(6 6)"),
    ("(promise? (delay 1))", "#t"),
    ("(force (make-promise 7))", "7"),
    ("(promise? (force (delay (delay 1))))", "#t"),
    ("(define (loop n) (delay-force (if (= n 0) (delay 'done) (loop (- n 1)))))"
     "(force (loop 1000000))", "done"),
])
def test_delayed_evaluation_r7rs_4_2_5(source, expected):
    """delay, delay-force, force, make-promise; the stream examples (R7RS 4.2.5)."""
    assert evaluate(source) == expected


RADIX = """
(define radix (make-parameter 10 (lambda (x) (if (and (exact-integer? x) (<= 2 x 16)) x
                                                (error "invalid radix")))))
(define (f n) (number->string n (radix)))
"""


@check([
    (RADIX + "(f 12)", '"12"'),
    (RADIX + "(parameterize ((radix 2)) (f 12))", '"1100"'),
    (RADIX + "(parameterize ((radix 2)) (f 12)) (f 12)", '"12"'),
    ("(let ((out (open-output-string)))"
     "  (parameterize ((current-output-port out)) (display \"hello\") (write 'sym))"
     "  (get-output-string out))", '"hellosym"'),
])
def test_parameterize_r7rs_4_2_6(source, expected):
    """make-parameter with a converter and parameterize (R7RS 4.2.6)."""
    assert evaluate(source) == expected


def test_parameterize_converter_error_r7rs_4_2_6():
    """A converter that rejects the value signals its error."""
    assert error_message(RADIX + "(parameterize ((radix 0)) (f 12))") == "invalid radix"


@check([
    ("(guard (condition ((assq 'a condition) => cdr) ((assq 'b condition)))"
     "  (raise (list (cons 'a 42))))", "42"),
    ("(guard (condition ((assq 'a condition) => cdr) ((assq 'b condition)))"
     "  (raise (list (cons 'b 23))))", "(b . 23)"),
    ("(guard (e (#t (list 'caught e))) (raise 'boom))", "(caught boom)"),
    ("(guard (e ((string? e) 'string) ((symbol? e) 'symbol)) (raise 'boom))", "symbol"),
    ("(guard (e ((error-object? e) (list (error-object-message e) (error-object-irritants e))))"
     "  (error \"Something bad:\" 1 'two))", '("Something bad:" (1 two))'),
    ("(guard (e (#t (error-object-message e))) (car 5))", '"car: expected a pair, got 5"'),
    ("(guard (e ((string? e) 'inner)) (guard (e2 ((number? e2) 'number)) (raise \"s\")))",
     "inner"),
    ("(with-exception-handler (lambda (c) 10)"
     "  (lambda () (guard (e (#f 'never)) (+ 1 (raise-continuable 'c)))))", "10"),
    ("(guard (e (else 'else-clause)) (raise 1))", "else-clause"),
    ("(guard (e ((read-error? e) 'read)) (read (open-input-string \"(1 2\")))", "read"),
    ("(guard (e ((file-error? e) 'file)) (open-input-file \"/nonexistent/x/y\"))", "file"),
])
def test_guard_r7rs_4_2_7(source, expected):
    """guard clauses with =>, else, nesting and re-raising (R7RS 4.2.7)."""
    assert evaluate(source) == expected


@check([
    ("(let ((name 'a)) `(list ,name ',name))", "(list a 'a)"),
    ("`(a ,(+ 1 2) ,@(map abs '(4 -5 6)) b)", "(a 3 4 5 6 b)"),
    ("`((foo ,(- 10 3)) ,@(cdr '(c)) . ,(car '(cons)))", "((foo 7) . cons)"),
    ("`#(10 5 ,(square 2) ,@(map square '(4 3)) 8)", "#(10 5 4 16 9 8)"),
])
def test_quasiquote_r7rs_4_2_8(source, expected):
    """quasiquote with unquote, splicing, dotted tails and vectors (R7RS 4.2.8)."""
    assert evaluate(source) == expected


RANGE = """
(define range
  (case-lambda
    ((e) (range 0 e))
    ((b e) (do ((r '() (cons e r)) (e (- e 1) (- e 1))) ((< e b) r)))))
"""


@check([
    (RANGE + "(range 3)", "(0 1 2)"),
    (RANGE + "(range 3 5)", "(3 4)"),
    ("(define plus (case-lambda (() 0) ((x) x) ((x y) (+ x y)) ((x y . z) (apply plus (+ x y) z))))"
     "(list (plus) (plus 1) (plus 1 2) (plus 1 2 3 4))", "(0 1 3 10)"),
])
def test_case_lambda_r7rs_4_2_9(source, expected):
    """case-lambda dispatch on the argument count (R7RS 4.2.9)."""
    assert evaluate(source) == expected


# -- macros (R7RS 4.3) ---------------------------------------------------------------------------

@check([
    ("(let-syntax ((given-that (syntax-rules () ((_ test stmt1 stmt2 ...)"
     "                                          (if test (begin stmt1 stmt2 ...))))))"
     "  (let ((if #t)) (given-that if (set! if 'now)) if))", "now"),
    ("(let ((x 'outer))"
     "  (let-syntax ((m (syntax-rules () ((m) x)))) (let ((x 'inner)) (m))))", "outer"),
    ("(define-syntax my-or (syntax-rules () ((my-or) #f) ((my-or e) e)"
     "  ((my-or e1 e2 ...) (let ((temp e1)) (if temp temp (my-or e2 ...))))))"
     "(let ((x #f) (y 7) (temp 8) (let odd?) (if even?)) (my-or x (let temp) (if y) y))", "7"),
    ("(define-syntax swap! (syntax-rules () ((_ a b) (let ((tmp a)) (set! a b) (set! b tmp)))))"
     "(let ((tmp 1) (other 2)) (swap! tmp other) (list tmp other))", "(2 1)"),
    ("(define-syntax while (syntax-rules () ((_ c body ...) (let lp () (when c body ... (lp))))))"
     "(let ((i 0)) (while (< i 10) (set! i (+ i 1))) i)", "10"),
])
def test_macros_r7rs_4_3(source, expected):
    """syntax-rules macros and hygiene, compiled and run (R7RS 4.3)."""
    assert evaluate(source) == expected


# -- definitions and records (R7RS 5.3 - 5.5) --------------------------------------------------------

@check([
    ("(define add3 (lambda (x) (+ x 3))) (add3 3)", "6"),
    ("(define first car) (first '(1 2))", "1"),
    ("(let ((x 5))"
     "  (define foo (lambda (y) (bar x y)))"
     "  (define bar (lambda (a b) (+ (* a b) a)))"
     "  (foo (+ x 3)))", "45"),
    ("(define-values (x y) (exact-integer-sqrt 17)) (list x y)", "(4 1)"),
    ("(define (f) (define-values (a . rest) (values 1 2 3)) (list a rest)) (f)", "(1 (2 3))"),
])
def test_definitions_r7rs_5_3(source, expected):
    """Top-level and internal definitions, define-values (R7RS 5.3)."""
    assert evaluate(source) == expected


PARE = "(define-record-type <pare> (kons x y) pare? (x kar set-kar!) (y kdr))"


@check([
    (PARE + "(pare? (kons 1 2))", "#t"),
    (PARE + "(pare? (cons 1 2))", "#f"),
    (PARE + "(kar (kons 1 2))", "1"),
    (PARE + "(kdr (kons 1 2))", "2"),
    (PARE + "(let ((k (kons 1 2))) (set-kar! k 3) (kar k))", "3"),
])
def test_record_types_r7rs_5_5(source, expected):
    """define-record-type: the report's pare example (R7RS 5.5)."""
    assert evaluate(source) == expected


# -- control features (R7RS 6.10) ---------------------------------------------------------------------

LIST_LENGTH = """
(define list-length
  (lambda (obj)
    (call-with-current-continuation
      (lambda (return)
        (letrec ((r (lambda (obj)
                      (cond ((null? obj) 0)
                            ((pair? obj) (+ (r (cdr obj)) 1))
                            (else (return #f))))))
          (r obj))))))
"""


@check([
    ("(procedure? car)", "#t"),
    ("(procedure? 'car)", "#f"),
    ("(procedure? (lambda (x) (* x x)))", "#t"),
    ("(procedure? '(lambda (x) (* x x)))", "#f"),
    ("(call-with-current-continuation procedure?)", "#t"),
    ("(apply + (list 3 4))", "7"),
    ("(define compose (lambda (f g) (lambda args (f (apply g args))))) ((compose sqrt *) 12 75)",
     "30"),
    ("(call-with-current-continuation (lambda (exit)"
     "  (for-each (lambda (x) (if (negative? x) (exit x))) '(54 0 37 -3 245 19)) #t))", "-3"),
    (LIST_LENGTH + "(list-length '(1 2 3 4))", "4"),
    (LIST_LENGTH + "(list-length '(a b . c))", "#f"),
    ("(call-with-values (lambda () (values 4 5)) (lambda (a b) b))", "5"),
    ("(call-with-values * -)", "-1"),
    ("(let ((path '()))"
     "  (call/cc (lambda (k) (dynamic-wind (lambda () (set! path (cons 'in path)))"
     "                                     (lambda () (k 'x))"
     "                                     (lambda () (set! path (cons 'out path))))))"
     "  (reverse path))", "(in out)"),
    ("(+ 1 (call/cc (lambda (k) (+ 10 (k 1)))))", "2"),
])
def test_control_features_r7rs_6_10(source, expected):
    """procedure?, apply, call/cc escapes, values, dynamic-wind (R7RS 6.10)."""
    assert evaluate(source) == expected


def test_reentering_continuation_is_reported_r7rs_6_10():
    """The report's dynamic-wind example re-enters a continuation: a clear error here."""
    source = ("(let ((path '()) (c #f))"
              "  (let ((add (lambda (s) (set! path (cons s path)))))"
              "    (dynamic-wind (lambda () (add 'connect))"
              "                  (lambda () (add (call-with-current-continuation"
              "                                    (lambda (c0) (set! c c0) 'talk1))))"
              "                  (lambda () (add 'disconnect)))"
              "    (if (< (length path) 4) (c 'talk2) (reverse path))))")
    assert "re-entering a continuation is not supported" in error_message(source)


# -- exceptions (R7RS 6.11) ----------------------------------------------------------------------

@check([
    ("(let ((out (open-output-string)))"
     "  (list (call-with-current-continuation"
     "          (lambda (k)"
     "            (with-exception-handler"
     "              (lambda (x) (display \"condition: \" out) (write x out) (k 'exception))"
     "              (lambda () (+ 1 (raise 'an-error))))))"
     "        (get-output-string out)))", '(exception "condition: an-error")'),
    ("(with-exception-handler"
     "  (lambda (con) (cond ((string? con) 'ignored) (else 'ignored)) 42)"
     "  (lambda () (+ (raise-continuable \"should be a number\") 23)))", "65"),
    ("(call/cc (lambda (k) (with-exception-handler (lambda (e) (k (error-object-message e)))"
     "  (lambda () (vector-ref (vector 1 2) 5)))))",
     '"vector-ref: index 5 is out of range for a vector of length 2"'),
    ("(call/cc (lambda (k) (with-exception-handler (lambda (e) (k (error-object? e)))"
     "  (lambda () (undefined-procedure 1)))))", "#t"),
])
def test_exceptions_r7rs_6_11(source, expected):
    """with-exception-handler, raise, raise-continuable, primitive errors (R7RS 6.11)."""
    assert evaluate(source) == expected


@check([
    ("(raise 'an-error)", "an-error"),
    ("(error \"null-list?: argument out of domain\" 5)", "null-list?: argument out of domain"),
    ("(with-exception-handler (lambda (e) 0) (lambda () (raise 'oops)))",
     "exception handler returned from a non-continuable raise"),
    ("(car '())", "car: expected a pair, got ()"),
    ("(undefined-thing)", "unbound variable: undefined-thing"),
    ("(define (f x y) x) (f 1)", "f: expected 2 arguments, got 1"),
    ("(define (f x y) x) (f 1 2 3)", "f: expected 2 arguments, got 3"),
    ("((lambda args 1))", "1"),
    ("(\"not a procedure\" 1)", "application: not a procedure: a string"),
    ("(+ \"a\" \"b\")", '+: expected a number, got "a"'),
    ("(letrec ((a (lambda () b)) (b (a))) b)", "b: variable used before its definition"),
])
def test_errors_are_scheme_conditions_r7rs_6_11(source, expected):
    """Uncaught raises and primitive errors come out as Scheme conditions with clear text."""
    if expected == "1":
        assert evaluate(source) == "1"
    else:
        assert error_message(source) == expected


# -- eval (R7RS 6.12) ------------------------------------------------------------------------------

@check([
    ("(eval '(* 7 3) (environment '(scheme base)))", "21"),
    ("(let ((f (eval '(lambda (f x) (f x x)) (null-environment 5)))) (f + 10))", "20"),
    ("(eval '(if #t 'yes 'no) (scheme-report-environment 5))", "yes"),
    ("(define z 5) (eval '(+ z 1) (interaction-environment))", "6"),
    ("(eval '(define w 9) (interaction-environment)) w", "9"),
])
def test_eval_r7rs_6_12(source, expected):
    """eval in standard and interaction environments (R7RS 6.12)."""
    assert evaluate(source) == expected


# -- proper tail calls and deep recursion (R7RS 3.5) --------------------------------------------------

@check([
    ("(define (count n) (if (= n 0) 0 (+ 1 (count (- n 1))))) (count 1000000)", "1000000"),
    ("(define (even2? n) (if (= n 0) #t (odd2? (- n 1))))"
     "(define (odd2? n) (if (= n 0) #f (even2? (- n 1))))"
     "(even2? 1000000)", "#t"),
    ("(define (loop i acc) (if (= i 0) acc (loop (- i 1) (+ acc i)))) (loop 1000000 0)",
     "500000500000"),
    ("(let loop ((i 0)) (cond ((= i 1000000) 'done) (else (loop (+ i 1)))))", "done"),
    ("(define (f n) (when (> n 0) (f (- n 1)))) (f 1000000) 'ok", "ok"),
    ("(define (g n acc) (if (= n 0) acc (apply g (list (- n 1) (+ acc 1))))) (g 100000 0)",
     "100000"),
])
def test_tail_calls_and_deep_recursion_r7rs_3_5(source, expected):
    """Self, mutual and apply tail calls in constant stack; a million-deep recursion."""
    assert evaluate(source) == expected


# -- the compiled-code cache follows redefinitions ---------------------------------------------------

@check([
    ("(define (add1 x) (+ x 1)) (define (+ a b) (* a b)) (add1 5)", "5"),
    ("(define (f n) (if (= n 0) 'old (f (- n 1)))) (define g f) (define (f n) 'new) (g 3)", "new"),
    ("(define (h p) (car p)) (set! car cdr) (h '(1 2))", "(2)"),
])
def test_redefinition_reaches_compiled_callers_r7rs_5_3(source, expected):
    """Redefining a primitive or a procedure changes the behaviour of code compiled earlier."""
    assert evaluate(source) == expected


# -- inlined data procedures keep their meaning --------------------------------------------------------
#
# Inside a procedure whose operands are variables, the compiler inlines
# vector-ref, vector-set!, vector-length, string-length, string-ref,
# char->integer, the two-argument character comparisons, write-char and
# write-string to a port, and cons (vm/_compile); every other kind of operand
# goes to the procedure, which gives the same value or the same error.

INLINED_DATA = """
(define (vref v k) (vector-ref v k))
(define (vset v k x) (vector-set! v k x) v)
(define (vlen v) (vector-length v))
(define (slen s) (string-length s))
(define (sref s k) (string-ref s k))
(define (code c) (char->integer c))
(define (ch<? a b) (char<? a b))
(define (ch=? a b) (char=? a b))
(define (ch>=? a b) (char>=? a b))
(define (is-x? c) (char=? c #\\x))
(define (put-chars cs port) (for-each (lambda (c) (write-char c port)) cs) port)
(define (put-strings ss port) (for-each (lambda (s) (write-string s port)) ss) port)
(define (collect n) (let loop ((i 0) (acc '())) (if (< i n) (loop (+ i 1) (cons i acc)) acc)))
"""


@check([
    ("(vref (vector 'a 'b 'c) 2)", "c"),
    ("(vref #(1 2) 0)", "1"),
    ("(vref (vector 1 2) (- 3 2))", "2"),
    ("(vset (vector 1 2 3) 1 'x)", "#(1 x 3)"),
    ("(vset (make-vector 2 0) 0 \"s\")", '#("s" 0)'),
    ("(vlen (vector))", "0"),
    ("(vlen (make-vector 7 #f))", "7"),
    ("(slen \"abc\")", "3"),
    ("(slen (make-string 4 #\\z))", "4"),
    ("(slen \"λx\")", "2"),
    ("(sref \"abc\" 1)", "#\\b"),
    ("(sref (string-copy \"xyz\") 2)", "#\\z"),
    ("(eq? (sref \"λ\" 0) #\\λ)", "#t"),
    ("(code #\\A)", "65"),
    ("(+ (code #\\a) 1)", "98"),
    ("(list (ch<? #\\a #\\b) (ch<? #\\b #\\a) (ch=? #\\a #\\a) (ch>=? #\\a #\\b))", "(#t #f #t #f)"),
    ("(list (is-x? #\\x) (is-x? #\\y))", "(#t #f)"),
    ("(get-output-string (put-chars (list #\\a #\\λ #\\c) (open-output-string)))", '"aλc"'),
    ("(get-output-string (put-strings (list \"ab\" (string-copy \"cd\") \"\") (open-output-string)))",
     '"abcd"'),
    ("(let ((p (open-output-string))) (write-char #\\a p) (write-string \"bc\" p) "
     "(write-char #\\d p) (get-output-string p))", '"abcd"'),
    ("(collect 4)", "(3 2 1 0)"),
    ("(let ((p (collect 2))) (set-car! p 'x) p)", "(x 0)"),
    ("(pair? (cons 1 2))", "#t"),
])
def test_inlined_data_procedures_keep_results_r7rs_6_6_to_6_8_and_6_13(source, expected):
    """Inlined vector, string, character, port and pair operations give the procedures' values."""
    assert evaluate(INLINED_DATA + source) == expected


@check([
    ("(vref (vector 1 2) 2)", "vector-ref: index 2 is out of range for a vector of length 2"),
    ("(vref (vector 1 2) -1)", "vector-ref: expected an exact non-negative integer, got -1"),
    ("(vref (vector 1 2) #t)", "vector-ref: expected an exact non-negative integer, got #t"),
    ("(vref (vector 1 2) 1.0)", "vector-ref: expected an exact non-negative integer, got 1.0"),
    ("(vref \"ab\" 0)", "vector-ref: expected a vector, got"),
    ("(vref '(1 2) 0)", "vector-ref: expected a vector, got"),
    ("(vset (vector 1) 1 'x)", "vector-set!: index 1 is out of range for a vector of length 1"),
    ("(vset (vector 1) -1 'x)", "vector-set!: expected an exact non-negative integer, got -1"),
    ("(vlen \"abc\")", "vector-length: expected a vector, got"),
    ("(slen (vector 1))", "string-length: expected a string, got"),
    ("(slen 'abc)", "string-length: expected a string, got"),
    ("(sref \"abc\" 3)", "string-ref: index 3 is out of range for a string of length 3"),
    ("(sref \"abc\" -1)", "string-ref: expected an exact non-negative integer, got -1"),
    ("(sref 'abc 0)", "string-ref: expected a string, got"),
    ("(code 65)", "char->integer: expected a character, got 65"),
    ("(code \"a\")", "char->integer: expected a character, got"),
    ("(ch<? #\\a \"b\")", "char<?: expected a character, got"),
    ("(ch=? 1 #\\a)", "char=?: expected a character, got 1"),
    ("(is-x? 'x)", "char=?: expected a character, got x"),
    ("(put-chars (list \"a\") (open-output-string))", "write-char: expected a character, got"),
    ("(put-strings (list #\\a) (open-output-string))", "write-string: expected a string, got"),
    ("(put-chars (list #\\a) (open-input-string \"\"))", "write-char: expected a textual output port"),
    ("(let ((p (open-output-string))) (close-port p) (put-chars (list #\\a) p))",
     "write-char: #<textual-output-port string> is closed"),
    ("(let ((p (open-output-string))) (close-port p) (put-strings (list \"a\") p))",
     "write-string: #<textual-output-port string> is closed"),
])
def test_inlined_data_procedures_still_signal_errors_r7rs_6_6_to_6_8_and_6_13(source, expected):
    """Wrong types, negative or past-the-end indices and closed ports reach the procedures' errors."""
    assert error_message(INLINED_DATA + source).startswith(expected)


def test_inlined_data_procedures_in_generated_code():
    """The operations are Python subscripts, slots and appends in the generated code."""
    from vm._compile import python_source
    from vm._expand import expand_toplevel
    from vm._reader import read_all
    env = Environment.standard()
    text = "\n".join(python_source(expand_toplevel(form, env.syntax), env)
                     for form in read_all(INLINED_DATA))
    for fragment in ("v_", "R_vectors", "R_list_set(", "R_chars[R_ord(", ".cp <", "R_len(s_",
                     ".chunks.append(", "R_make_pair(", "== 120"):
        assert fragment in text, fragment


def test_redefined_data_procedure_is_not_inlined_r7rs_5_3():
    """A procedure compiled while vector-ref was standard follows its redefinition."""
    assert evaluate(INLINED_DATA + "(define (vector-ref v k) 'mine) (vref (vector 1) 0)") == "mine"
    assert evaluate("(define (f p c) (write-char c p)) (define (write-char c p) 'mine) "
                    "(f (open-output-string) #\\a)") == "mine"


# -- recursive procedures: the fast entry ------------------------------------------------------------

FIB = "(define (fib n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2)))))"


@check([
    (FIB + "(fib 20)", "6765"),
    (FIB + "(fib 10.0)", "55.0"),
    (FIB + "(fib (expt 2 0))", "1"),
    (FIB + "(define old fib) (define (fib n) 10) (old 5)", "20"),
    (FIB + "(define old fib) (define (fib n) (if (< n 2) n (* 2 (fib (- n 1))))) (list (old 5) (fib 5))",
     "(12 16)"),
    (FIB + "(define (+ a b) (* a b)) (fib 4)", "0"),
    ("(define (tak x y z) (if (not (< y x)) z (tak (tak (- x 1) y z) (tak (- y 1) z x)"
     " (tak (- z 1) x y)))) (tak 18 12 6)", "7"),
    ("(define (depth n) (if (= n 0) 0 (+ 1 (depth (- n 1))))) (depth 100000)", "100000"),
])
def test_recursive_procedures_through_their_fast_entry_r7rs_5_3(source, expected):
    """Integer self calls go to the fast entry; other arguments and redefinitions still work."""
    assert evaluate(source) == expected


def test_fast_entry_keeps_arity_errors_and_storability_r7rs_4_1_4():
    """The fast entry adds no parameter a caller could fill, and no closure cell."""
    assert error_message(FIB + "(fib 1 2)") == "fib: expected 1 argument, got 2"
    assert error_message(FIB + "(fib)") == "fib: expected 1 argument, got 0"
    assert error_message(FIB + "(fib #t)").startswith("<: expected a")
    env = Environment.standard()
    run(lambda: eval_text(FIB, env, "<test>"))
    fib = env.lookup(__import__("vm._types", fromlist=["intern"]).intern("fib"))
    assert fib.__closure__ is None and set(fib.__kwdefaults__) == {"R_fast"}


# -- the benchmark -----------------------------------------------------------------------------

def test_benchmark_quick_run():
    """bench/bench_vm.py --quick runs to its verdicts (it exits non-zero if a Scheme
    result differs from CPython's)."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "bench" / "bench_vm.py"
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "== Verdict ==" in done.stdout and done.stdout.count("x\n") >= 5
