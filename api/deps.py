"""Request dependencies: the services object, a database session, the calling owner, and the owner's job or
dataset a route's path names (``OwnedJob``, ``OwnedDataset``: 404 for a missing row or another owner's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from store.db import Dataset, Job, is_id
from store.settings import Settings

from .auth import COOKIE, owner_of, token_revoked


@dataclass
class Services:
    """What handlers need, built once per app: settings, the session factory, and the job queue."""

    settings: Settings
    sessions: sessionmaker
    enqueue: object  # Callable[[str], None]: hand a job id to the workers


def services(request: Request) -> Services:
    return request.app.state.services


def session(svc: Annotated[Services, Depends(services)]) -> Iterator[Session]:
    with svc.sessions() as db:
        yield db


# Closed when the handler returns, before the response is sent (FastAPI's scope="function"): a client that
# reads a response slowly, or a stream that stays open for hours, holds no pooled connection. One Depends
# object, so that ``owner`` and ``DB`` share one session per request (the scope is part of the cache key).
SESSION = Depends(session, scope="function")


COOKIE_METHODS = frozenset({"GET", "HEAD"})  # reads, streams and downloads: what EventSource and links need
# Where api.request_limits leaves the owner it found before the body was read, so the request is looked up once
OWNER_KEY = "mol.owner"


def bearer_token(request: Request) -> str:
    """The token of the request's ``Authorization: Bearer`` header ('' without one)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def revocation_check(request: Request, svc: Services) -> Callable[[], bool]:
    """For a long stream or download: a blocking check of whether the token that authenticated ``request`` (its
    bearer token, else its cookie) has been revoked since."""
    token, static = bearer_token(request) or request.cookies.get(COOKIE, ""), svc.settings.static_tokens()
    return lambda: token_revoked(svc.sessions, token, static)


def owner(request: Request, db: Annotated[Session, SESSION],
          svc: Annotated[Services, Depends(services)]) -> str:
    """The owner of the request's bearer token (or, on GET and HEAD only, of the dashboard's cookie).

    401 without a valid token; 403 for a write that carries only the cookie, which a form or script on another
    site can make the browser send (a bearer header it cannot). The one rule: api.request_limits applies it too,
    before a request's body is read.
    """
    if OWNER_KEY in request.scope:
        return request.scope[OWNER_KEY]
    token = bearer_token(request)
    if not token and request.cookies.get(COOKIE):
        if request.method not in COOKIE_METHODS:
            raise HTTPException(403, "the session cookie only authenticates reads: send 'Authorization: Bearer "
                                     "<token>' with a write")
        token = request.cookies[COOKIE]
    found = owner_of(db, token, svc.settings.static_tokens()) if token else None
    if found is None:
        raise HTTPException(401, "missing or invalid token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


def owner_unheld(request: Request, svc: Annotated[Services, Depends(services)]) -> str:
    """The owner, as ``owner`` finds it, from a session closed again before the handler runs."""
    with svc.sessions() as db:
        return owner(request, db, svc)


def owner_or_none(request: Request, svc: Annotated[Services, Depends(services)]) -> str | None:
    """The owner as ``owner`` finds it, or None: no token, one that is not valid, or a database that does not
    answer (a route open to all, such as /healthz, shows more to an owner and never fails on this)."""
    try:
        return owner_unheld(request, svc)
    except (HTTPException, SQLAlchemyError):
        return None


Owner = Annotated[str, Depends(owner)]
# For handlers that wait on a client inside the handler (reading a request body) or run long (a merge): they
# take no DB and open short sessions of their own (svc.sessions) before and after the long part.
StreamOwner = Annotated[str, Depends(owner_unheld)]
OwnerOrNone = Annotated[str | None, Depends(owner_or_none)]
DB = Annotated[Session, SESSION]
Svc = Annotated[Services, Depends(services)]


def worker_task_sender(task_name: str) -> Callable[..., Callable[..., None]]:
    """A dependency for a route that queues the worker task ``task_name``: it gives ``send(*args)``, which queues
    it on the service's broker (store/dispatch.py). Each call makes a dependency of its own, for tests to override."""

    def sender(svc: Svc) -> Callable[..., None]:
        from store.dispatch import side_task_sender

        return side_task_sender(svc.settings, task_name)

    return sender


def owned_job(db: Session, owner: str, job_id: str) -> Job:
    """The owner's job ``job_id``; 404 when there is none or it is another owner's (the same answer: an id of
    someone else's job says nothing). For routes that open sessions of their own; others take ``OwnedJob``."""
    job = db.get(Job, job_id) if is_id(job_id) else None
    if job is None or job.owner != owner:
        raise HTTPException(404, f"job '{job_id}' not found")
    return job


def owned_dataset(db: Session, owner: str, dataset_id: str) -> Dataset:
    """The owner's dataset ``dataset_id``; 404 when there is none or it is another owner's."""
    dataset = db.get(Dataset, dataset_id) if is_id(dataset_id) else None
    if dataset is None or dataset.owner != owner:
        raise HTTPException(404, f"dataset '{dataset_id}' not found")
    return dataset


def path_job(job_id: str, owner: Owner, db: DB) -> Job:
    """The job the path's ``{job_id}`` names, the caller's own."""
    return owned_job(db, owner, job_id)


def path_dataset(dataset_id: str, owner: Owner, db: DB) -> Dataset:
    """The dataset the path's ``{dataset_id}`` names, the caller's own."""
    return owned_dataset(db, owner, dataset_id)


OwnedJob = Annotated[Job, Depends(path_job)]
OwnedDataset = Annotated[Dataset, Depends(path_dataset)]
