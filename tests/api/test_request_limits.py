"""api.request_limits: a /v1 request with a body is authenticated before a byte of it is read, and its body is
bounded (from its Content-Length, else as it arrives). Driven through ASGI with a body that counts what is read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable

import pytest

from api.app import create_app
from api.request_limits import body_limit
from api.upload import MULTIPART_OVERHEAD
from tests.api.conftest import TOKENS

CHUNK = 64 * 1024
BIG = 50 * 2**20  # 50 MiB, made lazily: only what the server asks for is ever built
BEARER = {"authorization": f"Bearer {TOKENS['alice']}"}


def chunks(total: int, chunk: bytes = b" " * CHUNK) -> Iterable[bytes]:
    return (chunk for _ in range(total // len(chunk)))


class Answer:
    def __init__(self) -> None:
        self.status, self.headers, self.body, self.read = 0, {}, b"", 0

    def json(self) -> dict:
        return json.loads(self.body)


def call(app, method: str, path: str, headers: dict[str, str], body: Iterable[bytes] = ()) -> Answer:
    """The app's answer to one request whose body comes from ``body``; ``read``: the body bytes it received."""
    answer, parts = Answer(), iter(body)

    async def receive() -> dict:
        part = next(parts, None)
        if part is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        answer.read += len(part)
        return {"type": "http.request", "body": part, "more_body": True}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer.body += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    return answer


@pytest.fixture
def app(settings):
    return create_app(settings, enqueue=lambda _job_id: None)


@pytest.mark.parametrize(("method", "path", "content_type"), [
    ("POST", "/v1/jobs", "application/json"),
    ("POST", "/v1/datasets", "multipart/form-data; boundary=x"),
    ("PUT", "/v1/uploads/upl_x/parts/0", "application/octet-stream"),
])
@pytest.mark.parametrize("credentials", [{}, {"authorization": "Bearer wrong"}, {"cookie": "mol_token=tok-alice"}])
def test_a_body_is_not_read_before_its_sender_is_authenticated(app, method, path, content_type, credentials):
    for length in ({"content-length": str(BIG)}, {"transfer-encoding": "chunked"}):
        answer = call(app, method, path, {"content-type": content_type} | length | credentials, chunks(BIG))
        expected = 403 if "cookie" in credentials else 401
        assert (answer.status, answer.read) == (expected, 0), answer.body
        assert "Authorization: Bearer" in answer.json()["detail"]
        if expected == 401:
            assert answer.headers["www-authenticate"] == "Bearer"


def test_an_oversize_json_body_is_a_413_naming_the_limit(app, settings):
    limit = settings.max_json_body_bytes
    declared = call(app, "POST", "/v1/jobs", BEARER | {"content-type": "application/json",
                                                       "content-length": str(BIG)}, chunks(BIG))
    assert (declared.status, declared.read) == (413, 0)
    assert declared.json()["detail"] == "body: larger than the limit of 1024 KiB (MOL_MAX_JSON_BODY_KB)"
    streamed = call(app, "POST", "/v1/jobs", BEARER | {"content-type": "application/json",
                                                       "transfer-encoding": "chunked"}, chunks(BIG))
    assert streamed.status == 413 and "MOL_MAX_JSON_BODY_KB" in streamed.json()["detail"]
    assert limit < streamed.read <= limit + CHUNK  # it stopped reading at the limit
    fits = call(app, "POST", "/v1/jobs", BEARER | {"content-type": "application/json"}, [b"{}"])
    assert fits.status == 422 and "domain_data" in fits.json()["detail"]  # an ordinary answer, past the middleware


def test_a_chunked_dataset_upload_past_its_limit_is_a_413_and_leaves_nothing(app, settings):
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="d.txt"\r\n\r\n'
    answer = call(app, "POST", "/v1/datasets", BEARER | {"content-type": "multipart/form-data; boundary=x",
                                                         "transfer-encoding": "chunked"},
                  [head, *chunks(BIG, b"word " * (CHUNK // 5))])
    assert answer.status == 413 and answer.json()["detail"].startswith("file: larger than the limit of 0.05 MiB")
    assert answer.read <= settings.max_upload_bytes + MULTIPART_OVERHEAD + CHUNK
    assert [p for p in settings.datasets_dir.rglob("*") if p.is_file()] == []
    declared = call(app, "POST", "/v1/datasets", BEARER | {"content-type": "multipart/form-data; boundary=x",
                                                           "content-length": str(BIG)}, [head, *chunks(BIG)])
    assert (declared.status, declared.read) == (413, 0)
    assert declared.json()["detail"] == "file: larger than the limit of 0.05 MiB (MOL_MAX_UPLOAD_MB)"


def test_each_route_gets_its_limit(settings):
    assert body_limit("POST", "/v1/jobs", settings)[0] == settings.max_json_body_bytes == 1024 * 1024
    assert body_limit("POST", "/v1/datasets", settings)[0] == settings.max_upload_bytes + MULTIPART_OVERHEAD
    assert body_limit("PUT", "/v1/uploads/upl_1/parts/3", settings) is None  # bounded by the upload's room
