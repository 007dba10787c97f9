"""The OpenAPI document and its two readers, Swagger UI (/docs) and ReDoc (/redoc), served with no CDN.

The document is FastAPI's, completed with what it cannot infer from signatures: the schemas of the bodies that
routes validate themselves (api.schemas.common.SELF_VALIDATED_BODIES) and the bearer scheme of every route that can
answer 401. The UIs' scripts and styles come from the ``fastapi-offline`` package, served under ASSETS, so the
pages work on a machine with no internet.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .schemas.common import ERROR_MEANINGS, component_schemas

ASSETS = "/docs-assets"
# The docs pages may load from this server only, so the browser refuses any other host before a request is made
# (ReDoc's side menu links a logo on its CDN; refused, it shows its text alone)
SAME_ORIGIN_ONLY = {"Content-Security-Policy": "; ".join((
    "default-src 'self'", "script-src 'self' 'unsafe-inline'", "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:", "font-src 'self' data:", "worker-src 'self' blob:"))}
BEARER = {"bearer": {"type": "http", "scheme": "bearer", "description": "a token from `mol token create`"}}


def complete_document(doc: dict) -> dict:
    """``doc`` with the self-validated bodies' schemas, the bearer scheme on each route that answers 401, and the
    413 on each route that takes a body."""
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(component_schemas())
    components["securitySchemes"] = BEARER
    too_large = {"description": ERROR_MEANINGS[413],
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            if "401" in operation.get("responses", {}):
                operation["security"] = [{name: []} for name in BEARER]
            if "requestBody" in operation:  # api.request_limits bounds every body
                operation["responses"].setdefault("413", too_large)
    return doc


def same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(SAME_ORIGIN_ONLY)
    return page


def install_docs(app: FastAPI) -> None:
    """Serve ``/openapi.json``'s document completed, ``/docs`` and ``/redoc`` from local assets.

    Create ``app`` with ``docs_url=None, redoc_url=None``, and call this before mounting anything at ``/``.
    """

    def document() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete_document(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = document
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    # the pages read their app from the request: FastAPI caches facts about each endpoint function in module-level
    # caches, so an endpoint closing over ``app`` would keep every app ever made alive (tests make hundreds)
    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        app = request.app
        return same_origin_only(get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{app.title} API", swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css", swagger_favicon_url=f"{ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None}))  # no badge from the online validator

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        app = request.app
        return same_origin_only(get_redoc_html(
            openapi_url=app.openapi_url, title=f"{app.title} API", redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png", with_google_fonts=False))
