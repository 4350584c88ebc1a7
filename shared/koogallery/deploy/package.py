"""Function zips: the handler module, the ``koogallery`` library and its runtime dependencies.

Each zip holds exactly what the function imports, for the Python version of its runtime:

- the handler module at the path its ``handler`` names (``index.py`` at the root for
  ``index.handler``);
- the library from ``shared/koogallery``, without the rooms only a developer uses (the
  emulator, the CLI, the demo, deploy and the local server) and without caches;
- the pinned runtime dependencies of ``functions/requirements.txt``, installed from manylinux
  x86_64 wheels for the runtime's CPython version, without their install-time noise (``bin/``,
  ``RECORD``, ``INSTALLER``, ``REQUESTED``).

Two builds of the same sources give byte-identical zips: entries are sorted, timestamps fixed,
permissions fixed. Wheels are cached (``build/wheels/``), so a second build runs offline.

    packages = build_packages(template, base_dir=Path("."), dist_dir=Path("dist"),
                              requirements=Path("functions/requirements.txt"),
                              wheel_cache=Path("build/wheels"))
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import koogallery
from koogallery.deploy.template import Function, Template
from koogallery.errors import ConfigurationError, KooGalleryError

__all__ = [
    "LIBRARY_EXCLUDES",
    "MAX_ZIP_BYTES",
    "PLATFORM",
    "Package",
    "PackagingError",
    "build_packages",
    "dependency_files",
    "install_dependencies",
    "library_files",
    "write_reproducible_zip",
]

logger = logging.getLogger(__name__)

PLATFORM = "manylinux2014_x86_64"
"""FunctionGraph runs x86_64 Linux; manylinux2014 wheels need glibc 2.17, which it has."""

MAX_ZIP_BYTES = 10 * 1024 * 1024
"""The product's budget per zip: well under the console's 40 MB upload limit, so a function
can still be inspected and edited in the console."""

LIBRARY_EXCLUDES = frozenset(
    {"emulator", "cli.py", "cli_ledger.py", "demo.py", "deploy", "serve.py"}
)
"""Top-level entries of the library that only a developer's machine uses."""

_DIST_INFO_NOISE = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644
_DIRECTORY_MODE = 0o040755
_MS_DOS_DIRECTORY = 0x10
_UNIX = 3


class PackagingError(KooGalleryError):
    """A zip could not be built: a dependency failed to install, or a zip is too large."""


@dataclass(frozen=True)
class Package:
    """A built zip and what identifies it."""

    func_name: str
    path: Path
    size: int
    sha256: str
    python_version: str


def _is_cache(path: PurePosixPath) -> bool:
    return "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}


def _files_under(root: Path) -> Iterator[tuple[PurePosixPath, Path]]:
    """Every regular file under ``root``, with its path relative to it, in a stable order."""
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory) / name
            if path.is_file():
                yield PurePosixPath(path.relative_to(root).as_posix()), path


def library_files() -> dict[str, Path]:
    """The ``koogallery`` package a function needs, by its name inside the zip."""
    root = Path(koogallery.__file__).resolve().parent
    files = {}
    for relative, path in _files_under(root):
        if relative.parts[0] in LIBRARY_EXCLUDES or _is_cache(relative):
            continue
        files[f"koogallery/{relative}"] = path
    return files


def dependency_files(site: Path) -> dict[str, Path]:
    """What ``pip install --target`` put in ``site``, less scripts, caches and install noise."""
    files = {}
    for relative, path in _files_under(site):
        if relative.parts[0] == "bin" or _is_cache(relative):
            continue
        if relative.parts[0].endswith(".dist-info") and relative.name in _DIST_INFO_NOISE:
            continue
        files[str(relative)] = path
    return files


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603


def install_dependencies(
    python_version: str,
    requirements: Path,
    wheel_cache: Path,
    target: Path,
    pip: Sequence[str] | None = None,
) -> Path:
    """Install the pinned requirements for ``python_version`` into ``target``.

    ``--no-deps`` keeps the set exactly the file's list, so a dependency's optional or
    import-time-unused requirements (huaweicloudsdkcore's ``requests``, ``pymongo``...) stay out.
    The install reads only the wheel cache; the cache is filled from the package index only
    when a pinned wheel is missing, so a warm build needs no network.
    """
    pip = list(pip or [sys.executable, "-m", "pip"])
    cache = wheel_cache / f"cp{python_version.replace('.', '')}-{PLATFORM}"
    selection = [
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        PLATFORM,
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--disable-pip-version-check",
        "--quiet",
        "-r",
        str(requirements),
    ]
    install = [*pip, "install", "--no-index", "--find-links", str(cache), "--no-compile"]
    install += ["--target", str(target), *selection]

    if cache.is_dir() and _run(install).returncode == 0:
        return target

    logger.info(
        "downloading wheels",
        extra={"event": "wheel_download", "python_version": python_version, "cache": str(cache)},
    )
    downloaded = _run([*pip, "download", "--dest", str(cache), *selection])
    if downloaded.returncode != 0:
        raise PackagingError(
            f"pip could not download the wheels of {requirements} for Python "
            f"{python_version}:\n{downloaded.stderr.strip()}"
        )

    shutil.rmtree(target, ignore_errors=True)
    installed = _run(install)
    if installed.returncode != 0:
        raise PackagingError(
            f"pip could not install {requirements} for Python {python_version}:\n"
            f"{installed.stderr.strip()}"
        )
    return target


def write_reproducible_zip(target: Path, files: Mapping[str, Path]) -> None:
    """Write ``files`` (name in the zip -> source) so that equal inputs give equal bytes.

    Entries are sorted, each folder gets its own entry (some unzip tools need them), and every
    entry has the same timestamp and Unix permissions. The zip is written next to ``target``
    and moved into place, so a failed build never leaves half a zip behind.
    """
    names = set(files)
    folders = {
        f"{parent}/"
        for name in names
        for parent in PurePosixPath(name).parents
        if str(parent) != "."
    }

    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in sorted(names | folders):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.create_system = _UNIX
            if name.endswith("/"):
                info.external_attr = (_DIRECTORY_MODE << 16) | _MS_DOS_DIRECTORY
                archive.writestr(info, b"")
                continue

            info.external_attr = _FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name].read_bytes(), compresslevel=9)

    partial.replace(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _handler_file(function: Function, base_dir: Path) -> Path:
    path = base_dir / function.code_dir / function.handler_path
    if not path.is_file():
        raise ConfigurationError(
            f"{function.func_name}: handler {function.handler!r} names {path}, which does not "
            "exist"
        )
    return path


def _zip_files(function: Function, handler: Path, site: Path) -> dict[str, Path]:
    dependencies = dependency_files(site)
    handler_name = str(function.handler_path)
    clashes = sorted(
        name for name in dependencies if name == handler_name or name.startswith("koogallery/")
    )
    if clashes:
        raise PackagingError(f"{function.func_name}: a dependency also provides {clashes}")

    return {**dependencies, **library_files(), handler_name: handler}


def build_packages(
    template: Template,
    *,
    base_dir: Path,
    dist_dir: Path,
    requirements: Path,
    wheel_cache: Path,
    only: Collection[str] | None = None,
    pip: Sequence[str] | None = None,
) -> list[Package]:
    """Build ``dist_dir/<func_name>.zip`` for each function of the template (or of ``only``).

    Functions that share a runtime share one dependency install. A zip over ``MAX_ZIP_BYTES``
    fails the build: FunctionGraph would take it, but it would no longer fit the budget the
    README promises.
    """
    functions = [template.function(name) for name in only] if only else template.functions
    handlers = {function.func_name: _handler_file(function, base_dir) for function in functions}
    if not requirements.is_file():
        raise ConfigurationError(f"the runtime requirements file {requirements} is missing")

    dist_dir.mkdir(parents=True, exist_ok=True)
    packages = []
    with tempfile.TemporaryDirectory(prefix="koogallery-package-") as scratch:
        sites: dict[str, Path] = {}
        for version in sorted({function.python_version for function in functions}):
            target = Path(scratch) / f"python{version}"
            sites[version] = install_dependencies(version, requirements, wheel_cache, target, pip)

        for function in functions:
            path = dist_dir / function.code_filename
            files = _zip_files(
                function, handlers[function.func_name], sites[function.python_version]
            )
            write_reproducible_zip(path, files)

            package = Package(
                func_name=function.func_name,
                path=path,
                size=path.stat().st_size,
                sha256=_sha256(path),
                python_version=function.python_version,
            )
            logger.info(
                "package built",
                extra={
                    "event": "package_built",
                    "function": package.func_name,
                    "size": package.size,
                    "sha256": package.sha256,
                },
            )
            if package.size > MAX_ZIP_BYTES:
                raise PackagingError(
                    f"{function.func_name}: {path} is {package.size:,} bytes, over the "
                    f"{MAX_ZIP_BYTES:,}-byte budget"
                )
            packages.append(package)
    return packages
