"""vm: Scheme (R7RS-small) in the image: reader, expander, compiler, runtime.

Being built (the Scheme issue).  The pipeline, one module each:

    text --_reader--> data (Pair, Symbol, ...; see _types) with source positions
         --_expand--> core forms (below): macros expanded, syntax checked,
                      local variables renamed apart (hygiene)
         --_compile-> a Python code object per top-level form, run with the
                      environment's dict as its globals
    _runtime:  the control procedures (apply, call/cc, dynamic-wind, values,
               exceptions, parameters, promises, eval and environments)
    _builtins: the data procedures (numbers, lists, chars, strings, vectors,
               bytevectors, ports, hash tables) as Python functions
    _printer:  write, write-shared, write-simple, display

CORE FORMS (what _expand emits and _compile accepts; nothing else)

    (quote datum)              any Python value as datum, None is unspecified
    symbol                     a variable: local (gensym'd by the expander, so
                               unique) or global (an interned Symbol)
    (if test then else)        always three parts
    (lambda formals body)      formals: a list of symbols, an improper list
                               (rest), or one symbol; body is one expression
    (case-lambda (formals body) ...)
    (let ((symbol expr) ...) body)       each symbol fresh
    (letrec* ((symbol expr) ...) body)   internal defines and named let
    (set! symbol expr)
    (define symbol expr)       top level only (inside top-level begins)
    (begin expr ...)           at least one expr
    (f arg ...)                application

Derived forms that need the runtime (guard, parameterize, delay,
define-record-type, dynamic-wind users) expand into applications of runtime
procedures embedded as constants, ((quote <procedure>) ...), so no user
binding can capture them.
"""
from vm._interp import Interpreter, SchemeFailure

__all__ = ["Interpreter", "SchemeFailure"]
