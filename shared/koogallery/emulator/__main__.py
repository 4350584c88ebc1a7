"""Run the emulator from a shell: ``python -m koogallery.emulator --port 0``.

The first line on stdout is the URL it listens on (flushed at once, so a parent process can read
it and start talking); it then serves until SIGINT or SIGTERM. It binds loopback only and exits
with status 2 and a clear message when given any other host.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from types import FrameType

from koogallery.emulator.config import EmulatorConfig
from koogallery.emulator.server import Emulator, NonLoopbackHostError

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _parser(prog: str = "python -m koogallery.emulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a local KooGallery usage API on a loopback port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    parser.add_argument(
        "--config", help="JSON configuration file (format: koogallery.emulator.config)"
    )
    parser.add_argument(
        "--accept-any-instance",
        action="store_true",
        help="accept records for instances that were never registered",
    )
    parser.add_argument(
        "--bills-preview",
        action="store_true",
        help="serve a cycle's bills before the cycle closes (to reconcile today's usage)",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def _load_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EmulatorConfig:
    try:
        config = EmulatorConfig.from_file(args.config) if args.config else EmulatorConfig()
    except (OSError, ValueError) as error:
        parser.error(f"cannot read the configuration: {error}")

    if args.accept_any_instance:
        config = replace(config, accept_any_instance=True)
    if args.bills_preview:
        config = replace(config, bills_preview=True)

    return config


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, installed before the URL is printed.

    A parent may signal as soon as it has read the URL; installing the handlers first means that
    signal always leads to a clean stop instead of the default abrupt exit.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse the arguments, serve until interrupted, and return the exit status."""
    parser = _parser(prog) if prog else _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    config = _load_config(parser, args)

    try:
        emulator = Emulator(config, host=args.host, port=args.port)
    except NonLoopbackHostError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    stop = _stop_on_signals()
    with emulator:
        print(emulator.url, flush=True)
        while not stop.wait(0.5):
            continue

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
