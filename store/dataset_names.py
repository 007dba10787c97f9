"""How a job's text (events, errors, its log) names datasets to their owner: server paths and stored file names
replaced by the owner's file names. One rule for the runner that writes the text and the API that serves it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Dataset


def stored_names(db: Session, owner: str) -> dict[str, str]:
    """Each of the owner's datasets as the server stores it (path, file name) -> as the owner knows it."""
    labels = {}
    for dataset in db.scalars(select(Dataset).where(Dataset.owner == owner)):
        labels[dataset.path] = f"{dataset.filename} ({dataset.id})"
        labels[Path(dataset.path).name] = dataset.filename
    return labels


def relabel(text: str, labels: dict[str, str]) -> str:
    """``text`` with server paths and file names replaced by the owner's names (whole paths first)."""
    for stored in sorted(labels, key=len, reverse=True):
        text = text.replace(stored, labels[stored])
    return text
