"""A Lambda function's code loaded as a new execution environment would load it.

`functions/<name>/app.py` builds its clients when it is imported, from the environment (the
function's settings and its role's credentials). Each call of `load_function` imports a fresh copy
under a module name of its own, with boto3's default session reset for the import: a new execution
environment is a new process, and the default session caches the first credentials it resolved.
The caller's default session is put back afterwards, for whatever the harness builds next.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import boto3

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"

_numbers = itertools.count(1)


def load_function(name: str, *, functions: Path = FUNCTIONS) -> ModuleType:
    """A fresh copy of `functions/<name>/app.py`, imported with the current environment."""
    module_name = f"_lambda_{name}_{next(_numbers)}"
    spec = importlib.util.spec_from_file_location(module_name, functions / name / "app.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no Lambda function {name!r} under {functions}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    saved, boto3.DEFAULT_SESSION = boto3.DEFAULT_SESSION, None
    try:
        spec.loader.exec_module(module)
    finally:
        boto3.DEFAULT_SESSION = saved
    return module
