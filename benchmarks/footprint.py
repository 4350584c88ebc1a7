"""What the functions cost before and beside their work: cold import, peak memory, zip size.

- cold start: the median, over fresh interpreters, of the time to import each handler module
  (``functions/<name>/index.py``), against importing ``huaweicloudsdkcore.client``, the
  official client a seller would otherwise start with. Each side sees only what it would be
  deployed with (see :func:`deployed_paths`). Runs alternate between the modules so a busy
  moment of the machine falls on all of them alike;
- memory: the peak resident set of ``koogallery push FILE --no-ledger`` over JSON Lines files
  of two sizes, read from the kernel's accounting of that one process (started by a small
  launcher, so that the benchmark's own memory is not counted in);
- package: the size of each function zip, built from the wheel cache without any network.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

from benchmarks.loopback import EmulatorProcess, child_environment, require_loopback_url
from benchmarks.report import Figure, Section
from benchmarks.workload import Workload
from koogallery.emulator import DEFAULT_AK, DEFAULT_SELLER_KEY, DEFAULT_SK

__all__ = ["MeasuredRun", "cold_start", "deployed_paths", "measured_run", "memory", "package"]

ROOT = Path(__file__).resolve().parents[1]
HANDLERS = ("usage_push", "bill_fetch")
SDK_MODULE = "huaweicloudsdkcore.client"
MAX_RSS_MIB = 150.0
MAX_ZIP_BYTES = 10 * 1024 * 1024

DEPENDENCY_FLOOR = "httpx, pydantic and the SDK signer alone"
_DEPENDENCY_IMPORTS = (
    "import httpx; from pydantic import BaseModel, SecretStr; "
    "import huaweicloudsdkcore.signer.signer"
)

_IMPORT = """\
import os, sys, time
sys.path[:0] = sys.argv[1].split(os.pathsep)
started = time.perf_counter()
exec(sys.argv[2])
print(time.perf_counter() - started)
"""
"""Runs in a fresh interpreter: the time of one import, interpreter start-up excluded."""


def _import_seconds(folders: Sequence[Path], statement: str) -> float:
    """Seconds to run ``statement`` in a fresh interpreter that sees the standard library and
    ``folders`` only: ``-S`` leaves out site-packages, ``-I`` the environment and this folder."""
    completed = subprocess.run(  # noqa: S603 - our own interpreter and script
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _IMPORT,
            os.pathsep.join(str(folder) for folder in folders),
            statement,
        ],
        capture_output=True,
        text=True,
        check=True,
        env=child_environment(),
    )
    return float(completed.stdout.strip())


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_requirements() -> list[str]:
    """The distributions a function zip holds: ``functions/requirements.txt``, which
    ``koogallery package`` installs exactly as listed (``--no-deps``)."""
    lines = (ROOT / "functions" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [
        Requirement(line).name
        for line in (text.strip() for text in lines)
        if line and not line.startswith("#")
    ]


def _with_requirements(names: Iterable[str]) -> list[str]:
    """``names`` and everything they require on this interpreter, as pip would install them."""
    found: dict[str, str] = {}
    waiting = list(names)
    while waiting:
        name = waiting.pop()
        if _canonical(name) in found:
            continue
        found[_canonical(name)] = name
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                waiting.append(requirement.name)
    return sorted(found.values())


def _link_distributions(folder: Path, names: Iterable[str]) -> Path:
    """A folder holding links to the installed files of ``names``; a name not installed here is
    left out (``exceptiongroup``, say, which only Python 3.10 needs)."""
    folder.mkdir(parents=True)
    for name in names:
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        tops = {PurePosixPath(str(path)).parts[0] for path in distribution.files or []}
        for top in sorted(tops):
            source = Path(str(distribution.locate_file(top)))
            link = folder / top
            if top != ".." and not top.endswith(".pth") and source.exists() and not link.exists():
                link.symlink_to(source)
    return folder


def deployed_paths(folder: Path) -> tuple[Path, Path]:
    """Two import folders shaped as each side is deployed: the function's (the library and
    exactly the zip's requirements) and the SDK's (huaweicloudsdkcore and what it requires).

    The development environment holds more than either: httpx, for one, imports its optional
    command-line tool when ``click`` is installed (it is, for ``functions-framework``), which
    a function zip never holds. Measured there, the handler would pay for a package it is
    never deployed with.
    """
    function = _link_distributions(folder / "function", _runtime_requirements())
    (function / "koogallery").symlink_to(ROOT / "shared" / "koogallery")
    sdk = _link_distributions(folder / "sdk", _with_requirements(["huaweicloudsdkcore"]))
    return function, sdk


def cold_start(runs: int) -> Section:
    """Median import time of each handler module against the official SDK client's, and of
    the handler's dependencies alone (how much of the time is the library's own)."""
    section = Section("cold_start", f"Cold start: median import time over {runs} interpreters")
    with tempfile.TemporaryDirectory() as temporary:
        function, sdk = deployed_paths(Path(temporary))
        targets: dict[str, tuple[list[Path], str]] = {
            name: ([ROOT / "functions" / name, function], "import index") for name in HANDLERS
        }
        targets[DEPENDENCY_FLOOR] = ([function], _DEPENDENCY_IMPORTS)
        targets[SDK_MODULE] = ([sdk], f"import {SDK_MODULE}")

        for folders, statement in targets.values():
            _import_seconds(folders, statement)  # compiles and caches bytecode, as a deploy has
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(runs):
            for name, (folders, statement) in targets.items():
                samples[name].append(_import_seconds(folders, statement) * 1000)

    sdk_median = statistics.median(samples[SDK_MODULE])
    floor = statistics.median(samples[DEPENDENCY_FLOOR])
    for name in HANDLERS:
        median = statistics.median(samples[name])
        section.figures.append(
            Figure(
                f"functions/{name}/index.py",
                median,
                "ms",
                baseline=sdk_median,
                baseline_name=SDK_MODULE,
                ratio=median / sdk_median,
                target="ratio <= 1.0",
                met=median <= sdk_median,
            )
        )
    section.figures.append(
        Figure(
            f"import {DEPENDENCY_FLOOR}",
            floor,
            "ms",
            baseline=sdk_median,
            baseline_name=SDK_MODULE,
            ratio=floor / sdk_median,
        )
    )
    section.figures.append(Figure(f"import {SDK_MODULE}", sdk_median, "ms"))
    section.notes.append(
        "ratio = import time / SDK client import; one interpreter and flags (-I -S); each side "
        "sees the standard library and what it is deployed with: the function the zip's "
        "requirements and the library, the SDK its own requirements"
    )
    return section


_LAUNCHER = """\
import os, subprocess, sys, time
began = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - began
with open(sys.argv[1], "w") as report:
    report.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {seconds}")
"""
"""Starts a command and writes its exit code, peak RSS (KiB) and seconds to the file
``argv[1]`` (the seconds are the command's alone, without the launcher's own start).

Linux keeps a process's peak RSS across ``exec``, and a process begins with a copy of (or,
with vfork, a loan of) its parent's memory: a child started straight from the benchmark, which
holds a million records by then, would report the benchmark's peak as its own. This launcher
is a fresh interpreter of about 10 MiB, so what its child reports is the child's own.
"""


@dataclass(frozen=True)
class MeasuredRun:
    """What :func:`measured_run` saw of one command."""

    exit_code: int
    peak_rss_mib: float
    seconds: float
    output: str


def measured_run(command: Sequence[str], settings: dict[str, str] | None = None) -> MeasuredRun:
    """Run ``command`` through :data:`_LAUNCHER`: its exit code, own peak RSS, time and
    standard output (``settings`` are added to its cleaned environment)."""
    with tempfile.TemporaryDirectory() as folder:
        report, output = Path(folder) / "report", Path(folder) / "output"
        with output.open("w+") as stream:
            subprocess.run(  # noqa: S603 - our own interpreter, launcher and command
                [sys.executable, "-I", "-c", _LAUNCHER, str(report), *command],
                stdout=stream,
                stdin=subprocess.DEVNULL,
                env=child_environment(settings),
                check=True,
            )
        exit_code, peak_kib, seconds = report.read_text().split()
        return MeasuredRun(
            int(exit_code), int(peak_kib) / 1024, float(seconds), output.read_text()
        )


def _push_peak_rss(path: Path, url: str) -> tuple[float, float, dict[str, object]]:
    """Peak RSS (MiB), seconds and summary of ``koogallery push`` over ``path``."""
    settings = {
        "KOOGALLERY_ENDPOINT": require_loopback_url(url),
        "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
        "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
        "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
    }
    command = [sys.executable, "-m", "koogallery.cli", "push", str(path), "--no-ledger", "--json"]
    run = measured_run(command, settings)
    if run.exit_code != 0:
        raise RuntimeError(f"koogallery push exited {run.exit_code}: {run.output[-500:]}")
    summary: dict[str, object] = json.loads(run.output)
    return run.peak_rss_mib, run.seconds, summary


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
