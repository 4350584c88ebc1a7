"""Deploy against a local FunctionGraph fake: create, no-op, update, dry run, refusals."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from koogallery.deploy import deploy as deploy_module
from koogallery.deploy.commands import add_commands
from koogallery.deploy.deploy import CodeArchive, DeployError, plan_deploy
from koogallery.deploy.fgs_api import DeploySettings, FunctionGraphApi, FunctionGraphError
from koogallery.deploy.package import write_reproducible_zip
from koogallery.deploy.template import load_template
from koogallery.errors import ConfigurationError
from tests.fake_functiongraph import SECRET_KEY, FakeFunctionGraph

SELLER_KEY = "seller-key-for-deploy-tests-0123456789"
LEDGER_URL = "postgresql://ledger:ledger-password-42@127.0.0.1:5432/usage"

TEMPLATE = """\
template_version: 1
functions:
  - func_name: usage-push
    description: Pushes usage
    code_dir: code/usage_push
    handler: index.handler
    runtime: Python3.12
    memory_size: 256
    timeout: 60
    user_data:
      KOOGALLERY_SITE: ${KOOGALLERY_SITE:-cn}
      KOOGALLERY_ENDPOINT: ${KOOGALLERY_ENDPOINT:-}
      HUAWEICLOUD_SDK_AK: ${SELLER_AK}
    encrypted_user_data:
      KOOGALLERY_SELLER_KEY: ${SELLER_KEY}
      KOOGALLERY_LEDGER_URL: ${LEDGER_URL}
    xrole: ${AGENCY}
    func_vpc:
      vpc_id: vpc-1
      subnet_id: subnet-1
    triggers:
      - trigger_type_code: KAFKA
        event_data:
          instance_id: ${KAFKA_INSTANCE}
          topic_ids: [usage]
          batch_size: ${BATCH}
    async_invoke_config:
      max_async_retry_attempts: 2
      max_async_event_age_in_seconds: 3600
      destination_config:
        on_failure:
          destination: OBS
          param: {bucket: dead-letters, prefix: usage/, expires: 30}
  - func_name: bill-fetch
    code_dir: code/bill_fetch
    handler: index.handler
    runtime: Python3.10
    memory_size: ${MEMORY}
    timeout: 300
    user_data:
      HUAWEICLOUD_SDK_DOMAIN_ID: domain-1
    triggers:
      - trigger_type_code: TIMER
        trigger_status: ${TIMER_STATUS}
        event_data:
          name: daily
          schedule_type: Cron
          schedule: "0 30 2 * * ?"
          user_event: "{}"
"""


@pytest.fixture
def fake() -> Iterator[FakeFunctionGraph]:
    with FakeFunctionGraph() as server:
        yield server


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A template, its handler files and their zips under dist/."""
    for name in ("usage_push", "bill_fetch"):
        (tmp_path / "code" / name).mkdir(parents=True)
        (tmp_path / "code" / name / "index.py").write_text("def handler(e, c):\n    return {}\n")
    (tmp_path / "dist").mkdir()
    write_template(tmp_path)
    build_zip(tmp_path, "usage-push", "v1")
    build_zip(tmp_path, "bill-fetch", "v1")
    return tmp_path


def write_template(project: Path, memory: str = "256", batch: str = "100") -> None:
    text = TEMPLATE.replace("${MEMORY}", memory).replace("${BATCH}", batch)
    (project / "template.yaml").write_text(text)


def build_zip(project: Path, name: str, content: str) -> str:
    source = project / f"{name}-{content}.py"
    source.write_text(f"NAME, VERSION = {name!r}, {content!r}\n")
    write_reproducible_zip(project / "dist" / f"{name}.zip", {"index.py": source})
    return CodeArchive.read(project / "dist" / f"{name}.zip").sha256


@pytest.fixture
def environment(fake: FakeFunctionGraph, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = fake.environment(
        SELLER_AK="SELLERAK000000000000",
        SELLER_KEY=SELLER_KEY,
        LEDGER_URL=LEDGER_URL,
        AGENCY="koogallery-agency",
        KAFKA_INSTANCE="kafka-1",
        TIMER_STATUS="ACTIVE",
    )
    for name in ("HUAWEICLOUD_SDK_SECURITY_TOKEN", "KOOGALLERY_SITE", "KOOGALLERY_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run(project: Path, *arguments: str) -> int:
    parser = argparse.ArgumentParser(prog="koogallery")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(
        [
            "deploy",
            "--template",
            str(project / "template.yaml"),
            "--dist",
            str(project / "dist"),
            *arguments,
        ]
    )
    code: int = args.run(args)
    return code


def tag(project: Path, name: str) -> str:
    return CodeArchive.read(project / "dist" / f"{name}.zip").sha256


@pytest.mark.usefixtures("environment")
def test_first_deploy_creates_functions_triggers_and_async_config(
    fake: FakeFunctionGraph, project: Path
) -> None:
    assert run(project) == 0

    usage, bill = fake.urn("usage-push"), fake.urn("bill-fetch")
    assert fake.writes() == [
        ("POST", f"/v2/{fake.project_id}/fgs/functions"),
        ("POST", f"/v2/{fake.project_id}/fgs/triggers/{usage}"),
        ("PUT", f"/v2/{fake.project_id}/fgs/functions/{usage}/async-invoke-config"),
        ("POST", f"/v2/{fake.project_id}/fgs/functions"),
        ("POST", f"/v2/{fake.project_id}/fgs/triggers/{bill}"),
    ]
    config = fake.functions[usage]
    assert {key: config[key] for key in ("runtime", "handler", "memory_size", "timeout")} == {
        "runtime": "Python3.12",
        "handler": "index.handler",
        "memory_size": 256,
        "timeout": 60,
    }
    assert json.loads(config["user_data"]) == {
        "HUAWEICLOUD_SDK_AK": "SELLERAK000000000000",
        "KOOGALLERY_SITE": "cn",
    }
    assert config["xrole"] == "koogallery-agency"
    assert config["func_vpc"] == {"vpc_id": "vpc-1", "subnet_id": "subnet-1"}
    assert config["code_filename"] == "usage-push.zip"
    assert fake.codes[usage] == (project / "dist" / "usage-push.zip").read_bytes()
    assert config["description"].startswith(
        f"Pushes usage [koogallery code-sha256={tag(project, 'usage-push')} secrets="
    )

    create_body = next(
        request.body
        for request in fake.requests
        if request.method == "POST" and request.path.endswith("/functions")
    )
    assert json.loads(create_body["encrypted_user_data"]) == {
        "KOOGALLERY_LEDGER_URL": LEDGER_URL,
        "KOOGALLERY_SELLER_KEY": SELLER_KEY,
    }

    [kafka] = fake.triggers[usage]
    assert {key: kafka[key] for key in ("trigger_type_code", "trigger_status", "event_data")} == {
        "trigger_type_code": "KAFKA",
        "trigger_status": "ACTIVE",
        "event_data": {"instance_id": "kafka-1", "topic_ids": ["usage"], "batch_size": 100},
    }
    assert fake.async_configs[usage]["destination_config"] == {
        "on_failure": {
            "destination": "OBS",
            "param": '{"bucket":"dead-letters","expires":30,"prefix":"usage/"}',
        }
    }
    [timer] = fake.triggers[bill]
    assert timer["event_data"] == {
        "name": "daily",
        "schedule_type": "Cron",
        "schedule": "0 30 2 * * ?",
        "user_event": "{}",
    }
    assert fake.unexpected == []


@pytest.mark.usefixtures("environment")
def test_second_deploy_changes_nothing(
    fake: FakeFunctionGraph, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(project)
    fake.clear_log()
    capsys.readouterr()

    assert run(project) == 0

    assert fake.writes() == []
    assert capsys.readouterr().out == (
        "usage-push\n"
        "  code                                         unchanged\n"
        "  config                                       unchanged\n"
        "  trigger KAFKA kafka-1/usage                  unchanged\n"
        "  async-invoke-config                          unchanged\n"
        "bill-fetch\n"
        "  code                                         unchanged\n"
        "  config                                       unchanged\n"
        "  trigger TIMER daily                          unchanged\n"
        "plan: 7 unchanged\n"
        "up to date: nothing was changed\n"
    )


@pytest.mark.usefixtures("environment")
def test_dry_run_prints_the_plan_and_writes_nothing(
    fake: FakeFunctionGraph, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(project, "--dry-run") == 0

    usage = CodeArchive.read(project / "dist" / "usage-push.zip")
    bill = CodeArchive.read(project / "dist" / "bill-fetch.zip")
    assert fake.writes() == []
    assert [request.method for request in fake.requests] == ["GET", "GET"]
    assert capsys.readouterr().out == (
        "usage-push\n"
        f"  function                                     create  (code {usage.sha256[:12]}, "
        "0.0 MB)\n"
        "  trigger KAFKA kafka-1/usage                  create\n"
        "  async-invoke-config                          create\n"
        "bill-fetch\n"
        f"  function                                     create  (code {bill.sha256[:12]}, "
        "0.0 MB)\n"
        "  trigger TIMER daily                          create\n"
        "plan: 5 create\n"
        "dry run: nothing was changed\n"
    )


@pytest.mark.usefixtures("environment")
def test_dry_run_on_a_deployed_account_lists_updates_without_making_them(
    fake: FakeFunctionGraph, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(project)
    write_template(project, memory="512")
    fake.clear_log()
    capsys.readouterr()

    run(project, "--dry-run")

    assert fake.writes() == []
    assert "  config                                       update  (memory_size)\n" in (
        capsys.readouterr().out
    )
    assert fake.functions[fake.urn("bill-fetch")]["memory_size"] == 256


@pytest.mark.usefixtures("environment")
def test_new_code_uploads_the_zip_and_moves_the_tag(
    fake: FakeFunctionGraph, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(project)
    before = tag(project, "usage-push")
    after = build_zip(project, "usage-push", "v2")
    fake.clear_log()
    capsys.readouterr()

    run(project)

    usage = fake.urn("usage-push")
    assert fake.writes() == [
        ("PUT", f"/v2/{fake.project_id}/fgs/functions/{usage}/code"),
        ("PUT", f"/v2/{fake.project_id}/fgs/functions/{usage}/config"),
    ]
    out = capsys.readouterr().out
    assert (
        f"  code                                         update  ({before[:12]} -> {after[:12]})\n"
        in out
    )
    assert "  config                                       update  (code-sha256 tag)\n" in out
    assert fake.codes[usage] == (project / "dist" / "usage-push.zip").read_bytes()
    assert f"code-sha256={after} " in fake.functions[usage]["description"]

    fake.clear_log()
    run(project)
    assert fake.writes() == []


@pytest.mark.usefixtures("environment")
def test_changed_memory_size_updates_only_the_configuration(
    fake: FakeFunctionGraph, project: Path
) -> None:
    run(project)
    write_template(project, memory="512")
    fake.clear_log()

    run(project)

    bill = fake.urn("bill-fetch")
    assert fake.writes() == [("PUT", f"/v2/{fake.project_id}/fgs/functions/{bill}/config")]
    assert fake.functions[bill]["memory_size"] == 512


def test_changed_secret_updates_the_configuration(
    fake: FakeFunctionGraph,
    project: Path,
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run(project)
    monkeypatch.setenv("SELLER_KEY", "a-rotated-seller-key-9876543210")
    fake.clear_log()

    run(project)

    usage = fake.urn("usage-push")
    assert fake.writes() == [("PUT", f"/v2/{fake.project_id}/fgs/functions/{usage}/config")]
    assert json.loads(fake.requests[-1].body["encrypted_user_data"])["KOOGALLERY_SELLER_KEY"] == (
        "a-rotated-seller-key-9876543210"
    )


@pytest.mark.usefixtures("environment")
def test_changed_batch_size_replaces_the_trigger(
    fake: FakeFunctionGraph, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(project)
    usage = fake.urn("usage-push")
    [old] = fake.triggers[usage]
    write_template(project, batch="500")
    fake.clear_log()
    capsys.readouterr()

    run(project)

    assert fake.writes() == [
        ("DELETE", f"/v2/{fake.project_id}/fgs/triggers/{usage}/KAFKA/{old['trigger_id']}"),
        ("POST", f"/v2/{fake.project_id}/fgs/triggers/{usage}"),
    ]
    [new] = fake.triggers[usage]
    assert new["event_data"]["batch_size"] == 500
    assert "  trigger KAFKA kafka-1/usage                  replace  (batch_size)\n" in (
        capsys.readouterr().out
    )


def test_disabled_timer_is_updated_in_place(
    fake: FakeFunctionGraph,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
) -> None:
    run(project)
    bill = fake.urn("bill-fetch")
    [timer] = fake.triggers[bill]
    monkeypatch.setenv("TIMER_STATUS", "DISABLED")
    fake.clear_log()

    run(project)

    assert fake.writes() == [
        ("PUT", f"/v2/{fake.project_id}/fgs/triggers/{bill}/TIMER/{timer['trigger_id']}")
    ]
    assert fake.triggers[bill][0]["trigger_status"] == "DISABLED"


@pytest.mark.usefixtures("environment")
def test_a_trigger_added_in_the_console_is_left_alone(
    fake: FakeFunctionGraph, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(project)
    fake.add_trigger(
        "bill-fetch",
        {
            "trigger_type_code": "SMN",
            "trigger_status": "ACTIVE",
            "event_data": {"topic_urn": "urn:smn:xx-test-1:p:alerts"},
        },
    )
    fake.clear_log()
    capsys.readouterr()

    run(project)

    assert fake.writes() == []
    assert len(fake.triggers[fake.urn("bill-fetch")]) == 2
    subject = "trigger SMN urn:smn:xx-test-1:p:alerts"
    assert f"  {subject:<44} unmanaged  (not in the template: left alone)\n" in (
        capsys.readouterr().out
    )


@pytest.mark.usefixtures("environment")
def test_a_refused_request_names_the_function_the_trigger_and_the_error_code(
    fake: FakeFunctionGraph, project: Path
) -> None:
    fake.refuse("POST", "/triggers/", error_code="FSS.1051", error_msg="Invalid trigger.")

    with pytest.raises(DeployError) as caught:
        run(project)

    assert str(caught.value) == (
        "usage-push: trigger KAFKA kafka-1/usage: creating failed: FSS.1051: Invalid trigger. "
        "(HTTP 400)"
    )
    assert caught.value.error_code == "FSS.1051"
    assert fake.urn("usage-push") in fake.functions
    assert fake.triggers.get(fake.urn("usage-push"), []) == []

    fake.clear_log()
    assert run(project) == 0
    usage = fake.urn("usage-push")
    assert fake.writes()[0] == ("POST", f"/v2/{fake.project_id}/fgs/triggers/{usage}")
    assert len(fake.triggers[usage]) == 1


@pytest.mark.usefixtures("environment")
def test_a_refused_read_names_the_function(fake: FakeFunctionGraph, project: Path) -> None:
    fake.refuse("GET", "/config", status=403, error_code="FSS.0403", error_msg="Forbidden")

    with pytest.raises(DeployError) as caught:
        run(project)

    assert str(caught.value) == (
        "usage-push: plan: reading its configuration failed: FSS.0403: Forbidden (HTTP 403)"
    )
    assert fake.writes() == []


def test_a_missing_variable_is_named_with_its_place(
    fake: FakeFunctionGraph,
    project: Path,
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SELLER_KEY")

    with pytest.raises(ConfigurationError) as caught:
        run(project)

    assert str(caught.value) == (
        f"{project / 'template.yaml'} is not a valid template:\n"
        "  functions[0].encrypted_user_data.KOOGALLERY_SELLER_KEY: ${SELLER_KEY} is not set in "
        "the environment"
    )
    assert fake.requests == []


def test_a_wrong_secret_key_fails_the_signature_check(
    fake: FakeFunctionGraph,
    project: Path,
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", "not-the-right-secret-key")

    with pytest.raises(DeployError) as caught:
        run(project)

    assert caught.value.error_code == "APIG.0303"
    assert caught.value.status == 401
    assert fake.writes() == []


def test_temporary_credentials_send_their_security_token(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeFunctionGraph(security_token="temporary-token-123") as fake:
        env = fake.environment(
            SELLER_AK="A",
            SELLER_KEY="k",
            LEDGER_URL="",
            AGENCY="",
            KAFKA_INSTANCE="kafka-1",
            TIMER_STATUS="ACTIVE",
        )
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        assert run(project) == 0

        assert len(fake.functions) == 2
        assert "xrole" not in fake.functions[fake.urn("usage-push")]


@pytest.mark.usefixtures("environment")
def test_a_function_made_by_hand_gets_its_code_once(
    fake: FakeFunctionGraph, project: Path
) -> None:
    run(project)
    usage = fake.urn("usage-push")
    fake.functions[usage]["description"] = "Pushes usage"
    fake.clear_log()

    run(project)
    assert fake.writes() == [
        ("PUT", f"/v2/{fake.project_id}/fgs/functions/{usage}/code"),
        ("PUT", f"/v2/{fake.project_id}/fgs/functions/{usage}/config"),
    ]

    fake.clear_log()
    run(project)
    assert fake.writes() == []


@pytest.mark.usefixtures("environment")
def test_secrets_never_reach_the_output_or_the_logs(
    fake: FakeFunctionGraph,
    project: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.refuse("PUT", "/async-invoke-config", error_code="FSS.1051")

    run(project, "--dry-run")
    with pytest.raises(DeployError) as caught:
        run(project)

    out, err = capsys.readouterr()
    template = load_template(project / "template.yaml", env=dict(os.environ))
    seen = out + err + caplog.text + str(caught.value) + repr(template)
    for secret in (SELLER_KEY, "ledger-password-42", SECRET_KEY):
        assert secret not in seen


def test_a_throttled_read_is_tried_again(
    fake: FakeFunctionGraph, environment: dict[str, str]
) -> None:
    fake.refuse("GET", "/config", status=503, error_code="FSS.0503", error_msg="busy")
    pauses: list[float] = []

    with FunctionGraphApi(DeploySettings.from_env(environment), sleep=pauses.append) as api:
        assert api.get_function_config(fake.urn("usage-push")) is None

    assert pauses == [0.5]
    assert [request.method for request in fake.requests] == ["GET", "GET"]


def test_a_refused_create_is_not_tried_again(
    fake: FakeFunctionGraph, environment: dict[str, str]
) -> None:
    fake.refuse("POST", "/functions", status=503, error_code="FSS.0503", error_msg="busy")
    pauses: list[float] = []

    with FunctionGraphApi(DeploySettings.from_env(environment), sleep=pauses.append) as api:
        with pytest.raises(FunctionGraphError) as caught:
            api.create_function({"func_name": "x"})

    assert (caught.value.status, caught.value.error_code) == (503, "FSS.0503")
    assert pauses == []


def test_the_default_endpoint_is_the_regions_public_one() -> None:
    settings = DeploySettings.from_env(
        {
            "HUAWEICLOUD_SDK_REGION": "cn-north-4",
            "HUAWEICLOUD_SDK_PROJECT_ID": "0123456789abcdef0123456789abcdef",
            "HUAWEICLOUD_SDK_AK": "AK",
            "HUAWEICLOUD_SDK_SK": "SK",
        }
    )

    assert settings.base_url == "https://functiongraph.cn-north-4.myhuaweicloud.com"


def test_missing_credentials_are_named() -> None:
    with pytest.raises(ConfigurationError) as caught:
        DeploySettings.from_env({"HUAWEICLOUD_SDK_REGION": "cn-north-4"})

    assert str(caught.value) == (
        "deploy needs HUAWEICLOUD_SDK_PROJECT_ID, HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK in the "
        "environment"
    )


def test_a_region_that_is_not_a_name_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        DeploySettings.from_env(
            {
                "HUAWEICLOUD_SDK_REGION": "evil.example/x",
                "HUAWEICLOUD_SDK_PROJECT_ID": "p1",
                "HUAWEICLOUD_SDK_AK": "AK",
                "HUAWEICLOUD_SDK_SK": "SK",
            }
        )

    assert str(caught.value).startswith("HUAWEICLOUD_SDK_REGION: Value error, ")


@pytest.mark.usefixtures("environment")
def test_a_missing_zip_says_to_package_first(fake: FakeFunctionGraph, project: Path) -> None:
    (project / "dist" / "bill-fetch.zip").unlink()

    with pytest.raises(ConfigurationError) as caught:
        run(project)

    assert str(caught.value) == (
        f"bill-fetch: {project / 'dist' / 'bill-fetch.zip'} is missing: run `koogallery "
        "package` first"
    )
    assert fake.requests == []


@pytest.mark.usefixtures("environment")
def test_a_zip_over_the_inline_limit_is_refused_before_any_call(
    fake: FakeFunctionGraph, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_module, "MAX_INLINE_CODE_BYTES", 100)

    with pytest.raises(ConfigurationError) as caught:
        run(project)

    assert "over the API's 100-byte limit for code sent inline" in str(caught.value)
    assert fake.requests == []


@pytest.mark.usefixtures("environment")
def test_only_the_named_function_is_deployed(fake: FakeFunctionGraph, project: Path) -> None:
    run(project, "--function", "bill-fetch")

    assert list(fake.functions) == [fake.urn("bill-fetch")]


def test_a_plan_reads_only(
    fake: FakeFunctionGraph, project: Path, environment: dict[str, str]
) -> None:
    template = load_template(project / "template.yaml", env=environment)
    archives = {"usage-push": CodeArchive.read(project / "dist" / "usage-push.zip")}

    with FunctionGraphApi(DeploySettings.from_env(environment)) as api:
        plan = plan_deploy(template, archives, api)

    assert [(step.subject, step.action) for step in plan.steps] == [
        ("function", "create"),
        ("trigger KAFKA kafka-1/usage", "create"),
        ("async-invoke-config", "create"),
    ]
    assert plan.writes
    assert fake.writes() == []


@pytest.mark.usefixtures("environment")
def test_changed_retries_update_only_the_async_config(
    fake: FakeFunctionGraph, project: Path
) -> None:
    run(project)
    path = project / "template.yaml"
    path.write_text(
        path.read_text().replace("max_async_retry_attempts: 2", "max_async_retry_attempts: 3")
    )
    fake.clear_log()

    run(project)

    usage = fake.urn("usage-push")
    assert fake.writes() == [
        ("PUT", f"/v2/{fake.project_id}/fgs/functions/{usage}/async-invoke-config")
    ]
    assert fake.async_configs[usage]["max_async_retry_attempts"] == 3


@pytest.mark.usefixtures("environment")
def test_an_unset_destination_given_back_as_null_is_no_change(
    fake: FakeFunctionGraph, project: Path
) -> None:
    run(project)
    usage = fake.urn("usage-push")
    fake.async_configs[usage]["destination_config"]["on_success"] = None
    fake.clear_log()

    run(project)

    assert fake.writes() == []
