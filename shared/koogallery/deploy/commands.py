"""The ``template validate``, ``package``, ``deploy`` and ``serve`` subcommands.

``add_commands`` registers them on the ``koogallery`` parser's subparsers; each sets ``run`` to
a function that takes the parsed arguments and returns the exit code. Heavy imports (pip
helpers, httpx, functions-framework) wait until a command runs, so ``koogallery --help`` stays
quick.

    koogallery template validate [template.yaml] [--require-env]
    koogallery package [--function NAME ...] [--dist dist]
    koogallery deploy [--dry-run] [--function NAME ...] [--dist dist]
    koogallery serve [--host 127.0.0.1] [--port 8080]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from koogallery.errors import ConfigurationError

__all__ = ["add_commands", "format_plan"]

_EXIT_OK = 0
_DEFAULT_TEMPLATE = Path("template.yaml")
_DEFAULT_DIST = Path("dist")
_DEFAULT_REQUIREMENTS = Path("functions/requirements.txt")
_DEFAULT_WHEEL_CACHE = Path("build/wheels")


def add_commands(subparsers: Any) -> None:
    """Register the packaging, deployment and serving subcommands on ``subparsers``
    (the object ``ArgumentParser.add_subparsers`` returned)."""
    _add_template(subparsers)
    _add_package(subparsers)
    _add_deploy(subparsers)
    _add_serve(subparsers)


def _template_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template", type=Path, default=_DEFAULT_TEMPLATE, help="default: template.yaml"
    )


def _add_template(subparsers: Any) -> None:
    template = subparsers.add_parser(
        "template",
        help="check template.yaml",
        description="Work with template.yaml, the functions and triggers to deploy.",
    )
    actions = template.add_subparsers(title="actions", metavar="ACTION")
    validate = actions.add_parser(
        "validate",
        help="check the template against its schema",
        description="Check the schema, the handler files, and which ${VAR}s the template "
        "needs. Exit code 3 when anything is wrong.",
    )
    validate.add_argument("file", nargs="?", type=Path, default=_DEFAULT_TEMPLATE)
    validate.add_argument(
        "--require-env",
        action="store_true",
        help="also fill the ${VAR}s from the environment: a missing one is an error",
    )
    validate.set_defaults(run=_run_validate)
    template.set_defaults(run=lambda args: _usage(template))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _run_validate(args: argparse.Namespace) -> int:
    import yaml

    from koogallery.deploy.template import load_template, referenced_variables

    env = dict(os.environ) if args.require_env else None
    template = load_template(args.file, env=env)

    base_dir = args.file.resolve().parent
    missing_code = [
        f"{function.func_name}: handler {function.handler!r} names "
        f"{Path(function.code_dir) / function.handler_path}, which does not exist"
        for function in template.functions
        if not (base_dir / function.code_dir / function.handler_path).is_file()
    ]
    if missing_code:
        raise ConfigurationError(f"{args.file}: " + "; ".join(missing_code))

    raw = yaml.safe_load(args.file.read_text(encoding="utf-8"))
    variables = referenced_variables(raw)
    triggers = sum(len(function.triggers) for function in template.functions)
    print(f"{args.file}: valid ({len(template.functions)} functions, {triggers} triggers)")
    if variables:
        unset = [name for name in variables if name not in os.environ]
        print(f"deploy reads: {', '.join(variables)}")
        if unset and not args.require_env:
            print(f"not set here: {', '.join(unset)}")
    return _EXIT_OK


def _add_package(subparsers: Any) -> None:
    package = subparsers.add_parser(
        "package",
        help="build one FunctionGraph zip per function under dist/",
        description="Build reproducible zips: the handler module, the koogallery library and "
        "the pinned runtime dependencies for each function's Python version.",
    )
    _template_argument(package)
    package.add_argument("--dist", type=Path, default=_DEFAULT_DIST, help="default: dist")
    package.add_argument(
        "--function", action="append", metavar="NAME", help="only this function (repeatable)"
    )
    package.add_argument(
        "--requirements", type=Path, default=_DEFAULT_REQUIREMENTS, help=argparse.SUPPRESS
    )
    package.add_argument(
        "--wheel-cache",
        type=Path,
        default=_DEFAULT_WHEEL_CACHE,
        help="where downloaded wheels are kept (default: build/wheels)",
    )
    package.set_defaults(run=_run_package)


def _run_package(args: argparse.Namespace) -> int:
    from koogallery.deploy.package import build_packages
    from koogallery.deploy.template import load_template

    template = load_template(args.template)
    packages = build_packages(
        template,
        base_dir=args.template.resolve().parent,
        dist_dir=args.dist,
        requirements=args.requirements,
        wheel_cache=args.wheel_cache,
        only=args.function,
    )
    for package in packages:
        print(
            f"{package.path}  {package.size:>10,} bytes  Python {package.python_version}  "
            f"sha256 {package.sha256}"
        )
    return _EXIT_OK


def _add_deploy(subparsers: Any) -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help="bring FunctionGraph to template.yaml (create or update what differs)",
        description="Create what is missing and update what differs, through the "
        "FunctionGraph v2 API. Reads HUAWEICLOUD_SDK_REGION, HUAWEICLOUD_SDK_PROJECT_ID, "
        "HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK (HUAWEICLOUD_SDK_SECURITY_TOKEN, "
        "KOOGALLERY_FUNCTIONGRAPH_ENDPOINT optional) and the template's ${VAR}s.",
    )
    _template_argument(deploy)
    deploy.add_argument("--dist", type=Path, default=_DEFAULT_DIST, help="default: dist")
    deploy.add_argument(
        "--function", action="append", metavar="NAME", help="only this function (repeatable)"
    )
    deploy.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    deploy.set_defaults(run=_run_deploy)


def format_plan(plan: Any) -> str:
    """The plan as a table: one block per function, one line per step."""
    lines = []
    current = None
    for step in plan.steps:
        if step.function != current:
            current = step.function
            lines.append(current)
        changes = f"  ({', '.join(step.changes)})" if step.changes else ""
        note = "  (not in the template: left alone)" if step.action == "unmanaged" else ""
        lines.append(f"  {step.subject:<44} {step.action}{changes}{note}")

    counts = plan.counts()
    summary = ", ".join(f"{count} {action}" for action, count in counts.items() if count)
    lines.append(f"plan: {summary or 'nothing to do'}")
    return "\n".join(lines)


def _run_deploy(args: argparse.Namespace) -> int:
    from koogallery.deploy.deploy import apply_plan, load_archives, plan_deploy
    from koogallery.deploy.fgs_api import DeploySettings, FunctionGraphApi
    from koogallery.deploy.template import load_template

    template = load_template(args.template, env=dict(os.environ))
    archives = load_archives(template, args.dist, args.function)
    settings = DeploySettings.from_env()

    with FunctionGraphApi(settings) as api:
        plan = plan_deploy(template, archives, api)
        print(format_plan(plan))
        if args.dry_run:
            print("dry run: nothing was changed")
            return _EXIT_OK

        apply_plan(
            plan,
            api,
            on_done=lambda step: print(f"done: {step.function}: {step.subject} {step.action}"),
        )
    print("deployed" if plan.writes else "up to date: nothing was changed")
    return _EXIT_OK


def _add_serve(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve both handlers locally with functions-framework",
        description="POST a FunctionGraph event to /usage-push or /bill-fetch. User data "
        "comes from this environment; loopback only.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default) or ::1")
    serve.add_argument("--port", type=int, default=8080, help="default: 8080")
    serve.add_argument(
        "--timeout", type=float, default=30.0, help="each invocation's time budget (s)"
    )
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from koogallery.serve import functions_framework_command

    command = functions_framework_command(sys.executable, args.host, args.port)
    env = {**os.environ, "KOOGALLERY_SERVE_TIMEOUT_SECONDS": str(args.timeout)}
    print(f"serving /usage-push and /bill-fetch on http://{args.host}:{args.port}", flush=True)
    return subprocess.run(command, env=env, check=False).returncode  # noqa: S603
