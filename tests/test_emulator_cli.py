"""``python -m koogallery.emulator``: prints its URL first, serves, stops on a signal."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from koogallery.emulator.__main__ import main

_START_TIMEOUT_SECONDS = 10.0


def _read_first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], _START_TIMEOUT_SECONDS)
    assert ready, "the emulator printed nothing in time"
    return process.stdout.readline().strip()


@pytest.fixture
def run_cli() -> Iterator[list[subprocess.Popen[str]]]:
    """Child emulator processes, terminated (by their own pid) if a test leaves one running."""
    processes: list[subprocess.Popen[str]] = []
    yield processes

    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)


def _start(processes: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "koogallery.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(process)
    return process


def test_cli_prints_its_url_first_and_stops_cleanly_on_sigterm(run_cli) -> None:
    process = _start(run_cli, "--port", "0")

    url = _read_first_line(process)
    with httpx.Client(trust_env=False, timeout=5) as client:
        health = client.get(f"{url}/_emulator/health")
    process.send_signal(signal.SIGTERM)

    assert url.startswith("http://127.0.0.1:")
    assert health.json()["status"] == "ok"
    assert process.wait(timeout=5) == 0


def test_cli_stops_cleanly_on_sigint(run_cli) -> None:
    process = _start(run_cli, "--port", "0")
    _read_first_line(process)

    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=5) == 0


def test_cli_serves_the_instances_of_its_config_file(run_cli, tmp_path: Path) -> None:
    config = tmp_path / "emulator.json"
    config.write_text(
        json.dumps({"instances": [{"instance_id": "i-1", "product_id": "p", "unit_price": "2"}]})
    )
    process = _start(run_cli, "--config", str(config), "--accept-any-instance")

    url = _read_first_line(process)
    with httpx.Client(trust_env=False, timeout=5) as client:
        body = client.get(f"{url}/_emulator/instances").json()
    process.send_signal(signal.SIGTERM)

    assert [item["instance_id"] for item in body["instances"]] == ["i-1"]
    assert body["accept_any_instance"] is True
    assert process.wait(timeout=5) == 0


def test_cli_refuses_a_non_loopback_host_with_status_2(run_cli) -> None:
    process = _start(run_cli, "--host", "0.0.0.0", "--port", "0")  # noqa: S104 (refused)

    _, stderr = process.communicate(timeout=10)

    assert process.returncode == 2
    assert "error: the emulator listens on loopback only; '0.0.0.0'" in stderr


def test_main_refuses_a_public_host_before_binding(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--host", "192.0.2.1"])

    assert status == 2
    assert capsys.readouterr().err == (
        "error: the emulator listens on loopback only; '192.0.2.1' is not a loopback address\n"
    )


def test_main_refuses_an_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(tmp_path / "missing.json")])

    assert exited.value.code == 2
