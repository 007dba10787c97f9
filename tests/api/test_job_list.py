"""GET /v1/jobs pages: cursor paging (limit, after) in the OpenAI list shape, on an (owner, created_at, id) index."""

from datetime import timedelta

import pytest
from sqlalchemy import inspect, select, text

from store.db import SCHEMA_VERSION, Job, SchemaVersion, init_db, make_engine, utcnow
from tests.version_8 import create_version_8_tables


def add_jobs(client, count: int, owner: str = "alice", start=None, same_time_every: int = 7) -> list[str]:
    """Insert ``count`` jobs straight into the database, several sharing each created_at (ties break by id)."""
    start = start or utcnow() - timedelta(days=1)
    sessions = client.app.state.services.sessions
    jobs = [Job(owner=owner, name=f"j{i}", spec={"base_model": "tiny", "method": "cpt"}, max_steps=5,
                created_at=start + timedelta(seconds=i // same_time_every)) for i in range(count)]
    with sessions.begin() as db:
        db.add_all(jobs)
    return [j.id for j in jobs]


def newest_first(client, ids: list[str]) -> list[str]:
    with client.app.state.services.sessions() as db:
        rows = db.execute(select(Job.id, Job.created_at).where(Job.id.in_(ids))).all()
    return [job_id for job_id, _ in sorted(rows, key=lambda r: (r[1], r[0]), reverse=True)]


def walk(client, auth, limit: int, during=None) -> list[dict]:
    """Every page from the first, calling ``during()`` after the first page; returns the pages' bodies."""
    pages = [client.get("/v1/jobs", headers=auth(), params={"limit": limit}).json()]
    if during:
        during()
    while pages[-1]["has_more"]:
        params = {"limit": limit, "after": pages[-1]["last_id"]}
        pages.append(client.get("/v1/jobs", headers=auth(), params=params).json())
    return pages


def test_paging_walks_every_job_once_in_order_while_jobs_are_added(client, auth):
    ids = add_jobs(client, 250)
    add_jobs(client, 3, owner="bob")
    pages = walk(client, auth, limit=40, during=lambda: add_jobs(client, 5, start=utcnow()))
    seen = [j["id"] for page in pages for j in page["data"]]
    assert seen == newest_first(client, ids)  # each once, newest first; those added meanwhile come before page 1
    assert [len(p["data"]) for p in pages] == [40] * 6 + [10] and [p["has_more"] for p in pages][-2:] == [True, False]
    assert all(p["object"] == "list" and p["first_id"] == p["data"][0]["id"] and p["last_id"] == p["data"][-1]["id"]
               for p in pages)


def test_the_default_page_is_50_light_jobs(client, auth):
    add_jobs(client, 60)
    page = client.get("/v1/jobs", headers=auth()).json()
    assert len(page["data"]) == 50 and page["has_more"] is True
    assert {"spec", "disk_bytes"}.isdisjoint(page["data"][0]) and page["data"][0]["method"] == "cpt"


@pytest.mark.parametrize("limit", [0, -1, 201, "x"])
def test_limit_out_of_bounds_is_refused_naming_it(client, auth, limit):
    response = client.get("/v1/jobs", headers=auth(), params={"limit": limit})
    assert response.status_code == 422 and response.json()["detail"].startswith("query.limit:"), response.text


@pytest.mark.parametrize("owner_of_cursor", ["nobody", "bob"])
def test_after_an_unknown_or_foreign_job_is_refused_naming_it(client, auth, owner_of_cursor):
    cursor = add_jobs(client, 1, owner="bob")[0] if owner_of_cursor == "bob" else "job_0000000000000000"
    for after in (cursor, "job\x00x"):
        response = client.get("/v1/jobs", headers=auth(), params={"after": after})
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith("after: no job"), response.text


def test_an_empty_list_has_no_ids(client, auth):
    assert client.get("/v1/jobs", headers=auth()).json() == {"object": "list", "data": [], "first_id": None,
                                                             "last_id": None, "has_more": False}


def test_a_version_2_database_gets_the_paging_index(settings):
    engine = make_engine(settings.db_url)
    settings.home.mkdir(parents=True, exist_ok=True)
    create_version_8_tables(engine)  # the models' newer tables and columns come from later revisions
    with engine.begin() as conn:  # the shape version 2 left behind
        conn.execute(text("DROP INDEX ix_jobs_owner_created_id"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (2)"))
    assert "ix_jobs_owner_created_id" not in {i["name"] for i in inspect(engine).get_indexes("jobs")}
    sessions = init_db(engine)
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("jobs")}
    assert indexes["ix_jobs_owner_created_id"] == ["owner", "created_at", "id"]
    with sessions() as db:
        assert db.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]
    engine.dispose()
