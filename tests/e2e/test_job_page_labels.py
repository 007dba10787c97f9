"""The job page's labels, as pure rules in node: what a checkpoint's download buttons say (full weights: one
"Download"; a LoRA checkpoint: merged and adapter)."""

from __future__ import annotations

import json
import subprocess

from test_dashboard import FRONTEND

RULES = """
globalThis.window = { uPlot: { rangeNum: (a, b) => [a, b], rangeLog: (a, b) => [a, b] } };
const { downloadChoices } = await import(`${process.argv[1]}/views/job.js`);
console.log(JSON.stringify({ downloads: { full: downloadChoices("full"), adapter: downloadChoices("adapter") } }));
"""


def rules() -> dict:
    run = subprocess.run(["node", "--input-type=module", "-e", RULES, str(FRONTEND)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_a_full_checkpoint_is_offered_as_download_and_a_lora_one_as_merged_and_adapter():
    downloads = rules()["downloads"]
    assert downloads["full"] == [["merged", "Download"]]  # full weights: nothing was merged
    assert downloads["adapter"] == [["merged", "Download merged"], ["adapter", "Download adapter"]]
