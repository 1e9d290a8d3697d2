"""`protege COMMAND`: composes each process's commands into one parser. The gateway's are always there; the
distiller's and the model server's only where their packages are installed (the slim gateway image ships
neither), so a missing package is a missing command, not an import error."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import cli as gateway_cli
from gateway.errors import ConfigError, ProtegeError
from gateway.store import StoreError

OPTIONAL_COMMANDS = ("model_server.cli", "distiller.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protege", description="Protégé: an OpenAI-compatible gateway that "
                                     "captures teacher traffic and distils it into a cheap student.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gateway_cli.register(sub)
    for module in OPTIONAL_COMMANDS:
        try:
            commands = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # the package is there and one of its imports is broken: that is a bug to see
            continue
        commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"protege: {exc}", file=sys.stderr)
        return 2
    except (StoreError, ProtegeError) as exc:
        print(f"protege: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
