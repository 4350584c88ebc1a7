"""The ``koogallery`` command: push files, invoke handlers locally, run the emulator and the demo.

koogallery push usage.jsonl            # exit 0 only when every record was delivered
koogallery invoke usage-push --event events/kafka.json
koogallery emulator --port 0
koogallery demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from koogallery.cli_ledger import DEFAULT_LEDGER_URL, open_cli_ledger
from koogallery.cli_ledger import add_commands as add_ledger_commands
from koogallery.deploy.commands import add_commands as add_deploy_commands
from koogallery.errors import ConfigurationError, KooGalleryError
from koogallery.events import RawRecord

if TYPE_CHECKING:
    from koogallery.pipeline import DeadLetter
    from koogallery.sources import FileFormat

__all__ = ["main"]

_SHOWN_DEAD_LETTERS = 20
"""Dead letters listed in the summary table; ``--dead-letters FILE`` receives all of them."""

_EXIT_OK = 0
_EXIT_INCOMPLETE = 1
_EXIT_USAGE = 2
_EXIT_CONFIGURATION = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["emulator"]:
        from koogallery.emulator.__main__ import main as emulator_main

        return emulator_main(arguments[1:], prog="koogallery emulator")

    parser = _parser()
    args = parser.parse_args(arguments)
    if not hasattr(args, "run"):
        parser.print_help()
        return _EXIT_USAGE
    _log_warnings_to_stderr()
    try:
        code: int = args.run(args)
    except ConfigurationError as error:
        print(f"koogallery: configuration error: {error}", file=sys.stderr)
        return _EXIT_CONFIGURATION
    except KooGalleryError as error:
        print(f"koogallery: {error}", file=sys.stderr)
        return _EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_broken_pipe()
        return _EXIT_OK
    return code


def _log_warnings_to_stderr() -> None:
    """Warnings of the library (late records, conflicts) as plain lines on standard error.

    A command that runs a handler replaces this with the function's JSON lines.
    """
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("koogallery: %(levelname)s: %(message)s"))
    handler.set_name("koogallery-cli")
    root = logging.getLogger("koogallery")
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False


def _quiet_broken_pipe() -> None:
    """The reader of our output went away (``| head``): stop without a traceback."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koogallery",
        description="Usage push, bill fetch and reconciliation for KooGallery sellers.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    push = commands.add_parser(
        "push",
        help="push usage records from a JSON, JSON Lines or CSV file",
        description="Push usage records through the same pipeline as the function. "
        "Exit code 0 only when nothing was dead-lettered or left pending.",
    )
    push.add_argument("file", help="a .json, .jsonl or .csv file, or - for standard input")
    push.add_argument("--format", choices=["json", "jsonl", "csv"], help="default: by file name")
    push.add_argument("--batch-size", type=int, default=5000, help="records per pipeline batch")
    push.add_argument(
        "--dead-letters", type=Path, help="write every dead letter here (JSON Lines)"
    )
    push.add_argument("--endpoint", help="overrides KOOGALLERY_ENDPOINT")
    push.add_argument(
        "--usage-api", choices=["v2", "v1", "legacy"], help="overrides KOOGALLERY_USAGE_API"
    )
    push.add_argument("--json", action="store_true", help="print the summary as JSON")
    push.add_argument(
        "--ledger", help=f"ledger URL (default: KOOGALLERY_LEDGER_URL, else {DEFAULT_LEDGER_URL})"
    )
    push.add_argument("--no-ledger", action="store_true", help="push without a ledger")
    push.set_defaults(run=_run_push)

    invoke = commands.add_parser(
        "invoke",
        help="run a function's handler locally on an event file",
        description="Run the handler with a FunctionGraph-like context and print its result.",
    )
    invoke.add_argument("function", choices=["usage-push", "bill-fetch"])
    invoke.add_argument("--event", required=True, help="event JSON file, or - for standard input")
    invoke.add_argument("--timeout", type=float, default=30.0, help="the function's timeout (s)")
    invoke.add_argument(
        "--user-data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a user data entry for the context (repeatable)",
    )
    invoke.set_defaults(run=_run_invoke)

    commands.add_parser(
        "emulator",
        help="run the local KooGallery emulator (koogallery emulator --help)",
        add_help=False,
    )

    events = commands.add_parser("events", help="sample trigger events")
    event_commands = events.add_subparsers(title="events commands", metavar="COMMAND")
    render = event_commands.add_parser(
        "render", help="print a sample event with its {{HOUR-N}} placeholders filled"
    )
    render.add_argument("file", help="an event file, e.g. events/kafka.json")
    render.set_defaults(run=_run_render)

    add_ledger_commands(commands)
    add_deploy_commands(commands)

    reconcile = commands.add_parser(
        "reconcile",
        help="compare a cycle's bill with the usage the ledger delivered",
        description="Reconcile a bill cycle. Exit code 1 when a finding is above the tolerance.",
    )
    reconcile.add_argument("--cycle", required=True, help="the bill cycle, YYYY-MM")
    reconcile.add_argument("--format", choices=["table", "csv", "json"], default="table")
    reconcile.add_argument(
        "--fetch", action="store_true", help="fetch the bill again even if one is stored"
    )
    reconcile.add_argument(
        "--ledger", help=f"ledger URL (default: KOOGALLERY_LEDGER_URL, else {DEFAULT_LEDGER_URL})"
    )
    reconcile.set_defaults(run=_run_reconcile)

    demo = commands.add_parser(
        "demo",
        help="push a day of usage through the real handler into an in-process emulator",
    )
    demo.add_argument("--input", type=Path, help="JSON Lines usage records to use instead")
    demo.add_argument("--seed", type=int, default=20261204, help="seed of the generated usage")
    demo.set_defaults(run=_run_demo)
    return parser


def _run_push(args: argparse.Namespace) -> int:
    from koogallery.client import KooGalleryClient
    from koogallery.config import Settings
    from koogallery.pipeline import Summary, UsagePipeline
    from koogallery.sources import detect_format, read_records

    settings = Settings.from_env(endpoint=args.endpoint, usage_api=args.usage_api)
    source: Path | IO[str] = sys.stdin if args.file == "-" else Path(args.file)
    if isinstance(source, Path) and not source.is_file():
        print(f"koogallery: no such file: {source}", file=sys.stderr)
        return _EXIT_USAGE

    total = Summary()
    progress = _Progress(sys.stderr)
    letters = _DeadLetterSink(args.dead_letters)
    ledger = None if args.no_ledger else open_cli_ledger(args.ledger, settings)
    try:
        with KooGalleryClient(settings) as client:
            pipeline = UsagePipeline(client, ledger=ledger, lease_seconds=settings.lease_seconds)
            if ledger is not None:
                total.outbox = pipeline.drain_outbox()
                letters.write_outbox(total.outbox)
            for batch in _batches(read_records(source, args.format), args.batch_size):
                summary = pipeline.push_raw(batch)
                letters.write(summary)
                total.merge(summary)
                progress.update(total)
    finally:
        if ledger is not None:
            ledger.close()
        progress.finish(total)
        letters.close()

    if args.json:
        print(json.dumps(total.to_dict(), indent=2))
    else:
        _print_summary_table(total, letters.path, args.format or detect_format(args.file))
    return _EXIT_OK if total.complete else _EXIT_INCOMPLETE


def _batches(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    iterator = iter(records)
    while batch := list(islice(iterator, max(1, size))):
        yield batch


class _DeadLetterSink:
    """Writes dead letters as they happen, so a large file's summary stays small in memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stream = path.open("w", encoding="utf-8") if path else None
        self._kept = 0

    def write(self, summary: Any) -> None:
        """Write every dead letter of a batch; keep only the first few for the final table."""
        self._write_all(summary.dead_letters)
        summary.dead_letters = summary.dead_letters[: max(0, _SHOWN_DEAD_LETTERS - self._kept)]
        self._kept += len(summary.dead_letters)

    def write_outbox(self, outbox: Any) -> None:
        self._write_all(outbox.dead_letters)

    def _write_all(self, letters: Any) -> None:
        if self._stream is not None:
            for letter in letters:
                self._stream.write(json.dumps({**letter.to_dict(), "raw": letter.raw}) + "\n")

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class _Progress:
    """A one-line progress report, only when the output is a terminal."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._enabled = stream.isatty()
        self._started = time.monotonic()

    def update(self, summary: Any) -> None:
        if not self._enabled:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = summary.received / elapsed
        self._stream.write(
            f"\r{summary.received:>10,} records  {summary.accepted:>10,} accepted  "
            f"{summary.dead_lettered:>6,} dead  {rate:>9,.0f}/s"
        )
        self._stream.flush()

    def finish(self, summary: Any) -> None:
        if self._enabled:
            self.update(summary)
            self._stream.write("\n")


def _place_in_file(letter: DeadLetter, file_format: FileFormat) -> str:
    """Where a person finds the record: its line in JSON Lines and CSV (counted from 1, as
    editors count), its index in a JSON array (counted from 0, as JSON paths count)."""
    if letter.position is None:
        return str(letter.origin.source)
    if file_format == "json":
        return f"{letter.origin.source} [{letter.position}]"
    return f"{letter.origin.source} line {letter.position}"


def _print_summary_table(
    summary: Any, dead_letter_path: Path | None, file_format: FileFormat
) -> None:
    rows = [
        ("received", summary.received),
        ("accepted", summary.accepted),
        ("duplicates", summary.duplicates),
        ("dead-lettered", summary.dead_lettered),
        ("pending", summary.pending),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>12,}")
    outbox = summary.outbox
    if outbox is not None and outbox.drained:
        print(
            f"{'outbox drained':<{width}}  {outbox.drained:>12,}  (left pending by earlier runs: "
            f"{outbox.accepted:,} accepted, {outbox.duplicates:,} duplicates, "
            f"{outbox.dead_lettered:,} dead-lettered, {outbox.pending:,} still pending)"
        )
        for letter in outbox.dead_letters[:20]:
            print(f"dead letter  {letter.origin.label()}: {letter.reason}")
    if summary.late:
        print(f"{'late':<{width}}  {summary.late:>12,}  (after the collection cut-off)")
    if summary.pending_reason:
        print(f"pending because: {summary.pending_reason}")
    for letter in summary.dead_letters:
        print(f"dead letter  {_place_in_file(letter, file_format)}: {letter.reason}")
    if summary.dead_lettered > len(summary.dead_letters):
        more = summary.dead_lettered - len(summary.dead_letters)
        where = f"all are in {dead_letter_path}" if dead_letter_path else "use --dead-letters FILE"
        print(f"... and {more:,} more dead letters ({where})")


def _run_invoke(args: argparse.Namespace) -> int:
    from koogallery.events import render_sample_event
    from koogallery.functiongraph import LocalContext

    text = _read_text(args.event)
    if text is None:
        return _EXIT_USAGE
    try:
        event = json.loads(render_sample_event(text, datetime.now(timezone.utc)))
    except ValueError as error:
        print(f"koogallery: {args.event} is not a JSON event: {error}", file=sys.stderr)
        return _EXIT_USAGE
    user_data = dict(_key_value(item) for item in args.user_data)
    context = LocalContext(user_data=user_data, timeout_seconds=args.timeout)

    handler = load_handler(args.function)
    failure: dict[str, str] | None = None
    with contextlib.redirect_stdout(sys.stderr):
        try:
            result = handler(event, context)
        except KooGalleryError as error:
            failure = {"errorMessage": str(error), "errorType": type(error).__name__}
    if failure is not None:
        print(json.dumps(failure, indent=2))
        return _EXIT_INCOMPLETE
    print(json.dumps(result, indent=2, default=str))
    return _EXIT_OK


def _key_value(item: str) -> tuple[str, str]:
    key, separator, value = item.partition("=")
    if not separator or not key:
        raise SystemExit(f"koogallery: --user-data takes KEY=VALUE, got {item!r}")
    return key, value


def load_handler(function: str) -> Any:
    """The handler of ``function``: the repository's entry point file when it is there.

    Running ``functions/<name>/index.py`` (rather than the library call behind it) means a local
    invoke executes exactly the file that is packaged and deployed.
    """
    import importlib.util

    module_name = function.replace("-", "_")
    index = Path(__file__).resolve().parents[2] / "functions" / module_name / "index.py"
    if index.is_file():
        spec = importlib.util.spec_from_file_location(f"{module_name}_index", index)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.handler

    if module_name == "bill_fetch":
        from koogallery.bill_fetch import handle_bill_fetch

        return handle_bill_fetch
    from koogallery.usage_push import handle_usage_push

    return handle_usage_push


def _run_reconcile(args: argparse.Namespace) -> int:
    from koogallery.bill_fetch import fetch_and_reconcile, reconcile_cycle
    from koogallery.bills import BillDocument, parse_cycle
    from koogallery.config import Settings

    parse_cycle(args.cycle)
    settings = Settings.from_env()
    with open_cli_ledger(args.ledger, settings) as ledger:
        stored = None if args.fetch else ledger.latest_bill(site=settings.site, cycle=args.cycle)
        if stored is None or stored.content is None:
            result = fetch_and_reconcile(
                settings, args.cycle, ledger=ledger, now=datetime.now(timezone.utc)
            )
            if result.get("reconciliation") is None:
                print(
                    f"koogallery: no bill for {args.cycle}: {result['status']} "
                    f"{result.get('error_code') or ''} {result.get('error_msg') or ''}".rstrip(),
                    file=sys.stderr,
                )
                return _EXIT_INCOMPLETE
            stored = ledger.latest_bill(site=settings.site, cycle=args.cycle)
        assert stored is not None and stored.content is not None
        report = reconcile_cycle(settings, ledger, BillDocument.from_canonical(stored.content))

    if args.format == "json":
        print(report.to_json())
    elif args.format == "csv":
        print(report.to_csv(), end="")
    else:
        print(report.to_table())
        print(f"(bill version {stored.version}, fetched {stored.run_at:%Y-%m-%d %H:%M}Z)")
    return _EXIT_INCOMPLETE if report.has_findings_above_tolerance else _EXIT_OK


def _run_render(args: argparse.Namespace) -> int:
    from koogallery.events import render_sample_event

    text = _read_text(args.file)
    if text is None:
        return _EXIT_USAGE
    print(render_sample_event(text, datetime.now(timezone.utc)), end="")
    return _EXIT_OK


def _read_text(name: str) -> str | None:
    """A file's text (``-`` for standard input), or None after saying why it cannot be read."""
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as error:
        print(f"koogallery: cannot read {name}: {error.strerror}", file=sys.stderr)
        return None


def _run_demo(args: argparse.Namespace) -> int:
    from koogallery.demo import run_demo

    code: int = run_demo(input_path=args.input, seed=args.seed)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
