"""One rank of a several-process job, started by the runner under torchrun:
``python -m worker.ranks JOB_ID LEASE_OWNER REPORT``.

Every rank trains; the engine hands callbacks to rank 0 only, so rank 0 alone records metrics and events and
reads the cancel flag (the engine broadcasts its decision to stop). The lease and its heartbeat stay with the
runner (LEASE_OWNER). Rank 0 writes how the run ended to REPORT as JSON (``status``, and ``error`` with
``peer_lost`` when it failed), and the runner turns that into the job's state.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mol_engine.callbacks import ConsoleLogger
from store.db import Job, sessions_for
from store.settings import Settings

from .runner import DatabaseRecorder, owner_dataset_names, relabel, resolve_spec


def lost_a_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another rank is gone (not a fault of the job itself)."""
    import torch.distributed as dist

    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe"))


def write_rank_result(path: Path, result: dict) -> None:
    """Writes the main rank's ``result`` (its status, or its error) to ``path`` in one step, for the runner that
    started the ranks (it never reads half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


def main(job_id: str, lease_owner: str, report: Path) -> int:
    from mol_engine.train import train

    settings = Settings()
    sessions = sessions_for(settings.db_url)
    with sessions() as db:
        job = db.get(Job, job_id)
    labels = owner_dataset_names(sessions, job.owner)
    is_main = os.environ.get("RANK", "0") == "0"
    recorder = DatabaseRecorder(sessions, job_id, lease_owner, None, labels, settings) if is_main else None
    try:
        spec = resolve_spec(sessions, job, settings)
        callbacks = [recorder, ConsoleLogger()] if recorder else []
        result = train(spec, settings.run_dir(job_id).path, callbacks, resume=True)
    except Exception as err:  # the runner decides: fail the job, or resume it when a peer was lost
        if is_main:
            write_rank_result(report, {"status": "error", "peer_lost": lost_a_peer(err),
                                  "error": relabel(f"{type(err).__name__}: {err}", labels)})
        raise
    if is_main:
        write_rank_result(report, {"status": result.status, "reason": result.reason})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
