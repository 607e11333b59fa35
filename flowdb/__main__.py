"""`python -m flowdb`: the command line.

    python -m flowdb demo [--dir DIR] [--records N] [--series S]
    python -m flowdb bench [--records N] [--quick] [--json]   (same as python -m flowdb.bench)
"""
from __future__ import annotations

import argparse
import sys


def _positive(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowdb",
        description="flowdb: an embedded LSM-tree storage engine for time-series records.")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    demo = sub.add_parser(
        "demo", help="ingest sensor readings, query them, print throughput and storage stats",
        description="Ingest `--records` sensor readings from `--series` sensors (one per series "
                    "per second, interleaved, batches of 1,000, SyncMode.interval_ms(100)), flush, "
                    "then run the typical reads and print their throughput and engine.stats(). "
                    "Every answer is checked against the data written.")
    demo.add_argument("--dir", default="./flowdb_data",
                      help="data directory; emptied first if it holds flowdb data (default: %(default)s)")
    demo.add_argument("--records", type=_positive, default=1_000_000,
                      help="readings to ingest (default: %(default)s)")
    demo.add_argument("--series", type=_positive, default=1000,
                      help="number of sensor series (default: %(default)s)")

    sub.add_parser("bench", add_help=False,
                   help="the flowdb benchmark (python -m flowdb.bench; see bench --help)")

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from flowdb import bench
        return bench.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from flowdb._demo import run_demo
        return run_demo(args.dir, args.records, args.series)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
