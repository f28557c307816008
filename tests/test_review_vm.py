"""Review tests: the Scheme layer over the image (vm/_persist, vm/_interp),
the image's new entry points (at, rewind, the encode hook, adopt) and the
chunked vector's prefix-start encoding.

A test marked xfail(strict=True) exposes a bug that is still there (its
reason names the place); the others check behaviour that works and should
stay so.  Randomness is seeded.
"""
from __future__ import annotations

import errno
import gc
import os
import random
import sys
import weakref

import pytest

import image
import vm
from image._image import Image
from pager import PageStore
from pager._vfs import Vfs
from vm._types import intern

sys.path.insert(0, os.path.dirname(__file__))
from faults import FaultVfs, commit_write  # noqa: E402


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "r.image")


def session(path: str, text: str):
    """Opens the image, evaluates text, closes; the value of the last form."""
    with image.open(path) as img:
        return vm.Interpreter(img).eval(text)


def fails(interp, text: str) -> str:
    """Evaluates text, which must fail as a SchemeFailure; its message."""
    with pytest.raises(vm.SchemeFailure) as info:
        interp.eval(text)
    return str(info.value)


# -- compiled code cached by address -------------------------------------------------


class TestCompiledCache:
    """StoredProcedure.procedure() caches compiled code per (image, address)."""

    def test_a_rolled_back_closure_does_not_run_for_a_new_one(self, path):
        """A lambda stored and called in a form that rolled back does not answer for the next lambda stored."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define v (vector 0))")
            fails(interp, "(begin (vector-set! v 0 (lambda () 'rolled-back)) ((vector-ref v 0)) "
                          "(error \"oops\"))")
            interp.eval("(vector-set! v 0 (lambda () 'fresh))")
            assert interp.eval("((vector-ref v 0))") == intern("fresh")

    def test_a_collected_closure_does_not_run_for_a_new_one(self, path):
        """After gc reuses a closure's address, the new closure runs its own code."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define v (vector 0))")
            for i in range(12):
                interp.eval(f"(vector-set! v 0 (lambda () {i}))")
                assert interp.eval("((vector-ref v 0))") == i
                interp.eval("(vector-set! v 0 #f)")
                interp.eval("(gc)")


# -- what a global keeps across a reboot ---------------------------------------------


class TestReplay:
    """Definitions kept as source are run again at boot (vm/_interp._boot)."""

    def test_a_later_storable_definition_wins_after_a_reboot(self, path):
        """(define f <closure over a let>) then (define f 5): f is 5 after a reopen."""
        session(path, "(define f (let ((n 0)) (lambda () n)))")
        session(path, "(define f 5)")
        assert session(path, "f") == 5
        with image.open(path, readonly=True) as img:
            assert img.root["f"] == 5

    def test_a_record_type_defined_in_begin_reads_back_its_records(self, path):
        """A record type defined inside (begin ...) still reads its stored records after a reopen."""
        session(path, "(begin (define-record-type point (make-point x y) point? (x px) (y py)))"
                      "(define pt (make-point 1 2))")
        assert session(path, "(px pt)") == 1

    def test_syntax_defined_in_begin_survives_a_reopen(self, path):
        """A define-syntax inside (begin ...) is still defined after a reopen."""
        session(path, "(begin (define-syntax twice (syntax-rules () ((_ e) (begin e e)))))")
        assert session(path, "(let ((n 0)) (twice (set! n (+ n 1))) n)") == 2

    def test_a_closure_over_a_let_is_replayed(self, path):
        """An unstorable closure bound to a global comes back at boot (as source)."""
        session(path, "(define counter (let ((n 10)) (lambda () (set! n (+ n 1)) n)))")
        assert session(path, "(counter)") == 11
        assert session(path, "(counter)") == 11   # its state is not stored: documented


# -- hash tables --------------------------------------------------------------------


class TestHashTables:
    """SRFI 69 tables bound to globals."""

    def test_symbol_keys_in_a_global_hash_table(self, path):
        """(hash-table-set! h 'a 1) on a global table works and persists."""
        session(path, "(define h (make-hash-table)) (hash-table-set! h 'a 1)")
        assert session(path, "(hash-table-ref/default h 'a #f)") == 1

    def test_a_table_with_symbol_keys_keeps_later_changes(self, path):
        """A table built in a let with symbol keys keeps entries added later, across a reopen."""
        session(path, "(define h (let ((t (make-hash-table))) (hash-table-set! t 'a 1) t))"
                      "(hash-table-set! h 'b 2)")
        assert session(path, "(hash-table-ref/default h 'b 'lost)") == 2

    def test_string_keys_persist(self, path):
        """String keys in a global hash table persist across a reopen."""
        session(path, "(define h (make-hash-table)) (hash-table-set! h \"k\" 'v)")
        assert session(path, "(hash-table-ref/default h \"k\" #f)") == intern("v")


# -- become: and identity -----------------------------------------------------------


class TestBecome:
    """A transient pair stored into a global turns into the handle of its copy."""

    def test_a_transient_stays_usable_after_its_store_rolled_back(self, path):
        """A list a closure holds is still readable after a form that stored it failed."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define keep (let ((l (list 1 2))) (lambda () l))) (define g 0)")
            fails(interp, "(begin (set! g (keep)) (error \"boom\"))")
            assert interp.eval("(car (keep))") == 1

    def test_an_inner_pair_keeps_its_identity(self, path):
        """A list stored inside another stays eq? to the local that holds it, and shares its mutations."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define g #f)")
            assert interp.eval("(let ((inner (list 1 2))) (set! g (list inner)) "
                               "(set-car! inner 'changed) "
                               "(and (eq? inner (car g)) (eq? (car (car g)) 'changed)))") is True

    def test_a_stored_procedure_is_eq_to_the_global(self, path):
        """(memq f hooks) finds f in a stored list of procedures."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define (f) 1) (define hooks (list f car))")
            assert interp.eval("(and (memq f hooks) (memq car hooks) #t)") is True

    def test_a_cyclic_list_survives_a_reopen(self, path):
        """A transient circular list bound to a global is stored once and stays circular."""
        session(path, "(define c (let ((l (list 1 2 3))) (set-cdr! (cddr l) l) l))")
        assert session(path, "(and (= (list-ref c 5) 3) (eq? c (cdddr c)))") is True

    def test_a_global_list_is_its_image_copy(self, path):
        """After (define l (list ...)), l is the stored pair: mutation writes through."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define l (list 1 2))")
            interp.eval("(set-car! l 'x)")
            assert img.root["l"].car == intern("x")

    def test_deeply_nested_car_chain(self, path):
        """A list nested 100,000 deep in its cars is stored and read back."""
        session(path, "(define deep (let loop ((i 0) (acc '())) (if (= i 100000) acc "
                      "(loop (+ i 1) (list acc)))))")
        assert session(path, "(let loop ((x deep) (i 0)) (if (null? x) i (loop (car x) (+ i 1))))") \
            == 100000

    def test_unicode_and_big_values(self, path):
        """Unicode strings, symbols and names, and bignums read back equal."""
        session(path, "(define λ→ \"ünï 🎉\") (define |a b| 'λ) (define big (expt 7 300))")
        with image.open(path) as img:
            got = [vm._interp.to_python(v) for v in vm.Interpreter(img).eval_forms("λ→ |a b| big")]
        assert got == ["ünï 🎉", intern("λ"), 7 ** 300]


class TestPromotion:
    """Every transient a stored value reaches becomes its image copy (vm/_persist.promote)."""

    def test_shared_inner_pairs_stay_shared(self, path):
        """A list stored twice inside another is one pair, eq? to the local that holds it."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define g #f)")
            assert interp.eval("(let ((a (list 1))) (set! g (list a a)) "
                               "(and (eq? (car g) (cadr g)) (eq? a (car g))))") is True
            interp.env.promotions.check()

    def test_a_string_and_a_record_inside_are_promoted(self, path):
        """string-set! and a record modifier through locals write the stored copies."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define-record-type box (make-box v) box? (v box-v set-box-v!)) (define g #f)")
            interp.eval("(let ((s (make-string 1 #\\a)) (b (make-box 1))) (set! g (list s b)) "
                        "(string-set! s 0 #\\z) (set-box-v! b 2))")
        assert session(path, "(and (string=? (car g) \"z\") (= (box-v (cadr g)) 2))") is True

    def test_set_car_of_a_stored_pair_promotes(self, path):
        """A list put into a stored pair by set-car! is the pair's car, mutations included."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define g (list 0))")
            assert interp.eval("(let ((l (list 1 2))) (set-car! g l) (set-car! l 'x) "
                               "(and (eq? l (car g)) (eq? (caar g) 'x)))") is True

    def test_pairs_inside_a_transient_vector_are_promoted(self, path):
        """A vector is copied in, but a list inside it becomes its stored copy."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define g #f)")
            assert interp.eval("(let* ((l (list 1)) (v (vector l))) (set! g v) "
                               "(eq? l (vector-ref g 0)))") is True

    def test_a_savepoint_rollback_restores_the_transient(self, path):
        """A (transaction ...) that stored a list and failed leaves the list usable in the same form."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define keep (let ((l (list 1 2))) (lambda () l))) (define g 0)")
            assert interp.eval("(begin (guard (e (#t #f)) (transaction (set! g (keep)) (error \"x\"))) "
                               "(and (= (car (keep)) 1) (eqv? g 0)))") is True
            interp.env.promotions.check()
            interp.eval("(set! g (keep))")   # stored for good now
            assert img.root["g"] is interp.eval("(keep)")

    def test_a_store_records_what_it_copied(self, path):
        """record_made/made (objmem's "made objects"): each pair and string a store copied, with
        its address, once; nested recordings share one list; made() alone is an error."""
        from vm._types import NIL, MString, Pair
        with image.open(path) as img:
            vm.Interpreter(img)
            heap, s = img._heap, MString("x")
            value = Pair(s, Pair(s, NIL))
            with img.transaction():
                heap.record_made()
                heap.record_made()
                img.root["x"] = value
                assert heap.made() == heap.made()
            with pytest.raises(RuntimeError, match="record_made"):
                heap.made()
            with img.transaction():
                heap.record_made()
                img.root["y"] = value
                made = heap.made()
            assert sorted(map(id, made[0::2])) == sorted(map(id, [value, s, value.cdr]))
            assert len(made) == 6 and len(set(made[1::2])) == 3

    def test_turn_refuses_a_class_that_is_no_handle_class(self, path):
        """heap.turn checks its class map before touching a value."""
        from vm._types import NIL, Pair
        with image.open(path) as img:
            pair = Pair(1, NIL)
            with pytest.raises(TypeError, match="handle class"):
                img._heap.turn([pair, 8], {Pair: (dict, ("car", "cdr"))}, None)
            assert pair.car == 1

    def test_a_record_of_many_fields_is_restored_on_rollback(self, path):
        """A record of nine fields (objmem's turn keeps more than eight values in a tuple) stored
        in a savepoint that fails gets every field back."""
        fields = " ".join(f"f{i}" for i in range(9))
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            specs = " ".join(f"(f{i} big-f{i})" for i in range(9))
            interp.eval(f"(define-record-type big (make-big {fields}) big? {specs}) (define g #f)")
            assert interp.eval("(let ((b (make-big 0 1 2 3 4 5 6 7 8))) "
                               "(guard (e (#t #f)) (transaction (set! g (list b)) (error \"x\"))) "
                               "(and (= (big-f8 b) 8) (eqv? g #f)))") is True
            interp.env.promotions.check()
            assert interp.env.promotions.mark() == 0   # the form committed: the log is empty

    def test_items_stored_together_share_their_copies(self, path):
        """R7RS 6.8 vector-copy! of a vector holding one list twice into an image vector: one copy."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define w (make-vector 3 #f))")
            assert interp.eval("(let* ((l (list 1)) (src (vector l (list l) l))) (vector-copy! w 0 src) "
                               "(and (eq? l (vector-ref w 0)) (eq? l (vector-ref w 2)) "
                               "(eq? l (car (vector-ref w 1)))))") is True
            heap = img._heap
            assert img.root["w"][0]._addr == img.root["w"][2]._addr
            with pytest.raises(IndexError):
                heap.vec_store(img.root["w"]._addr, 2, [1, 2])

    def test_a_procedure_is_stored_once_and_eq_after_a_reopen(self, path):
        """f stored twice is one CLOSURE; memq finds f and car in a stored list after a reopen,
        before and after f runs."""
        session(path, "(define (f) 1) (define hooks (list f car f))")
        with image.open(path) as img:
            assert img.root["hooks"].car._addr == img.root["hooks"].cdr.cdr.car._addr
        assert session(path, "(and (memq f hooks) (memq car hooks) #t)") is True
        assert session(path, "(f) (and (eq? f (car hooks)) (eq? car (cadr hooks)) (= ((caddr hooks)) 1))") \
            is True


# -- records across images ------------------------------------------------------------


class TestRecordsPerImage:
    """Record types get a class per image (vm/_persist._record_type_made)."""

    def test_a_record_is_stored_with_its_images_class(self, tmp_path):
        """With two images whose class tables differ, a record gets the class of its own image."""
        a = image.open(str(tmp_path / "a.image"))
        b = image.open(str(tmp_path / "b.image"))
        try:
            b.define_class("padding", ("q",))
            ia, ib = vm.Interpreter(a), vm.Interpreter(b)
            for img, interp in ((a, ia), (b, ib)):   # one of the two gets the other's index
                interp.eval("(define-record-type point (make-point x y) point? (x px) (y py))"
                            "(define p (make-point 1 2))")
            for img in (a, b):
                index = img._heap.class_of(img.root["p"]._addr)
                assert img.class_info(index)[0] == "record:point"
        finally:
            a.close()
            b.close()

    def test_defining_a_record_type_does_not_commit_to_another_image(self, tmp_path):
        """A record type defined in one interpreter leaves another image's head alone."""
        with image.open(str(tmp_path / "a.image")) as a, image.open(str(tmp_path / "b.image")) as b:
            ia = vm.Interpreter(a)
            vm.Interpreter(b)
            head = b.head
            ia.eval("(define-record-type thing (make-thing) thing?)")
            assert b.head == head


# -- read-only images and views ----------------------------------------------------------


class TestReadOnly:
    """An interpreter over a read-only image or a view (img.at)."""

    def test_a_read_only_image_evaluates(self, path):
        """Reading globals and computing works on an image opened read-only."""
        session(path, "(define x 42)")
        with image.open(path, readonly=True) as img:
            assert vm.Interpreter(img).eval("(+ x 1)") == 43

    def test_a_view_shows_the_old_root_beside_the_live_one(self, path):
        """img.at(n) reads commit n's globals while the live image moves on."""
        with image.open(path) as img:
            img.root["x"] = 1
            n = img.head
            img.root["x"] = 2
            with img.at(n) as old:
                assert old.readonly and old.root["x"] == 1
            assert img.root["x"] == 2


# -- transactions, commit points and failures ------------------------------------------


class _InterruptAfterSync(Vfs):
    """Raises KeyboardInterrupt right after a real fdatasync (Ctrl-C during the sync)."""

    armed = False

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


class TestFormTransactions:
    """Each top-level form is one transaction (vm/_interp.run_form)."""

    def _faulty(self, path: str):
        image.open(path).close()
        vfs = FaultVfs()
        img = Image(PageStore.open(path, _vfs=vfs))
        return img, vm.Interpreter(img), vfs

    def test_a_failed_commit_is_a_scheme_failure(self, path):
        """A commit that cannot be written fails the form as a SchemeFailure; the session goes on."""
        img, interp, vfs = self._faulty(path)
        with img:
            vfs.arm("pwrite", 1, errno.ENOSPC, when=commit_write)
            with pytest.raises(vm.SchemeFailure):
                interp.eval("(define y 2)")
            vfs.disarm()
            assert interp.eval("(define y 3) y") == 3

    def test_a_failed_commit_point(self, path):
        """(commit) that cannot be written fails the form cleanly, and the next form runs."""
        img, interp, vfs = self._faulty(path)
        with img:
            vfs.arm("pwrite", 1, errno.ENOSPC, when=commit_write)
            with pytest.raises(vm.SchemeFailure):
                interp.eval("(begin (define z 3) (commit) (define w 4))")
            vfs.disarm()
            assert img._depth == 0
            assert interp.eval("(define q 5) q") == 5

    def test_an_interrupt_after_a_durable_commit(self, path):
        """After Ctrl-C in the sync, what the session believes is what the disk holds."""
        from browser.repl import Repl
        image.open(path).close()
        vfs = _InterruptAfterSync()
        img = Image(PageStore.open(path, _vfs=vfs))
        interp = vm.Interpreter(img)
        printed: list[str] = []
        repl = Repl(interp, printed.append)
        repl.handle("(define x 1)")
        vfs.armed = True
        repl.handle("(define x 2)")
        believed = interp.env.namespace[vm._env.mangle("x")]
        img.close()
        assert session(path, "x") == believed

    def test_an_interrupt_in_a_form_rolls_back_image_and_namespace(self, path):
        """KeyboardInterrupt inside a form leaves neither the image nor the namespace changed."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)

            def interrupt():
                raise KeyboardInterrupt
            interp.env.define_standard(intern("interrupt!"), interrupt)
            head = img.head
            with pytest.raises(KeyboardInterrupt):
                interp.eval("(begin (define k (list 1)) (interrupt!))")
            assert img.head == head and "k" not in img.root
            assert "unbound" in fails(interp, "k")

    def test_an_expression_makes_no_commit(self, path):
        """A form that changes nothing costs no commit."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            head = img.head
            assert interp.eval("(+ 1 2)") == 3
            assert img.head == head

    def test_the_journal_names_each_forms_commit(self, path):
        """Each journal entry's commit number is the commit its form made; failed forms leave none."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define a 1)")
            first = img.head
            fails(interp, "(begin (define b 2) (error \"no\"))")
            interp.eval("(define c 3)")
            entries = [(e[1], e[3]) for e in interp.journal()]
            assert entries[-2:] == [(first, "(define a 1)"), (img.head, "(define c 3)")]

    def test_commit_points_keep_earlier_steps(self, path):
        """(commit) makes the steps before it durable even when the form then fails."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            fails(interp, "(begin (define s1 1) (commit) (define s2 2) (error \"late\"))")
            assert img.root["s1"] == 1 and "s2" not in img.root
            assert interp.eval("s1") == 1
            assert "unbound" in fails(interp, "s2")

    def test_a_savepoint_rolls_back_only_its_part(self, path):
        """(transaction ...) inside a form: its error rolls back its writes and its namespace entries."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            assert interp.eval("(define t1 1) (define t2 (list 1)) (guard (e (#t 'caught)) "
                               "(transaction (set! t1 2) (set-car! t2 9) (raise 'x)))") == intern("caught")
            assert interp.eval("t1") == 1 and img.root["t1"] == 1
            assert interp.eval("(car t2)") == 1 and img.root["t2"].car == 1


# -- rewind ---------------------------------------------------------------------------


class TestRewind:
    """img.rewind(n): the writer goes on from commit n."""

    def test_rewinding_to_a_commit_without_object_memory(self, path):
        """Rewinding to commit 0 is refused, or at least leaves the image openable."""
        with image.open(path) as img:
            img.root["x"] = 1
            try:
                img.rewind(0)
            except Exception:   # refused: what we want
                refused = True
            else:
                refused = False
                try:
                    img.system["touched"] = 1
                except Exception:
                    pass
        with image.open(path) as img:
            assert refused or img.root is not None

    def test_an_interpreter_follows_a_rewind(self, path):
        """After img.rewind(n), globals read as they were at commit n."""
        with image.open(path) as img:
            interp = vm.Interpreter(img)
            interp.eval("(define x 1) (define l (list 1 2))")
            n = img.head
            interp.eval("(define x 2)")
            img.rewind(n)
            assert interp.eval("x") == 1
            assert interp.eval("(car l)") == 1

    def test_a_rewound_image_continues_from_the_old_commit(self, path):
        """After a rewind, the next commit's state is the old one plus the new change, and it is durable."""
        with image.open(path) as img:
            img.root["x"] = 1
            n = img.head
            img.root["x"] = 2
            img.rewind(n)
            assert img.root["x"] == 1 and img.base == n
            img.root["y"] = 3
        with image.open(path, readonly=True) as img:
            assert dict(img.root) == {"x": 1, "y": 3}


# -- the chunked vector's prefix starts -------------------------------------------------


class TestVectorStarts:
    """Inserts, deletes and savepoint rollbacks against a Python list model (objmem.c vectors)."""

    def test_random_edits_match_a_list(self, tmp_path):
        """Random inserts, deletes, slice deletes and rolled-back savepoints keep the vector equal to a list."""
        rng = random.Random(20240607)
        with image.open(str(tmp_path / "v.image"), page_size=1024) as img:
            img.root["v"] = []
            v, model = img.root["v"], []
            with img.transaction():
                for i in range(9000):   # past one level of 1 KiB nodes
                    v.append(i)
                    model.append(i)
            for step in range(1500):
                op = rng.random()
                with img.transaction():
                    if op < 0.4:
                        i, x = rng.randrange(len(model) + 1), rng.randrange(10 ** 6)
                        v.insert(i, x)
                        model.insert(i, x)
                    elif op < 0.75 and model:
                        i = rng.randrange(len(model))
                        del v[i]
                        del model[i]
                    elif op < 0.9:
                        try:
                            with img.transaction():
                                for _ in range(rng.randrange(1, 200)):
                                    v.insert(rng.randrange(len(model) + 1), -1)
                                raise LookupError
                        except LookupError:
                            pass
                    elif model:
                        i, n = rng.randrange(len(model)), rng.randrange(1, 300)
                        del v[i:i + n]
                        del model[i:i + n]
                if step % 300 == 0:
                    assert list(v) == model
                    img.check()
            assert list(v) == model
            with img.transaction():
                while model:
                    i = rng.randrange(len(model))
                    del v[i]
                    del model[i]
            assert len(v) == 0
            img.check()
            v.append("again")
            assert list(v) == ["again"]


# -- leaks -------------------------------------------------------------------------------


def test_an_image_with_an_interpreter_is_freed_after_close(path):
    """A closed image is collectable once its interpreter is dropped."""
    img = image.open(path)
    interp = vm.Interpreter(img)
    interp.eval("(define x (list 1 2))")
    img.close()
    ref = weakref.ref(img)
    del img, interp
    gc.collect()
    assert ref() is None
