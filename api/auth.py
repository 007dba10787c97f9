"""Bearer tokens: each maps to an owner; only hashes are stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy.orm import Session

from .db import ApiToken

COOKIE = "mol_token"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, owner: str) -> str:
    """A new random token for ``owner``; its hash is stored, the token itself is returned once."""
    token = "mol_" + secrets.token_urlsafe(24)
    session.add(ApiToken(token_hash=hash_token(token), owner=owner))
    return token


def owner_of(session: Session, token: str, static: dict[str, str]) -> str | None:
    """The owner a token belongs to, or None."""
    for known, owner in static.items():
        if secrets.compare_digest(known, token):
            return owner
    row = session.get(ApiToken, hash_token(token))
    return row.owner if row else None
