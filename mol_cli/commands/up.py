"""``mol up``: the whole service on this machine (api/service.py's ``serve_local``)."""

from __future__ import annotations

import argparse

from ..database import unreachable_in_one_line
from ..subcommand import Subparsers


def run(args: argparse.Namespace) -> int:
    from api.service import serve_local

    serve_local(args.host, args.port)
    return 0


def add_address(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--port`` of a server."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("up", help="run the service: API, dashboard and one worker (SQLite + filesystem broker "
                                         "unless MOL_DATABASE_URL / MOL_BROKER_URL say otherwise)")
    add_address(p)
    p.set_defaults(func=unreachable_in_one_line("up", run))
