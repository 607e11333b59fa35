"""Child process for test_power_loss.py: writes batches under FaultFS, then
cuts the power.

usage: power_child.py DATA_DIR GEN THREADS SYNC CUT_AFTER_S KEEP SEED [calm] [on=MATCH:N]

Like helpers/writer_child.py (same "ready" / "ack" protocol, same batches),
but the store lives under a FaultFS layer, and after CUT_AFTER_S seconds a
timer thread calls FaultFS.power_cut(KEEP): every byte and directory entry
not made durable by an fsync is dropped and the process exits with
POWER_CUT_EXIT.  CUT_AFTER_S < 0 cuts the power during the open (recovery)
instead: the cut comes -CUT_AFTER_S seconds after the open starts.
"calm": a large memtable and WAL segment and no timed flush, so that under
interval sync most acknowledged batches are still unsynced at the cut.
"on=MATCH:N": cut right after the N-th write (os.write, os.pwrite,
os.copy_file_range) to a file whose path contains MATCH, if that comes
before CUT_AFTER_S.
"""
from __future__ import annotations

import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowdb import Engine                                            # noqa: E402
from helpers.writer_child import config, start_writers              # noqa: E402
from reliability.faultfs import FaultFS, Rule                        # noqa: E402


def main():
    data_dir, gen, threads, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    cut_after, keep, seed = float(sys.argv[5]), sys.argv[6], int(sys.argv[7])
    options = sys.argv[8:]
    fs = FaultFS(data_dir, seed=seed).install()
    for option in options:
        if option.startswith("on="):
            match, n = option[3:].rsplit(":", 1)
            fs.rules.append(Rule("write", match, after=int(n) - 1, times=1, cut=keep))
    timer = threading.Timer(abs(cut_after), fs.power_cut, kwargs={"keep": keep})
    timer.daemon = True
    if cut_after < 0:
        timer.start()
    cfg = config(sync)
    if "calm" in options:
        cfg.update(memtable_size_mb=8, wal_segment_size_mb=8, flush_interval_ms=600_000)
    engine = Engine.open(data_dir, **cfg)
    print("ready", flush=True)
    if cut_after >= 0:
        timer.start()
    for th in start_writers(engine, gen, threads, seed):
        th.join()


if __name__ == "__main__":
    main()
