"""Typed API: put_doc/get_doc/delete_doc with dataclasses, pydantic models and dicts."""
from dataclasses import dataclass, field

import pytest

from flowdb import DataError


@dataclass
class Device:
    id: str
    name: str
    tags: list = field(default_factory=list)


def test_dataclass_roundtrip(db):
    db.create_object_store("d", "id")
    assert db.put_doc("d", Device("x", "lamp", ["a"])) == "x"
    assert db.get_doc("d", "x", Device) == Device("x", "lamp", ["a"])
    assert db.get_doc("d", "x", dict) == {"id": "x", "name": "lamp", "tags": ["a"]}
    db.delete_doc("d", "x")
    assert db.get_doc("d", "x", Device) is None


def test_dict(db):
    db.create_object_store("d", "id")
    db.put_doc("d", {"id": 1, "v": 2})
    assert db.get_doc("d", 1) == {"id": 1, "v": 2}


def test_not_a_document(db):
    db.create_object_store("d", "id")
    with pytest.raises(DataError):
        db.put_doc("d", object())


def test_pydantic_roundtrip(db):
    pydantic = pytest.importorskip("pydantic")

    class User(pydantic.BaseModel):
        id: int
        email: str
        score: float = 0.0

    db.create_object_store("u", "id")
    db.put_doc("u", User(id=1, email="a@b", score=1.5))
    assert db.get_doc("u", 1, User) == User(id=1, email="a@b", score=1.5)
    assert db.query("u").collect_doc(User) == [User(id=1, email="a@b", score=1.5)]
