"""The ``mol`` console script: the engine's commands (train, export, demo) plus the service's (up, worker, token).

The engine's CLI (``python -m mol_engine``) knows nothing of the service; this module adds to its parser.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from mol_engine import cli as engine_cli
from mol_engine.spec import MAX_NPROC
from store.settings import Settings

from .client import add_client_parser, file_sha256
from .client import main as client_main

LOCAL_OWNER = "local"


def worker_command(settings: Settings, name: str = "worker") -> list[str]:
    """The command line of one Celery worker process (one job at a time; its capacity, and so the queues it
    consumes, come from ``MOL_WORKER_CAPACITY``: see :func:`worker_env`)."""
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=solo",
            "--loglevel=info", "-n", f"{name}@%h"]


def worker_env(gpus: str | None = None, procs: int | None = None) -> dict[str, str]:
    """The environment a worker gets from ``--gpus 0,1,...`` (those GPUs, capacity one job process per GPU) or
    ``--procs N`` (capacity N processes on whatever devices it has: CPU tests); capacity 1 with neither."""
    if gpus is not None:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"--gpus: expected distinct GPU indices such as 0,1,2,3 (got '{gpus}')")
        return {"CUDA_VISIBLE_DEVICES": ",".join(ids), "MOL_WORKER_CAPACITY": str(len(ids))}
    return {"MOL_WORKER_CAPACITY": str(procs or 1)}



def register_demo_datasets(sessions, settings: Settings, owner: str, source=None) -> None:
    """Make the demo corpora pickable datasets of ``owner`` (once; matched by content hash).

    The files are read from ``source`` (DemoPaths; default ``MOL_HOME/demo``) and the rows point at them through
    ``MOL_HOME/demo`` (a link to the shared build), so a rebuilt demo keeps them valid; outside the dataset store,
    deleting a row leaves its file.
    """
    from mol_engine.demo import DemoPaths
    from store.db import Dataset

    from .checks.dataset_contents import inspect_dataset

    link = settings.home / "demo"
    paths = source or DemoPaths.under(link)
    with sessions.begin() as db:
        known = {(d.sha256, d.purpose) for d in db.query(Dataset).filter(Dataset.owner == owner)}
        for purpose, path in (("domain", paths.domain), ("general", paths.general), ("eval", paths.eval)):
            if not path.is_file():  # deleted by hand (or by an older version's DELETE): offer the others
                print(f"demo {purpose} corpus {path} is missing; delete {paths.root} to rebuild the demo",
                      file=sys.stderr)
                continue
            digest = file_sha256(path)
            if (digest, purpose) in known:
                continue
            documents, tokens = inspect_dataset(path, purpose, path.name, max_bad_lines=settings.max_bad_lines)
            db.add(Dataset(owner=owner, purpose=purpose, filename=f"demo-{path.name}",
                           path=os.path.abspath(link / path.name), bytes=path.stat().st_size, documents=documents,
                           approx_tokens=tokens, sha256=digest))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_demo(sessions, settings: Settings, owner: str, stop: threading.Event | None = None) -> bool:
    """Builds the shared demo (or reuses it, or waits for another process's build), registers its corpora for
    ``owner`` and then links ``MOL_HOME/demo`` to it: the link appearing is the demo becoming ready (GET /v1/demo).
    A failure is reported (the build's progress file says ``failed``) and the service runs on without the demo."""
    from mol_engine.demo import BuildStopped, build_demo, link_demo
    from store.models import demo_dirs

    link, target = demo_dirs(settings)
    try:
        paths = build_demo(target, pretrain_steps=settings.demo_pretrain_steps, log=_say, stop=stop)
        register_demo_datasets(sessions, settings, owner, paths)
        link_demo(link, paths.root)
        return True
    except BuildStopped:
        return False
    except Exception as err:  # the service is useful without the demo (MOL_MODELS_DIR, uploads)
        _say(f"demo: the build failed ({type(err).__name__}: {err}); the service runs without it")
        return False


def start_demo(sessions, settings: Settings, owner: str) -> Callable[[], None]:
    """:func:`prepare_demo` at once when the shared build exists (a second), else in a background thread, so the
    URL and the dashboard come up at once while the demo builds (progress: the terminal and GET /v1/demo).
    Returns what stops that build and waits for it (at its next step: torch must not be running when the
    interpreter exits)."""
    from mol_engine.demo import MARKER, announce_build
    from store.models import demo_dirs

    target = demo_dirs(settings)[1]
    if (target / MARKER).is_file():
        prepare_demo(sessions, settings, owner)
        return lambda: None
    announce_build(target)
    _say("demo: building the demo model in the background (the dashboard shows its progress)")
    stop = threading.Event()
    thread = threading.Thread(target=prepare_demo, args=(sessions, settings, owner, stop), name="demo-build",
                              daemon=True)
    thread.start()

    def stop_and_wait() -> None:
        stop.set()
        thread.join(timeout=60)

    return stop_and_wait


def local_token(sessions, settings: Settings) -> str:
    """The one token of the owner ``local`` for this MOL_HOME: the one kept in ``local_token_file`` while it is
    still valid, else a new one written there (mode 0600). Any other token of ``local`` is revoked."""
    from .auth import keep_one_token

    path = settings.local_token_file
    stored = path.read_text().strip() if path.is_file() else None
    with sessions.begin() as db:
        token = keep_one_token(db, LOCAL_OWNER, stored or None)
    if token != stored:
        _write_private(path, token + "\n")
    return token


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by this user only, replacing it in one step."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _end_by_finally(signum: int, _frame) -> None:
    """SIGTERM ends `mol up` as Ctrl-C does, through its ``finally`` (uvicorn raises SIGTERM again after its own
    graceful shutdown; with the default handler the process would die there, leaving its worker running)."""
    raise SystemExit(0)


def cmd_up(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .supervisor import Supervisor

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    sessions = _sessions(settings)
    token = local_token(sessions, settings)
    stop_demo = start_demo(sessions, settings, LOCAL_OWNER) if settings.demo_model else lambda: None
    signal.signal(signal.SIGTERM, _end_by_finally)
    worker = Supervisor(worker_command(settings, "local"), env=os.environ.copy(),  # restarted if it dies
                        log=settings.worker_log_file).start()  # its banner and warnings there: the URL ends the output
    try:
        app = create_app(settings)
        _say(f"worker: started; its log: {settings.worker_log_file}")
        print(f"API: Authorization: Bearer {token}   (docs at http://{args.host}:{args.port}/docs)", flush=True)
        print(f"MoL Studio is up: http://{args.host}:{args.port}/?token={token}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        stop_demo()  # a background build ends at its next step
        worker.stop()  # SIGTERM, and wait for it (killed after 30 s)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(Settings()), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        os.environ.update(worker_env(args.gpus, args.procs))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = Settings()
    os.execv(sys.executable, worker_command(settings, args.name))
    return 0  # not reached


def _sessions(settings: Settings):
    from store.db import open_database

    return open_database(settings.db_url)


def _database_errors_in_one_line(name: str, command: Callable[[argparse.Namespace], int]):
    """``command``, which prints ``mol <name>: cannot reach the database at …`` and returns 1 when the database
    does not answer at start, instead of raising (a traceback)."""

    def run(args: argparse.Namespace) -> int:
        from store.db import DatabaseUnreachable

        try:
            return command(args)
        except DatabaseUnreachable as err:
            print(f"mol {name}: {err}", file=sys.stderr)
            return 1

    return run


def cmd_token_create(args: argparse.Namespace) -> int:
    from .auth import create_token

    with _sessions(Settings()).begin() as db:
        print(create_token(db, args.owner))
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    """Prints each stored token's owner, creation time and fingerprint (never the token)."""
    from .auth import fingerprint, list_tokens

    with _sessions(Settings()).begin() as db:
        rows = list_tokens(db)
        for row in rows:
            print(f"{row.owner}\t{row.created_at:%Y-%m-%d %H:%M:%S}\t{fingerprint(row)}")
    if not rows:
        print("no stored tokens (tokens in MOL_TOKENS are not listed)", file=sys.stderr)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revokes the tokens of an owner, or the one with a fingerprint; 1 when none matches."""
    from .auth import fingerprint, revoke_tokens

    with _sessions(Settings()).begin() as db:
        try:
            rows = revoke_tokens(db, args.which)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for row in rows:
            print(f"revoked {row.owner} {fingerprint(row)}")
    if not rows:
        print(f"error: no stored token of owner or fingerprint '{args.which}'", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = engine_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("up", help="run the service: API, dashboard and one worker (SQLite + filesystem broker "
                                  "unless MOL_DATABASE_URL / MOL_BROKER_URL say otherwise)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_database_errors_in_one_line("up", cmd_up))
    p = sub.add_parser("api", help="run the API alone (deployments: workers run apart, with `mol worker`)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_database_errors_in_one_line("api", cmd_api))
    p = sub.add_parser("worker", help="run one worker (one job at a time, on up to as many processes as it has GPUs)")
    p.add_argument("--name", default="worker", help="worker name, unique per host")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--gpus", help="the GPUs this worker owns, e.g. 0,1,2,3: it runs jobs with nproc up to "
                                         "their number, one process per GPU (sets CUDA_VISIBLE_DEVICES)")
    capacity.add_argument("--procs", type=int, choices=range(1, MAX_NPROC + 1), metavar="N",
                          help="run jobs with nproc up to N on this machine's devices as they are (CPU: gloo)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("token", help="API tokens")
    token_sub = p.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token for OWNER and print it (stored hashed)")
    create.add_argument("owner")
    create.set_defaults(func=_database_errors_in_one_line("token create", cmd_token_create))
    listing = token_sub.add_parser("list", help="list stored tokens: owner, created, fingerprint")
    listing.set_defaults(func=_database_errors_in_one_line("token list", cmd_token_list))
    revoke = token_sub.add_parser("revoke", help="revoke every token of an owner, or one by its fingerprint")
    revoke.add_argument("which", metavar="OWNER|FINGERPRINT")
    revoke.set_defaults(func=_database_errors_in_one_line("token revoke", cmd_token_revoke))
    add_client_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mol`` console script; 2 with the message when the MOL_* settings are invalid."""
    from pydantic import ValidationError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:  # the client needs nothing of the engine: no transformers to load
        return client_main(argv[1:])
    try:
        return engine_cli.main(argv, parser=build_parser())
    except ValidationError as err:
        if err.title != Settings.__name__:
            raise
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
        print(f"error: invalid MOL_* settings: {problems}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
