"""``template.yaml``: the product's FunctionGraph functions, their triggers and their
asynchronous-invocation settings, in one validated file.

No official FunctionGraph template format covers queue triggers, so the product defines its own.
Its field names are those of the FunctionGraph v2 API (``func_name``, ``memory_size``,
``trigger_type_code``, ``event_data``, ``encrypted_user_data``, ``max_async_retry_attempts``...)
so that each one can be looked up in Huawei's API reference. Two names are ours:
``template_version`` and ``code_dir`` (the folder, relative to the template, that holds the
handler module).

    template = load_template(Path("template.yaml"))                    # the schema only
    template = load_template(Path("template.yaml"), env=os.environ)    # ${VAR}s filled too

``${VAR}`` or ``${VAR:-default}`` in any string value is filled from the environment at deploy
time, and a missing variable is an error that names it and where the template uses it; ``$${``
writes a literal ``${``. Numbers and booleans are written literally. The values of
``encrypted_user_data`` and of trigger passwords must be references, so that a secret can never be
committed with the template; a user data entry whose filled value is empty is left out, which is
how optional settings (``${KOOGALLERY_ENDPOINT:-}``) stay unset.

Errors name the place of the mistake the way a reader counts it:
``functions[0].triggers[1].event_data.batch_size: Input should be less than or equal to 1000``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from koogallery.errors import ConfigurationError

__all__ = [
    "MAX_DESCRIPTION_LENGTH",
    "MEMORY_SIZES",
    "RUNTIME_PYTHON_VERSIONS",
    "SECRET_USER_DATA_KEYS",
    "TRIGGER_KEY_FIELDS",
    "ApigTrigger",
    "AsyncInvokeConfig",
    "Destination",
    "DestinationConfig",
    "FuncVpc",
    "Function",
    "KafkaTrigger",
    "RabbitMqTrigger",
    "RocketMqTrigger",
    "SmnTrigger",
    "Template",
    "TemplateError",
    "TimerTrigger",
    "Trigger",
    "fill_references",
    "has_reference",
    "load_template",
    "parse_template",
    "referenced_variables",
    "trigger_key",
]

MEMORY_SIZES = (128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096)
"""FunctionGraph's ``memory_size`` enum. Newer regions go beyond 4096 MB (up to 10 GB); the
template accepts those larger sizes in steps of 512 MB and leaves the final word to the API."""

_MAX_MEMORY_SIZE = 10240
_LARGE_MEMORY_STEP = 512

RUNTIME_PYTHON_VERSIONS: Mapping[str, str] = {"Python3.10": "3.10", "Python3.12": "3.12"}
"""The FunctionGraph runtimes the product supports, and the CPython version each one runs."""

SECRET_USER_DATA_KEYS = frozenset(
    {
        "HUAWEICLOUD_SDK_SK",
        "HUAWEICLOUD_SDK_SECURITY_TOKEN",
        "KOOGALLERY_SELLER_KEY",
        "KOOGALLERY_LEDGER_URL",
    }
)
"""Settings that are (or may contain) secrets: they belong in ``encrypted_user_data``.
The ledger URL is one because a PostgreSQL URL carries its password."""

MAX_DESCRIPTION_LENGTH = 400
"""FunctionGraph allows 512 characters; deploy appends its own tag (about 100) to the text."""

_MAX_USER_DATA_ENTRIES = 20
_MAX_USER_DATA_CHARACTERS = 4096

_REFERENCE = re.compile(
    r"(?P<escape>\$\$\{)"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<broken>\$\{)"
)


class TemplateError(ConfigurationError):
    """The template cannot be used as it is; ``problems`` lists every mistake found, each
    starting with the place it is at."""

    def __init__(self, source: str, problems: list[str]) -> None:
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{source} is not a valid template:\n{lines}")
        self.source = source
        self.problems = tuple(problems)


def has_reference(value: str) -> bool:
    """Whether ``value`` still holds a ``${VAR}`` to fill (a ``$${`` escape is not one)."""
    return any(match.group("name") for match in _REFERENCE.finditer(value))


def _unless_reference(check: Callable[[str], bool], what: str) -> Callable[[str], str]:
    """A validator that lets a reference through: its value is only known at deploy time."""

    def validate(value: str) -> str:
        if has_reference(value) or check(value):
            return value
        raise ValueError(f"{value!r} is not {what}")

    return validate


def _pattern(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)
    return AfterValidator(_unless_reference(lambda value: bool(compiled.fullmatch(value)), what))


FunctionName = Annotated[
    str,
    _pattern(
        r"[A-Za-z][A-Za-z0-9_-]{0,59}",
        "a function name (a letter, then up to 59 letters, digits, '_' or '-')",
    ),
]
PackageName = Annotated[
    str, _pattern(r"[A-Za-z0-9_-]{1,64}", "a package (app) name (letters, digits, '_', '-')")
]
HandlerName = Annotated[
    str,
    _pattern(
        r"[A-Za-z0-9_][A-Za-z0-9_/-]*\.[A-Za-z_][A-Za-z0-9_]*",
        "a handler of the form file.function or folder/file.function",
    ),
]
UserDataKey = Annotated[
    str,
    _pattern(
        r"[A-Za-z][A-Za-z0-9_]*",
        "an environment variable name (a letter, then letters, digits or '_')",
    ),
]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    """Strict, closed models: a misspelt field or a quoted number is an error, not a guess."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FuncVpc(_Model):
    """The VPC the function joins; a Kafka, RocketMQ or RabbitMQ trigger needs one."""

    vpc_id: NonEmpty
    subnet_id: NonEmpty


def _check_rate(schedule: str) -> bool:
    """``Nm`` (1-60), ``Nh`` (1-24) or ``Nd`` (1-30), as FunctionGraph's Rate timers take."""
    match = re.fullmatch(r"([1-9][0-9]{0,2})([mhd])", schedule)
    if match is None:
        return False
    return int(match.group(1)) <= {"m": 60, "h": 24, "d": 30}[match.group(2)]


_CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"


def _check_cron_field(text: str, position: int) -> bool:
    low, high = _CRON_RANGES[position]
    names = {4: _MONTHS, 5: _DAYS}.get(position)
    value = rf"(?:[0-9]{{1,2}}|{names})" if names else r"[0-9]{1,2}"
    special = {3: r"L|LW|[0-9]{1,2}W|\?", 5: r"[0-7]L|[0-7]#[1-5]|L|\?"}.get(position)
    for part in text.upper().split(","):
        if special and re.fullmatch(special, part):
            continue

        match = re.fullmatch(rf"(\*|{value}(?:-{value})?)(?:/([0-9]{{1,2}}))?", part)
        if match is None:
            return False

        numbers = [int(token) for token in re.findall(r"[0-9]+", match.group(1))]
        if any(not low <= number <= high for number in numbers):
            return False
    return True


def _check_cron(schedule: str) -> bool:
    """A 6-field cron (seconds first) or ``@every`` with a duration such as ``1h30m``."""
    if schedule.startswith("@every"):
        duration = schedule[len("@every") :].strip()
        return bool(re.fullmatch(r"(?:[0-9]+(?:\.[0-9]+)?[hms])+", duration))

    fields = schedule.split()
    if len(fields) != len(_CRON_RANGES):
        return False
    return all(_check_cron_field(text, position) for position, text in enumerate(fields))


class TimerEventData(_Model):
    """A timer: a Rate (``30m``, ``6h``, ``1d``) or Cron (``0 0 2 * * ?``, ``@every 1h``)."""

    name: Annotated[
        str,
        _pattern(r"[A-Za-z][A-Za-z0-9_-]{0,63}", "a timer name (a letter, then up to 63 more)"),
    ]
    schedule_type: Literal["Rate", "Cron"]
    schedule: NonEmpty
    user_event: str | None = None

    @model_validator(mode="after")
    def _schedule_matches_type(self) -> TimerEventData:
        if has_reference(self.schedule):
            return self
        if self.schedule_type == "Rate" and not _check_rate(self.schedule):
            raise ValueError(
                f"schedule {self.schedule!r} is not a Rate: use Nm (1-60), Nh (1-24) or Nd (1-30)"
            )
        if self.schedule_type == "Cron" and not _check_cron(self.schedule):
            raise ValueError(
                f"schedule {self.schedule!r} is not a Cron: use six fields, seconds first "
                "('0 0 2 * * ?'), or '@every 1h30m'"
            )
        return self


BatchSize = Annotated[int, Field(ge=1, le=1000)]


class KafkaEventData(_Model):
    """A DMS for Kafka instance's topics; the function needs ``func_vpc`` to reach them."""

    instance_id: NonEmpty
    topic_ids: Annotated[list[NonEmpty], Field(min_length=1)]
    batch_size: BatchSize = 100
    kafka_user: str | None = None
    kafka_password: SecretStr | None = None
    kafka_connect_address: str | None = None
    kafka_ssl_enable: bool | None = None


class RocketMqEventData(_Model):
    """A DMS for RocketMQ instance's topics; ``access_key``/``secret_key`` with ``enable_acl``."""

    instance_id: NonEmpty
    topic_ids: Annotated[list[NonEmpty], Field(min_length=1)]
    batch_size: BatchSize = 100
    enable_acl: bool | None = None
    access_key: str | None = None
    secret_key: SecretStr | None = None

    @model_validator(mode="after")
    def _acl_has_credentials(self) -> RocketMqEventData:
        if self.enable_acl and (not self.access_key or self.secret_key is None):
            raise ValueError("enable_acl needs access_key and secret_key")
        return self


class RabbitMqEventData(_Model):
    """A DMS for RabbitMQ instance's exchange (the queue bound to it is polled)."""

    instance_id: NonEmpty
    exchange_name: NonEmpty
    vhost: str | None = None
    batch_size: BatchSize = 100
    connect_address: str | None = None
    ssl_enable: bool | None = None


class SmnEventData(_Model):
    """An SMN topic whose notifications invoke the function."""

    topic_urn: Annotated[
        str, _pattern(r"urn:smn:[A-Za-z0-9_:.-]+", "an SMN topic URN (urn:smn:...)")
    ]


class ApigFuncInfo(_Model):
    """How the API gateway calls the function: ``timeout`` in milliseconds."""

    timeout: Annotated[int, Field(ge=1, le=60000)] = 5000
    invocation_type: Literal["sync", "async"] | None = None


class ApigEventData(_Model):
    """A dedicated API gateway API whose backend is the function."""

    name: NonEmpty
    group_id: NonEmpty
    env_id: NonEmpty
    env_name: str | None = None
    instance_id: str | None = None
    path: Annotated[str, _pattern(r"/[^\s]*", "an API path starting with '/'")]
    req_method: Literal["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "ANY"]
    protocol: Literal["HTTP", "HTTPS"] = "HTTPS"
    auth: Literal["IAM", "APP", "NONE"] = "IAM"
    match_mode: Literal["SWA", "NORMAL"] = "NORMAL"
    type: Literal[1, 2] = 1
    func_info: ApigFuncInfo = ApigFuncInfo()


class _TriggerBase(_Model):
    """What every trigger has. ``KEY_FIELDS`` identify a trigger among a function's triggers:
    deploy matches the account's triggers to the template's by type and these fields."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ()
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()
    DEFAULT_EVENT_TYPE_CODE: ClassVar[str | None] = None

    trigger_type_code: str
    trigger_status: Literal["ACTIVE", "DISABLED"] = "ACTIVE"
    event_type_code: str | None = None
    event_data: BaseModel

    def key(self) -> tuple[str, ...]:
        """The trigger's identity: its type and key fields (lists in a stable order)."""
        return trigger_key(self.trigger_type_code, self.event_data.model_dump())

    def label(self) -> str:
        """A short human name: ``TIMER daily``, ``KAFKA inst-1/usage-events``."""
        return f"{self.trigger_type_code} {'/'.join(part for part in self.key()[1:] if part)}"

    def event_type(self) -> str | None:
        """The ``event_type_code`` to send: the template's, else the one Huawei's examples use
        for this trigger type (timers ``MessageCreated``, API gateway ``APICreated``)."""
        return self.event_type_code or self.DEFAULT_EVENT_TYPE_CODE

    def event_data_payload(self) -> dict[str, Any]:
        """``event_data`` as the API takes it, secrets revealed: for the request body only."""
        payload: dict[str, Any] = _reveal(self.event_data.model_dump(exclude_none=True))
        return payload

    def comparable_event_data(self) -> dict[str, Any]:
        """``event_data`` without secrets: what deploy can compare with the account's copy."""
        return self.event_data.model_dump(exclude_none=True, exclude=set(self.SECRET_FIELDS))


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_reveal(item) for item in value]
    return value


class TimerTrigger(_TriggerBase):
    """A TIMER trigger, known by its ``name``."""

    KEY_FIELDS = ("name",)
    DEFAULT_EVENT_TYPE_CODE = "MessageCreated"

    trigger_type_code: Literal["TIMER"]
    event_data: TimerEventData


class KafkaTrigger(_TriggerBase):
    """A DMS for Kafka trigger, known by its instance and topics."""

    KEY_FIELDS = ("instance_id", "topic_ids")
    SECRET_FIELDS = ("kafka_password",)

    trigger_type_code: Literal["KAFKA"]
    event_data: KafkaEventData


class RocketMqTrigger(_TriggerBase):
    """A DMS for RocketMQ trigger, known by its instance and topics."""

    KEY_FIELDS = ("instance_id", "topic_ids")
    SECRET_FIELDS = ("secret_key",)

    trigger_type_code: Literal["ROCKETMQ"]
    event_data: RocketMqEventData


class RabbitMqTrigger(_TriggerBase):
    """A DMS for RabbitMQ trigger, known by instance, exchange and vhost."""

    KEY_FIELDS = ("instance_id", "exchange_name", "vhost")

    trigger_type_code: Literal["RABBITMQ"]
    event_data: RabbitMqEventData


class SmnTrigger(_TriggerBase):
    """An SMN trigger, known by its topic URN."""

    KEY_FIELDS = ("topic_urn",)

    trigger_type_code: Literal["SMN"]
    event_data: SmnEventData


class ApigTrigger(_TriggerBase):
    """An API gateway trigger, known by its API group and API name."""

    KEY_FIELDS = ("group_id", "name")
    DEFAULT_EVENT_TYPE_CODE = "APICreated"

    trigger_type_code: Literal["APIG", "DEDICATEDGATEWAY"]
    event_data: ApigEventData


Trigger = Annotated[
    TimerTrigger | KafkaTrigger | RocketMqTrigger | RabbitMqTrigger | SmnTrigger | ApigTrigger,
    Field(discriminator="trigger_type_code"),
]

TRIGGER_KEY_FIELDS: Mapping[str, tuple[str, ...]] = {
    "TIMER": TimerTrigger.KEY_FIELDS,
    "KAFKA": KafkaTrigger.KEY_FIELDS,
    "ROCKETMQ": RocketMqTrigger.KEY_FIELDS,
    "RABBITMQ": RabbitMqTrigger.KEY_FIELDS,
    "SMN": SmnTrigger.KEY_FIELDS,
    "APIG": ApigTrigger.KEY_FIELDS,
    "DEDICATEDGATEWAY": ApigTrigger.KEY_FIELDS,
}
"""Per trigger type, the ``event_data`` fields that tell one trigger of a function from another."""


def trigger_key(type_code: str, event_data: Mapping[str, Any]) -> tuple[str, ...]:
    """A trigger's identity, for the template's and the account's alike: its type and the
    values of its key fields (a list's items sorted, since their order means nothing)."""
    parts = [type_code]
    for name in TRIGGER_KEY_FIELDS.get(type_code, ()):
        value = event_data.get(name)
        if isinstance(value, list):
            parts.append(",".join(sorted(str(item) for item in value)))
        else:
            parts.append("" if value is None else str(value))
    return tuple(parts)


_DESTINATION_PARAMS: Mapping[str, tuple[set[str], set[str]]] = {
    "OBS": ({"bucket"}, {"prefix", "expires"}),
    "SMN": ({"topic_urn"}, set()),
    "DIS": ({"stream_name"}, set()),
    "FunctionGraph": ({"func_urn"}, set()),
}


class Destination(_Model):
    """Where FunctionGraph sends an asynchronous invocation's record (``param`` per the API:
    OBS ``bucket``/``prefix``/``expires``, SMN ``topic_urn``, DIS ``stream_name``,
    FunctionGraph ``func_urn``)."""

    destination: Literal["OBS", "SMN", "DIS", "FunctionGraph"]
    param: dict[str, str | int]

    @model_validator(mode="after")
    def _param_fits_destination(self) -> Destination:
        required, optional = _DESTINATION_PARAMS[self.destination]
        missing = sorted(required - set(self.param))
        unknown = sorted(set(self.param) - required - optional)
        if missing:
            raise ValueError(f"param of a {self.destination} destination needs {missing}")
        if unknown:
            raise ValueError(f"param of a {self.destination} destination has no {unknown}")
        expires = self.param.get("expires")
        if expires is not None and not (isinstance(expires, int) and 0 <= expires <= 365):
            raise ValueError("param.expires is a number of days from 0 to 365")
        return self


class DestinationConfig(_Model):
    on_success: Destination | None = None
    on_failure: Destination | None = None


class AsyncInvokeConfig(_Model):
    """Retries and destinations of asynchronous invocations (the failure destination is the
    dead-letter place). Huawei's pages disagree on the retry range (0-3 on the page that sets
    it, 0-8 on the one that reads it): the template keeps to 0-3, which every region takes."""

    max_async_retry_attempts: Annotated[int, Field(ge=0, le=3)]
    max_async_event_age_in_seconds: Annotated[int, Field(ge=1, le=86400)]
    destination_config: DestinationConfig | None = None
    enable_async_status_log: bool | None = None

    def payload(self) -> dict[str, Any]:
        """The body of ``PUT .../async-invoke-config``; ``param`` goes as a JSON string."""
        body: dict[str, Any] = {
            "max_async_retry_attempts": self.max_async_retry_attempts,
            "max_async_event_age_in_seconds": self.max_async_event_age_in_seconds,
        }
        if self.destination_config is not None:
            body["destination_config"] = {
                name: {
                    "destination": target.destination,
                    "param": json.dumps(target.param, sort_keys=True, separators=(",", ":")),
                }
                for name, target in (
                    ("on_success", self.destination_config.on_success),
                    ("on_failure", self.destination_config.on_failure),
                )
                if target is not None
            }
        if self.enable_async_status_log is not None:
            body["enable_async_status_log"] = self.enable_async_status_log
        return body


def _empty_as_none(value: str | None) -> str | None:
    return value or None


class Function(_Model):
    """One FunctionGraph function: its code, configuration, triggers and async settings."""

    func_name: FunctionName
    package: PackageName = "default"
    code_dir: NonEmpty
    handler: HandlerName
    runtime: Literal["Python3.10", "Python3.12"]
    memory_size: int
    timeout: Annotated[int, Field(ge=3, le=900)]
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_LENGTH)] = ""
    user_data: dict[UserDataKey, str] = {}
    encrypted_user_data: dict[UserDataKey, SecretStr] = {}
    xrole: Annotated[str | None, AfterValidator(_empty_as_none)] = None
    app_xrole: Annotated[str | None, AfterValidator(_empty_as_none)] = None
    func_vpc: FuncVpc | None = None
    triggers: list[Trigger] = []
    async_invoke_config: AsyncInvokeConfig | None = None

    @field_validator("memory_size")
    @classmethod
    def _memory_from_the_enum(cls, value: int) -> int:
        large = value > MEMORY_SIZES[-1] and value % _LARGE_MEMORY_STEP == 0
        if value in MEMORY_SIZES or (large and value <= _MAX_MEMORY_SIZE):
            return value
        sizes = ", ".join(str(size) for size in MEMORY_SIZES)
        raise ValueError(
            f"{value} is not a FunctionGraph memory size: use one of {sizes}, "
            f"or a multiple of {_LARGE_MEMORY_STEP} up to {_MAX_MEMORY_SIZE} where offered"
        )

    @field_validator("user_data", "encrypted_user_data")
    @classmethod
    def _drop_empty_entries(cls, value: dict[str, Any]) -> dict[str, Any]:
        def text(item: Any) -> str:
            return item.get_secret_value() if isinstance(item, SecretStr) else str(item)

        return {key: item for key, item in value.items() if text(item) != ""}

    @model_validator(mode="after")
    def _environment_is_well_formed(self) -> Function:
        keys = list(self.user_data) + list(self.encrypted_user_data)
        reserved = sorted(key for key in keys if key.upper().startswith("RUNTIME_"))
        if reserved:
            raise ValueError(f"{reserved} are reserved by FunctionGraph (RUNTIME_*)")

        twice = sorted(set(self.user_data) & set(self.encrypted_user_data))
        if twice:
            raise ValueError(f"{twice} are both in user_data and encrypted_user_data")

        secrets = sorted(SECRET_USER_DATA_KEYS & set(self.user_data))
        if secrets:
            raise ValueError(f"{secrets} hold secrets: move them to encrypted_user_data")

        if len(self.user_data) > _MAX_USER_DATA_ENTRIES:
            raise ValueError(
                f"user_data has {len(self.user_data)} entries, FunctionGraph takes at most "
                f"{_MAX_USER_DATA_ENTRIES}"
            )

        size = self._environment_size()
        if size is not None and size > _MAX_USER_DATA_CHARACTERS:
            raise ValueError(
                f"user_data and encrypted_user_data take {size} characters as JSON, "
                f"FunctionGraph takes at most {_MAX_USER_DATA_CHARACTERS}"
            )
        return self

    def _environment_size(self) -> int | None:
        """The environment's size as FunctionGraph counts it (JSON text); ``None`` while
        references are unfilled, since their values decide it."""
        plain = {key: value.get_secret_value() for key, value in self.encrypted_user_data.items()}
        values = [*self.user_data.values(), *plain.values()]
        if any(has_reference(value) for value in values):
            return None
        return len(json.dumps(self.user_data)) + len(json.dumps(plain))

    @model_validator(mode="after")
    def _triggers_are_distinct(self) -> Function:
        seen: set[tuple[str, ...]] = set()
        for index, trigger in enumerate(self.triggers):
            if trigger.key() in seen:
                raise ValueError(f"triggers[{index}] ({trigger.label()}) appears twice")
            seen.add(trigger.key())
        return self

    @property
    def python_version(self) -> str:
        """The CPython version of the runtime, such as ``3.12``."""
        return RUNTIME_PYTHON_VERSIONS[self.runtime]

    @property
    def handler_path(self) -> PurePosixPath:
        """Where the handler module sits inside the zip: ``index.py`` for ``index.handler``."""
        module = self.handler.rsplit(".", 1)[0]
        return PurePosixPath(f"{module}.py")

    @property
    def code_filename(self) -> str:
        """The name of the function's zip under ``dist/`` and in the API's ``code_filename``."""
        return f"{self.func_name}.zip"

    def urn(self, region: str, project_id: str) -> str:
        """The function's URN: ``urn:fss:{region}:{project}:function:{package}:{name}``."""
        return f"urn:fss:{region}:{project_id}:function:{self.package}:{self.func_name}"


class Template(_Model):
    """The whole file: its format version and the functions to deploy."""

    template_version: Literal[1]
    functions: Annotated[list[Function], Field(min_length=1)]

    @model_validator(mode="after")
    def _names_are_distinct(self) -> Template:
        names = [function.func_name for function in self.functions]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"func_name {twice} appears more than once")
        return self

    def function(self, name: str) -> Function:
        """The function called ``name``, or a ConfigurationError listing the known ones."""
        for function in self.functions:
            if function.func_name == name:
                return function
        known = ", ".join(function.func_name for function in self.functions)
        raise ConfigurationError(f"the template has no function {name!r} (it has: {known})")


def _location(loc: tuple[int | str, ...]) -> str:
    """``('functions', 0, 'triggers', 1, 'KAFKA', 'event_data')`` as
    ``functions[0].triggers[1].event_data`` (the union's tag is not part of the path)."""
    text = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(previous, int) and part in TRIGGER_KEY_FIELDS:
            continue
        else:
            text += f".{part}" if text else part
        previous = part
    return text or "(top level)"


def _describe(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_input=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{_location(tuple(item['loc']))}: {message}")
    return problems


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` with its place, ``functions[0].user_data.KEY`` style."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")


def referenced_variables(raw: Any) -> list[str]:
    """The environment variables a parsed template refers to, sorted, each named once."""
    names = {
        match.group("name")
        for _, text in _walk(raw, "")
        for match in _REFERENCE.finditer(text)
        if match.group("name")
    }
    return sorted(names)


def fill_references(raw: Any, env: Mapping[str, str]) -> Any:
    """``raw`` with each ``${VAR}`` replaced from ``env``; missing ones raise together.

    The problems name the variable and the place, never a value: the place alone tells the
    reader which setting to provide.
    """
    problems: list[str] = []

    def fill(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {
                key: fill(item, f"{path}.{key}" if path else str(key))
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [fill(item, f"{path}[{index}]") for index, item in enumerate(value)]
        if not isinstance(value, str):
            return value

        def replace(match: re.Match[str]) -> str:
            if match.group("escape"):
                return "${"
            if match.group("broken"):
                problems.append(f"{path}: '${{' starts no ${{VAR}} reference (write $${{)")
                return ""
            name = match.group("name")
            if name in env:
                return env[name]
            if match.group("default") is not None:
                return match.group("default")
            problems.append(f"{path}: ${{{name}}} is not set in the environment")
            return ""

        return _REFERENCE.sub(replace, value)

    filled = fill(raw, "")
    if problems:
        raise TemplateError("the template's ${VAR} references", problems)
    return filled


def _secrets_are_references(raw: Any) -> list[str]:
    """Places where a secret is written into the file instead of referenced."""
    problems = []
    secret_fields = {"kafka_password", "secret_key"}
    for path, text in _walk(raw, ""):
        is_secret = ".encrypted_user_data." in f".{path}" or path.rsplit(".", 1)[-1] in (
            secret_fields
        )
        if is_secret and text and not has_reference(text):
            problems.append(
                f"{path}: write a ${{VAR}} reference here, not the secret itself, so that it "
                "is never committed with the template"
            )
    return problems


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for index, key in enumerate(keys):
            if key in keys[:index]:
                mark = node.value[index][0].start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (line {mark.line + 1})", mark
                )
        return super().construct_mapping(node, deep=deep)


def parse_template(
    text: str, *, source: str = "template.yaml", env: Mapping[str, str] | None = None
) -> Template:
    """Validate a template's text; with ``env``, fill its ``${VAR}`` references first."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise TemplateError(source, [f"not YAML: {error}"]) from None

    if not isinstance(raw, dict):
        raise TemplateError(source, ["(top level): a mapping with template_version, functions"])

    problems = _secrets_are_references(raw)
    if problems:
        raise TemplateError(source, problems)

    if env is not None:
        try:
            raw = fill_references(raw, env)
        except TemplateError as error:
            raise TemplateError(source, list(error.problems)) from None

    try:
        return Template.model_validate(raw)
    except ValidationError as error:
        raise TemplateError(source, _describe(error)) from None


def load_template(path: Path, env: Mapping[str, str] | None = None) -> Template:
    """Read and validate ``path`` (see :func:`parse_template`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"cannot read the template {path}: {error.strerror}") from None
    return parse_template(text, source=str(path), env=env)
