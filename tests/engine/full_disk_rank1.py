"""A torchrun target: the engine's CLI with rank 1's disk full from its third safetensors file (its RNG file of
step-3 in a one-checkpoint-per-step FSDP run), for tests/engine/test_sharded_checkpoint.py."""

import errno
import os
import sys

from mol_cli.main import main
from mol_engine import checkpoint

real_save_file, calls = checkpoint.save_file, []


def fills_up(*args, **kwargs) -> None:
    calls.append(args[1])
    if os.environ["RANK"] == "1" and len(calls) > 2:  # one RNG file per checkpoint and rank: step-1, step-2 fit
        raise OSError(errno.ENOSPC, "No space left on device")
    real_save_file(*args, **kwargs)


checkpoint.save_file = fills_up
sys.exit(main(sys.argv[1:]))
