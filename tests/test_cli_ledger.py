"""``koogallery ledger`` and ``koogallery dlq``: status, export and the dead-letter playbook."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from koogallery.cli import main
from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Emulator,
    EmulatorConfig,
    Instance,
)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch, any_ledger_url: str) -> Iterator[Emulator]:
    instances = [Instance(f"inst-{n}", product_id="p", unit_price=Decimal("1")) for n in (1, 2)]
    with Emulator(EmulatorConfig(instances=instances)) as emu:
        monkeypatch.setenv("KOOGALLERY_ENDPOINT", emu.url)
        monkeypatch.setenv("HUAWEICLOUD_SDK_AK", DEFAULT_AK)
        monkeypatch.setenv("HUAWEICLOUD_SDK_SK", DEFAULT_SK)
        monkeypatch.setenv("KOOGALLERY_SELLER_KEY", DEFAULT_SELLER_KEY)
        monkeypatch.setenv("KOOGALLERY_LOG_LEVEL", "ERROR")
        monkeypatch.setenv("KOOGALLERY_LEDGER_URL", any_ledger_url)
        yield emu


def _hour(hours_back: int) -> str:
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return (start - timedelta(hours=hours_back)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _line(hours_back: int, instance: str = "inst-1", value: str = "2") -> str:
    return json.dumps(
        {
            "instance_id": instance,
            "begin_time": _hour(hours_back),
            "end_time": _hour(hours_back - 1),
            "usage_value": value,
        }
    )


@pytest.fixture
def pushed(emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Three good records for inst-1, one for inst-2, and two dead letters."""
    lines = [_line(2), _line(3), _line(4), _line(5, "inst-2"), _line(6, value="1.23456"), "{oops"]
    source = tmp_path / "usage.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["push", str(source)]) == 1
    capsys.readouterr()
    return source


def test_ledger_status_counts_every_status(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "status", "--json"]) == 0

    status = json.loads(capsys.readouterr().out)
    assert status["counts"] == {
        "pending": 0,
        "accepted": 4,
        "duplicate": 0,
        "dead_lettered": 0,
        "conflict": 0,
    }
    assert status["open_dead_letters"] == 2
    assert status["oldest_pending_age_seconds"] is None


def test_ledger_export_csv_filters_by_instance(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "export", "--format", "csv", "--instance", "inst-1"]) == 0

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3
    assert {row["instance_id"] for row in rows} == {"inst-1"}
    assert {row["status"] for row in rows} == {"accepted"}
    assert [row["begin_time"] for row in rows] == sorted(row["begin_time"] for row in rows)


def test_ledger_export_jsonl_filters_by_time_range(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ledger", "export", "--from", _hour(4), "--to", _hour(2)])

    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [row["usage_value"] for row in rows] == ["2", "2"]


def test_dlq_list_shows_both_dead_letters_with_reasons(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "list", "--json"]) == 0

    letters = json.loads(capsys.readouterr().out)
    assert [letter["field"] for letter in letters] == ["usage_value", None]
    assert letters[1]["raw"] == "{oops"
    assert letters[0]["reason"] == "usage_value: has 5 decimal places, at most 4 are allowed"


def test_dlq_retry_with_a_correction_delivers_and_closes_the_letter(
    emulator: Emulator, pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["dlq", "list", "--json"])
    letter_id = json.loads(capsys.readouterr().out)[0]["id"]

    code = main(["dlq", "retry", str(letter_id), "--set", "usage_value=1.2346"])

    assert code == 0
    assert capsys.readouterr().out == f"{letter_id}: delivered (accepted)\n"
    assert sorted(str(stored.usage_value) for stored in emulator.state.records)[0] == "1.2346"
    main(["dlq", "list", "--json"])
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_dlq_retry_without_a_fix_leaves_the_letter_open(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["dlq", "list", "--json"])
    letter_id = json.loads(capsys.readouterr().out)[0]["id"]

    code = main(["dlq", "retry", str(letter_id)])

    assert code == 1
    assert "still failing, left open: usage_value: has 5 decimal places" in capsys.readouterr().out
    main(["dlq", "list", "--json"])
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_dlq_discard_closes_a_letter_with_a_note(
    pushed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["dlq", "list", "--json"])
    letter_id = json.loads(capsys.readouterr().out)[1]["id"]

    assert main(["dlq", "discard", str(letter_id), "--note", "garbage from a test"]) == 0
    assert main(["dlq", "discard", str(letter_id)]) == 1

    capsys.readouterr()
    main(["dlq", "show", str(letter_id)])
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["note"]) == ("discarded", "garbage from a test")


def test_dlq_retry_replays_a_record_koogallery_refused_once_the_cause_is_fixed(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "unknown.jsonl"
    source.write_text(_line(3, "inst-9") + "\n", encoding="utf-8")
    assert main(["push", str(source)]) == 1
    capsys.readouterr()
    main(["dlq", "list", "--json"])
    (letter,) = json.loads(capsys.readouterr().out)
    assert letter["error_code"] == "MKT.9001"

    emulator.add_instance(Instance("inst-9", product_id="p", unit_price=Decimal("1")))
    code = main(["dlq", "retry", str(letter["id"]), "--set", "usage_value=2.5"])

    assert code == 0
    assert capsys.readouterr().out == f"{letter['id']}: delivered (accepted)\n"
    assert [str(stored.usage_value) for stored in emulator.state.records] == ["2.5"]
