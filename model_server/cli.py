"""`protege model-server`: the flags live with the server (`model_server.server`); without torch the command
is still listed and says what to install."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.cli import Subparsers



def register(sub: Subparsers) -> None:
    p = sub.add_parser("model-server", help="run the local OpenAI-compatible model server (base model + LoRA)",
                       description="Serve a base model and LoRA adapters over OpenAI's chat API, with "
                       "vLLM's adapter routes. Needs the `local` extra (torch).")
    try:
        from model_server.server import add_model_server_arguments, run_model_server
    except ImportError as exc:  # torch not installed: say so when the command is used
        missing = str(exc)

        def unavailable(_: argparse.Namespace) -> int:
            print(f"protege model-server needs the local extra: pip install 'protege[local]' ({missing})",
                  file=sys.stderr)
            return 2

        p.set_defaults(func=unavailable)
        return
    add_model_server_arguments(p)

    def run(args: argparse.Namespace) -> int:
        import importlib.util

        if importlib.util.find_spec("torch") is None:  # the server module itself imports torch lazily
            print("protege model-server needs the local extra (torch): pip install 'protege[local]'", file=sys.stderr)
            return 2
        code: int = run_model_server(args)
        return code

    p.set_defaults(func=run)


