"""A torchrun target, ``cancel_cache_rank0.py train SPEC --out OUT``: trains SPEC with a caller that cancels the run
as rank 0 starts building the reference cache (the other rank waits for it); every rank writes how its run ended
to ``OUT/result-RANK``. For tests/engine/test_distributed.py."""

import os
import sys
from pathlib import Path

from mol_engine.callbacks import Callback
from mol_engine.spec import JobSpec
from mol_engine.spec_file import read_spec_file
from mol_engine.train import train


class CancelAtCacheBuild(Callback):
    """Asks the run to stop once the reference cache's build has begun."""

    def __init__(self) -> None:
        self.building = False

    def on_event(self, event: dict) -> None:
        self.building |= event["kind"] == "reference-cache"

    def should_stop(self) -> bool:
        return self.building


spec_path, out = Path(sys.argv[2]), Path(sys.argv[4])
result = train(JobSpec.model_validate(read_spec_file(spec_path)), out, [CancelAtCacheBuild()])
(out / f"result-{os.environ['RANK']}").write_text(result.status)
