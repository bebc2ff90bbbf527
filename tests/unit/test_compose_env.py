"""Every environment variable compose.yaml gives a service is one that service reads.

A variable the code does not read is silently ignored (``SPECKLEFLOW_BUS`` was set for
the queue server, whose profile reads ``SPECKLEFLOW_BUS_FRONTEND`` and
``SPECKLEFLOW_BUS_BACKEND`` — and required them). The names a service reads come from the
code: the pydantic-settings models (``services/settings.py``, the queue profile's), the
command-line options' ``envvar`` of the command the service runs, CURVE's variables, and
the Tiled client library's own ``TILED_API_KEY``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import tiled.client.constructors
import yaml
from speckleflow.services import tiled_app
from speckleflow.services.cli import main as cli
from speckleflow.services.queue.profile import QueueProfileSettings
from speckleflow.services.settings import TiledServerSettings, WorkerSettings, environment_names
from speckleflow.streaming import curve
from typer.main import get_command

ROOT = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
CURVE_ENV = {curve.SECRET_FILE_ENV, curve.SERVER_KEY_FILE_ENV, curve.AUTHORIZED_DIR_ENV}
#: Settings models a ``speckleflow`` sub-command builds (checked against its source below).
COMMAND_SETTINGS = {"worker": (cli.worker_command, WorkerSettings)}


def _tiled_client_env() -> set[str]:
    """Variables the Tiled client reads by itself (from_uri / from_context)."""
    source = inspect.getsource(tiled.client.constructors) + inspect.getsource(tiled.client.context)
    return {name for name in ("TILED_API_KEY",) if name in source}


def _speckleflow_env(args: list[str]) -> set[str]:
    """envvars of the options along the sub-command path, plus the settings it builds."""
    command = get_command(cli.app)
    names = {e for p in command.params for e in _envvars(p)}
    rest = list(args)
    while getattr(command, "commands", None) and rest and rest[0] in command.commands:
        name = rest.pop(0)
        command = command.commands[name]
        names |= {e for p in command.params for e in _envvars(p)}
        if name in COMMAND_SETTINGS:
            function, model = COMMAND_SETTINGS[name]
            assert f"{model.__name__}()" in inspect.getsource(function), f"{name} does not build {model.__name__}"
            names |= environment_names(model)
    if args[:1] == ["worker"]:
        assert "CurveConfig.from_env()" in inspect.getsource(cli.worker_command)
        names |= CURVE_ENV
    return names | _tiled_client_env()


def _envvars(param) -> list[str]:
    envvar = getattr(param, "envvar", None)
    if envvar is None:
        return []
    return [envvar] if isinstance(envvar, str) else list(envvar)


def read_by(argv: list[str]) -> set[str]:
    """The environment variables the program ``argv`` reads."""
    exe, args = argv[0], argv[1:]
    if exe == "speckleflow":
        return _speckleflow_env(args)
    if exe == "start-re-manager":
        startup = args[args.index("--startup-dir") + 1]
        assert startup.endswith("services/queue/startup"), startup
        return environment_names(QueueProfileSettings)
    if exe == "python" and args[:2] == ["-m", "speckleflow.services.tiled_app"]:
        assert "TiledServerSettings()" in inspect.getsource(tiled_app.main)
        return environment_names(TiledServerSettings)
    return set()  # the proxy, dask, redis: no variables of ours


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_variable_compose_sets_is_read_by_the_service(service):
    spec = SERVICES[service]
    env = set(spec.get("environment") or {})
    unread = env - read_by(spec["command"])
    assert not unread, f"{service}: compose sets {sorted(unread)}, which {spec['command'][0]} never reads"


def test_required_settings_of_the_queue_server_are_set():
    env = set(SERVICES["queue-server"]["environment"])
    required = {
        f"SPECKLEFLOW_{name}".upper()
        for name, field in QueueProfileSettings.model_fields.items()
        if field.is_required()
    }
    assert required <= env, f"queue-server lacks {sorted(required - env)}"
    assert tiled_app.KEY_ENV in SERVICES["tiled"]["environment"]


def test_the_check_is_not_vacuous():
    assert "SPECKLEFLOW_BUS" not in read_by(SERVICES["queue-server"]["command"])
    assert {"SPECKLEFLOW_BUS_FRONTEND", "SPECKLEFLOW_DATA_DIR", "SPECKLEFLOW_API_KEY"} <= read_by(
        SERVICES["queue-server"]["command"]
    )
    worker = read_by(SERVICES["worker-fth"]["command"])
    assert {"SPECKLEFLOW_TILED_URI", "SPECKLEFLOW_API_KEY", "SPECKLEFLOW_RCV_QUEUE_MIB"} <= worker
    assert "SPECKLEFLOW_DATA_DIR" not in worker  # the worker has no data directory
    assert read_by(SERVICES["dashboard"]["command"]) >= {"SPECKLEFLOW_API_KEY", "TILED_API_KEY"}
