"""The run directory's layout: how checkpoint names parse, where each path is, and that no other module spells it."""

import re
from pathlib import Path

import pytest

from mol_engine.run_dir import (
    STATE_FILE,
    RunDir,
    checkpoint_names,
    is_step_name,
    step_name,
    step_of,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mol_engine", "store", "api", "worker", "mol_cli", "bench")
ENGINE_OWNER, SERVICE_OWNER = Path("mol_engine/run_dir.py"), Path("store/settings.py")
# each a way to spell a checkpoint's name or a run directory's path by hand -> (its pattern, the one file that may)
FORBIDDEN = {
    "a step name built by hand": (re.compile(r"step-\{"), ENGINE_OWNER),
    "the step prefix as a string": (re.compile(r"""["']\.?step-["']"""), ENGINE_OWNER),
    "a step name as a regex": (re.compile(r"step-\\d"), ENGINE_OWNER),
    "a step parsed by splitting": (re.compile(r"""split\(["']-["']\)\[1\]"""), ENGINE_OWNER),
    "the checkpoints folder by hand": (re.compile(r"""["']checkpoints["']\s*/|/\s*["']checkpoints["']"""),
                                       ENGINE_OWNER),
    "a run directory's file by name": (
        re.compile(r"""["'](best\.json|metrics\.jsonl|events\.jsonl|trainer_state\.json)["']"""), ENGINE_OWNER),
    "a job's run directory by hand (settings.run_dir)": (re.compile(r"runs_dir\s*/"), SERVICE_OWNER),
}


@pytest.mark.parametrize(("name", "step"), [
    ("step-0", 0), ("step-12", 12),
    ("step-x", None), ("best", None), ("base", None), ("step-", None), ("step--1", None), ("step-1.5", None),
    (".step-3-abcd", None), (".step-3-shards", None), ("xstep-3", None), ("step-3x", None),
])
def test_step_names_parse_to_their_step_and_nothing_else_does(name, step):
    assert step_of(name) == step
    assert is_step_name(name) == (step is not None)


def test_a_step_name_round_trips_and_a_path_parses_by_its_last_part():
    assert step_name(0) == "step-0" and step_of(step_name(12)) == 12
    assert step_of(Path("runs/job/checkpoints/step-7")) == 7
    assert step_of(Path("runs/step-7/checkpoints/best")) is None


def test_checkpoint_names_keeps_step_names_by_step():
    assert checkpoint_names(["step-10", "best", "step-2", "step-x", "base", "step-0"]) == ["step-0", "step-2",
                                                                                           "step-10"]
    assert checkpoint_names([]) == []


def test_the_paths_of_a_run(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint(3) == run.checkpoint("step-3") == tmp_path / "checkpoints" / "step-3"
    assert run.metrics_file == tmp_path / "metrics.jsonl" and run.events_file == tmp_path / "events.jsonl"
    assert run.best_file == tmp_path / "best.json"
    assert RunDir.holding(run.checkpoint(3)) == run
    assert RunDir.holding(tmp_path / "step-3") is None


@pytest.mark.parametrize("name", ["best", "step-x", "../../etc", "step-1/../../x", ""])
def test_a_checkpoint_is_named_by_its_step_only(tmp_path, name):
    with pytest.raises(ValueError, match="not a checkpoint name"):
        RunDir(tmp_path).checkpoint(name)


def test_checkpoint_dirs_lists_complete_checkpoints_by_step_not_by_text(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint_dirs() == [] and run.latest_checkpoint() is None and run.scratch_dirs() == []
    for step in (10, 9, 2):
        run.checkpoint(step).mkdir(parents=True)
        (run.checkpoint(step) / STATE_FILE).write_text("{}")
    run.checkpoint(11).mkdir()  # no state file: incomplete
    (run.checkpoints / f"{run.scratch_prefix(12)}abcd").mkdir()  # being written
    (run.checkpoints / "best").mkdir()
    assert [p.name for p in run.checkpoint_dirs()] == ["step-2", "step-9", "step-10"]
    assert [p.name for p in run.scratch_dirs()] == [".step-12-abcd"]
    (run.checkpoint(10) / STATE_FILE).write_text("{trunc")  # unreadable: never resumed from
    assert run.latest_checkpoint() == run.checkpoint(9)


def offenders(files: list[Path]) -> list[str]:
    """``file:line: what`` for each line of ``files`` that spells the run directory's layout by hand."""
    found = []
    for path in files:
        name = path.relative_to(ROOT)
        rules = [(what, pattern) for what, (pattern, owner) in FORBIDDEN.items() if name != owner]
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{name}:{number}: {what}: {line.strip()}" for what, pattern in rules if pattern.search(line)]
    return found


def test_the_grep_finds_each_spelling(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    sample = tmp_path / "sample.py"
    sample.write_text('a = f"step-{n}"\nb = name.removeprefix("step-")\nc = int(p.name.split("-")[1])\n'
                      'd = run / "checkpoints" / name\ne = re.fullmatch(r"step-\\d+", name)\nf = out / "best.json"\n'
                      'g = tempfile.mkdtemp(prefix=f".step-{n}-")\nh = settings.runs_dir / job_id\n'
                      'i = "step-N in a docstring is fine"\n')
    assert [hit.split(": ")[0] for hit in offenders([sample])] == [f"sample.py:{n}" for n in range(1, 9)]


def test_only_the_run_dir_module_spells_the_layout():
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert files, "no source files found"
    found = offenders(files)
    assert not found, "spell these through mol_engine.run_dir:\n" + "\n".join(found)
