"""Bad input (issue 5, item 10): hypothesis-generated engine calls with
wrong types, empty and oversized keys, \\x00/\\xff keys, int64 edge
timestamps and overflowing TTLs raise only the documented exceptions and
leave the store equal to its model (bad_input_model.py, run in a child).

The JsonDB half of item 10 (non-JSON documents, invalid keys and key
paths) is test_jsondb_bad_input.py.
"""
from __future__ import annotations

import os

import pytest

from helpers.common import FULL, run_model_child

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_input_model.py")


def run(tmp_path, examples, seed):
    return run_model_child(CHILD, tmp_path / "db", examples, seed)


def test_bad_input_only_documented_errors_and_store_matches_model(tmp_path):
    run(tmp_path, 400 if FULL else 60, seed=1)


@pytest.mark.slow
def test_bad_input_many_examples(tmp_path):
    out = run(tmp_path, 2000, seed=int(os.environ.get("FLOWDB_SEED", "2")))
    print(f"\nFIGURES bad input: {out}")
