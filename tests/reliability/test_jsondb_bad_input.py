"""JsonDB bad input (issue 5, item 10, the document half): hypothesis-
generated JsonDB calls with non-JSON documents, invalid keys and invalid key
paths raise only the exceptions API.md sections 2 and 3 document, and the
database equals a plain-Python model of its stores after every call and
after a reopen (jsondb_bad_input_model.py, run in a child process)."""
from __future__ import annotations

import os

import pytest

from helpers.common import FULL, run_model_child

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jsondb_bad_input_model.py")


def run(tmp_path, examples, seed):
    return run_model_child(CHILD, tmp_path / "db", examples, seed)


def test_jsondb_bad_input_only_documented_errors_and_store_matches_model(tmp_path):
    run(tmp_path, 600 if FULL else 150, seed=1)


@pytest.mark.slow
def test_jsondb_bad_input_many_examples(tmp_path):
    out = run(tmp_path, 2000, seed=int(os.environ.get("FLOWDB_SEED", "2")))
    print(f"\nFIGURES JsonDB bad input: {out}")
