"""What every resource's bodies share: the UTC timestamps, the one error shape and the errors a route documents,
and what the OpenAPI document says of the bodies routes read themselves (a job spec, a form, a part's bytes) and of
the streamed answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, PlainSerializer, WithJsonSchema

from mol_engine.spec import JobSpec

from ..checks.names import PURPOSES


def utc_iso(moment: datetime) -> str:
    """``moment`` as UTC ISO 8601 ending in ``Z``; a naive datetime (SQLite gives those) is taken to be UTC."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


# Every timestamp the API sends: one serializer, whichever database the row came from
UtcDatetime = Annotated[datetime, PlainSerializer(utc_iso, return_type=str, when_used="json"),
                        WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-29T18:12:36Z"]},
                                       mode="serialization")]


class ErrorOut(BaseModel):
    """Every error answer (4xx, 5xx): what is wrong, naming the field or the line; several problems one per line."""

    detail: str = Field(examples=["domain_data: Field required"])


ERROR_MEANINGS = {
    400: "the body could not be read: not JSON, or broken off before it was whole",
    401: "missing or invalid token (send `Authorization: Bearer <token>`)",
    403: "a write authenticated by the session cookie alone",
    404: "not found, or not yours",
    409: "conflicts with the object's current state",
    413: "larger than the size limit",
    422: "invalid input: each line names the field or the line of the file at fault",
    429: "past a per-owner limit, which the message names; `Retry-After`, where given, says when to try again",
    503: "the job queue is unavailable; nothing was created",
    507: "the server's disk is full",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that can answer ``codes``: each one an :class:`ErrorOut`."""
    return {code: {"model": ErrorOut, "description": ERROR_MEANINGS[code]} for code in codes}


# Bodies that routes validate themselves: the document takes their schemas from the models all the same
SELF_VALIDATED_BODIES: tuple[type[BaseModel], ...] = (JobSpec,)


def component_schemas(models: tuple[type[BaseModel], ...] = SELF_VALIDATED_BODIES) -> dict[str, dict]:
    """The OpenAPI components of ``models`` and of the models they nest."""
    found: dict[str, dict] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found |= schema.pop("$defs", {})
        found[model.__name__] = schema
    return found


def json_body(model: type[BaseModel]) -> dict:
    """A route's ``openapi_extra`` when it reads ``model`` from a JSON body that it validates itself."""
    assert model in SELF_VALIDATED_BODIES, f"add {model.__name__} to SELF_VALIDATED_BODIES"
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# POST /v1/datasets streams the form to disk itself: this is the form it reads
DATASET_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "JSONL with `text` per line, .txt or Parquet; for `eval`, JSONL `question`, `answer`"},
        "purpose": {"type": "string", "enum": list(PURPOSES)}}}}}}}


# PUT /v1/uploads/{id}/parts/{index}: the part's bytes as they are
RAW_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


# Streamed answers: the media types beside a route's JSON one
SSE = {"text/event-stream": {"schema": {"type": "string", "description": "SSE messages (`event`, `id`, `data`)"}}}


TARBALL = {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}
