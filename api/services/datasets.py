"""Answers about datasets that more than one route gives: an upload whose file the owner stored before."""

from __future__ import annotations

from fastapi import Response

from store.db import Dataset

from ..dataset_store import EXISTING_HEADER


def mark_existing(response: Response, dataset: Dataset) -> None:
    """Answer 200 with the header naming it: the upload's file was stored before as ``dataset``."""
    response.status_code = 200
    response.headers[EXISTING_HEADER] = dataset.id
