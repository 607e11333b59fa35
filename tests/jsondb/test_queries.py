"""QueryBuilder: results equal a plain-Python evaluation; the planner's choices."""
import random
from dataclasses import dataclass

import pytest

from flowdb import DataError
from flowdb.jsondb import SortDir, _keys
from flowdb.jsondb._query import json_eq


@pytest.fixture
def people(db):
    db.create_object_store("p", "id")
    db.create_index_on("p", "age", "age")
    db.create_index_on("p", "city", "city")
    db.create_index_on("p", "email", "email", unique=True)
    rnd = random.Random(7)
    docs = []
    for i in range(300):
        d = {"id": i, "age": rnd.randrange(18, 60), "city": rnd.choice(["Oslo", "Rome", "Lima"]),
             "email": f"p{i}@x", "vip": rnd.random() < 0.1}
        if i % 17 == 0:
            del d["age"]
        docs.append(d)
    with db.transaction(["p"], "readwrite") as tx:
        for d in docs:
            tx.put("p", d)
    return db, docs


def keyed(docs, field):
    return sorted((d for d in docs if field in d), key=lambda d: (_keys.encode(d[field]), d["id"]))


def test_where_eq_uses_index(people):
    db, docs = people
    q = db.query("p").where_eq("city", "Oslo")
    assert "index 'city'" in q.explain()
    assert q.collect() == [d for d in docs if d["city"] == "Oslo"]


def test_most_selective_index_chosen(people):
    db, docs = people
    q = db.query("p").where_eq("city", "Oslo").where_eq("email", "p5@x")
    assert "index 'email'" in q.explain()
    assert q.collect() == [d for d in docs if d["id"] == 5 and d["city"] == "Oslo"]


def test_where_range_and_filter(people):
    db, docs = people
    q = db.query("p").where_range("age", 20, 30).where_eq("vip", True)
    exp = [d for d in keyed(docs, "age") if 20 <= d["age"] < 30 and d["vip"] is True]
    assert "index 'age'" in q.explain() and "filter where_eq(vip)" in q.explain()
    assert q.collect() == exp


def test_where_in(people):
    db, docs = people
    got = db.query("p").where_in("city", ["Lima", "Rome", "Lima"]).collect()
    assert sorted(d["id"] for d in got) == [d["id"] for d in docs if d["city"] in ("Lima", "Rome")]


def test_order_by_with_limit_walks_index(people):
    db, docs = people
    q = db.query("p").order_by("age", SortDir.DESC).offset(5).limit(10)
    assert "order_by(age) from the index order" in q.explain()
    assert q.collect() == list(reversed(keyed(docs, "age")))[5:15]


def test_order_by_on_unindexed_field_sorts(people):
    db, docs = people
    q = db.query("p").where_eq("city", "Rome").order_by("id", SortDir.DESC).limit(7)
    assert "sort by id (top-k heap)" in q.explain()
    assert q.collect() == keyed([d for d in docs if d["city"] == "Rome"], "id")[::-1][:7]


def test_selective_candidate_beats_order_walk(people):
    db, docs = people
    q = db.query("p").where_eq("email", "p9@x").order_by("age").limit(5)
    assert "index 'email'" in q.explain() and "sort by age" in q.explain()
    assert q.collect() == [d for d in docs if d["id"] == 9 and "age" in d]


def test_unselective_candidate_loses_to_order_walk(people):
    db, docs = people
    q = db.query("p").where_eq("city", "Rome").order_by("email").limit(7)
    assert "order_by(email) from the index order" in q.explain()
    assert q.collect() == keyed([d for d in docs if d["city"] == "Rome"], "email")[:7]


def test_order_by_matches_index_walk_and_sort(people):
    db, docs = people
    a = db.query("p").where_eq("city", "Oslo").order_by("age").collect()
    assert a == keyed([d for d in docs if d["city"] == "Oslo"], "age")


def test_full_scan_filter(people):
    db, docs = people
    q = db.query("p").where_eq("vip", True).offset(2).limit(3)
    assert q.explain().startswith("full scan")
    assert q.collect() == [d for d in docs if d["vip"] is True][2:5]


def test_json_equality():
    assert json_eq(1, 1.0) and not json_eq(True, 1) and not json_eq(0, False)
    assert json_eq({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_eq([1], [1, 2]) and not json_eq("1", 1)


def test_eq_true_is_not_one(db):
    db.create_object_store("s", "id")
    db.create_index_on("s", "v", "v")
    db.put("s", {"id": 1, "v": 1})
    db.put("s", {"id": 2, "v": True})
    db.put("s", {"id": 3, "v": 1.0})
    assert [d["id"] for d in db.query("s").where_eq("v", True).collect()] == [2]
    assert [d["id"] for d in db.query("s").where_eq("v", 1).collect()] == [1, 3]


def test_limit_zero_and_bad_args(people):
    db, _ = people
    assert db.query("p").limit(0).collect() == []
    with pytest.raises(ValueError):
        db.query("p").limit(-1)
    with pytest.raises(DataError):
        db.query("p").where_range("age", None, 3)


def test_collect_doc(people):
    db, docs = people

    @dataclass
    class P:
        id: int
        city: str
        email: str
        vip: bool
        age: int = 0

    got = db.query("p").where_eq("email", "p3@x").collect_doc(P)
    assert got == [P(**docs[3])]
