"""The koogallery command: push files, invoke a handler locally, run the demo."""

from __future__ import annotations

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
from koogallery.sources import read_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def ledger_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Each test gets its own embedded ledger, never the working folder's default one."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("KOOGALLERY_LEDGER_URL", url)
    return url


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    instances = [
        Instance(f"demo-instance-00{n}", product_id="p", unit_price=Decimal("2"))
        for n in (1, 2, 3)
    ]
    with Emulator(EmulatorConfig(instances=instances)) as emu:
        monkeypatch.setenv("KOOGALLERY_ENDPOINT", emu.url)
        monkeypatch.setenv("HUAWEICLOUD_SDK_AK", DEFAULT_AK)
        monkeypatch.setenv("HUAWEICLOUD_SDK_SK", DEFAULT_SK)
        monkeypatch.setenv("KOOGALLERY_SELLER_KEY", DEFAULT_SELLER_KEY)
        monkeypatch.setenv("KOOGALLERY_LOG_LEVEL", "ERROR")
        yield emu


def _hour(hours_back: int) -> str:
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return (start - timedelta(hours=hours_back)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(
    hours_back: int, instance: str = "demo-instance-001", value: str = "1.5"
) -> dict[str, str]:
    return {
        "instance_id": instance,
        "begin_time": _hour(hours_back),
        "end_time": _hour(hours_back - 1),
        "usage_value": value,
    }


def _table(out: str) -> dict[str, int]:
    rows = [line.split() for line in out.splitlines()[:5]]
    return {row[0]: int(row[1].replace(",", "")) for row in rows}


def test_push_jsonl_with_bad_lines_exits_1_and_writes_every_dead_letter(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps(_record(h)) for h in range(2, 12)]
    lines.insert(3, "{broken")
    lines.insert(7, json.dumps(_record(20, value="-1")))
    source = tmp_path / "usage.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    letters = tmp_path / "dead.jsonl"

    code = main(["push", str(source), "--batch-size", "4", "--dead-letters", str(letters)])

    table = _table(capsys.readouterr().out)
    assert code == 1
    assert table == {
        "received": 12,
        "accepted": 10,
        "duplicates": 0,
        "dead-lettered": 2,
        "pending": 0,
    }
    written = [json.loads(line) for line in letters.read_text(encoding="utf-8").splitlines()]
    assert [letter["position"] for letter in written] == [4, 8]
    assert written[0]["raw"] == "{broken"
    assert written[1]["field"] == "usage_value"
    assert len(emulator.state.records) == 10


def test_push_names_a_dead_letter_by_its_line_or_its_array_index(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _record(3, value="-1")
    lines = tmp_path / "usage.jsonl"
    lines.write_text(f"{json.dumps(_record(2))}\n\n{json.dumps(bad)}\n", encoding="utf-8")
    array = tmp_path / "usage.json"
    array.write_text(json.dumps([_record(4), _record(5), bad]), encoding="utf-8")

    main(["push", str(lines)])
    from_lines = capsys.readouterr().out.splitlines()
    main(["push", str(array)])
    from_array = capsys.readouterr().out.splitlines()

    reason = "usage_value: must be greater than 0, got -1"
    assert f"dead letter  {lines} line 3: {reason}" in from_lines
    assert f"dead letter  {array} [2]: {reason}" in from_array


def test_push_csv_of_good_records_exits_0(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "usage.csv"
    rows = ["instance_id,begin_time,end_time,usage_value"]
    rows += [",".join(_record(h, "demo-instance-002").values()) for h in range(2, 7)]
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")

    code = main(["push", str(source), "--json"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (summary["received"], summary["accepted"], summary["dead_lettered"]) == (5, 5, 0)


def test_push_json_wrapper_file_is_read_as_a_stream(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "usage.json"
    records = [_record(h, "demo-instance-003") for h in range(2, 8)]
    source.write_text(json.dumps({"usage_records": records}, indent=2), encoding="utf-8")

    code = main(["push", str(source), "--json"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 6


def test_push_again_counts_duplicates_and_exits_0(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "usage.jsonl"
    source.write_text("\n".join(json.dumps(_record(h)) for h in range(2, 5)), encoding="utf-8")

    main(["push", str(source)])
    capsys.readouterr()
    requests_before = len(emulator.state.requests)
    code = main(["push", str(source), "--json"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (summary["accepted"], summary["duplicates"]) == (0, 3)
    assert len(emulator.state.requests) == requests_before


def test_push_without_ledger_relies_on_koogallery_for_duplicates(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "usage.jsonl"
    source.write_text("\n".join(json.dumps(_record(h)) for h in range(2, 5)), encoding="utf-8")

    main(["push", str(source), "--no-ledger"])
    capsys.readouterr()
    code = main(["push", str(source), "--no-ledger", "--json"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (summary["accepted"], summary["duplicates"]) == (0, 3)
    assert len(emulator.state.duplicates) == 3


def test_push_from_standard_input(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(_record(3)) + "\n"))

    code = main(["push", "-", "--json"])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 1


def test_push_without_credentials_exits_3_naming_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "KOOGALLERY_SELLER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KOOGALLERY_ENDPOINT", "http://127.0.0.1:9")
    source = tmp_path / "usage.jsonl"
    source.write_text(json.dumps(_record(3)), encoding="utf-8")

    code = main(["push", str(source)])

    assert code == 3
    assert "HUAWEICLOUD_SDK_AK" in capsys.readouterr().err


def test_json_array_reader_keeps_bad_elements_with_their_position(tmp_path: Path) -> None:
    source = tmp_path / "usage.json"
    source.write_text('[{"a": 1}, 7, {"b": 2.50}]', encoding="utf-8")

    records = list(read_records(source))

    assert [(raw.position, raw.data, raw.error) for raw in records] == [
        (0, {"a": 1}, None),
        (1, None, "is a int, expected an object"),
        (2, {"b": Decimal("2.50")}, None),
    ]


def test_invoke_runs_the_handler_on_a_sample_event(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["invoke", "usage-push", "--event", str(ROOT / "events" / "kafka.json")])

    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (result["trigger"], result["accepted"]) == ("KAFKA", 4)


def test_demo_pushes_a_day_and_bills_nothing_twice(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo"])

    out = capsys.readouterr().out
    assert code == 0
    assert "accepted by KooGallery              72" in out
    assert "duplicates on redelivery            11" in out
    assert "the emulator holds 72 records" in out
    assert "dead letters                         7" in out
    assert "MKT.9001" in out
    assert "FINDING amount_mismatch: demo-instance-003:" in out
    assert "(difference 0.360)" in out
    assert "Explained: the emulator was told to bill 0.36 more for demo-instance-003" in out


def test_emulator_subcommand_takes_the_emulators_own_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["emulator", "--help"])

    out = capsys.readouterr().out
    assert caught.value.code == 0
    assert out.startswith("usage: koogallery emulator [-h] [--host HOST] [--port PORT]")
    assert "--bills-preview" in out


def test_emulator_subcommand_serves_on_the_port_it_prints(tmp_path: Path) -> None:
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "koogallery.cli", "emulator", "--port", "0", "--bills-preview"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        import httpx

        health = httpx.get(f"{url}/_emulator/health", timeout=5).json()
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert url.startswith("http://127.0.0.1:")
    assert health["status"] == "ok"


def test_events_render_fills_the_hour_placeholders(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "render", str(ROOT / "events" / "kafka.json")]) == 0

    out = capsys.readouterr().out
    assert "{{HOUR" not in out
    assert json.loads(out)["trigger_type"] == "KAFKA"


def test_invoke_keeps_the_result_on_stdout_and_the_logs_on_stderr(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["invoke", "usage-push", "--event", str(ROOT / "events" / "smn.json")])

    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["accepted"] == 2


def test_invoke_with_a_missing_event_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["invoke", "usage-push", "--event", "no-such-event.json"])

    assert code == 2
    assert capsys.readouterr().err.startswith("koogallery: cannot read no-such-event.json")


def test_push_of_an_empty_file_drains_what_earlier_runs_left_pending(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from koogallery.emulator import FaultPlan

    source = tmp_path / "usage.jsonl"
    source.write_text(json.dumps(_record(3)) + "\n", encoding="utf-8")
    emulator.set_faults(FaultPlan(rates={"500": 1.0}))
    assert main(["push", str(source)]) == 1
    emulator.clear_faults()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    capsys.readouterr()

    code = main(["push", str(empty), "--json"])

    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["outbox"] == {
        "drained": 1,
        "accepted": 1,
        "duplicates": 0,
        "dead_lettered": 0,
        "pending": 0,
    }
    assert len(emulator.state.records) == 1


def test_demo_with_a_small_input_file_runs_and_finds_its_discrepancy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mine.jsonl"
    source.write_text(
        "\n".join(json.dumps(_record(h, "my-instance", "4")) for h in (3, 4, 5)) + "\n",
        encoding="utf-8",
    )

    code = main(["demo", "--input", str(source)])

    out = capsys.readouterr().out
    assert code == 0
    assert "Delivering 3 usage records for 1 instances" in out
    assert "FINDING amount_mismatch: my-instance: expected 0.12 (12 x 0.01)" in out
