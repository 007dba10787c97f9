"""A torchrun target: the engine's CLI with rank 0's reference-cache build taking 8 s more than it does, for
tests/engine/test_distributed.py (with MOL_DIST_TIMEOUT_S=5: no rank may wait for the build in a collective)."""

import os
import sys
import time

from mol_cli.main import main
from mol_engine import train

real_load_or_build = train.load_or_build


def slow_on_rank_0(*args, **kwargs):
    if os.environ.get("RANK") == "0":
        time.sleep(8)
    return real_load_or_build(*args, **kwargs)


train.load_or_build = slow_on_rank_0
sys.exit(main(sys.argv[1:]))
