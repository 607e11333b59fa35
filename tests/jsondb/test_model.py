"""JsonDB against a plain-Python model of stores and indexes (hypothesis).

Random puts, put_autos, deletes, clears, index creation/deletion and
transactions (some aborted, some with failing operations); after every step
every store and every index lists exactly what the model says, in key
order; the same after reopen.
"""
import shutil
import tempfile

import pytest

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, rule,
                                 run_state_machine_as_test)

from flowdb import ConstraintError, SyncMode
from flowdb.jsondb import JsonDB, _keys
from helpers.common import backend

STORES = {"a": False, "b": True}                 # name -> auto_increment
INDEXES = {                                      # name -> (key_paths, multi_entry)
    "x": (["x"], False), "y": (["y"], False), "xy": (["x", "y"], False),
    "tags": (["tags"], True), "deep": (["o.p"], False),
}
pks = st.one_of(st.integers(-3, 6), st.sampled_from(["k", "l", "m"]), st.just([1, "z"]))
vals = st.one_of(st.none(), st.booleans(), st.integers(0, 3), st.sampled_from(["p", "q"]),
                 st.lists(st.integers(0, 2), max_size=2))
docs = st.fixed_dictionaries({}, optional={"x": vals, "y": vals,
                                           "tags": st.lists(vals, max_size=3),
                                           "o": st.fixed_dictionaries({"p": vals})})


def model_entries(docs_by_pk, paths, multi):
    parts = tuple(_keys.parse_key_path(p) for p in paths)
    out = []
    for pk, doc in docs_by_pk.items():
        for k in _keys.index_keys(doc, parts, multi):
            out.append((k, pk))
    return sorted(out)


class Model(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="jsondb-model-")
        self.db = self._open()
        self.docs = {s: {} for s in STORES}             # store -> enc pk -> doc
        self.gen = {s: 1 for s in STORES}
        self.idx = {s: {} for s in STORES}              # store -> name -> (paths, unique, multi)
        for s, auto in STORES.items():
            self.db.create_object_store(s, "id", auto_increment=auto)

    def _open(self):
        return JsonDB.open(self.dir, auto_background=False, memtable_size_mb=1,
                           wal_sync_mode=SyncMode.interval_ms(1000), storage_backend=backend())

    def teardown(self):
        if hasattr(self, "db"):
            self.db.shutdown()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model's write rules --------------------------------------------------------

    def _violates(self, store, docs_by_pk):
        for name, (paths, unique, multi) in self.idx[store].items():
            if unique:
                ks = [k for k, _ in model_entries(docs_by_pk, paths, multi)]
                if len(ks) != len(set(ks)):
                    return True
        return False

    def _apply_put(self, state, store, doc, auto, add):
        """Returns the new state or raises ConstraintError like the db should."""
        docs, gen = dict(state[0]), dict(state[1])
        if auto:
            if gen[store] > 2**53:
                raise ConstraintError("exhausted")
            doc = dict(doc, id=gen[store])
            gen[store] += 1
        else:
            k = doc["id"]
            if isinstance(k, int) and k >= gen[store]:
                gen[store] = k + 1
        enc = _keys.encode(doc["id"])
        sd = dict(docs[store])
        if (add or auto) and enc in sd:
            raise ConstraintError("exists")
        sd[enc] = doc
        if self._violates(store, sd):
            raise ConstraintError("unique")
        docs[store] = sd
        return docs, gen

    def _apply_delete(self, state, store, pk):
        docs = dict(state[0])
        sd = dict(docs[store])
        sd.pop(_keys.encode(pk), None)
        docs[store] = sd
        return docs, state[1]

    def _run(self, target, state, op):
        kind, store, arg = op
        if kind == "put" or kind == "add":
            try:
                new = self._apply_put(state, store, arg, False, kind == "add")
            except ConstraintError:
                try:
                    getattr(target, kind)(store, arg)
                except ConstraintError:
                    return state
                raise AssertionError(f"{kind} should have failed")
            getattr(target, kind)(store, arg)
            return new
        if kind == "auto":
            new = self._apply_put(state, store, arg, True, False)  # never a unique clash here?
            target.put_auto(store, arg)
            return new
        if kind == "delete":
            target.delete(store, arg)
            return self._apply_delete(state, store, arg)
        if kind == "clear":
            target.clear(store)
            docs = dict(state[0])
            docs[store] = {}
            return docs, state[1]
        raise AssertionError(kind)

    # -- rules ----------------------------------------------------------------------------

    ops = st.one_of(
        st.tuples(st.sampled_from(["put", "add"]), st.sampled_from(list(STORES)),
                  st.builds(lambda pk, d: dict(d, id=pk), pks, docs)),
        st.tuples(st.just("delete"), st.sampled_from(list(STORES)), pks),
        st.tuples(st.just("clear"), st.sampled_from(list(STORES)), st.none()),
    )

    @rule(op=ops)
    def single(self, op):
        state = (self.docs, self.gen)
        self.docs, self.gen = self._run(self.db, state, op)

    @rule(d=docs)
    def put_auto(self, d):
        state = (self.docs, self.gen)
        try:
            new = self._apply_put(state, "b", d, True, False)
        except ConstraintError:
            try:
                self.db.put_auto("b", d)
            except ConstraintError:
                return
            raise AssertionError("put_auto should have failed")
        self.db.put_auto("b", d)
        self.docs, self.gen = new

    @rule(batch=st.lists(ops, min_size=1, max_size=6), abort=st.booleans())
    def transaction(self, batch, abort):
        state = (self.docs, self.gen)
        tx = self.db.transaction(list(STORES), "readwrite")
        for op in batch:
            state = self._run(tx, state, op)
            for s in STORES:                              # read-your-writes, both ways
                want = sorted(state[0][s])
                assert [_keys.encode(d["id"]) for d in tx.scan(s)] == want
                assert [_keys.encode(pk) for _, pk, _ in tx.open_cursor(s, direction="prev")] \
                    == want[::-1]
        if abort:
            tx.abort()
        else:
            tx.commit()
            self.docs, self.gen = state

    @rule(store=st.sampled_from(list(STORES)), name=st.sampled_from(list(INDEXES)),
          unique=st.booleans())
    def create_index(self, store, name, unique):
        paths, multi = INDEXES[name]
        if name in self.idx[store]:
            return
        trial = dict(self.idx[store])
        trial[name] = (paths, unique, multi)
        saved, self.idx[store] = self.idx[store], trial
        bad = self._violates(store, self.docs[store])
        self.idx[store] = saved
        try:
            self.db.create_index(store, name, paths, unique=unique, multi_entry=multi)
        except ConstraintError:
            assert bad
            return
        assert not bad
        self.idx[store][name] = (paths, unique, multi)

    @rule(store=st.sampled_from(list(STORES)), name=st.sampled_from(list(INDEXES)))
    def delete_index(self, store, name):
        if name in self.idx[store]:
            self.db.delete_index(store, name)
            del self.idx[store][name]

    @rule()
    def reopen(self):
        self.db.shutdown()
        self.db = self._open()

    @rule()
    def flush(self):
        self.db.engine.flush()

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def matches_model(self):
        if not hasattr(self, "db"):
            return
        for s in STORES:
            want = [self.docs[s][k] for k in sorted(self.docs[s])]
            assert self.db.scan(s) == want
            assert self.db.count(s) == len(want)
            assert sorted(i.name for i in self.db.get_store(s).indexes) == sorted(self.idx[s])
            for name, (paths, unique, multi) in self.idx[s].items():
                got = [(_keys.encode(k), _keys.encode(pk))
                       for k, pk, _ in self.db.open_cursor(s, index=name)]
                assert got == model_entries(self.docs[s], paths, multi), (s, name)
                back = [(_keys.encode(k), _keys.encode(pk))
                        for k, pk, _ in self.db.open_cursor(s, index=name, direction="prev")]
                assert back == got[::-1], (s, name)


Model.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
TestJsonDBModel = Model.TestCase


@pytest.mark.slow
def test_model_long():
    run_state_machine_as_test(Model, settings=settings(
        max_examples=400, stateful_step_count=50, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
