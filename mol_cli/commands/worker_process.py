"""``mol worker``: this process becomes one Celery worker (one job at a time, on up to as many processes as it has
GPUs, or ``--procs``)."""

from __future__ import annotations

import argparse
import sys

from ..subcommand import Subparsers


def run(args: argparse.Namespace) -> int:
    from api.service import exec_worker

    try:
        exec_worker(args.name, args.gpus, args.procs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0  # not reached: the process is the worker now


def register(subparsers: Subparsers) -> None:
    from mol_engine.spec import MAX_NPROC

    p = subparsers.add_parser("worker", help="run one worker (one job at a time, on up to as many processes as it "
                                             "has GPUs)")
    p.add_argument("--name", default="worker", help="worker name, unique per host")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--gpus", help="the GPUs this worker owns, e.g. 0,1,2,3: it runs jobs with nproc up to "
                                         "their number, one process per GPU (sets CUDA_VISIBLE_DEVICES)")
    capacity.add_argument("--procs", type=int, choices=range(1, MAX_NPROC + 1), metavar="N",
                          help="run jobs with nproc up to N on this machine's devices as they are (CPU: gloo)")
    p.set_defaults(func=run)
