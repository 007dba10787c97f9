"""The ``mol`` console script: the engine's commands (train, export, demo) plus the service's (up, worker, token).

The engine's CLI (``python -m mol_engine``) knows nothing of the service; this module adds to its parser.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from mol_engine import cli as engine_cli

from .settings import Settings

LOCAL_OWNER = "local"


def worker_command(settings: Settings, name: str = "worker") -> list[str]:
    """The command line of one Celery worker process (one job at a time)."""
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
            "--loglevel=info", "-n", f"{name}@%h"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register_demo_datasets(sessions, settings: Settings, owner: str) -> None:
    """Make the demo corpora pickable datasets of ``owner`` (once; matched by content hash)."""
    from mol_engine.demo import DemoPaths

    from .db import Dataset
    from .validation import inspect_dataset

    paths = DemoPaths.under(settings.home / "demo")
    with sessions.begin() as db:
        known = {(d.sha256, d.purpose) for d in db.query(Dataset).filter(Dataset.owner == owner)}
        for purpose, path in (("domain", paths.domain), ("general", paths.general), ("eval", paths.eval)):
            digest = _sha256(path)
            if (digest, purpose) in known:
                continue
            documents, tokens = inspect_dataset(path, purpose, path.name)
            db.add(Dataset(owner=owner, purpose=purpose, filename=f"demo-{path.name}", path=str(path.resolve()),
                           bytes=path.stat().st_size, documents=documents, approx_tokens=tokens, sha256=digest))


def cmd_up(args: argparse.Namespace) -> int:
    import uvicorn

    from mol_engine.demo import build_demo

    from .app import create_app
    from .auth import create_token
    from .db import init_db, make_engine

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.demo_model:
        build_demo(settings.home / "demo", pretrain_steps=settings.demo_pretrain_steps,
                   log=lambda m: print(m, file=sys.stderr))
    sessions = init_db(make_engine(settings.db_url))
    with sessions.begin() as db:
        token = create_token(db, LOCAL_OWNER)
    if settings.demo_model:
        register_demo_datasets(sessions, settings, LOCAL_OWNER)
    worker = subprocess.Popen(worker_command(settings, "local"), env=os.environ.copy())
    app = create_app(settings)
    print(f"MoL Studio is up: http://{args.host}:{args.port}/?token={token}", flush=True)
    print(f"API: Authorization: Bearer {token}   (docs at http://{args.host}:{args.port}/docs)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(Settings()), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings()
    os.execv(sys.executable, worker_command(settings, args.name))
    return 0  # not reached


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import create_token
    from .db import init_db, make_engine

    sessions = init_db(make_engine(Settings().db_url))
    with sessions.begin() as db:
        print(create_token(db, args.owner))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = engine_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("up", help="run the service: API, dashboard and one worker (SQLite + filesystem broker "
                                  "unless MOL_DATABASE_URL / MOL_BROKER_URL say otherwise)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("api", help="run the API alone (deployments: workers run apart, with `mol worker`)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_api)
    p = sub.add_parser("worker", help="run one worker (one job at a time; set CUDA_VISIBLE_DEVICES per GPU)")
    p.add_argument("--name", default="worker", help="worker name, unique per host")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("token", help="API tokens")
    token_sub = p.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a token for OWNER and print it (stored hashed)")
    create.add_argument("owner")
    create.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mol`` console script."""
    return engine_cli.main(argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
