"""The service starts without the model libraries: `mol`, the API and the worker load torch and transformers only
when a job, a generation or an export needs them (importing torch takes seconds, paid at every start), and so does
`mol up` finding the demo already built (mol_engine.demo: its build needs them, reusing one does not)."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "safetensors", "peft")
STARTUP = """
import contextlib, io, sys
import api.app, mol_cli.main, worker.tasks, mol_engine.demo
mol_engine.demo.build_versions()
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    mol_cli.main.main(["--version"])
print(out.getvalue().strip())
print(" ".join(sys.modules))
"""


def test_the_api_the_cli_and_the_worker_import_no_model_library():
    version, loaded = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True,
                                     check=True).stdout.splitlines()
    modules = set(loaded.split())
    assert version.startswith("mol ")
    assert {"api.app", "api.routes.completions", "worker.tasks", "mol_engine.demo"} <= modules
    assert not sorted(m for m in modules if m.split(".")[0] in HEAVY)
