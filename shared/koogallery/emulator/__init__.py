"""A local KooGallery usage API: a faithful test double to push usage records against.

It serves the three usage-push APIs (v2, v1, legacy) on a loopback port, checks the APIG AK/SK
signature and the v2 body signature with its own independent code, applies the platform's field
rules and first-write-wins duplicate handling, prices stored usage per instance, and can inject
errors, dropped connections and latency on demand. It also serves the Huawei Cloud bill APIs of
every site (the intl/eu partner summary, the cn sub-customer sums and fee records), computed
from the usage it stored, with injectable discrepancies for reconciliation tests.

    from koogallery.emulator import Emulator, EmulatorConfig, FaultPlan, Instance

    config = EmulatorConfig(instances=[Instance("inst-1", product_id="prod-1",
                                                unit_price=Decimal("0.5"))])
    with Emulator(config) as emu:
        emu.url                      # "http://127.0.0.1:54321"
        emu.set_faults(FaultPlan(rates={"500": 0.2}, seed=7))
        emu.state.records            # what the platform stored
        emu.bills.view("2026-11")    # the bill the bill APIs serve for a cycle
        emu.inject_bill_discrepancy(BillDiscrepancy("drop_line", cycle="2026-11",
                                                    instance_id="inst-1"))

From a shell: ``python -m koogallery.emulator --port 0 [--config FILE]`` prints its URL on the
first line. The admin API (``/_emulator/...``) is described in ``admin``; the config file format
in ``config``; the injectable faults in ``faults``; the bills and their discrepancies in
``bills``.
"""

from __future__ import annotations

from koogallery.emulator.apig import SignedRequest
from koogallery.emulator.bills import (
    BILL_SUMMARY_PATH,
    FEE_RECORDS_PATH,
    SUBCUSTOMER_SUMS_PATH,
    BillBook,
    BillDiscrepancy,
    BillSum,
    BillSummary,
    BillView,
    FeeLine,
)
from koogallery.emulator.body_signature import body_signature
from koogallery.emulator.config import (
    DEFAULT_AK,
    DEFAULT_DOMAIN_ID,
    DEFAULT_PARTNER_ID,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Credential,
    EmulatorConfig,
    Instance,
)
from koogallery.emulator.errors import ApiError, ErrorCode
from koogallery.emulator.faults import Fault, FaultPlan
from koogallery.emulator.server import Emulator, NonLoopbackHostError
from koogallery.emulator.state import (
    Charge,
    DuplicateRecord,
    EmulatorState,
    RequestLogEntry,
    StoredRecord,
)
from koogallery.emulator.variants import V1_PATH, V2_PATH, Api, legacy_path

__all__ = [
    "BILL_SUMMARY_PATH",
    "DEFAULT_AK",
    "DEFAULT_DOMAIN_ID",
    "DEFAULT_PARTNER_ID",
    "DEFAULT_SELLER_KEY",
    "DEFAULT_SK",
    "FEE_RECORDS_PATH",
    "SUBCUSTOMER_SUMS_PATH",
    "V1_PATH",
    "V2_PATH",
    "Api",
    "ApiError",
    "BillBook",
    "BillDiscrepancy",
    "BillSum",
    "BillSummary",
    "BillView",
    "Charge",
    "Credential",
    "DuplicateRecord",
    "Emulator",
    "EmulatorConfig",
    "EmulatorState",
    "ErrorCode",
    "Fault",
    "FaultPlan",
    "FeeLine",
    "Instance",
    "NonLoopbackHostError",
    "RequestLogEntry",
    "SignedRequest",
    "StoredRecord",
    "body_signature",
    "legacy_path",
]
