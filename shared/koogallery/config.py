"""Settings: where to push, which API variant, and with which credentials.

Settings come from environment variables (or FunctionGraph user data, which the platform exposes
the same way), are validated once, and hold every secret as ``SecretStr`` so that printing a
``Settings`` object, logging it or putting it in an exception never reveals a key.

    settings = Settings.from_env()
    client = KooGalleryClient(settings)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from koogallery.errors import ConfigurationError

__all__ = [
    "BILL_ENDPOINTS",
    "FALLBACK_ENDPOINT",
    "SITE_ENDPOINTS",
    "USAGE_PATHS",
    "EnvGetter",
    "Settings",
    "Site",
    "UsageApi",
]

Site = Literal["cn", "intl", "eu"]
UsageApi = Literal["v2", "v1", "legacy"]
EnvGetter = Callable[[str], "str | None"]

FALLBACK_ENDPOINT = "https://mkt.myhuaweicloud.cn"
"""The domain KooGallery's documentation names for use when the site's own host is unreachable."""

SITE_ENDPOINTS: Mapping[str, tuple[str, ...]] = {
    "cn": ("https://mkt.myhuaweicloud.com", FALLBACK_ENDPOINT),
    "intl": ("https://mkt-intl.myhuaweicloud.com", FALLBACK_ENDPOINT),
    "eu": ("https://mkt-euro.myhuaweicloud.com",),
}
"""KooGallery's documents name the China fallback for the China and international sites only;
EU usage never fails over to a host outside the EU."""

USAGE_PATHS: Mapping[str, str] = {
    "v2": "/api/mkp-openapi-public/global/v1/isv/usage-data",
    "v1": "/rest/marketplace/v1/isv/usage-data",
    "legacy": "/v1.0/{partner_id}/billing/bill-mgr/push-usage-data",
}

BILL_ENDPOINTS: Mapping[str, str] = {
    "cn": "https://bss.myhuaweicloud.com",
    "intl": "https://bss-intl.myhuaweicloud.com",
    "eu": "https://bss.myhuaweicloud.eu",
}
"""Partner Center (BSS) hosts, per site, for the bill APIs."""

MAX_CHUNK_SIZE = 1000
"""The usage API refuses more records than this in one request (``MKT.9003``)."""


class Settings(BaseModel):
    """Everything the usage client needs, validated.

    ``endpoint`` replaces the site's whole endpoint list: when it is set, no other host is ever
    contacted, which is what tests and the local emulator rely on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    site: Site = "cn"
    endpoint: str | None = None
    usage_api: UsageApi = "v2"
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    security_token: SecretStr | None = None
    seller_key: SecretStr | None = None
    partner_id: str | None = None
    usage_entity: str = "times"
    chunk_size: int = Field(default=MAX_CHUNK_SIZE, ge=1, le=MAX_CHUNK_SIZE)
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)
    backoff_base_seconds: float = Field(default=0.2, ge=0)
    backoff_cap_seconds: float = Field(default=5.0, ge=0)
    verify_tls: bool = True
    deadline_margin_seconds: float = Field(default=3.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    ledger_url: SecretStr | None = None
    lease_seconds: float = Field(default=300.0, ge=1)
    billing_mode: Literal["hourly", "daily"] = "hourly"
    bill_endpoint: str | None = None
    domain_id: str | None = None
    bill_ready_margin_minutes: int = Field(default=120, ge=0, le=7 * 24 * 60)
    reconcile_tolerance: Decimal = Field(default=Decimal("0.01"), ge=0)
    unit_prices: dict[str, Decimal] = Field(default_factory=dict)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_has_scheme(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        urls = [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        for url in urls:
            _check_url(url)
        return ",".join(urls)

    @field_validator("bill_endpoint")
    @classmethod
    def _bill_endpoint_has_scheme(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip().rstrip("/")
        _check_url(value)
        return value

    @field_validator("unit_prices", mode="before")
    @classmethod
    def _prices_from_json(cls, value: object) -> object:
        """``KOOGALLERY_UNIT_PRICES`` is JSON: ``{"<instance_id>": "0.5", ...}``."""
        if isinstance(value, str):
            try:
                return json.loads(value, parse_float=Decimal)
            except json.JSONDecodeError as error:
                raise ValueError(f"is not a JSON object of prices: {error.msg}") from None
        return value

    @property
    def bill_endpoints(self) -> tuple[str, ...]:
        """The bill API host: ``KOOGALLERY_BILL_ENDPOINT`` when set (then nothing else)."""
        if self.bill_endpoint is not None:
            return (self.bill_endpoint,)
        return (BILL_ENDPOINTS[self.site],)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The hosts to try, in order; a failover moves to the next only on connection failure.

        ``endpoint`` (``KOOGALLERY_ENDPOINT``, one URL or a comma-separated list) replaces the
        site's list entirely: nothing else is ever contacted.
        """
        if self.endpoint is not None:
            return tuple(self.endpoint.split(","))
        return SITE_ENDPOINTS[self.site]

    @property
    def usage_path(self) -> str:
        """The request path of the configured usage API variant."""
        path = USAGE_PATHS[self.usage_api]
        if self.usage_api == "legacy":
            return path.format(partner_id=self.partner_id)
        return path

    def secret_values(self) -> list[SecretStr]:
        """Every secret these settings hold, for log masking: one list, used everywhere."""
        candidates = (
            self.access_key,
            self.secret_key,
            self.security_token,
            self.seller_key,
            self.ledger_url,
        )
        return [value for value in candidates if value is not None]

    def require_push_credentials(self) -> None:
        """Fail before any request when a credential the chosen API needs is missing."""
        missing = []
        if self.access_key is None:
            missing.append("HUAWEICLOUD_SDK_AK")
        if self.secret_key is None:
            missing.append("HUAWEICLOUD_SDK_SK")
        if self.usage_api == "v2" and self.seller_key is None:
            missing.append("KOOGALLERY_SELLER_KEY")
        if self.usage_api == "legacy" and not self.partner_id:
            missing.append("KOOGALLERY_PARTNER_ID")
        if missing:
            raise ConfigurationError(
                f"usage API {self.usage_api!r} needs {', '.join(missing)}: set "
                f"{'it' if len(missing) == 1 else 'them'} in the environment or the function's "
                "user data"
            )

    def require_bill_credentials(self) -> None:
        """Fail before any request when the bill APIs' credentials are missing."""
        missing = [
            name
            for name, value in (
                ("HUAWEICLOUD_SDK_AK", self.access_key),
                ("HUAWEICLOUD_SDK_SK", self.secret_key),
                ("HUAWEICLOUD_SDK_DOMAIN_ID", self.domain_id),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError(
                f"the bill APIs need {', '.join(missing)}: set them in the environment or the "
                "function's user data (the domain id is the account id; no IAM look-up is made)"
            )

    @classmethod
    def from_env(
        cls,
        getenv: EnvGetter | None = None,
        **overrides: object,
    ) -> Settings:
        """Read settings from ``getenv`` (default: the process environment).

        A FunctionGraph handler passes a getter that asks ``context.getUserData`` first. Values
        in ``overrides`` win over the environment (for the CLI's flags).
        """
        get = getenv or os.environ.get
        raw: dict[str, object] = {}
        for field, variable in _ENV_NAMES.items():
            value = get(variable)
            if value not in (None, ""):
                raw[field] = value
        raw.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ConfigurationError(_explain(error)) from None


def _check_url(url: str) -> None:
    """HTTPS, or plain HTTP to this machine only (the emulator): signed requests and the
    seller's data never cross a network in clear text."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK_HOSTS:
        return
    if parts.scheme == "http":
        raise ValueError(f"{url!r}: plain http is allowed only for 127.0.0.1, ::1 or localhost")
    raise ValueError(f"{url!r} must start with https:// (or http:// for a loopback address)")


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

_ENV_NAMES = {
    "site": "KOOGALLERY_SITE",
    "endpoint": "KOOGALLERY_ENDPOINT",
    "usage_api": "KOOGALLERY_USAGE_API",
    "access_key": "HUAWEICLOUD_SDK_AK",
    "secret_key": "HUAWEICLOUD_SDK_SK",
    "security_token": "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "seller_key": "KOOGALLERY_SELLER_KEY",
    "partner_id": "KOOGALLERY_PARTNER_ID",
    "usage_entity": "KOOGALLERY_USAGE_ENTITY",
    "chunk_size": "KOOGALLERY_CHUNK_SIZE",
    "timeout_seconds": "KOOGALLERY_TIMEOUT_SECONDS",
    "max_attempts": "KOOGALLERY_MAX_ATTEMPTS",
    "backoff_base_seconds": "KOOGALLERY_BACKOFF_BASE_SECONDS",
    "backoff_cap_seconds": "KOOGALLERY_BACKOFF_CAP_SECONDS",
    "verify_tls": "KOOGALLERY_VERIFY_TLS",
    "deadline_margin_seconds": "KOOGALLERY_DEADLINE_MARGIN_SECONDS",
    "log_level": "KOOGALLERY_LOG_LEVEL",
    "ledger_url": "KOOGALLERY_LEDGER_URL",
    "lease_seconds": "KOOGALLERY_LEASE_SECONDS",
    "billing_mode": "KOOGALLERY_BILLING_MODE",
    "bill_endpoint": "KOOGALLERY_BILL_ENDPOINT",
    "domain_id": "HUAWEICLOUD_SDK_DOMAIN_ID",
    "bill_ready_margin_minutes": "KOOGALLERY_BILL_READY_MARGIN_MINUTES",
    "reconcile_tolerance": "KOOGALLERY_RECONCILE_TOLERANCE",
    "unit_prices": "KOOGALLERY_UNIT_PRICES",
}


def _explain(error: ValidationError) -> str:
    """Name the environment variable behind each invalid setting, never echoing its value."""
    parts = []
    for item in error.errors(include_input=False):
        field = str(item["loc"][0]) if item["loc"] else "settings"
        variable = _ENV_NAMES.get(field, field)
        parts.append(f"{variable}: {item['msg']}")
    return "invalid configuration: " + "; ".join(parts)
