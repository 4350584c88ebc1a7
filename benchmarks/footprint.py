"""What the functions cost before and beside their work: cold import, peak memory, zip size.

- cold start: the median, over fresh interpreters, of the time to import each handler module
  (``functions/<name>/index.py``), against importing ``huaweicloudsdkcore.client``, the
  official client a seller would otherwise start with. Runs alternate between the modules so a
  busy moment of the machine falls on all of them alike;
- memory: the peak resident set of ``koogallery push FILE --no-ledger`` over JSON Lines files
  of two sizes, read from the kernel's accounting of that one child process;
- package: the size of each function zip, built from the wheel cache without any network.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loopback import EmulatorProcess, child_environment
from benchmarks.report import Figure, Section
from benchmarks.workload import Workload
from koogallery.emulator import DEFAULT_AK, DEFAULT_SELLER_KEY, DEFAULT_SK

__all__ = ["cold_start", "memory", "package"]

ROOT = Path(__file__).resolve().parents[1]
HANDLERS = ("usage_push", "bill_fetch")
SDK_MODULE = "huaweicloudsdkcore.client"
MAX_RSS_MIB = 150.0
MAX_ZIP_BYTES = 10 * 1024 * 1024

_IMPORT = """\
import importlib, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
importlib.import_module(sys.argv[2])
print(time.perf_counter() - started)
"""
"""Runs in a fresh interpreter: the time of one import, interpreter start-up excluded."""


def _import_seconds(folder: Path, module: str) -> float:
    completed = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-I", "-c", _IMPORT, str(folder), module],
        capture_output=True,
        text=True,
        check=True,
        env=child_environment(),
    )
    return float(completed.stdout.strip())


def cold_start(runs: int) -> Section:
    """Median import time of each handler module against the official SDK client's."""
    section = Section("cold_start", f"Cold start: median import time over {runs} interpreters")
    targets = {name: (ROOT / "functions" / name, "index") for name in HANDLERS}
    targets[SDK_MODULE] = (ROOT, SDK_MODULE)

    for folder, module in targets.values():
        _import_seconds(folder, module)  # compiles and caches the bytecode, as a deploy has
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(runs):
        for name, (folder, module) in targets.items():
            samples[name].append(_import_seconds(folder, module) * 1000)

    sdk = statistics.median(samples[SDK_MODULE])
    for name in HANDLERS:
        median = statistics.median(samples[name])
        section.figures.append(
            Figure(
                f"functions/{name}/index.py",
                median,
                "ms",
                baseline=sdk,
                baseline_name=SDK_MODULE,
                ratio=median / sdk,
                target="ratio <= 1.0",
                met=median <= sdk,
            )
        )
    section.figures.append(Figure(f"import {SDK_MODULE}", sdk, "ms"))
    section.notes.append(
        "ratio = handler import / SDK client import; same interpreter, flags and site-packages"
    )
    return section


def _push_peak_rss(path: Path, url: str) -> tuple[float, float, dict[str, object]]:
    """Peak RSS (MiB), seconds and summary of ``koogallery push`` over ``path``.

    ``os.wait4`` reports the resources of exactly that child, so neither this process nor the
    emulator's counts.
    """
    settings = {
        "KOOGALLERY_ENDPOINT": url,
        "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
        "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
        "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
    }
    command = [sys.executable, "-m", "koogallery.cli", "push", str(path), "--no-ledger", "--json"]
    with tempfile.TemporaryFile("w+") as output:
        began = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, stdout=output, stdin=subprocess.DEVNULL, env=child_environment(settings)
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - began
        output.seek(0)
        text = output.read()

    if process.returncode != 0:
        raise RuntimeError(f"koogallery push exited {process.returncode}: {text[-500:]}")
    summary: dict[str, object] = json.loads(text)
    return usage.ru_maxrss / 1024, seconds, summary


def memory(sizes: Sequence[int]) -> Section:
    """Peak RSS of ``koogallery push`` for each size; streaming keeps them close."""
    section = Section("memory", "Memory: peak RSS of `koogallery push FILE --no-ledger`")
    peaks: list[float] = []
    with EmulatorProcess() as emulator, tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            path = Workload(size).write_jsonl(Path(folder) / f"usage-{size}.jsonl")
            emulator.reset()
            peak, seconds, summary = _push_peak_rss(path, emulator.url)
            if summary.get("accepted") != size:
                raise RuntimeError(f"koogallery push accepted {summary.get('accepted')} of {size}")
            path.unlink()
            peaks.append(peak)
            section.figures.append(
                Figure(
                    f"{size:,} records ({size / seconds:,.0f} records/s)",
                    peak,
                    "MiB",
                    target=f"< {MAX_RSS_MIB:.0f} MiB",
                    met=peak < MAX_RSS_MIB,
                )
            )

    growth = peaks[-1] / peaks[0]
    section.figures.append(
        Figure(
            f"growth from {sizes[0]:,} to {sizes[-1]:,} records",
            growth,
            "x",
            ratio=growth,
            target="close (<= 1.25x), not proportional",
            met=growth <= 1.25,
        )
    )
    section.notes.append("the emulator runs in its own process; its memory is not counted")
    return section


def package() -> Section:
    """Size of each function zip, built as ``koogallery package`` builds it.

    Wheels come from ``build/wheels`` only: the index is switched off for pip, so a missing
    wheel skips the section instead of reaching the network (``./scripts/package`` fills the
    cache).
    """
    from koogallery.deploy.package import PackagingError, build_packages
    from koogallery.deploy.template import load_template

    section = Section("package", "Package: function zip sizes")
    os.environ["PIP_NO_INDEX"] = "1"
    try:
        with tempfile.TemporaryDirectory() as folder:
            packages = build_packages(
                load_template(ROOT / "template.yaml"),
                base_dir=ROOT,
                dist_dir=Path(folder),
                requirements=ROOT / "functions" / "requirements.txt",
                wheel_cache=ROOT / "build" / "wheels",
            )
    except PackagingError as error:
        section.status = "skipped"
        section.reason = f"no complete wheel cache under build/wheels ({str(error)[:120]})"
        return section
    finally:
        del os.environ["PIP_NO_INDEX"]

    for built in packages:
        section.figures.append(
            Figure(
                f"{built.func_name}.zip (Python {built.python_version})",
                built.size,
                "bytes",
                target="< 10 MiB",
                met=built.size < MAX_ZIP_BYTES,
            )
        )
    return section
