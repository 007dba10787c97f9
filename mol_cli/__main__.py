"""``python -m mol_cli``: the ``mol`` command, also as torchrun's target (``torchrun ... -m mol_cli train ...``)."""

import os
import sys

from .main import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun a rank whose run is over (every rank past the final barrier, everything written) skips the
    # interpreter's teardown, where the process group's C++ threads can abort it: "terminate called without an
    # active exception", exit -6, and torchrun then reports a finished run as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
