"""``./scripts/bench``: how fast, how light, how quick to start the usage push path is.

    ./scripts/bench                 # every section at full size (a few minutes); prints a table
    ./scripts/bench --quick         # the same sections, small (under a minute), for CI
    ./scripts/bench --json          # the report as JSON instead of the table
    ./scripts/bench --only memory   # some sections only (repeatable)

Every figure is set beside a baseline measured in the same run, and the report gives the
ratio: absolute times on a shared machine say more about the neighbours than about the code.
Nothing here leaves the machine: a guard refuses every connection that is not loopback, and
the KooGallery emulator runs on 127.0.0.1. Targets are reported, never enforced: the exit
status is 1 only when a section could not run at all, or something tried to leave loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from benchmarks import footprint, throughput
from benchmarks.loopback import clean_environment, install_guard, refused
from benchmarks.report import Section, render_table

__all__ = ["SECTIONS", "main"]

SECTIONS = ("client_overhead", "end_to_end", "cold_start", "memory", "package", "emulator")


@dataclass(frozen=True)
class Sizes:
    """How much each section does, for the full run or the quick one."""

    client_records: tuple[int, ...]
    client_rounds_small: int
    end_to_end_records: int
    end_to_end_rounds: int
    cold_start_runs: int
    memory_records: tuple[int, ...]
    emulator_requests: int

    def client_rounds(self, size: int) -> int:
        """Best of several rounds for small sizes, of two for a million records."""
        return self.client_rounds_small if size <= 100_000 else min(2, self.client_rounds_small)


FULL = Sizes(
    client_records=(10_000, 1_000_000),
    client_rounds_small=5,
    end_to_end_records=100_000,
    end_to_end_rounds=3,
    cold_start_runs=15,
    memory_records=(100_000, 1_000_000),
    emulator_requests=100,
)

QUICK = Sizes(
    client_records=(2_000, 10_000),
    client_rounds_small=1,
    end_to_end_records=3_000,
    end_to_end_rounds=1,
    cold_start_runs=3,
    memory_records=(2_000, 20_000),
    emulator_requests=5,
)


def _runners(sizes: Sizes) -> dict[str, Callable[[], Section]]:
    return {
        "client_overhead": lambda: throughput.client_overhead(
            sizes.client_records, sizes.client_rounds
        ),
        "end_to_end": lambda: throughput.end_to_end(
            sizes.end_to_end_records, sizes.end_to_end_rounds
        ),
        "cold_start": lambda: footprint.cold_start(sizes.cold_start_runs),
        "memory": lambda: footprint.memory(sizes.memory_records),
        "package": footprint.package,
        "emulator": lambda: throughput.emulator_throughput(sizes.emulator_requests),
    }


def _run(name: str, runner: Callable[[], Section]) -> Section:
    """Run one section; a failure is reported in its place, and the other sections still run.

    Whatever a section prints (the product's JSON log lines, say) goes to stderr, so that
    stdout holds the report alone.
    """
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            section = runner()
    except Exception as error:  # a broken section must not hide the others' figures
        section = Section(name, name, status="failed", reason=f"{type(error).__name__}: {error}")
    section.seconds = time.perf_counter() - began
    print(f"bench: {name} {section.status} in {section.seconds:.1f}s", file=sys.stderr)
    return section


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks of the usage push path, each beside a baseline of the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (< 1 minute)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this section (repeatable)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections and print the report; 1 when a section failed to run."""
    args = _parser().parse_args(argv)
    install_guard()
    clean_environment()

    sizes = QUICK if args.quick else FULL
    runners = _runners(sizes)
    began = time.perf_counter()
    sections = [_run(name, runners[name]) for name in args.only or SECTIONS]
    seconds = time.perf_counter() - began

    if args.json:
        report = {
            "mode": "quick" if args.quick else "full",
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "refused_non_loopback": refused,
            "sections": {section.name: section.to_dict() for section in sections},
        }
        print(json.dumps(report, indent=2))
    else:
        print(render_table(sections))
        network = "loopback only" if not refused else f"REFUSED {refused}"
        print(f"({'quick' if args.quick else 'full'} run, {seconds:.0f}s; network: {network})")

    failed = any(section.status == "failed" for section in sections)
    return 1 if failed or refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
