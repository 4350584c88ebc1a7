"""Deploy: bring a FunctionGraph project to the template, changing only what differs.

``plan_deploy`` reads the account (GET calls only) and returns a ``Plan``: for each function its
code, its configuration, each trigger and its async-invocation settings, marked ``create``,
``update``, ``replace``, ``unchanged`` or ``unmanaged``. ``apply_plan`` then makes the writes, in
order, stopping at the first refusal. A dry run prints the plan and stops there; a second deploy
of the same template and zips finds everything ``unchanged`` and writes nothing.

    with FunctionGraphApi(settings) as api:
        plan = plan_deploy(template, archives, api)
        apply_plan(plan, api)

How deploy tells what differs, since the API does not give everything back:

- Code: deploy writes a tag at the end of the function's description after each upload,
  ``[koogallery code-sha256=<zip sha-256> secrets=<fingerprint>]``, and compares the zip's
  SHA-256 with it. FunctionGraph's own ``digest`` is not documented precisely enough to compare a
  local zip with, and a tag survives any way the code was uploaded. A function without the tag
  (created by hand) gets its code uploaded once.
- ``encrypted_user_data``: FunctionGraph never returns the plain values, so the tag also holds
  a fingerprint of them: PBKDF2-HMAC-SHA256 salted with the project and function, cut to 64
  bits. It tells a change apart without revealing the values, but anyone who can read the
  description could test guesses against it slowly: keep such secrets long and random.
- Other configuration fields, triggers and async settings: compared field by field with what the
  GET calls return. Triggers are matched by type and key fields (a timer by ``name``, Kafka by
  instance and topics...). FunctionGraph can change only a trigger's status in place, so any
  other difference replaces the trigger (delete, then create). Trigger secrets
  (``kafka_password``, ``secret_key``) cannot be read back and are not compared.
- What the template does not mention (a trigger added in the console) is left alone, and the
  plan lists it as ``unmanaged``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from koogallery.deploy.fgs_api import FunctionGraphApi, FunctionGraphError
from koogallery.deploy.template import (
    AsyncInvokeConfig,
    Function,
    Template,
    Trigger,
    trigger_key,
)
from koogallery.errors import ConfigurationError, KooGalleryError

__all__ = [
    "MAX_INLINE_CODE_BYTES",
    "Action",
    "CodeArchive",
    "DeployError",
    "DeployTag",
    "Plan",
    "Step",
    "apply_plan",
    "load_archives",
    "plan_deploy",
    "secrets_fingerprint",
]

logger = logging.getLogger(__name__)

Action = Literal["create", "update", "replace", "unchanged", "unmanaged"]

MAX_INLINE_CODE_BYTES = 50 * 1024 * 1024
"""FunctionGraph takes at most 50 MB of base64 code in a request; a larger package would have
to go through OBS (``code_type: obs``), which deploy does not do."""

_FINGERPRINT_ITERATIONS = 100_000
_TAG = re.compile(r"\s*\[koogallery code-sha256=([0-9a-f]{64}) secrets=([0-9a-f]{16}|-)\]\s*$")


class DeployError(KooGalleryError):
    """A deploy step failed; the message names the function, the subject and the API's code."""

    def __init__(self, function: str, subject: str, doing: str, error: FunctionGraphError):
        code = f"{error.error_code}: " if error.error_code else ""
        status = f"HTTP {error.status}" if error.status is not None else "no answer"
        super().__init__(
            f"{function}: {subject}: {doing} failed: {code}{error.error_msg} ({status})"
        )
        self.function = function
        self.subject = subject
        self.error_code = error.error_code
        self.status = error.status


@dataclass(frozen=True)
class CodeArchive:
    """A function's zip, read once: its bytes and SHA-256."""

    path: Path
    data: bytes = field(repr=False)
    sha256: str

    @classmethod
    def read(cls, path: Path) -> CodeArchive:
        data = path.read_bytes()
        return cls(path=path, data=data, sha256=hashlib.sha256(data).hexdigest())

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


@dataclass(frozen=True)
class DeployTag:
    """What deploy records in a function's description: the code's and the secrets' identity."""

    code_sha256: str
    secrets: str

    def describe(self, description: str) -> str:
        """``description`` with the tag appended."""
        tag = f"[koogallery code-sha256={self.code_sha256} secrets={self.secrets}]"
        return f"{description} {tag}" if description else tag

    @classmethod
    def split(cls, description: str | None) -> tuple[str, DeployTag | None]:
        """The description as the template wrote it, and the tag found after it (if any)."""
        text = description or ""
        match = _TAG.search(text)
        if match is None:
            return text, None
        return text[: match.start()], cls(match.group(1), match.group(2))


@dataclass(frozen=True)
class Step:
    """One line of the plan; ``run`` makes its write (``None`` when nothing is to be done)."""

    function: str
    subject: str
    action: Action
    changes: tuple[str, ...] = ()
    run: Callable[[FunctionGraphApi], object] | None = field(
        default=None, repr=False, compare=False
    )


@dataclass(frozen=True)
class Plan:
    """Every step for every function, in the order they are applied."""

    steps: tuple[Step, ...]

    def counts(self) -> dict[str, int]:
        """How many steps there are of each action."""
        actions: tuple[Action, ...] = ("create", "update", "replace", "unchanged", "unmanaged")
        return {action: sum(step.action == action for step in self.steps) for action in actions}

    @property
    def writes(self) -> bool:
        """Whether applying the plan would change anything."""
        return any(step.run is not None for step in self.steps)


def load_archives(
    template: Template, dist_dir: Path, only: Collection[str] | None = None
) -> dict[str, CodeArchive]:
    """Each function's zip from ``dist_dir``, checked against the API's size limit."""
    functions = [template.function(name) for name in only] if only else template.functions
    archives = {}
    for function in functions:
        path = dist_dir / function.code_filename
        if not path.is_file():
            raise ConfigurationError(
                f"{function.func_name}: {path} is missing: run `koogallery package` first"
            )

        archive = CodeArchive.read(path)
        encoded = (len(archive.data) + 2) // 3 * 4
        if encoded > MAX_INLINE_CODE_BYTES:
            raise ConfigurationError(
                f"{function.func_name}: {path} is {len(archive.data):,} bytes, "
                f"{encoded:,} in base64: over the API's {MAX_INLINE_CODE_BYTES:,}-byte limit "
                "for code sent inline"
            )
        archives[function.func_name] = archive
    return archives


def secrets_fingerprint(function: Function, project_id: str) -> str:
    """A slow, salted 64-bit fingerprint of ``encrypted_user_data`` (``-`` when there is none)."""
    if not function.encrypted_user_data:
        return "-"

    plain = {key: value.get_secret_value() for key, value in function.encrypted_user_data.items()}
    material = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()
    salt = f"koogallery:{project_id}:{function.package}:{function.func_name}".encode()
    digest = hashlib.pbkdf2_hmac("sha256", material, salt, _FINGERPRINT_ITERATIONS)
    return digest.hex()[:16]


def _json_text(values: Mapping[str, str]) -> str:
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


def _config_body(function: Function, tag: DeployTag) -> dict[str, Any]:
    """The whole configuration, as both create and ``PUT .../config`` take it.

    The update replaces the configuration, so every field is sent every time: a field left out
    would be cleared.
    """
    secrets = {
        key: value.get_secret_value() for key, value in function.encrypted_user_data.items()
    }
    body: dict[str, Any] = {
        "func_name": function.func_name,
        "runtime": function.runtime,
        "handler": function.handler,
        "memory_size": function.memory_size,
        "timeout": function.timeout,
        "description": tag.describe(function.description),
        "user_data": _json_text(function.user_data),
        "encrypted_user_data": _json_text(secrets),
    }
    if function.xrole:
        body["xrole"] = function.xrole
    if function.app_xrole:
        body["app_xrole"] = function.app_xrole
    if function.func_vpc is not None:
        body["func_vpc"] = function.func_vpc.model_dump()
    return body


def _code_body(function: Function, archive: CodeArchive) -> dict[str, Any]:
    return {
        "code_type": "zip",
        "code_filename": function.code_filename,
        "func_code": {"file": archive.base64()},
    }


def _trigger_body(trigger: Trigger) -> dict[str, Any]:
    body: dict[str, Any] = {
        "trigger_type_code": trigger.trigger_type_code,
        "trigger_status": trigger.trigger_status,
        "event_data": trigger.event_data_payload(),
    }
    event_type = trigger.event_type()
    if event_type:
        body["event_type_code"] = event_type
    return body


def _same(desired: Any, actual: Any) -> bool:
    """Whether the account's value matches the template's; extra keys of the account's
    objects are ignored, and so is the order of list items and ``1`` against ``"1"``."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            _same(value, actual.get(key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(actual, list) and sorted(map(str, desired)) == sorted(map(str, actual))
    if desired == actual:
        return True
    return actual is not None and str(desired).lower() == str(actual).lower()


def _as_object(value: Any) -> dict[str, Any]:
    """An object the API returns either as JSON text or as an object (``user_data``...)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _config_changes(function: Function, remote: Mapping[str, Any], tag: DeployTag) -> list[str]:
    """The names of the configuration fields the account has otherwise than the template."""
    changes = [
        name
        for name in ("handler", "runtime", "memory_size", "timeout")
        if not _same(getattr(function, name), remote.get(name))
    ]

    description, remote_tag = DeployTag.split(remote.get("description"))
    if description != function.description:
        changes.append("description")

    if _as_object(remote.get("user_data")) != function.user_data:
        changes.append("user_data")

    if remote_tag is None or remote_tag.secrets != tag.secrets:
        changes.append("encrypted_user_data")

    for name in ("xrole", "app_xrole"):
        if (remote.get(name) or None) != getattr(function, name):
            changes.append(name)

    remote_vpc = remote.get("func_vpc") or None
    if function.func_vpc is None:
        if isinstance(remote_vpc, Mapping) and remote_vpc.get("vpc_id"):
            changes.append("func_vpc")
    elif not _same(function.func_vpc.model_dump(), remote_vpc):
        changes.append("func_vpc")
    return changes


def _remote_trigger_label(remote: Mapping[str, Any]) -> str:
    type_code = str(remote.get("trigger_type_code", "?"))
    key = trigger_key(type_code, _as_object(remote.get("event_data")))
    detail = "/".join(part for part in key[1:] if part) or str(remote.get("trigger_id", ""))
    return f"{type_code} {detail}"


def _create_trigger(urn: str, trigger: Trigger) -> Callable[[FunctionGraphApi], object]:
    def run(api: FunctionGraphApi) -> object:
        return api.create_trigger(urn, _trigger_body(trigger))

    return run


def _replace_trigger(
    urn: str, trigger: Trigger, remote: Mapping[str, Any]
) -> Callable[[FunctionGraphApi], object]:
    def run(api: FunctionGraphApi) -> object:
        api.delete_trigger(urn, trigger.trigger_type_code, str(remote["trigger_id"]))
        return api.create_trigger(urn, _trigger_body(trigger))

    return run


def _update_trigger_status(
    urn: str, trigger: Trigger, remote: Mapping[str, Any]
) -> Callable[[FunctionGraphApi], object]:
    def run(api: FunctionGraphApi) -> object:
        body = {"trigger_status": trigger.trigger_status}
        return api.update_trigger(urn, trigger.trigger_type_code, str(remote["trigger_id"]), body)

    return run


def _trigger_step(
    function: Function, urn: str, trigger: Trigger, remote: Mapping[str, Any] | None
) -> Step:
    """Create a trigger the account lacks, replace one whose settings differ (FunctionGraph
    changes only the status in place), update one whose status alone differs."""
    name = function.func_name
    subject = f"trigger {trigger.label()}"
    if remote is None:
        return Step(name, subject, "create", run=_create_trigger(urn, trigger))

    remote_data = _as_object(remote.get("event_data"))
    changed = tuple(
        field_name
        for field_name, value in trigger.comparable_event_data().items()
        if not _same(value, remote_data.get(field_name))
    )
    status_changed = remote.get("trigger_status") != trigger.trigger_status
    if changed:
        changes = changed + (("trigger_status",) if status_changed else ())
        return Step(name, subject, "replace", changes, _replace_trigger(urn, trigger, remote))

    if status_changed:
        run = _update_trigger_status(urn, trigger, remote)
        return Step(name, subject, "update", ("trigger_status",), run)
    return Step(name, subject, "unchanged")


def _plan_triggers(
    function: Function, urn: str, remote_triggers: list[dict[str, Any]]
) -> list[Step]:
    """Match the account's triggers to the template's by type and key fields; list the
    account's others as unmanaged."""
    remaining: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for item in remote_triggers:
        key = trigger_key(str(item.get("trigger_type_code")), _as_object(item.get("event_data")))
        remaining.setdefault(key, []).append(item)

    steps = []
    for trigger in function.triggers:
        matches = remaining.get(trigger.key())
        remote = matches.pop(0) if matches else None
        steps.append(_trigger_step(function, urn, trigger, remote))

    for leftovers in remaining.values():
        for remote in leftovers:
            label = _remote_trigger_label(remote)
            steps.append(Step(function.func_name, f"trigger {label}", "unmanaged"))
    return steps


def _destinations(value: Any) -> dict[str, dict[str, Any]]:
    """Destinations with ``param`` decoded and unset ones dropped: the API may give ``param``
    as JSON text and an unset destination as null."""
    targets = {}
    for name, target in _as_object(value).items():
        target_object = _as_object(target)
        if target_object.get("destination"):
            targets[name] = {
                "destination": target_object["destination"],
                "param": _as_object(target_object.get("param")),
            }
    return targets


def _async_changes(config: AsyncInvokeConfig, remote: Mapping[str, Any]) -> list[str]:
    """The async settings the template sets that the account has otherwise."""
    changes = []
    for name, value in config.payload().items():
        if name == "destination_config":
            if _destinations(value) != _destinations(remote.get(name)):
                changes.append(name)
        elif not _same(value, remote.get(name)):
            changes.append(name)
    return changes


def _reading(function: str, doing: str, call: Callable[[], Any]) -> Any:
    """Run a GET of the plan, naming the function in the error if it is refused."""
    try:
        return call()
    except FunctionGraphError as error:
        raise DeployError(function, "plan", doing, error) from None


def _plan_new_function(
    function: Function, urn: str, archive: CodeArchive, tag: DeployTag
) -> list[Step]:
    def create(api: FunctionGraphApi) -> object:
        body = {"package": function.package, **_config_body(function, tag)}
        return api.create_function({**body, **_code_body(function, archive)})

    size = f"{len(archive.data) / 1_000_000:.1f} MB"
    name = function.func_name
    steps = [Step(name, "function", "create", (f"code {archive.sha256[:12]}, {size}",), create)]
    for trigger in function.triggers:
        steps.append(
            Step(name, f"trigger {trigger.label()}", "create", run=_create_trigger(urn, trigger))
        )

    config = function.async_invoke_config
    if config is not None:
        steps.append(Step(name, "async-invoke-config", "create", run=_put_async(urn, config)))
    return steps


def _put_async(urn: str, config: AsyncInvokeConfig) -> Callable[[FunctionGraphApi], object]:
    def run(api: FunctionGraphApi) -> object:
        return api.update_async_invoke_config(urn, config.payload())

    return run


def _code_step(
    function: Function, urn: str, archive: CodeArchive, remote_tag: DeployTag | None
) -> Step:
    name = function.func_name
    if remote_tag is not None and remote_tag.code_sha256 == archive.sha256:
        return Step(name, "code", "unchanged")

    body = _code_body(function, archive)

    def run(client: FunctionGraphApi) -> object:
        return client.update_function_code(urn, body)

    before = remote_tag.code_sha256[:12] if remote_tag else "untagged"
    return Step(name, "code", "update", (f"{before} -> {archive.sha256[:12]}",), run)


def _config_step(
    function: Function, urn: str, remote: Mapping[str, Any], tag: DeployTag, code_changes: bool
) -> Step:
    """The configuration step; new code always means a new tag, hence a config update."""
    changes = _config_changes(function, remote, tag)
    if not changes and not code_changes:
        return Step(function.func_name, "config", "unchanged")

    body = _config_body(function, tag)

    def run(client: FunctionGraphApi) -> object:
        return client.update_function_config(urn, body)

    why = tuple(changes) or ("code-sha256 tag",)
    return Step(function.func_name, "config", "update", why, run)


def _async_step(
    function: Function, urn: str, wanted: AsyncInvokeConfig, current: Mapping[str, Any] | None
) -> Step:
    name = function.func_name
    if current is None:
        return Step(name, "async-invoke-config", "create", run=_put_async(urn, wanted))

    changes = _async_changes(wanted, current)
    if changes:
        return Step(name, "async-invoke-config", "update", tuple(changes), _put_async(urn, wanted))
    return Step(name, "async-invoke-config", "unchanged")


def _plan_function(function: Function, archive: CodeArchive, api: FunctionGraphApi) -> list[Step]:
    """The steps that bring one function to the template."""
    settings = api.settings
    name = function.func_name
    urn = function.urn(settings.region, settings.project_id)
    tag = DeployTag(archive.sha256, secrets_fingerprint(function, settings.project_id))

    remote = _reading(name, "reading its configuration", lambda: api.get_function_config(urn))
    if remote is None:
        return _plan_new_function(function, urn, archive, tag)

    _, remote_tag = DeployTag.split(remote.get("description"))
    code = _code_step(function, urn, archive, remote_tag)
    steps = [code, _config_step(function, urn, remote, tag, code.run is not None)]

    remote_triggers = _reading(name, "listing its triggers", lambda: api.list_triggers(urn))
    steps.extend(_plan_triggers(function, urn, remote_triggers))

    wanted = function.async_invoke_config
    if wanted is not None:
        current = _reading(
            name, "reading its async invoke config", lambda: api.get_async_invoke_config(urn)
        )
        steps.append(_async_step(function, urn, wanted, current))
    return steps


def plan_deploy(
    template: Template,
    archives: Mapping[str, CodeArchive],
    api: FunctionGraphApi,
) -> Plan:
    """Read the account and list what bringing it to the template takes (no writes).

    Only the functions that have an archive are planned, so ``archives`` selects them.
    """
    steps: list[Step] = []
    for function in template.functions:
        archive = archives.get(function.func_name)
        if archive is not None:
            steps.extend(_plan_function(function, archive, api))
    return Plan(tuple(steps))


_DOING = {"create": "creating", "update": "updating", "replace": "replacing"}


def apply_plan(
    plan: Plan,
    api: FunctionGraphApi,
    on_done: Callable[[Step], None] | None = None,
) -> None:
    """Make the plan's writes in order; the first refusal stops the deploy with a DeployError.

    Steps already made stay made: the next deploy finds them unchanged and goes on from there.
    """
    for step in plan.steps:
        if step.run is None:
            continue

        try:
            step.run(api)
        except FunctionGraphError as error:
            doing = _DOING.get(step.action, step.action)
            raise DeployError(step.function, step.subject, doing, error) from None

        logger.info(
            "deploy step done",
            extra={
                "event": "deploy_step",
                "function": step.function,
                "subject": step.subject,
                "action": step.action,
            },
        )
        if on_done is not None:
            on_done(step)
