"""The function zips: what they hold, that they are reproducible, and that they run.

The smoke tests unpack each zip into an empty folder and call its handler once in a fresh
interpreter of the zip's Python version, with only that folder and the standard library on
``sys.path`` (``-I -S``): nothing installed on this machine can stand in for a missing
dependency. The handler talks to the KooGallery emulator started here on 127.0.0.1.

The zips are built once per test run through the library (the wheel cache under build/wheels
makes a second run fast and offline). A missing Python 3.10 or 3.12 skips the smoke test
on a developer machine and fails it in CI (when ``CI`` is set).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from koogallery.deploy.package import (
    MAX_ZIP_BYTES,
    Package,
    build_packages,
    write_reproducible_zip,
)
from koogallery.deploy.template import Template, load_template
from koogallery.emulator import (
    DEFAULT_AK,
    DEFAULT_SELLER_KEY,
    DEFAULT_SK,
    Emulator,
    EmulatorConfig,
    Instance,
)
from tests.conftest import package_registry_allowed

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "functions" / "requirements.txt"
WHEEL_CACHE = ROOT / "build" / "wheels"
USAGE_PUSH = "koogallery-usage-push"
BILL_FETCH = "koogallery-bill-fetch"
USAGE_PUSH_ON_310 = "koogallery-usage-push-py310"

SMOKE = r"""
import json, sys

folder, user_data, event = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, folder)


class Context:
    # The getters of FunctionGraph's context that the handlers read.
    def __init__(self, user_data):
        self._user_data = user_data

    def getUserData(self, key):
        return self._user_data.get(key)

    def getRequestID(self):
        return "smoke-request-1"

    def getRemainingTimeInMilliSeconds(self):
        return 60000

    def getFunctionName(self):
        return "smoke"

    def getSecurityAccessKey(self):
        return self._user_data.get("HUAWEICLOUD_SDK_AK", "")

    def getSecuritySecretKey(self):
        return self._user_data.get("HUAWEICLOUD_SDK_SK", "")

    def getSecurityToken(self):
        return ""


import index

result = index.handler(event, Context(user_data))
outside = sorted(
    module.__file__
    for module in list(sys.modules.values())
    if getattr(module, "__file__", None)
    and not module.__file__.startswith((folder, sys.base_prefix))
)
print(json.dumps({"result": result, "outside": outside, "version": list(sys.version_info[:2])},
                 default=str))
"""


def interpreter(version: str) -> str:
    """The newest local CPython ``version`` (pyenv's first, then PATH's)."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = sorted(
        root.glob(f"versions/{version}.*/bin/python{version}"),
        key=lambda path: [int(part) for part in re.findall(r"[0-9]+", path.parts[-3])],
    )
    if found:
        return str(found[-1])

    pyenv = shutil.which("pyenv")
    if pyenv:
        prefix = subprocess.run(
            [pyenv, "prefix", version], capture_output=True, text=True, check=False
        )
        candidate = Path(prefix.stdout.strip()) / "bin" / f"python{version}"
        if prefix.returncode == 0 and candidate.is_file():
            return str(candidate)

    on_path = shutil.which(f"python{version}")
    if on_path:
        return on_path

    message = (
        f"the package smoke test needs Python {version}: `pyenv install {version}` or put "
        f"python{version} on PATH"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def shipped_functions(template: Template) -> list[str]:
    """The template's functions whose handler file exists (bill_fetch may still be missing)."""
    return [
        function.func_name
        for function in template.functions
        if (ROOT / function.code_dir / function.handler_path).is_file()
    ]


@pytest.fixture(scope="session")
def template() -> Template:
    return load_template(ROOT / "template.yaml")


def build(template: Template, dist: Path) -> dict[str, Package]:
    with package_registry_allowed():
        packages = build_packages(
            template,
            base_dir=ROOT,
            dist_dir=dist,
            requirements=REQUIREMENTS,
            wheel_cache=WHEEL_CACHE,
            only=shipped_functions(template),
        )
    return {package.func_name: package for package in packages}


@pytest.fixture(scope="session")
def built(template: Template, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Package]:
    return build(template, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def built_on_310(
    template: Template, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Package]:
    """usage_push for the other supported runtime, Python3.10."""
    function = template.function(USAGE_PUSH).model_copy(
        update={"runtime": "Python3.10", "func_name": USAGE_PUSH_ON_310}
    )
    variant = Template(template_version=1, functions=[function])
    return build(variant, tmp_path_factory.mktemp("dist310"))


def names(package: Package) -> list[str]:
    with zipfile.ZipFile(package.path) as archive:
        return archive.namelist()


def test_usage_push_zip_holds_the_handler_the_library_and_its_dependencies(
    built: dict[str, Package],
) -> None:
    entries = names(built[USAGE_PUSH])
    tops = sorted({name.split("/")[0] for name in entries if not name.endswith(".dist-info/")})

    assert [top for top in tops if not top.endswith(".dist-info")] == [
        "annotated_types",
        "anyio",
        "certifi",
        "exceptiongroup",
        "h11",
        "httpcore",
        "httpx",
        "huaweicloudsdkcore",
        "idna",
        "index.py",
        "koogallery",
        "psycopg",
        "psycopg_binary",
        "psycopg_binary.libs",
        "pyasn1",
        "pydantic",
        "pydantic_core",
        "typing_extensions.py",
        "typing_inspection",
    ]
    assert "koogallery/__init__.py" in entries
    assert "koogallery/usage_push.py" in entries


def test_zips_leave_out_the_developer_rooms_caches_and_install_noise(
    built: dict[str, Package],
) -> None:
    for package in built.values():
        entries = names(package)
        assert [name for name in entries if name.startswith("koogallery/emulator")] == []
        assert [name for name in entries if name.startswith("koogallery/deploy")] == []
        for module in ("cli.py", "demo.py", "serve.py"):
            assert f"koogallery/{module}" not in entries
        assert [name for name in entries if "__pycache__" in name or name.endswith(".pyc")] == []
        assert [name for name in entries if name.startswith("bin/")] == []
        noise = ("/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json")
        assert [name for name in entries if name.endswith(noise)] == []
        for heavy in ("requests/", "pymongo/", "bson/", "dns/", "yaml/", "simplejson/"):
            assert [name for name in entries if name.startswith(heavy)] == []


def test_the_handler_module_sits_where_its_handler_string_points(
    built: dict[str, Package],
) -> None:
    for package in built.values():
        with zipfile.ZipFile(package.path) as archive:
            handler = archive.read("index.py").decode()
        assert "def handler(event" in handler


def test_every_zip_stays_under_the_size_budget(
    built: dict[str, Package], built_on_310: dict[str, Package]
) -> None:
    for package in [*built.values(), *built_on_310.values()]:
        assert package.size == package.path.stat().st_size
        assert package.size < MAX_ZIP_BYTES


def test_two_builds_of_the_same_sources_are_byte_identical(
    template: Template, tmp_path: Path
) -> None:
    first = build(template, tmp_path / "first")
    second = build(template, tmp_path / "second")

    assert sorted(first) == sorted(second)
    for name, package in first.items():
        assert second[name].sha256 == package.sha256
        assert second[name].path.read_bytes() == package.path.read_bytes()


def test_entries_are_sorted_with_fixed_times_and_permissions(built: dict[str, Package]) -> None:
    with zipfile.ZipFile(built[USAGE_PUSH].path) as archive:
        infos = archive.infolist()

    assert [info.filename for info in infos] == sorted(info.filename for info in infos)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    modes = {info.external_attr >> 16 for info in infos}
    assert modes == {0o100644, 0o040755}


def test_the_reproducible_writer_ignores_file_times_and_modes(tmp_path: Path) -> None:
    source = tmp_path / "index.py"
    source.write_text("def handler(event, context):\n    return {}\n")
    write_reproducible_zip(tmp_path / "one.zip", {"src/index.py": source})
    os.utime(source, (1, 1))
    source.chmod(0o700)

    write_reproducible_zip(tmp_path / "two.zip", {"src/index.py": source})

    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "two.zip") as archive:
        assert archive.namelist() == ["src/", "src/index.py"]


def test_requirements_pin_the_versions_the_tests_run_with() -> None:
    pins = dict(
        line.split("==", 1)
        for line in REQUIREMENTS.read_text().splitlines()
        if line and not line.startswith("#")
    )

    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        assert (name, installed) == (name, version)


def unpack(package: Package, folder: Path) -> Path:
    folder.mkdir()
    with zipfile.ZipFile(package.path) as archive:
        archive.extractall(folder)
    return folder


def smoke(package: Package, folder: Path, user_data: dict[str, str], event: Any) -> Any:
    """Run the zip's handler once in a fresh, isolated interpreter; return what it printed."""
    python = interpreter(package.python_version)
    completed = subprocess.run(
        [
            python,
            "-I",
            "-S",
            "-c",
            SMOKE,
            str(unpack(package, folder / "code")),
            json.dumps(user_data),
            json.dumps(event),
        ],
        capture_output=True,
        text=True,
        cwd=folder,
        env={"LC_ALL": "C.UTF-8"},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = json.loads(completed.stdout.strip().splitlines()[-1])
    assert output["outside"] == []
    assert output["version"] == [int(part) for part in package.python_version.split(".")]
    return output["result"]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    instances = [Instance("smoke-instance-1", product_id="smoke", unit_price=Decimal("0.5"))]
    with Emulator(EmulatorConfig(instances=instances)) as emu:
        yield emu


def usage_event() -> dict[str, Any]:
    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return {
        "usage_records": [
            {
                "instance_id": "smoke-instance-1",
                "begin_time": (hour - timedelta(hours=back)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end_time": (hour - timedelta(hours=back - 1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "usage_value": "3",
            }
            for back in (4, 3, 2)
        ]
    }


def usage_user_data(emulator: Emulator) -> dict[str, str]:
    return {
        "KOOGALLERY_ENDPOINT": emulator.url,
        "HUAWEICLOUD_SDK_AK": DEFAULT_AK,
        "HUAWEICLOUD_SDK_SK": DEFAULT_SK,
        "KOOGALLERY_SELLER_KEY": DEFAULT_SELLER_KEY,
        "KOOGALLERY_LOG_LEVEL": "ERROR",
    }


def counts(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("trigger", "received", "accepted", "duplicates", "dead_lettered", "pending")
    return {key: result[key] for key in keys}


@pytest.mark.parametrize("variant", ["shipped", "python3.10"])
def test_the_usage_push_zip_pushes_usage_in_an_isolated_interpreter(
    variant: str,
    built: dict[str, Package],
    built_on_310: dict[str, Package],
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    package = built[USAGE_PUSH] if variant == "shipped" else built_on_310[USAGE_PUSH_ON_310]

    result = smoke(package, tmp_path, usage_user_data(emulator), usage_event())

    assert counts(result) == {
        "trigger": "DIRECT",
        "received": 3,
        "accepted": 3,
        "duplicates": 0,
        "dead_lettered": 0,
        "pending": 0,
    }
    assert result["request_id"] == "smoke-request-1"
    assert len(emulator.state.records) == 3


def test_the_bill_fetch_zip_answers_a_timer_event(
    template: Template, built: dict[str, Package], emulator: Emulator, tmp_path: Path
) -> None:
    if BILL_FETCH not in shipped_functions(template):
        pytest.skip("functions/bill_fetch/index.py does not exist yet")
    from koogallery.emulator import DEFAULT_DOMAIN_ID  # type: ignore[attr-defined]

    user_data = {
        **usage_user_data(emulator),
        "KOOGALLERY_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "KOOGALLERY_BILL_ENDPOINT": emulator.url,
        "HUAWEICLOUD_SDK_DOMAIN_ID": DEFAULT_DOMAIN_ID,
    }
    event = {
        "version": "v1.0",
        "time": "2026-11-02T02:30:00+08:00",
        "trigger_type": "TIMER",
        "trigger_name": "daily",
        "user_event": json.dumps({"cycle": "2026-10"}),
    }

    result = smoke(built[BILL_FETCH], tmp_path, user_data, event)

    assert isinstance(result, dict)
    assert "status" in result
