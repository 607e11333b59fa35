"""Bad input (issue 5, item 10): hypothesis-generated engine calls with
wrong types, empty and oversized keys, \\x00/\\xff keys, int64 edge
timestamps and overflowing TTLs raise only the documented exceptions and
leave the store equal to its model (bad_input_model.py, run in a child).

The JsonDB half of item 10 (non-JSON documents, invalid keys and key
paths) is test_jsondb_bad_input.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.common import FULL, child_env

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_input_model.py")


def run(tmp_path, examples, seed):
    p = subprocess.run([sys.executable, CHILD, str(tmp_path / "db"), str(examples), str(seed)],
                       env=child_env(), capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["refused"] > 0 and out["accepted"] > 0, out
    return out


def test_bad_input_only_documented_errors_and_store_matches_model(tmp_path):
    run(tmp_path, 400 if FULL else 60, seed=1)


@pytest.mark.slow
def test_bad_input_many_examples(tmp_path):
    out = run(tmp_path, 2000, seed=int(os.environ.get("FLOWDB_SEED", "2")))
    print(f"\nFIGURES bad input: {out}")
