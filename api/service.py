"""The service on one machine, as the ``mol`` commands run it: the local owner's token (``mol up``), the demo
built in the background and registered as the owner's datasets, the API served with uvicorn, and the command line
and environment of a Celery worker process (``mol worker``, and the one ``mol up`` supervises).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from store.settings import Settings

from .client import file_sha256

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


def serve_local(host: str, port: int) -> None:
    """``mol up``: the API and dashboard on ``host:port`` with one supervised worker (restarted if it dies) and the
    demo (built in the background when it is not yet); prints the URL with the local owner's token."""
    import uvicorn

    from store.db import open_database

    from .app import create_app
    from .supervisor import Supervisor

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    sessions = open_database(settings.db_url)
    token = local_token(sessions, settings)
    stop_demo = start_demo(sessions, settings, LOCAL_OWNER) if settings.demo_model else lambda: None
    signal.signal(signal.SIGTERM, _end_by_finally)
    worker = Supervisor(worker_command(settings, "local"), env=os.environ.copy(),  # restarted if it dies
                        log=settings.worker_log_file).start()  # its banner and warnings there: the URL ends the output
    try:
        app = create_app(settings)
        _say(f"worker: started; its log: {settings.worker_log_file}")
        print(f"API: Authorization: Bearer {token}   (docs at http://{host}:{port}/docs)", flush=True)
        print(f"MoL Studio is up: http://{host}:{port}/?token={token}", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        stop_demo()  # a background build ends at its next step
        worker.stop()  # SIGTERM, and wait for it (killed after 30 s)


def serve_api(host: str, port: int) -> None:
    """``mol api``: the API alone on ``host:port`` (deployments: the workers run apart)."""
    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(Settings()), host=host, port=port, log_level="info")


def exec_worker(name: str, gpus: str | None = None, procs: int | None = None) -> None:
    """``mol worker``: this process becomes the Celery worker ``name`` with the capacity of :func:`worker_env`
    (ValueError for bad ``gpus``, before anything changes)."""
    os.environ.update(worker_env(gpus, procs))
    os.execv(sys.executable, worker_command(Settings(), name))
