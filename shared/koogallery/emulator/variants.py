"""The three usage-push APIs KooGallery publishes, and how a request path selects one.

KooGallery has accepted usage through three generations of API. A seller may still meet any of
them, so the emulator serves all three side by side and tags every stored record with the one it
came through:

    v2      POST /api/mkp-openapi-public/global/v1/isv/usage-data           AK/SK + body signature
    v1      POST /rest/marketplace/v1/isv/usage-data                         AK/SK
    legacy  POST /v1.0/{partner_id}/billing/bill-mgr/push-usage-data         AK/SK, camelCase body
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = ["V1_PATH", "V2_PATH", "Api", "UsageRoute", "legacy_path", "match_usage_route"]

V2_PATH = "/api/mkp-openapi-public/global/v1/isv/usage-data"
V1_PATH = "/rest/marketplace/v1/isv/usage-data"
_LEGACY_PATH = re.compile(r"/v1\.0/([^/]+)/billing/bill-mgr/push-usage-data")


class Api(str, Enum):
    """A usage-push API generation; its value names it in logs, the admin API and config."""

    V2 = "v2"
    V1 = "v1"
    LEGACY = "legacy"


@dataclass(frozen=True)
class UsageRoute:
    """The API a path selects and, for the legacy API, the partner id written in the path."""

    api: Api
    partner_id: str | None = None


def legacy_path(partner_id: str) -> str:
    """The legacy push path for one partner, the one place its shape is spelled out for callers."""
    return f"/v1.0/{partner_id}/billing/bill-mgr/push-usage-data"


def match_usage_route(path: str) -> UsageRoute | None:
    """Select the usage API a request path names, or None when the path is not a usage API.

    A trailing slash is tolerated because the gateway matches paths without it.
    """
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]

    if path == V2_PATH:
        return UsageRoute(Api.V2)

    if path == V1_PATH:
        return UsageRoute(Api.V1)

    legacy = _LEGACY_PATH.fullmatch(path)
    if legacy is not None:
        return UsageRoute(Api.LEGACY, partner_id=legacy.group(1))

    return None
