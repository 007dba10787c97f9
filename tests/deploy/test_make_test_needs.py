"""The README says what `make test` needs from the machine: each tool its scripts call that the Python setup does not
install (a user without them learns it before the run, not from a failure half-way)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_names_what_each_script_of_make_test_needs():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    scripts = re.findall(r"bash (scripts/[\w-]+)", recipe)
    assert scripts == ["scripts/start-services", "scripts/ensure-chromium", "scripts/ensure-firefox"]
    section = (ROOT / "README.md").read_text().split("### What `make test` needs", 1)[1].split("\n### ", 1)[0]
    for script in scripts:
        assert script in section
    needs = {"scripts/start-services": ["redis-server", "pg_ctlcluster"], "scripts/ensure-chromium": ["apt-get"],
             "scripts/ensure-firefox": ["apt-get", "npm ci"]}
    for script, tools in needs.items():
        assert all(tool in (ROOT / script).read_text() for tool in tools), script
    for named in ("Node.js", "npm", "root", "sudo apt-get install chromium firefox-esr", "Redis", "PostgreSQL",
                  "MOL_TEST_REDIS_DB", "--ignore=tests/e2e"):
        assert named in section, named
