"""Bearer tokens: each maps to an owner; only hashes are stored, shown as short fingerprints."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from store.db import ApiToken

COOKIE = "mol_token"
FINGERPRINT = 12  # hex digits of the hash shown by `mol token list`


def _bytes(text: str) -> bytes:
    # Headers arrive decoded as latin-1, so any text encodes; compare_digest refuses non-ASCII str.
    return text.encode("utf-8", "surrogateescape")


def hash_token(token: str) -> str:
    """The hex sha256 of ``token``."""
    return hashlib.sha256(_bytes(token)).hexdigest()


def fingerprint(row: ApiToken) -> str:
    """A short public name of a stored token: the start of its hash, never the token."""
    return row.token_hash[:FINGERPRINT]


def create_token(session: Session, owner: str) -> str:
    """A new random token for ``owner``; its hash is stored, the token itself is returned once."""
    token = "mol_" + secrets.token_urlsafe(24)
    session.add(ApiToken(token_hash=hash_token(token), owner=owner))
    return token


def owner_of(session: Session, token: str, static: dict[str, str]) -> str | None:
    """The owner a token belongs to, or None."""
    for known, owner in static.items():
        if secrets.compare_digest(_bytes(known), _bytes(token)):
            return owner
    row = session.get(ApiToken, hash_token(token))
    return row.owner if row else None


def token_revoked(sessions: Callable[[], Session], token: str, static: dict[str, str]) -> bool:
    """Whether ``token``, valid when a long stream or download began, belongs to no owner any more (revoked);
    False while the database cannot be reached (it is asked again at the next check)."""
    try:
        with sessions() as db:
            return owner_of(db, token, static) is None
    except (DBAPIError, PoolTimeout):
        return False


def list_tokens(session: Session) -> list[ApiToken]:
    """The stored tokens, by owner then age."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.owner, ApiToken.created_at)))


def revoke_tokens(session: Session, which: str) -> list[ApiToken]:
    """Deletes and returns the tokens of the owner named ``which``, or else the one whose fingerprint starts
    with ``which`` (at least 6 hex digits); ValueError when such a prefix matches more than one."""
    rows = list(session.scalars(select(ApiToken).where(ApiToken.owner == which)))
    if not rows and len(which) >= 6:
        rows = [row for row in list_tokens(session) if row.token_hash.startswith(which.lower())]
        if len(rows) > 1:
            raise ValueError(f"'{which}' matches {len(rows)} tokens; give more of the fingerprint")
    for row in rows:
        session.delete(row)
    return rows


def keep_one_token(session: Session, owner: str, token: str | None) -> str:
    """``token`` if it is a stored token of ``owner``, else a new one; every other token of ``owner`` is
    revoked, so ``owner`` holds exactly the one returned."""
    if token is None or owner_of(session, token, {}) != owner:
        token = create_token(session, owner)
        session.flush()
    keep = hash_token(token)
    others = select(ApiToken).where(ApiToken.owner == owner, ApiToken.token_hash != keep)
    for row in list(session.scalars(others)):
        session.delete(row)
    return token
