"""`mol token list/revoke` and the one token `mol up` keeps per MOL_HOME, called in-process."""

import stat

import pytest

from api.auth import create_token, owner_of
from api.service import LOCAL_OWNER, local_token
from mol_cli.main import main
from store.db import init_db, make_engine
from store.settings import Settings


@pytest.fixture
def home(tmp_path, monkeypatch) -> Settings:
    """The settings `mol` reads from the environment: a fresh MOL_HOME (SQLite)."""
    for name in ("MOL_DATABASE_URL", "MOL_BROKER_URL", "MOL_TOKENS", "MOL_CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOL_HOME", str(tmp_path / "home"))
    settings = Settings()
    settings.home.mkdir()
    return settings


def _owner(settings: Settings, token: str) -> str | None:
    with init_db(make_engine(settings.db_url)).begin() as db:
        return owner_of(db, token, {})


def test_list_shows_owner_and_fingerprint_never_the_token(home, capsys):
    assert main(["token", "create", "alice"]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "list"]) == 0
    out = capsys.readouterr().out
    owner, created, fingerprint = out.strip().split("\t")
    assert owner == "alice" and created.startswith("20") and len(fingerprint) == 12
    assert token not in out and token[4:16] not in out


def test_revoke_by_fingerprint_or_owner(home, capsys):
    tokens = []
    for owner in ("alice", "alice", "bob"):
        main(["token", "create", owner])
        tokens.append(capsys.readouterr().out.strip())
    main(["token", "list"])
    bob_print = next(line.split("\t")[2] for line in capsys.readouterr().out.splitlines() if line.startswith("bob"))
    assert main(["token", "revoke", bob_print]) == 0
    assert f"revoked bob {bob_print}" in capsys.readouterr().out
    assert _owner(home, tokens[2]) is None and _owner(home, tokens[0]) == "alice"
    assert main(["token", "revoke", "alice"]) == 0
    assert [_owner(home, t) for t in tokens] == [None, None, None]
    assert main(["token", "revoke", "carol"]) == 1
    assert "no stored token" in capsys.readouterr().err


def test_mol_up_reuses_one_private_token_and_revokes_older_ones(home):
    sessions = init_db(make_engine(home.db_url))
    with sessions.begin() as db:
        older = create_token(db, LOCAL_OWNER)  # what an earlier `mol up` minted
        other = create_token(db, "alice")
    first = local_token(sessions, home)
    assert local_token(sessions, home) == first  # the next start: the same link
    assert home.local_token_file.read_text().strip() == first
    assert stat.S_IMODE(home.local_token_file.stat().st_mode) == 0o600
    assert _owner(home, first) == LOCAL_OWNER and _owner(home, older) is None
    assert _owner(home, other) == "alice"


def test_mol_up_replaces_a_revoked_stored_token(home):
    sessions = init_db(make_engine(home.db_url))
    first = local_token(sessions, home)
    assert main(["token", "revoke", LOCAL_OWNER]) == 0
    second = local_token(sessions, home)
    assert second != first and _owner(home, second) == LOCAL_OWNER and _owner(home, first) is None


def test_invalid_settings_are_a_clear_error(home, monkeypatch, capsys):
    monkeypatch.setenv("MOL_CORS_ORIGINS", '["*"]')
    assert main(["token", "list"]) == 2
    assert "MOL_CORS_ORIGINS may not contain '*'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["api"], ["token", "list"]])
def test_an_unreachable_database_is_one_line_not_a_traceback(home, monkeypatch, capsys, command):
    monkeypatch.setenv("MOL_DATABASE_URL", "postgresql+psycopg://mol:s3cret@127.0.0.1:1/mol")
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3cret" not in err and "Traceback" not in err, err
    assert err.startswith(f"mol {' '.join(command)}: cannot reach the database at "
                          "postgresql+psycopg://mol:***@127.0.0.1:1/mol: "), err
    assert "refused" in err, err  # the reason, as the driver gives it
