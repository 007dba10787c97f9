"""``mol api``: the API alone (deployments: workers run apart, with ``mol worker``)."""

from __future__ import annotations

import argparse

from ..database import unreachable_in_one_line
from ..subcommand import Subparsers
from .up import add_address


def run(args: argparse.Namespace) -> int:
    from api.service import serve_api

    serve_api(args.host, args.port)
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("api", help="run the API alone (deployments: workers run apart, with `mol worker`)")
    add_address(p)
    p.set_defaults(func=unreachable_in_one_line("api", run))
