"""The loopback-only network guard, for the test process and every interpreter it starts.

``loopback_only`` holds the guard; ``sitecustomize`` installs it in a subprocess whose
``PYTHONPATH`` starts with this folder, as ``conftest.py`` arranges for the whole test run.
"""
