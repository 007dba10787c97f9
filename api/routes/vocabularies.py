"""GET /v1/vocabularies: the words the service's answers use, from the one place each is defined, so that the
dashboard (and any client) never spells them again: job statuses (store/jobs.py) and event kinds (the engine's,
mol_engine/callbacks.py, and the service's). The job spec's own choices come with its schema (GET /v1/jobspec)."""

from __future__ import annotations

from fastapi import APIRouter

from store.jobs import ACTIVE, EVENT_KINDS, FINAL, STATUSES

from ..deps import Owner
from ..schemas.common import errors
from ..schemas.jobs import VocabulariesOut

router = APIRouter(tags=["jobs"], responses=errors(401))


@router.get("/v1/vocabularies", response_model=VocabulariesOut)
def vocabularies(owner: Owner) -> VocabulariesOut:
    """The job statuses and event kinds the other answers use."""
    return VocabulariesOut(job_statuses=list(STATUSES), active_statuses=list(ACTIVE), final_statuses=list(FINAL),
                           event_kinds=list(EVENT_KINDS))
