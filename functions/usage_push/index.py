"""FunctionGraph entry point of the usage push function (handler string: ``index.handler``).

Triggered by DMS Kafka, RocketMQ or RabbitMQ, SMN, DIS, APIG or a direct invocation. The
behaviour lives in the ``koogallery`` library so that local runs execute exactly this path.
"""

from __future__ import annotations

from typing import Any

from koogallery import handle_usage_push


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Push the usage records carried by ``event``; return the summary of their fates."""
    return handle_usage_push(event, context)
