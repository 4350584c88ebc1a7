"""Packaging and deployment of the product's functions to FunctionGraph.

- ``template``: ``template.yaml``'s schema, its validation and ``${VAR}`` filling.
- ``package``: one reproducible zip per function, with the library and its runtime dependencies.
- ``fgs_api``: a small FunctionGraph v2 API client, signed with the library's APIG signer.
- ``deploy``: the plan that brings an account to the template, and its application.
- ``commands``: the ``template validate``, ``package``, ``deploy`` and ``serve`` subcommands.

This package runs on the developer's machine and in CI only; it never goes into a function zip.
"""

from __future__ import annotations

__all__: list[str] = []
