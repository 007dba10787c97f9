"""``mol token create|list|revoke``: the API's stored tokens (api/auth.py), never printed but at creation."""

from __future__ import annotations

import argparse
import sys

from ..database import open_sessions, unreachable_in_one_line
from ..subcommand import Subparsers


def run_create(args: argparse.Namespace) -> int:
    from api.auth import create_token

    with open_sessions().begin() as db:
        print(create_token(db, args.owner))
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Prints each stored token's owner, creation time and fingerprint (never the token)."""
    from api.auth import fingerprint, list_tokens

    with open_sessions().begin() as db:
        rows = list_tokens(db)
        for row in rows:
            print(f"{row.owner}\t{row.created_at:%Y-%m-%d %H:%M:%S}\t{fingerprint(row)}")
    if not rows:
        print("no stored tokens (tokens in MOL_TOKENS are not listed)", file=sys.stderr)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Revokes the tokens of an owner, or the one with a fingerprint; 1 when none matches."""
    from api.auth import fingerprint, revoke_tokens

    with open_sessions().begin() as db:
        try:
            rows = revoke_tokens(db, args.which)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for row in rows:
            print(f"revoked {row.owner} {fingerprint(row)}")
    if not rows:
        print(f"error: no stored token of owner or fingerprint '{args.which}'", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("token", help="API tokens")
    token_sub = p.add_subparsers(dest="token_command", required=True)
    p = token_sub.add_parser("create", help="create a token for OWNER and print it (stored hashed)")
    p.add_argument("owner")
    p.set_defaults(func=unreachable_in_one_line("token create", run_create))
    p = token_sub.add_parser("list", help="list stored tokens: owner, created, fingerprint")
    p.set_defaults(func=unreachable_in_one_line("token list", run_list))
    p = token_sub.add_parser("revoke", help="revoke every token of an owner, or one by its fingerprint")
    p.add_argument("which", metavar="OWNER|FINGERPRINT")
    p.set_defaults(func=unreachable_in_one_line("token revoke", run_revoke))
