"""What the emulator knows before the first request: credentials, instances and switches.

The same settings come from Python (``EmulatorConfig(...)``) or from a JSON file
(``EmulatorConfig.from_file(path)``, the CLI's ``--config``). Every field is optional; the
defaults are obviously fake values that only this emulator accepts:

    {
      "credentials": [
        {"ak": "EMULATORAK0000000000", "sk": "emulator-secret-key-not-real",
         "security_token": null, "apis": ["v2", "v1", "legacy"]}
      ],
      "seller_key": "emulator-seller-key-not-real",
      "partner_id": "emulator-partner",
      "accept_any_instance": false,
      "instances": [
        {"instance_id": "inst-1", "product_id": "prod-1", "unit_price": "0.5",
         "billing_mode": "hourly", "currency": "CNY", "entities": ["times"],
         "customer_id": "customer-inst-1"}
      ],
      "faults": {"rates": {"500": 0.1}, "sequence": ["drop", "ok"], "latency_ms": [5, 20],
                 "seed": 7},
      "domain_id": "emulator-domain-id",
      "partner_entitled": true,
      "bills_unsupported": false,
      "bills_preview": false,
      "bill_currency": null,
      "tax_rate": "0",
      "bill_faults": {"sequence": ["429", "ok"]}
    }

- ``credentials``: the APIG AK/SK pairs the gateway accepts. ``security_token`` makes a pair
  temporary: requests must then carry that exact ``X-Security-Token``. ``apis`` limits which
  usage APIs the pair may call (default: all); others answer 401 MKT.0151.
- ``seller_key``: the interconnection key for the v2 body signature.
- ``partner_id``: the id the legacy path must carry.
- ``instances``: ``unit_price`` is a decimal string (a number is read through its text, never
  through a float); ``billing_mode`` is ``hourly`` or ``daily``; ``currency`` defaults to ``CNY``;
  ``entities`` (the legacy API's metering entity names) defaults to ``["times"]``;
  ``customer_id`` (the sub-customer the bill APIs charge the instance to) defaults to
  ``customer-{instance_id}``.
- ``accept_any_instance``: accept records for instances that were never registered.
- ``faults``: a fault plan in force from the start for the usage APIs (see ``faults.FaultPlan``).
- ``domain_id``: the account id the bill APIs expect in ``X-Domain-Id``.
- ``partner_entitled``: false makes every bill API answer 403 CBC.0151, as for an account that
  is not a solution provider or distributor.
- ``bills_unsupported``: true makes every bill path answer 404 APIG.0101, as on a site that does
  not publish the bill APIs.
- ``bills_preview``: true serves a cycle's bills before the cycle closes, as they stand at that
  moment (the real APIs refuse an open cycle with 400 CBC.0100); the demo uses it to reconcile
  the day it just pushed.
- ``bill_currency``: the currency the bills are in; by default the first registered instance's
  currency, else ``CNY``.
- ``tax_rate``: a decimal string; the monthly summary's ``tax_amount`` is the consumption times
  this rate, rounded half-up to 2 places (default ``0``).
- ``bill_faults``: a fault plan in force from the start for the bill APIs.

Unknown keys are refused, so a misspelt setting fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from koogallery.emulator.faults import FaultPlan
from koogallery.emulator.variants import Api

__all__ = [
    "DEFAULT_AK",
    "DEFAULT_DOMAIN_ID",
    "DEFAULT_PARTNER_ID",
    "DEFAULT_SELLER_KEY",
    "DEFAULT_SK",
    "BillingMode",
    "Credential",
    "EmulatorConfig",
    "Instance",
    "default_customer_id",
]

DEFAULT_AK = "EMULATORAK0000000000"
DEFAULT_SK = "emulator-secret-key-not-real"
DEFAULT_SELLER_KEY = "emulator-seller-key-not-real"
DEFAULT_PARTNER_ID = "emulator-partner"
DEFAULT_DOMAIN_ID = "emulator-domain-id"

BillingMode = Literal["hourly", "daily"]
_BILLING_MODES = ("hourly", "daily")
_MAX_ID_LENGTH = 64


def decimal_from_text(value: object, name: str, *, signed: bool = False) -> Decimal:
    """A finite decimal read from a string, an int or a Decimal, never from a float; negative
    only where ``signed`` (a correction may lower an amount, a price never is below zero)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"{name} must be a decimal string, not {value!r}")

    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} must be a decimal string, not {value!r}") from None

    if not number.is_finite():
        raise ValueError(f"{name} must be a finite decimal, not {value!r}")
    if number < 0 and not signed:
        raise ValueError(f"{name} must be a finite decimal >= 0, not {value!r}")

    return number


def default_customer_id(instance_id: str) -> str:
    """The customer an instance is billed to when none was chosen: one customer per instance."""
    return f"customer-{instance_id}"


def _check_keys(
    data: Mapping[str, Any], required: Iterable[str], optional: Iterable[str], what: str
) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"a {what} must be a JSON object, not {data!r}")

    unknown = set(data) - set(required) - set(optional)
    if unknown:
        raise ValueError(f"unknown {what} fields: {sorted(unknown)}")

    missing = [name for name in required if data.get(name) is None]
    if missing:
        raise ValueError(f"a {what} needs {missing}")


@dataclass(frozen=True)
class Credential:
    """One APIG AK/SK pair the gateway accepts; secrets stay out of ``repr`` and logs.

    Credential("MYTESTAK", "my-test-sk", security_token="tok", apis=(Api.V2,))
    """

    ak: str
    sk: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    apis: tuple[Api, ...] = (Api.V2, Api.V1, Api.LEGACY)

    def __post_init__(self) -> None:
        if not self.ak or not self.sk:
            raise ValueError("a credential needs a non-empty ak and sk")

        object.__setattr__(self, "apis", tuple(Api(api) for api in self.apis))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Credential:
        """Read one entry of the config file's ``credentials`` list."""
        _check_keys(data, ("ak", "sk"), ("security_token", "apis"), "credential")
        credential = cls(
            ak=str(data["ak"]),
            sk=str(data["sk"]),
            security_token=data.get("security_token"),
        )

        apis = data.get("apis")
        if apis is None:
            return credential

        return replace(credential, apis=tuple(Api(api) for api in apis))


@dataclass(frozen=True)
class Instance:
    """A pay-per-use instance the platform knows, with the price its usage is charged at.

    Instance("inst-1", product_id="prod-1", unit_price=Decimal("0.5"))

    ``customer_id`` is the buyer the bill APIs charge the usage to; left empty, it becomes
    ``customer-{instance_id}``, so every instance has a customer of its own.
    """

    instance_id: str
    product_id: str
    unit_price: Decimal
    billing_mode: BillingMode = "hourly"
    currency: str = "CNY"
    entities: tuple[str, ...] = ("times",)
    customer_id: str = ""

    def __post_init__(self) -> None:
        if not 1 <= len(self.instance_id) <= _MAX_ID_LENGTH:
            raise ValueError(f"instance_id must hold 1..64 characters: {self.instance_id!r}")

        if not self.customer_id:
            object.__setattr__(self, "customer_id", default_customer_id(self.instance_id))

        if self.billing_mode not in _BILLING_MODES:
            raise ValueError(f"billing_mode must be hourly or daily, not {self.billing_mode!r}")

        entities = tuple(self.entities)
        if not entities or not all(isinstance(name, str) and name for name in entities):
            raise ValueError("entities must be a non-empty list of names")

        object.__setattr__(self, "unit_price", decimal_from_text(self.unit_price, "unit_price"))
        object.__setattr__(self, "entities", entities)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Instance:
        """Read an instance from its JSON form (admin API body, config file ``instances``)."""
        _check_keys(
            data,
            ("instance_id", "product_id", "unit_price"),
            ("billing_mode", "currency", "entities", "customer_id"),
            "instance",
        )
        entities = data.get("entities", ("times",))
        if isinstance(entities, str) or not isinstance(entities, Iterable):
            raise ValueError("entities must be a list of names")

        return cls(
            instance_id=str(data["instance_id"]),
            product_id=str(data["product_id"]),
            unit_price=decimal_from_text(data["unit_price"], "unit_price"),
            billing_mode=data.get("billing_mode", "hourly"),
            currency=str(data.get("currency", "CNY")),
            entities=tuple(entities),
            customer_id=str(data.get("customer_id") or ""),
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, with the price as a decimal string.

        ``customer_id`` appears only when it was chosen, so the form of an instance without one
        reads exactly as it is written in a config file.
        """
        data: dict[str, Any] = {
            "instance_id": self.instance_id,
            "product_id": self.product_id,
            "unit_price": format(self.unit_price, "f"),
            "billing_mode": self.billing_mode,
            "currency": self.currency,
            "entities": list(self.entities),
        }
        if self.customer_id != default_customer_id(self.instance_id):
            data["customer_id"] = self.customer_id

        return data


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator starts with; every field has a working default.

    EmulatorConfig(instances=[Instance("inst-1", product_id="prod-1", unit_price=Decimal(1))])
    """

    instances: Sequence[Instance] = ()
    credentials: Sequence[Credential] = (Credential(DEFAULT_AK, DEFAULT_SK),)
    seller_key: str = field(default=DEFAULT_SELLER_KEY, repr=False)
    partner_id: str = DEFAULT_PARTNER_ID
    accept_any_instance: bool = False
    faults: FaultPlan | None = None
    domain_id: str = DEFAULT_DOMAIN_ID
    partner_entitled: bool = True
    bills_unsupported: bool = False
    bills_preview: bool = False
    bill_currency: str | None = None
    tax_rate: Decimal = Decimal(0)
    bill_faults: FaultPlan | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", tuple(self.instances))
        object.__setattr__(self, "credentials", tuple(self.credentials))
        object.__setattr__(self, "tax_rate", decimal_from_text(self.tax_rate, "tax_rate"))

        if not self.credentials:
            raise ValueError("at least one credential is needed")

        aks = [credential.ak for credential in self.credentials]
        if len(set(aks)) != len(aks):
            raise ValueError("each ak may appear only once")

        if not self.seller_key or not self.partner_id:
            raise ValueError("seller_key and partner_id must not be empty")

        if not self.domain_id:
            raise ValueError("domain_id must not be empty")

        if self.bill_currency is not None and not self.bill_currency:
            raise ValueError("bill_currency must be a currency code or null")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmulatorConfig:
        """Read a configuration from its JSON form (see the module docstring)."""
        _check_keys(
            data,
            (),
            (
                "credentials",
                "seller_key",
                "partner_id",
                "accept_any_instance",
                "instances",
                "faults",
                "domain_id",
                "partner_entitled",
                "bills_unsupported",
                "bills_preview",
                "bill_currency",
                "tax_rate",
                "bill_faults",
            ),
            "config",
        )
        defaults = cls()
        credentials = data.get("credentials")
        faults = data.get("faults")
        bill_faults = data.get("bill_faults")
        bill_currency = data.get("bill_currency")
        return cls(
            instances=tuple(Instance.from_dict(item) for item in data.get("instances", ())),
            credentials=(
                tuple(Credential.from_dict(item) for item in credentials)
                if credentials is not None
                else defaults.credentials
            ),
            seller_key=str(data.get("seller_key", defaults.seller_key)),
            partner_id=str(data.get("partner_id", defaults.partner_id)),
            accept_any_instance=bool(data.get("accept_any_instance", False)),
            faults=FaultPlan.from_dict(faults) if faults is not None else None,
            domain_id=str(data.get("domain_id", defaults.domain_id)),
            partner_entitled=bool(data.get("partner_entitled", True)),
            bills_unsupported=bool(data.get("bills_unsupported", False)),
            bills_preview=bool(data.get("bills_preview", False)),
            bill_currency=None if bill_currency is None else str(bill_currency),
            tax_rate=decimal_from_text(data.get("tax_rate", "0"), "tax_rate"),
            bill_faults=FaultPlan.from_dict(bill_faults) if bill_faults is not None else None,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> EmulatorConfig:
        """Read a configuration from a JSON file; decimals are read from their text."""
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text, parse_float=Decimal)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: the configuration must be a JSON object")

        return cls.from_dict(data)
