"""Scheme in the image: globals and data persist, each form is a transaction.

vm.Interpreter over a real image: what one session defines, the next one
finds after a reopen (definitions as stored procedures or replayed source,
data as image objects), a failing form leaves no trace, and every form that
changed the image is in the changes journal with its commit number.
"""
from __future__ import annotations

import pytest

import image
import vm
from vm._types import Char, MString, Pair


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "s.image")


def session(path: str, text: str):
    """Opens the image, evaluates text, closes; the value of the last form."""
    with image.open(path) as img:
        return vm.Interpreter(img).eval(text)


def values(path: str, text: str) -> list:
    with image.open(path) as img:
        interp = vm.Interpreter(img)
        return [vm._interp.to_python(v) for v in interp.eval_forms(text)]


class TestGlobalsPersist:
    """R7RS 5.3 definitions, kept across restarts."""

    def test_data_definitions_survive_a_reopen(self, path):
        """Numbers, strings, characters, symbols, lists and vectors read back equal."""
        session(path, """(define n 42) (define r 1/3) (define s "text") (define c #\\x)
                         (define sym 'hello) (define l '(1 (2 3) "four")) (define v (vector 1 2 3))""")
        assert values(path, "n r s c sym (length l) (cadr l) (vector-ref v 2)")[:4] == \
            [42, __import__("fractions").Fraction(1, 3), "text", "x"]
        assert values(path, "(eq? sym 'hello) (equal? l '(1 (2 3) \"four\")) (vector-length v)") == \
            [True, True, 3]

    def test_procedures_survive_a_reopen(self, path):
        """A procedure defined in one session runs in the next (compiled again from its core form)."""
        session(path, "(define (fib n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2)))))")
        assert session(path, "(fib 20)") == 6765

    def test_a_standard_procedure_stored_as_data(self, path):
        """A standard procedure kept in a global or a list is stored by name."""
        session(path, "(define my-car car) (define ops (list + *))")
        assert values(path, "(my-car '(7 8)) ((cadr ops) 6 7)") == [7, 42]

    def test_mutation_of_stored_pairs_strings_and_vectors_persists(self, path):
        """set-car!, string-set! and vector-set! on globals write through to the image."""
        session(path, """(define l (list 1 2 3)) (define s (make-string 3 #\\a)) (define v (make-vector 2 0))
                         (set-car! (cdr l) 'two) (string-set! s 1 #\\b) (vector-set! v 1 'x)""")
        assert values(path, "l s (vector-ref v 1)")[1:] == ["aba", vm._types.intern("x")]
        assert values(path, "(cadr l)") == [vm._types.intern("two")]

    def test_a_stored_transient_becomes_its_handle(self, path):
        """A pair still held by a local after it was stored sees (and makes) later changes (become:)."""
        assert session(path, """(define keep #f)
                                (let ((p (list 1 2)))
                                  (set! keep p)
                                  (set-car! p 99)
                                  (eq? p keep))""") is True
        assert session(path, "(car keep)") == 99

    def test_a_closure_over_locals_is_replayed(self, path):
        """A definition whose value cannot be stored is run again at boot (its state starts over)."""
        session(path, "(define counter (let ((n 0)) (lambda () (set! n (+ n 1)) n))) (counter) (counter)")
        assert session(path, "(counter)") == 1

    def test_macros_survive_a_reopen(self, path):
        """R7RS 4.3.2: define-syntax forms are kept and expanded again at boot."""
        session(path, "(define-syntax swap! (syntax-rules () ((_ a b) (let ((t a)) (set! a b) (set! b t)))))")
        assert values(path, "(define x 1) (define y 2) (swap! x y) (list x y)")[-1] is not None
        assert session(path, "(list x y)") is not None
        assert values(path, "(car (list x y)) (cadr (list x y))") == [2, 1]

    def test_records_survive_a_reopen(self, path):
        """R7RS 5.5: a record type's definition is replayed; its procedures work in the next session."""
        session(path, "(define-record-type point (make-point x y) point? (x point-x) (y point-y))")
        assert values(path, "(point-x (make-point 3 4)) (point? (make-point 1 2)) (point? 5)") == \
            [3, True, False]

    def test_record_instances_are_stored(self, path):
        """R7RS 5.5: records stored in globals and lists come back as records of their type,
        and a record still held by a local becomes its stored copy (eq?, later changes)."""
        assert values(path, """(define-record-type point (make-point x y) point? (x point-x set-point-x!) (y point-y))
                                (define pts (list (make-point 3 4) (make-point 5 6)))
                                (define p #f)
                                (let ((q (make-point 7 8))) (set! p q) (set-point-x! q 70) (eq? p q))""")[-1] is True
        assert values(path, "(point-x p) (point? (car pts)) (map point-y pts)")[:2] == [70, True]
        session(path, "(set-point-x! (cadr pts) 50)")
        assert session(path, "(point-x (cadr pts))") == 50
        with image.open(path) as img:
            img.check()

    def test_the_root_table_is_the_global_environment(self, path):
        """Python's img.root["inbox"] is Scheme's inbox, and the other way round."""
        with image.open(path) as img:
            img.root["inbox"] = [{"subject": "hello", "read": False}, {"subject": "bye", "read": True}]
        assert values(path, '(vector-length inbox) (hash-table-ref (vector-ref inbox 0) "subject")') == \
            [2, "hello"]
        session(path, "(define total (+ 1 2))")
        with image.open(path, readonly=True) as img:
            assert img.root["total"] == 3


class TestWalksOverStoredStructure:
    """Walks that tell objects apart by identity (write's datum labels,
    equal?'s cycle check) over stored lists, whose pairs are handles made
    and freed as the walk goes: a freed handle's id passes to the next one,
    and must not be taken for the same object."""

    MANY = """(define many (let loop ((i 0) (acc '()))
                 (if (= i 300) acc (loop (+ i 1) (cons (list i (list i i) (if (= i 0) 'x i)) acc)))))
              (define same (let loop ((i 0) (acc '()))
                 (if (= i 300) acc (loop (+ i 1) (cons (list i (list i i) i) acc)))))"""

    def test_write_labels_only_real_sharing(self, path):
        """R7RS 6.13.3: write gives datum labels to cycles alone, not to pairs
        that merely had the same id one after the other."""
        session(path, self.MANY + " (define numbers '(1 4.5 -7 100000000000000000000))"
                " (define nested (list 1 (vector 2 \"three\" 'four) (list 5 (list 6))))")
        text = session(path, """(let ((port (open-output-string)))
                                  (write (list numbers nested many) port) (get-output-string port))""")
        text = vm._interp.to_python(text)
        assert "#0" not in text
        assert text.startswith('((1 4.5 -7 100000000000000000000) (1 #(2 "three" four) (5 (6))) '
                               '((299 (299 299) 299) (298 (298 298) 298) ')
        assert text.endswith("(1 (1 1) 1) (0 (0 0) x)))")

    def test_write_still_labels_a_stored_cycle(self, path):
        """A cycle through stored pairs is labelled once, where it closes."""
        session(path, "(define c (list 1 2 3)) (set-cdr! (cddr c) c)")
        text = vm._interp.to_python(session(path, """(let ((port (open-output-string)))
                                                       (write c port) (get-output-string port))"""))
        assert text == "#0=(1 2 3 . #0#)"

    def test_equal_compares_every_stored_pair(self, path):
        """R7RS 6.1 equal?: two stored lists that differ only at their very
        end are not equal, and the same ones are."""
        session(path, self.MANY)
        assert values(path, "(equal? many same) (equal? same same) (equal? (cdr many) (cdr same))"
                      " (equal? (list-copy same) same)") == [False, True, False, True]


class TestFormsAreTransactions:
    """Each top-level form is one transaction."""

    def test_an_error_rolls_the_whole_form_back(self, path):
        """A failing form's definitions and changes are gone, in the image and in the session."""
        session(path, "(define v (vector 1 2 3))")
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            with pytest.raises(vm.SchemeFailure, match="car"):
                interp.eval("(begin (define gone 1) (vector-set! v 0 'changed) (car 5))")
            assert interp.eval("(vector-ref v 0)") == 1
            with pytest.raises(vm.SchemeFailure, match="unbound variable: gone"):
                interp.eval("gone")
        assert session(path, "(vector-ref v 0)") == 1

    def test_forms_before_an_error_stay(self, path):
        """eval of several forms: each commits on its own, so the ones before the error are kept."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            with pytest.raises(vm.SchemeFailure):
                interp.eval("(define a 1) (define b (car '()))")
        assert session(path, "a") == 1

    def test_errors_are_scheme_conditions(self, path):
        """R7RS 6.11: the failure carries the raised object; no Python traceback reaches the user."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            with pytest.raises(vm.SchemeFailure) as info:
                interp.eval("(raise 'oops)")
            assert info.value.condition is vm._types.intern("oops")
            with pytest.raises(vm.SchemeFailure, match="bad thing 42"):
                interp.eval('(error "bad thing" 42)')

    def test_the_image_checks_after_a_session(self, path):
        """The heap verifier passes after Scheme data of every kind was stored and changed."""
        session(path, """(define l (list 1 "s" #\\c 'sym 2.5 (vector 1 2) (make-string 2 #\\z)))
                         (define (f x) x) (set-cdr! (cddr l) '()) (define h (make-hash-table))
                         (hash-table-set! h "k" '(1 2))""")
        with image.open(path) as img:
            img.gc()
            img.check()


class TestJournal:
    """Every form that changed the image is journaled with its commit."""

    def test_changing_forms_are_journaled_with_their_commit(self, path):
        """An expression that changes nothing makes no entry and no commit."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define x 1)")
            head = img.head
            interp.eval("(+ x 1)")
            assert img.head == head
            interp.eval("(set! x 2)")
            entries = interp.journal()
        assert [e[3] for e in entries] == ["(define x 1)", "(set! x 2)"]
        assert entries[-1][1] == head + 1
        assert [e[0] for e in entries] == [1, 2]

    def test_sources_are_kept_for_definitions(self, path):
        """The source form of the last definition of a name is kept in the image."""
        session(path, '(define (f x) "doubles" (* 2 x)) (define (f x) (* 3 x))')
        with image.open(path) as img:
            assert vm.Interpreter(img).source_of("f") == "(define (f x) (* 3 x))"


def test_python_values_come_back_as_python_values(path):
    """interp.eval returns strings and characters as str, numbers as they are."""
    assert values(path, '"abc" (string #\\a #\\b) #\\z 12 (values 1 2)') == ["abc", "ab", "z", 12, (1, 2)]
    assert isinstance(session(path, "(list 1 2)"), Pair)
    assert not isinstance(session(path, '"x"'), (MString, Char))


class TestImageForms:
    """(transaction ...), (commit), (gc) and blobs, from Scheme."""

    def test_transaction_is_a_savepoint(self, path):
        """An error inside (transaction ...) undoes only its body, in the image and in the session."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            assert interp.eval("""(define x 1)
                                  (begin (set! x 2)
                                         (guard (e (#t 'caught)) (transaction (set! x 3) (car 1)))
                                         x)""") == 2
            assert interp.eval("(transaction (set! x 4) x)") == 4
        assert session(path, "x") == 4

    def test_a_top_level_transaction_defines_globals(self, path):
        """At top level (transaction ...) is the form's own transaction: its definitions are global."""
        assert values(path, "(transaction (define q 1) (define r 2)) (+ q r)")[-1] == 3
        assert values(path, "q r") == [1, 2]
        with pytest.raises(vm.SchemeFailure, match="car"):
            session(path, "(transaction (define s 1) (car 0))")
        with pytest.raises(vm.SchemeFailure, match="s"):
            session(path, "s")

    def test_commit_points_keep_what_came_before(self, path):
        """(commit) makes the form's work so far durable; an error after it rolls back only the rest."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define x 0)")
            with pytest.raises(vm.SchemeFailure, match="car"):
                interp.eval("(begin (set! x 1) (commit) (set! x 2) (car 0))")
            assert interp.eval("x") == 1
            with pytest.raises(vm.SchemeFailure, match="commit: not inside"):
                interp.eval("(let () (transaction (commit)))")
        assert session(path, "x") == 1

    def test_gc_frees_what_nothing_reaches(self, path):
        """(gc) collects; what the globals reach survives it, and it reports what it freed."""
        session(path, "(define keep (list 1 2 3)) (define drop (make-vector 100 'x)) (set! drop #f)")
        freed = values(path, "(gc) keep")
        assert freed[0].car.car is vm._types.intern("objects") and freed[0].car.cdr >= 1
        assert session(path, "(length keep)") == 3

    def test_blobs_from_scheme(self, path):
        """(blob bv) stores a bytevector once by hash; blob-read gives it back after a reopen."""
        session(path, "(define b (blob (string->utf8 \"attachment\"))) (define b2 (blob (string->utf8 \"attachment\")))")
        assert values(path, "(blob? b) (eq? b b2) (blob-length b) (utf8->string (blob-read b))") == \
            [True, True, 10, "attachment"]


class TestBadInput:
    """Malformed forms and unstorable values are clear Scheme errors that change nothing."""

    @pytest.mark.parametrize("text, message", [
        ("(define", "read error"), ("(let ((x)) x)", "let"), ("#<foo>", "read error"),
        ("(lambda (x x) x)", "lambda"), ("(undefined-thing)", "unbound variable")])
    def test_malformed_forms(self, path, text, message):
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            head = img.head
            with pytest.raises(vm.SchemeFailure, match=message):
                interp.eval(text)
            assert img.head == head

    def test_a_value_the_image_cannot_hold_is_kept_as_source(self, path):
        """A port in a global lives for the session; its definition is run again at boot."""
        session(path, "(define out (open-output-string)) (write 'x out)")
        assert values(path, "(output-port? out) (get-output-string out)") == [True, ""]


class TestStoredProceduresPrint:
    """R7RS 6.13.3 leaves a procedure's written form open; imago writes #<procedure NAME>
    for one read back from the image, compiled yet or not."""

    def test_a_procedure_in_a_stored_list_prints_as_itself_after_a_reopen(self, path):
        session(path, "(define (f x) (* x 2)) (define hooks (list f car))")
        assert values(path, """(let ((port (open-output-string)))
                                 (write hooks port) (get-output-string port))
                               ((car hooks) 21)""") == ["(#<procedure f> #<procedure car>)", 42]


class TestPromotionThroughImageContainers:
    """R7RS 6.8 vectors and SRFI 69 hash tables of the image: a transient written
    into one becomes its stored copy (eq? kept, later mutations stored), a stored
    procedure reads back as the procedure, and a rollback gives the transient back."""

    SETUP = "(define v (make-vector 2 0)) (define t (make-hash-table))"

    def test_vector_set_promotes_a_list(self, path):
        """R7RS 6.8 vector-set!: the list put into an image vector is its item, mutations included."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval(self.SETUP)
            assert interp.eval("(let ((l (list 1 2))) (vector-set! v 0 l) (set-car! l 'x) "
                               "(eq? l (vector-ref v 0)))") is True
            interp.env.promotions.check()
        assert values(path, "(car (vector-ref v 0))") == [vm._types.intern("x")]

    def test_vector_fill_and_copy_promote(self, path):
        """R7RS 6.8 vector-fill! and vector-copy!: one string filled in twice is one stored string."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval(self.SETUP + " (define w (make-vector 1 #f))")
            assert interp.eval("(let ((s (make-string 1 #\\a)) (l (list 1))) (vector-fill! v s) "
                               "(vector-copy! w 0 (vector l)) (string-set! s 0 #\\z) (set-car! l 2) "
                               "(and (eq? (vector-ref v 0) (vector-ref v 1)) (eq? l (vector-ref w 0))))") is True
        assert values(path, "(vector-ref v 1) (car (vector-ref w 0))") == ["z", 2]

    def test_vector_set_promotes_a_record(self, path):
        """R7RS 5.5 records in an image vector: the modifier on the local changes the stored record."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval(self.SETUP + " (define-record-type box (make-box x) box? (x box-x set-box-x!))")
            assert interp.eval("(let ((b (make-box 1))) (vector-set! v 1 b) (set-box-x! b 2) "
                               "(eq? b (vector-ref v 1)))") is True
        assert session(path, "(box-x (vector-ref v 1))") == 2

    def test_hash_table_set_promotes(self, path):
        """SRFI 69 hash-table-set! and hash-table-update!/default on an image table promote the value."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval(self.SETUP)
            assert interp.eval("(let ((l (list 1)) (s (make-string 1 #\\a))) (hash-table-set! t \"k\" l) "
                               "(hash-table-update!/default t 's (lambda (old) s) #f) "
                               "(set-car! l 2) (string-set! s 0 #\\b) "
                               "(and (eq? l (hash-table-ref/default t \"k\" #f)) "
                               "(eq? s (hash-table-ref t 's (lambda () #f)))))") is True
        assert values(path, "(car (hash-table-ref/default t \"k\" #f)) (hash-table-ref/default t 's #f)") == \
            [2, "b"]

    def test_stored_procedures_read_back_as_procedures(self, path):
        """R7RS 6.1 eq? on procedures: f put into an image vector and table is f again, through
        every procedure that reads their items, in this session and after a reopen."""
        session(path, self.SETUP + " (define (f) 1) (vector-set! v 0 f) (hash-table-set! t \"f\" f)"
                                   " (hash-table-set! t \"car\" car) (vector-set! v 1 car)")
        reads = ("(list (eq? f (car (vector->list v))) (eq? f (vector-ref (vector-copy v) 0)) "
                 "(eq? car (cadr (vector->list v))) (and (memq f (hash-table-values t)) #t) "
                 "(eq? f (hash-table-ref t \"f\" (lambda () #f))) "
                 "(eq? car (hash-table-ref t \"car\" (lambda () #f))) "
                 "(eq? f (cdr (assoc \"f\" (hash-table->alist t)))) "
                 "(let ((seen #f)) (vector-for-each (lambda (x) (if (eq? x f) (set! seen #t))) v) seen))")
        everything = vm._types.from_iterable([True] * 8)
        assert vm._builtins.PRIMITIVES["equal?"](session(path, reads), everything)   # f not yet run
        assert vm._builtins.PRIMITIVES["equal?"](session(path, "(f) " + reads), everything)

    def test_inlined_reads_give_the_procedure(self, path):
        """R7RS 6.1 eq?: (vector-ref v 0) and (hash-table-ref/default t k #f), as compiled code inlines them."""
        session(path, self.SETUP + " (define (f) 1) (vector-set! v 0 f) (hash-table-set! t \"f\" f)")
        assert values(path, "(f) (eq? f (vector-ref v 0)) (eq? f (hash-table-ref/default t \"f\" #f))")[1:] == \
            [True, True]

    def test_a_rolled_back_write_gives_the_transient_back(self, path):
        """A (transaction ...) that put a list into an image vector and a table, then failed, leaves
        the list transient and usable, and the containers as they were."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval(self.SETUP + " (define keep (let ((l (list 1 2))) (lambda () l)))")
            assert interp.eval("(begin (guard (e (#t #f)) (transaction (vector-set! v 0 (keep)) "
                               "(hash-table-set! t \"k\" (keep)) (error \"x\"))) "
                               "(set-car! (keep) 5) (equal? (list (car (keep)) (vector-ref v 0) "
                               "(hash-table-ref/default t \"k\" 'none)) '(5 0 none)))") is True
            interp.env.promotions.check()
            assert type(interp.eval("(keep)")) is Pair

    def test_a_failed_form_gives_the_transient_back(self, path):
        """A form that wrote a list into an image vector and then failed leaves the list transient."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval(self.SETUP + " (define keep (let ((l (list 1 2))) (lambda () l)))")
            with pytest.raises(vm.SchemeFailure, match="boom"):
                interp.eval("(begin (vector-set! v 0 (keep)) (error \"boom\"))")
            assert type(interp.eval("(keep)")) is Pair
            assert interp.eval("(equal? (list (car (keep)) (vector-ref v 0)) '(1 0))") is True

    def test_a_write_outside_any_transaction_promotes_for_good(self, path):
        """vector-set! called outside a transaction (Python's) commits and promotes, logging nothing."""
        from vm._builtins import PRIMITIVES
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval(self.SETUP)
            pair = Pair(1, vm._types.NIL)
            PRIMITIVES["vector-set!"](img.root["v"], 0, pair)
            assert type(pair) is vm._persist.PersistentPair and img.root["v"][0] is pair
            assert interp.env.promotions.mark() == 0
        assert session(path, "(car (vector-ref v 0))") == 1
