"""Durability end to end: a push killed mid-way, and concurrent pushes through injected faults.

These run ``koogallery push`` as real processes against the emulator, with a ledger shared
between them, and check the emulator's state and the ledger's audit afterwards. They are the
slowest tests of the suite (tens of seconds), and the ones that prove "nothing lost, nothing
billed twice".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Emulator,
    EmulatorConfig,
    FaultPlan,
)
from koogallery.ledger import RecordStatus, open_ledger

pytestmark = pytest.mark.slow

INSTANCES = 200
LEASE_SECONDS = 20
"""Short enough that the records a killed run held are free again within the test."""


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(accept_any_instance=True)) as emu:
        yield emu


def _write_records(path: Path, count: int) -> None:
    """``count`` one-minute records spread over ``INSTANCES`` instances, all recent enough."""
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(days=2)
    per_instance = -(-count // INSTANCES)
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            begin = start + timedelta(minutes=n // INSTANCES)
            record = {
                "instance_id": f"inst-{n % INSTANCES:04d}",
                "begin_time": begin.strftime("%Y%m%dT%H%M%SZ"),
                "end_time": (begin + timedelta(minutes=1)).strftime("%Y%m%dT%H%M%SZ"),
                "usage_value": f"{n % 97 + 1}.{n % 10}",
            }
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    assert per_instance * INSTANCES >= count


def _environment(emulator: Emulator, ledger_url: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KOOGALLERY_", "HUAWEICLOUD_"))
    }
    environment.update(
        {
            "KOOGALLERY_ENDPOINT": emulator.url,
            "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
            "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
            "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
            "KOOGALLERY_LEDGER_URL": ledger_url,
            "KOOGALLERY_LOG_LEVEL": "ERROR",
            "KOOGALLERY_MAX_ATTEMPTS": "10",
            "KOOGALLERY_BACKOFF_BASE_SECONDS": "0.01",
            "KOOGALLERY_BACKOFF_CAP_SECONDS": "0.05",
            "KOOGALLERY_LEASE_SECONDS": str(LEASE_SECONDS),
        }
    )
    return environment


def _push(source: Path, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "koogallery.cli", "push", str(source), "--batch-size", "5000"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _push_until_complete(source: Path, environment: dict[str, str], rounds: int = 6) -> int:
    """Run the push again while records are pending: another run, perhaps a killed one, held
    their lease, or faults outlasted the retries. A held lease frees itself in LEASE_SECONDS."""
    for attempt in range(1, rounds + 1):
        process = _push(source, environment)
        _, error = process.communicate(timeout=300)
        if process.returncode == 0:
            return attempt
        assert process.returncode == 1, error.decode()
        time.sleep(LEASE_SECONDS / 2)
    raise AssertionError(f"push still incomplete after {rounds} runs")


def _ledger_counts(ledger_url: str) -> dict[str, int]:
    with open_ledger(ledger_url) as ledger:
        counts = ledger.status(now=datetime.now(timezone.utc)).counts
    return {status.value: count for status, count in counts.items() if count}


def test_push_killed_mid_way_then_run_again_delivers_every_record_exactly_once(
    emulator: Emulator, any_ledger_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "usage.jsonl"
    _write_records(source, 100_000)
    environment = _environment(emulator, any_ledger_url)

    process = _push(source, environment)
    deadline = time.monotonic() + 240
    while len(emulator.state.records) < 30_000 and process.poll() is None:
        assert time.monotonic() < deadline, "the first push made too little progress"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    held_at_kill = len(emulator.state.records)

    _push_until_complete(source, environment)

    stored = emulator.state.records
    assert 30_000 <= held_at_kill < 100_000
    assert len(stored) == 100_000
    assert len({record.metering_sn for record in stored}) == 100_000

    # Records KooGallery stored just before the kill, whose answer the killed run never read,
    # come back from the re-push as already held: the ledger knows it sent them before (it took
    # over the killed run's lease), so they are accepted, on that first attempt.
    resent = len(emulator.state.duplicates)
    assert _ledger_counts(any_ledger_url) == {RecordStatus.ACCEPTED.value: 100_000}
    assert resent <= 5000


def test_concurrent_pushes_through_faults_lose_nothing_and_duplicate_nothing(
    emulator: Emulator, any_ledger_url: str, tmp_path: Path
) -> None:
    everything = tmp_path / "usage.jsonl"
    _write_records(everything, 50_000)
    lines = everything.read_text(encoding="utf-8").splitlines(keepends=True)
    halves = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    halves[0].write_text("".join(lines[:30_000]), encoding="utf-8")
    halves[1].write_text("".join(lines[20_000:]), encoding="utf-8")
    emulator.set_faults(
        FaultPlan(rates={"500": 0.2, "429": 0.05, "drop": 0.05}, latency_ms=(1, 5), seed=11)
    )
    environment = _environment(emulator, any_ledger_url)

    runs = [_push(source, environment) for source in (everything, *halves)]
    for run in runs:
        _, error = run.communicate(timeout=300)
        assert run.returncode in (0, 1), error.decode()
    _push_until_complete(everything, environment)

    stored = emulator.state.records
    assert len(stored) == 50_000
    assert len({record.metering_sn for record in stored}) == 50_000
    assert emulator.state.duplicates == ()
    assert _ledger_counts(any_ledger_url) == {RecordStatus.ACCEPTED.value: 50_000}
    _assert_audit_matches_emulator_log(emulator, any_ledger_url)


def _assert_audit_matches_emulator_log(emulator: Emulator, ledger_url: str) -> None:
    """Every request the emulator saw is an attempt in the ledger, with the same answer."""
    with open_ledger(ledger_url) as ledger:
        attempts = list(ledger.attempts())
    requests = [entry for entry in emulator.state.requests if entry.api is not None]

    assert len(attempts) == len(requests)
    assert Counter(attempt.http_status for attempt in attempts) == Counter(
        entry.http_status for entry in requests
    )
    answered = {entry.request_id for entry in requests if entry.http_status is not None}
    assert {attempt.request_id for attempt in attempts if attempt.request_id} == answered
    assert sum(attempt.record_count for attempt in attempts if attempt.http_status == 200) == (
        50_000
    )
