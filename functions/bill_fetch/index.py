"""FunctionGraph entry point of the bill fetch function (handler string: ``index.handler``).

Triggered by a timer. The behaviour lives in the ``koogallery`` library so that local runs
execute exactly this path.
"""

from __future__ import annotations

from typing import Any

from koogallery import handle_bill_fetch


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fetch the due bill cycle, store it, reconcile it; return the summary."""
    return handle_bill_fetch(event, context)
