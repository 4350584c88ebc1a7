"""Installs the loopback-only network guard in every Python interpreter the tests start.

The test run puts this folder first on ``PYTHONPATH``, so an interpreter started by a test
imports this module at start-up (``site`` does that for any ``sitecustomize`` on the path).
It prints nothing. A ``sitecustomize`` that this one hides further down the path still runs.
Interpreters started with ``-I``, ``-E`` or ``-S`` skip ``PYTHONPATH`` or ``site``, and so the
guard.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

import loopback_only  # type: ignore[import-not-found]  # this folder, on PYTHONPATH


def _run_the_hidden_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return

    from importlib.util import module_from_spec  # here: few interpreters need it

    hidden = module_from_spec(spec)
    spec.loader.exec_module(hidden)


loopback_only.install()
_run_the_hidden_sitecustomize()
