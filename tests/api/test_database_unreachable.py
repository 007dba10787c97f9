"""A request that finds the database unreachable gets a 503 with Retry-After, never a 500 (a stream reconnecting
during a database blip, any route during an outage)."""

from sqlalchemy.exc import OperationalError

from api.deps import session


def test_an_unreachable_database_is_a_503_with_retry_after_not_a_500(client, auth):
    def unreachable():
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection to 10.0.0.7:5432 refused"))
        yield  # a generator dependency, as the real one

    client.app.dependency_overrides[session] = unreachable
    try:
        for path in ("/v1/jobs", "/v1/datasets", "/v1/jobs/job_x/events"):
            response = client.get(path, headers=auth())
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "2"
            assert "database is unreachable" in response.json()["detail"]
            assert "10.0.0.7" not in response.text  # the reason, which can name hosts, stays in the log
    finally:
        client.app.dependency_overrides.clear()


def test_a_write_that_finds_the_database_unreachable_before_its_body_is_read_is_a_503(client, auth, monkeypatch):
    """api.request_limits authenticates a write before the app (and its exception handlers) sees it."""
    import api.request_limits

    def unreachable(request, svc):
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(api.request_limits, "owner_unheld", unreachable)
    response = client.post("/v1/jobs", json={"base_model": "tiny"}, headers=auth())
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert "database is unreachable" in response.json()["detail"]
