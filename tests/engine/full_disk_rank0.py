"""A torchrun target: the engine's CLI with rank 0's disk full from its fifth safetensors file (step-3 of a
one-checkpoint-per-step run), for tests/engine/test_distributed.py."""

import errno
import sys

from mol_cli.main import main
from mol_engine import checkpoint

real_save_file, calls = checkpoint.save_file, []


def fills_up(*args, **kwargs) -> None:
    calls.append(args[1])
    if len(calls) > 4:  # two files per checkpoint: step-1 and step-2 fit
        raise OSError(errno.ENOSPC, "No space left on device")
    real_save_file(*args, **kwargs)


checkpoint.save_file = fills_up
sys.exit(main(sys.argv[1:]))
