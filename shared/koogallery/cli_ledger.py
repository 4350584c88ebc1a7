"""The ``koogallery ledger`` and ``koogallery dlq`` commands: look at, export and repair state.

    koogallery ledger status
    koogallery ledger export --format csv --instance inst-1 --from 2026-11-01T00:00:00Z
    koogallery dlq list
    koogallery dlq retry 12 --set usage_value=1.2345
    koogallery dlq discard 13 --note "test data"

Every command reads ``KOOGALLERY_LEDGER_URL`` (or ``--ledger``); the CLI's default is the
embedded SQLite file ``.koogallery/ledger.db`` in the current folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from koogallery.errors import ConfigurationError

if TYPE_CHECKING:
    from koogallery.config import Settings
    from koogallery.ledger import Ledger

__all__ = ["DEFAULT_LEDGER_URL", "add_commands", "ledger_url", "open_cli_ledger"]

DEFAULT_LEDGER_URL = "sqlite:///.koogallery/ledger.db"

_EXPORT_COLUMNS = (
    "metering_sn",
    "instance_id",
    "begin_time",
    "end_time",
    "usage_value",
    "relate_pkg_instance",
    "status",
    "attempts",
    "first_seen",
    "last_seen",
    "settled_at",
    "last_error",
)


def add_commands(commands: Any) -> None:
    """Register ``ledger`` and ``dlq`` on the main parser's sub-parsers."""
    ledger = commands.add_parser("ledger", help="the usage ledger: status and export")
    ledger_commands = ledger.add_subparsers(title="ledger commands", metavar="COMMAND")

    status = ledger_commands.add_parser("status", help="counts by status, backlog, next cut-off")
    _ledger_option(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=_run_status)

    export = ledger_commands.add_parser("export", help="every record, as CSV or JSON Lines")
    _ledger_option(export)
    export.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    export.add_argument("--instance", help="only this instance_id")
    export.add_argument("--status", help="only this status (pending, accepted, ...)")
    export.add_argument("--from", dest="begin_from", help="begin_time on or after (ISO-8601)")
    export.add_argument("--to", dest="begin_to", help="begin_time before (ISO-8601)")
    export.add_argument("--output", help="write here instead of standard output")
    export.set_defaults(run=_run_export)

    dlq = commands.add_parser("dlq", help="dead letters: list, show, retry, discard")
    dlq_commands = dlq.add_subparsers(title="dlq commands", metavar="COMMAND")

    listing = dlq_commands.add_parser("list", help="dead letters, oldest first")
    _ledger_option(listing)
    listing.add_argument(
        "--state", choices=["open", "retried", "discarded", "all"], default="open"
    )
    listing.add_argument("--trigger", help="only from this trigger (KAFKA, SMN, FILE, ...)")
    listing.add_argument("--since", help="created on or after (ISO-8601)")
    listing.add_argument("--limit", type=int, help="at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_run_dlq_list)

    show = dlq_commands.add_parser("show", help="one dead letter with its raw message")
    _ledger_option(show)
    show.add_argument("id", type=int)
    show.set_defaults(run=_run_dlq_show)

    retry = dlq_commands.add_parser(
        "retry", help="validate again and push; on success the letter is closed as retried"
    )
    _ledger_option(retry)
    retry.add_argument("ids", type=int, nargs="+", metavar="ID")
    retry.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="correct a field of the record before pushing it (repeatable)",
    )
    retry.set_defaults(run=_run_dlq_retry)

    discard = dlq_commands.add_parser("discard", help="close dead letters without pushing")
    _ledger_option(discard)
    discard.add_argument("ids", type=int, nargs="+", metavar="ID")
    discard.add_argument("--note", help="why, for the record")
    discard.set_defaults(run=_run_dlq_discard)


def _ledger_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger", help=f"ledger URL (default: KOOGALLERY_LEDGER_URL, else {DEFAULT_LEDGER_URL})"
    )


def ledger_url(explicit: str | None) -> str:
    """``--ledger``, else ``KOOGALLERY_LEDGER_URL``, else the CLI's embedded SQLite file."""
    if explicit:
        return explicit
    from koogallery.config import Settings

    settings = Settings.from_env()
    if settings.ledger_url is not None:
        return settings.ledger_url.get_secret_value()
    return DEFAULT_LEDGER_URL


def open_cli_ledger(explicit: str | None, settings: Settings | None = None) -> Ledger:
    """The ledger a command works on (see :func:`ledger_url`), with the configured billing
    mode; every command that reads or writes the ledger opens it here."""
    from koogallery.config import Settings
    from koogallery.ledger import open_ledger

    settings = settings or Settings.from_env()
    return open_ledger(ledger_url(explicit), billing_mode=settings.billing_mode)


def _open(args: argparse.Namespace) -> Ledger:
    return open_cli_ledger(args.ledger)


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    from koogallery.models import parse_time

    try:
        return parse_time(text)
    except ValueError as error:
        raise ConfigurationError(f"{option}: {error}") from None


def _run_status(args: argparse.Namespace) -> int:
    now = datetime.now(timezone.utc)
    with _open(args) as ledger:
        status = ledger.status(now=now)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2))
        return 0

    for record_status, count in status.counts.items():
        print(f"{record_status.value:<14} {count:>12,}")
    age = status.oldest_pending_age
    print(f"{'oldest pending':<14} {'-' if age is None else _duration(age.total_seconds()):>12}")
    print(
        f"{'dead letters':<14} {status.open_dead_letters:>12,} open (messages and records; "
        "see koogallery dlq list)"
    )
    print(f"{'conflicts':<14} {status.conflicts:>12,}")
    print(f"{'attempts':<14} {status.attempts:>12,}")
    cutoff = status.next_collection_cutoff.strftime("%Y-%m-%d %H:%M:%SZ")
    print(f"next {status.billing_mode} collection cut-off: {cutoff}")
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def _run_export(args: argparse.Namespace) -> int:
    from koogallery.ledger import RecordStatus

    status = RecordStatus(args.status) if args.status else None
    begin_from = _moment(args.begin_from, "--from")
    begin_to = _moment(args.begin_to, "--to")
    with _open(args) as ledger:
        rows = ledger.records(
            status=status, instance_id=args.instance, begin_from=begin_from, begin_to=begin_to
        )
        if not args.output:
            _write_rows(sys.stdout, rows, args.format)
            return 0
        with open(args.output, "w", encoding="utf-8", newline="") as stream:
            count = _write_rows(stream, rows, args.format)
    print(f"exported {count:,} records to {args.output}", file=sys.stderr)
    return 0


def _write_rows(stream: IO[str], rows: Any, file_format: str) -> int:
    count = 0
    writer = csv.DictWriter(stream, fieldnames=_EXPORT_COLUMNS, extrasaction="ignore")
    if file_format == "csv":
        writer.writeheader()
    for row in rows:
        entry = row.to_dict()
        if file_format == "csv":
            writer.writerow(entry)
        else:
            stream.write(json.dumps(entry) + "\n")
        count += 1
    return count


def _run_dlq_list(args: argparse.Namespace) -> int:
    state = None if args.state == "all" else args.state
    with _open(args) as ledger:
        letters = ledger.dead_letters(
            state=state,
            origin_trigger=args.trigger,
            since=_moment(args.since, "--since"),
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([letter.to_dict() for letter in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters")
    for letter in letters:
        created = letter.created_at.strftime("%Y-%m-%d %H:%M:%S")
        where = letter.origin.label()
        print(f"{letter.id:>6}  {created}  {letter.state:<9} {where}: {letter.reason}")
    return 0


def _run_dlq_show(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        letter = ledger.dead_letter(args.id)
    if letter is None:
        print(f"koogallery: no dead letter {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(letter.to_dict(), indent=2, default=str))
    return 0


def _run_dlq_retry(args: argparse.Namespace) -> int:
    from koogallery.client import KooGalleryClient
    from koogallery.config import Settings
    from koogallery.events import Message, RawRecord, decode_usage_message
    from koogallery.pipeline import UsagePipeline

    corrections = dict(_field_value(item) for item in args.set)
    settings = Settings.from_env()
    failures = 0
    with _open(args) as ledger, KooGalleryClient(settings) as client:
        pipeline = UsagePipeline(client, ledger=ledger)
        for letter_id in args.ids:
            letter = ledger.dead_letter(letter_id)
            if letter is None or letter.state != "open":
                print(f"{letter_id}: no open dead letter with this id")
                failures += 1
                continue

            if letter.record is not None:
                raw = RawRecord(
                    letter.origin, letter.position, dict(letter.record), None, letter.raw
                )
            else:
                raw = _pick(
                    decode_usage_message(Message(letter.origin, letter.raw)), letter.position
                )
            if raw.data is not None and corrections:
                raw = RawRecord(
                    raw.origin, raw.position, {**raw.data, **corrections}, None, raw.raw
                )
            _reopen(ledger, raw)
            summary = pipeline.push_raw([raw], record_dead_letters=False)

            if summary.accepted + summary.duplicates == 1:
                note = f"retried with {corrections}" if corrections else "retried"
                ledger.resolve_dead_letter(
                    letter_id, state="retried", now=datetime.now(timezone.utc), note=note
                )
                print(
                    f"{letter_id}: delivered ({'accepted' if summary.accepted else 'duplicate'})"
                )
            else:
                reason = (
                    summary.dead_letters[0].reason
                    if summary.dead_letters
                    else summary.pending_reason
                )
                print(f"{letter_id}: still failing, left open: {reason}")
                failures += 1
    return 0 if failures == 0 else 1


def _reopen(ledger: Ledger, raw: Any) -> None:
    """A record KooGallery refused is ``dead_lettered`` in the ledger, which would keep it from
    being pushed again: give it back as ``pending``, with the corrected copy, first."""
    from koogallery.errors import RecordValidationError
    from koogallery.models import UsageRecord

    if raw.data is None:
        return
    try:
        record = UsageRecord.parse(raw.data)
    except RecordValidationError:
        return
    ledger.reopen(record, now=datetime.now(timezone.utc))


def _pick(raw_records: Any, position: int | None) -> Any:
    """The record of the message a dead letter is about (by its position in the message)."""
    for raw in raw_records:
        if raw.position == position:
            return raw
    return raw_records[0]


def _field_value(item: str) -> tuple[str, str]:
    name, separator, value = item.partition("=")
    if not separator or not name:
        raise ConfigurationError(f"--set takes FIELD=VALUE, got {item!r}")
    return name.strip(), value


def _run_dlq_discard(args: argparse.Namespace) -> int:
    failures = 0
    with _open(args) as ledger:
        for letter_id in args.ids:
            try:
                ledger.resolve_dead_letter(
                    letter_id, state="discarded", now=datetime.now(timezone.utc), note=args.note
                )
            except (KeyError, ValueError):
                print(f"{letter_id}: no open dead letter with this id")
                failures += 1
                continue
            print(f"{letter_id}: discarded")
    return 0 if failures == 0 else 1
