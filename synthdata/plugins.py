"""The one registry of what users pick by name: generators, classifiers and data loaders.

A name resolves, in this order, to
1. a built-in (`diffusion`, `gaussian`, `gmm`, ...), registered below exactly as a plug-in is;
2. a name a package registers through a Python entry point (group `synthdata.generators`,
   `synthdata.classifiers` or `synthdata.data`), so that after `pip install mypkg` a study
   just says `name: tinygan`;
3. an import path `package.module:attribute` (the module must import on every Ray worker:
   install the package there, or ship it with the job's runtime_env).

What a plug-in must be is in the README's "Bring your own generator" and in
`synthdata.generators.Generator`; `check_generator_class` refuses one that lacks a
required method when the study file is validated.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any

from synthdata.errors import SpecError

GROUPS = {"generator": "synthdata.generators", "classifier": "synthdata.classifiers", "data": "synthdata.data"}
BUILTIN: dict[str, dict[str, str]] = {
    "generator": {
        "diffusion": "synthdata.generators.diffusion:DiffusionGenerator",
        "gaussian": "synthdata.generators.gaussian:GaussianGenerator",
        "gmm": "synthdata.generators.gaussian:GMMGenerator",
    },
    "classifier": {},
    "data": {},
}
REQUIRED = {"generator": ("fit", "sample", "state_dict", "load_state_dict")}


def is_import_path(name: str) -> bool:
    """`package.module:attribute`, as entry points write them."""
    return ":" in name


@functools.cache
def _installed(kind: str) -> dict[str, str]:
    """What installed packages register for `kind`, read once per process: scanning every distribution's
    metadata takes ~15 ms, and generators are created every generation of every arm."""
    return {ep.name: ep.value for ep in entry_points(group=GROUPS[kind])}


def registered(kind: str) -> dict[str, str]:
    """Every name `kind` has: the built-ins and what installed packages register (name -> import path)."""
    return {**_installed(kind), **BUILTIN[kind]}


def resolve(kind: str, name: str, field: str) -> Any:
    """The object `name` stands for (a class or factory); a name that does not resolve is a SpecError naming `field`."""
    target = name if is_import_path(name) else BUILTIN[kind].get(name) or _installed(kind).get(name)
    if target is None:
        known = ", ".join(sorted(registered(kind)))
        raise SpecError(f"{field}: unknown {kind} {name!r} (known: {known}; or give an import path package.module:Name)")
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as err:  # a plug-in's own import error is the user's to fix
        raise SpecError(f"{field}: cannot import {module!r} ({type(err).__name__}: {str(err)[:200]})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{field}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def check_generator_class(cls: Any, field: str) -> None:
    """Refuse a generator plug-in that lacks a method every study calls."""
    missing = [m for m in REQUIRED["generator"] if not callable(getattr(cls, m, None))]
    if missing:
        raise SpecError(f"{field}: {getattr(cls, '__name__', cls)!r} is not a generator: it has no {', '.join(missing)} "
                        "(see synthdata.generators.Generator)")


def check_params(obj: Any, name: str, params: dict[str, Any], **given: Any) -> None:
    """Refuse `params` that do not fit `obj`'s signature, next to the arguments the project passes (`given`):
    a typo fails when the study file is validated, not on a worker minutes later."""
    try:
        inspect.signature(obj).bind(**given, **params)
    except TypeError as err:
        raise SpecError(f"params: {err} ({name})") from None
    except ValueError:  # no signature to check (a C extension's callable)
        pass
