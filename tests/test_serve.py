"""koogallery serve: both handlers behind functions-framework, answering like FunctionGraph."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import functions_framework
import pytest
from flask.testing import FlaskClient

from koogallery import serve
from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Emulator,
    EmulatorConfig,
    Instance,
)
from koogallery.errors import ConfigurationError


@pytest.fixture
def served() -> Iterator[tuple[FlaskClient, ModuleType]]:
    """The app functions-framework makes of serve.py, and the module it loaded the file as.

    functions-framework loads the file as a top-level module and appends its folder to
    ``sys.path``; both are undone afterwards so that no other test sees them.
    """
    path = list(sys.path)
    app = functions_framework.create_app(serve.ENTRY_POINT, serve.__file__, "http")
    module = sys.modules[Path(serve.__file__).stem]
    yield app.test_client(), module
    sys.path[:] = path
    sys.modules.pop(Path(serve.__file__).stem, None)


@pytest.fixture
def client(served: tuple[FlaskClient, ModuleType]) -> FlaskClient:
    return served[0]


@pytest.fixture
def module(served: tuple[FlaskClient, ModuleType]) -> ModuleType:
    return served[1]


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    instance = Instance("serve-instance-1", product_id="p", unit_price=Decimal("1"))
    with Emulator(EmulatorConfig(instances=[instance])) as emu:
        monkeypatch.setenv("KOOGALLERY_ENDPOINT", emu.url)
        monkeypatch.setenv("HUAWEICLOUD_SDK_AK", DEFAULT_AK)
        monkeypatch.setenv("HUAWEICLOUD_SDK_SK", DEFAULT_SK)
        monkeypatch.setenv("KOOGALLERY_SELLER_KEY", DEFAULT_SELLER_KEY)
        monkeypatch.setenv("KOOGALLERY_LOG_LEVEL", "ERROR")
        monkeypatch.delenv("KOOGALLERY_LEDGER_URL", raising=False)
        yield emu


def usage_event() -> dict[str, Any]:
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    records = [
        {
            "instance_id": "serve-instance-1",
            "begin_time": (hour - timedelta(hours=back)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_time": (hour - timedelta(hours=back - 1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage_value": "2",
        }
        for back in (3, 2)
    ]
    return {"usage_records": records}


def test_a_usage_event_is_pushed_and_the_summary_returned(
    client: FlaskClient, emulator: Emulator
) -> None:
    response = client.post("/usage-push", json=usage_event(), headers={"X-Request-Id": "req-1"})

    assert response.status_code == 200
    body = response.get_json()
    assert {key: body[key] for key in ("request_id", "received", "accepted", "pending")} == {
        "request_id": "req-1",
        "received": 2,
        "accepted": 2,
        "pending": 0,
    }
    assert len(emulator.state.records) == 2


def test_without_a_request_id_header_a_new_one_is_made(
    client: FlaskClient, emulator: Emulator
) -> None:
    response = client.post("/usage-push", json=usage_event())

    request_id = response.get_json()["request_id"]
    assert str(uuid.UUID(request_id)) == request_id


def test_a_raised_error_answers_500_like_functiongraph(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KOOGALLERY_SELLER_KEY", raising=False)
    monkeypatch.setenv("KOOGALLERY_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", DEFAULT_AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", DEFAULT_SK)
    monkeypatch.setenv("KOOGALLERY_LOG_LEVEL", "ERROR")

    response = client.post("/usage-push", json=usage_event())

    assert response.status_code == 500
    body = response.get_json()
    assert sorted(body) == ["errorMessage", "errorType", "stackTrace"]
    assert body["errorType"] == "ConfigurationError"
    assert body["errorMessage"] == (
        "usage API 'v2' needs KOOGALLERY_SELLER_KEY: set it in the environment or the "
        "function's user data"
    )
    assert isinstance(body["stackTrace"], list)
    assert body["stackTrace"]


def test_the_time_budget_comes_from_koogallery_serve_timeout_seconds(
    client: FlaskClient, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOOGALLERY_SERVE_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("KOOGALLERY_DEADLINE_MARGIN_SECONDS", "2")

    response = client.post("/usage-push", json=usage_event())

    body = response.get_json()
    assert (response.status_code, body["errorType"], body["errorMessage"]) == (
        500,
        "UsagePushIncomplete",
        "2 of 2 usage records are still pending (deadline reached before the request); the "
        "batch must be delivered again, which is safe because their metering_sn values do not "
        "change",
    )
    assert emulator.state.requests == ()


def test_a_raised_exception_keeps_its_own_type_name_and_stack(
    client: FlaskClient, emulator: Emulator
) -> None:
    response = client.post("/usage-push", json={"unexpected": 1})

    body = response.get_json()
    assert (response.status_code, body["errorType"], body["errorMessage"]) == (
        500,
        "EventFormatError",
        "event matches no known trigger shape: expected trigger_type (DMS queues), record "
        "(SMN), StreamName (DIS), requestContext (APIG) or a usage message with usage_records "
        "or instance_id; found keys unexpected",
    )
    entry_point = [frame for frame in body["stackTrace"] if "usage_push/index.py" in frame]
    assert [frame.splitlines()[1].strip() for frame in entry_point] == [
        "return handle_usage_push(event, context)"
    ]


def test_a_seller_key_the_platform_refuses_answers_500_authentication_error(
    client: FlaskClient, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOOGALLERY_SELLER_KEY", "not-the-interconnection-key")

    response = client.post("/usage-push", json=usage_event())

    body = response.get_json()
    assert (response.status_code, body["errorType"], body["errorMessage"]) == (
        500,
        "AuthenticationError",
        "KooGallery refused the request (MKT.0102): the body signature was refused: check "
        "KOOGALLERY_SELLER_KEY (the interconnection key bound in Seller Console) and this "
        "machine's clock",
    )
    assert emulator.state.records == ()
    assert [entry.error_code for entry in emulator.state.requests] == ["MKT.0102"]


def test_a_missing_function_file_answers_501(
    client: FlaskClient, module: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # serve.py has no setting for the functions folder: it always serves the repository's
    # own, which has both files. An empty folder in its place is the only way to reach 501.
    monkeypatch.setattr(module, "_FUNCTIONS_DIR", tmp_path)

    response = client.post("/bill-fetch", json={"trigger_type": "TIMER"})

    assert (response.status_code, response.get_json()) == (
        501,
        {"error": "functions/bill_fetch/index.py does not exist"},
    )


def test_an_unknown_path_answers_404(client: FlaskClient) -> None:
    response = client.post("/reconcile", json={})

    assert (response.status_code, response.get_json()) == (
        404,
        {"error": "no function at /reconcile; POST to /usage-push, /bill-fetch"},
    )


def test_a_body_that_is_not_json_answers_400(client: FlaskClient) -> None:
    response = client.post("/usage-push", data=b"not json", content_type="text/plain")

    assert (response.status_code, response.get_json()) == (
        400,
        {"error": "the body must be a JSON FunctionGraph event"},
    )


def test_only_post_is_served(client: FlaskClient) -> None:
    response = client.get("/usage-push")

    assert response.status_code == 405


ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (the address the test expects to be refused)


@pytest.mark.parametrize("host", [ALL_INTERFACES, "192.168.1.10", "::", "example.com"])
def test_serving_on_anything_but_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        serve.functions_framework_command(sys.executable, host, 8080)

    assert str(caught.value) == (
        f"koogallery serve listens on loopback only (127.0.0.1 or ::1), not {host!r}"
    )


def test_the_server_command_is_functions_framework_on_loopback() -> None:
    command = serve.functions_framework_command("python3", "127.0.0.1", 8123)

    assert command == [
        "python3",
        "-m",
        "functions_framework",
        "--source",
        str(Path(serve.__file__).resolve()),
        "--target",
        "koogallery_functions",
        "--signature-type",
        "http",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
    ]
