"""``butler`` subcommands of the science packages (instruments, raw ingest, skymaps, simulation).

Each module in this package defines click commands (``cls=butler.cli_utils.ErrorHandlingCommand``) and lists them in a module-level ``commands``; the
``butler`` command line finds them through the ``butler.cli`` entry point, which names `commands` below.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import click

__all__ = ["commands"]


def _collect() -> list[click.Command]:
    found: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as err:  # one broken module must not hide the others' commands
            logging.getLogger("butler.cli").warning("cannot load the butler commands of %s.%s: %s", __name__, info.name, err)
            continue
        found.extend(getattr(module, "commands", ()))
    return found


commands: list[click.Command] = _collect()
