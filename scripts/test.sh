#!/usr/bin/env bash
# The project's test command (README "Quick start"; .ci/run calls it).
#
#   bash scripts/test.sh [pytest arguments...]
#
# Works from a fresh clone on a machine with only Python 3.11 and gcc (PyPI
# reachable): creates .venv if it is missing, installs flowdb editable with
# its test dependencies, which builds the Cython core, and runs pytest.
#
# Why editable (pip install -e): setuptools then builds the extensions in
# place (flowdb/_core/*.so), so `import flowdb` finds the same files whether
# it comes through the venv or through the source tree on sys.path (pytest
# run from the repository root).  With a plain `pip install .`, the source
# tree's flowdb/ (no .so) would shadow the installed package.  Build
# isolation fetches setuptools and Cython itself (pyproject.toml).
#
# pytest's default selection is the quick tier (-m 'not slow', pyproject.toml);
# pass -m slow, or set FLOWDB_FULL=1, for the long runs.
#
# Without arguments (the whole suite, as CI runs it) it then reruns the
# engine tests against the single-file backend and runs the asv
# smoke check: every benchmark in asv_bench/ once (`asv run --python=same
# --quick`, a few seconds), so a benchmark that breaks or gets a wrong answer
# fails the run.  With arguments only pytest runs.
#
# Environment: PYTHON (interpreter for a new venv; default python3.11, else
# python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
    echo "scripts/test.sh: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
VENV=$(cd "$VENV" && pwd)

echo "scripts/test.sh: installing flowdb[test] (editable; builds flowdb._core)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Rerun against StorageBackendKind.SINGLE_FILE (see below).
SINGLE_FILE_TESTS="tests/test_engine_api.py tests/test_engine_model.py tests/test_engine_errors.py
    tests/test_maintenance.py tests/test_time_index.py tests/test_single_file.py tests/jsondb
    tests/test_latest_answers.py
    tests/reliability/test_kill9.py tests/reliability/test_locking.py
    tests/reliability/test_power_loss.py tests/reliability/test_io_errors.py"

status=0
"$VENV/bin/python" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests; that is a failure" >&2
    status=1
fi

if [ $# -eq 0 ]; then
    # API.md: both storage backends pass the same tests.  The engine-level
    # tests (those that open stores through tests/conftest.py and the crash
    # helpers, which honour FLOWDB_STORAGE_BACKEND) run again on SINGLE_FILE.
    echo "scripts/test.sh: the engine tests again with FLOWDB_STORAGE_BACKEND=single_file"
    # shellcheck disable=SC2086  # word splitting of the list is meant
    FLOWDB_STORAGE_BACKEND=single_file "$VENV/bin/python" -m pytest -q $SINGLE_FILE_TESTS \
        || { [ "$status" -ne 0 ] || status=1; }
    echo "scripts/test.sh: asv smoke run (asv_bench, every benchmark once)"
    asv_status=0
    # asv keeps machine details in ~/.asv-machine.json; --yes takes the defaults.
    (cd asv_bench && "$VENV/bin/asv" machine --yes >/dev/null \
        && "$VENV/bin/asv" run --python=same --quick --show-stderr) || asv_status=$?
    if [ "$asv_status" -ne 0 ]; then
        echo "scripts/test.sh: asv smoke run failed (exit $asv_status)" >&2
        [ "$status" -ne 0 ] || status=$asv_status
    fi
fi
exit "$status"
