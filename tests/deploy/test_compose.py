"""docker-compose.yml cannot run here (no Docker engine); check that it describes this project faithfully."""

from pathlib import Path

import yaml

from mol_cli.main import build_parser
from store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_service_command_exists_in_the_project():
    services = compose()["services"]
    assert {"api", "worker", "redis", "postgres"} <= services.keys()
    for name in ("api", "worker"):
        command = services[name]["command"]
        assert command[0] == "mol", (name, command)
        assert build_parser().parse_args(command[1:]).command == command[1], (name, command)  # and its arguments


def test_environment_mirrors_the_settings_of_mol_up():
    fields = set(Settings.model_fields)
    for name in ("api", "worker"):
        env = compose()["services"][name]["environment"]
        for key in env:
            assert key.startswith("MOL_") and key.removeprefix("MOL_").lower() in fields, key
        assert env["MOL_BROKER_URL"].startswith("redis://") and env["MOL_DATABASE_URL"].startswith("postgresql")


def test_worker_reserves_a_gpu_and_the_image_copies_existing_paths():
    worker = compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
