"""docs/api.md lists every route the API serves: each method and path of the OpenAPI document (which FastAPI
builds from app.routes: every route but the docs pages and the dashboard's files) appears in its table, written
as `METHOD /path` with ids as `{id}`."""

import re
from pathlib import Path

from api.app import create_app
from store.settings import Settings

ID_PARAMETER = re.compile(r"{\w+_id}")
API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented_name(method: str, path: str) -> str:
    """How docs/api.md names a route: `GET /v1/jobs/{id}` for the app's /v1/jobs/{job_id}."""
    return f"`{method.upper()} {ID_PARAMETER.sub('{id}', path)}`"


def test_every_route_is_in_docs_api_md(tmp_path):
    app = create_app(Settings(home=tmp_path, demo_model=False, tokens="alice:tok"), enqueue=lambda _job_id: None)
    routes = [documented_name(method, path) for path, operations in app.openapi()["paths"].items()
              for method in operations]
    text = API_MD.read_text()
    assert len(routes) > 30 and "`GET /v1/jobspec`" in routes and "`PUT /v1/uploads/{id}/parts/{index}`" in routes
    assert [r for r in routes if r not in text] == []
