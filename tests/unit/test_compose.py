"""compose.yaml: valid against the Compose Specification schema, every command a real entry
point with real options, healthchecks behind every `service_healthy`, no literal secrets."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shutil
import sysconfig
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner as ClickRunner
from typer.main import get_command
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"  # see its README
IMAGE_ROOT = "/opt/speckleflow"  # Dockerfile WORKDIR: the repository is copied there

#: Entry points that other branches add; until they land here they are allowed to be
#: missing (once present they are checked like every other command).
PENDING: dict[tuple[str, ...], str] = {}  # commands still to land from another branch (none now)
#: Services from upstream images, not this package's.
EXTERNAL = {"redis"}
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN")
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict[str, dict]:
    return _compose()["services"]


def _interpolate(text: str) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} with the variables unset: defaults,
    or a placeholder naming the variable."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else f"<{m.group(1)}>", text)


def _commands() -> list[tuple[str, str, list[str]]]:
    """(service, what, argv) for every command and CMD healthcheck of our image's services."""
    out = []
    for name, service in _services().items():
        if name in EXTERNAL:
            continue
        command = service.get("command")
        assert isinstance(command, list), f"{name}: use the exec form (a list) for command"
        out.append((name, "command", [_interpolate(a) for a in command]))
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"{name}: healthcheck should exec (CMD), not a shell"
            out.append((name, "healthcheck", [_interpolate(a) for a in test[1:]]))
    return out


def _flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def _not_in_help(flags: set[str], help_text: str) -> set[str]:
    return {f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", help_text)}


def _click_check(command, path: list[str], argv: list[str], invoke_help) -> None:
    """Walk sub-commands along argv; the options used must exist on the command reached,
    whose ``--help`` must work (click, or typer's vendored click: duck-typed)."""
    rest = list(argv)
    walked: list[str] = []
    while getattr(command, "commands", None) and rest and rest[0] in command.commands:
        walked.append(rest[0])
        command = command.commands[rest.pop(0)]
    where = " ".join(path + walked)
    if getattr(command, "commands", None):
        pytest.fail(f"{where}: no sub-command {rest[:1]} (has {sorted(command.commands)})")
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    unknown = _flags(rest) - known
    assert not unknown, f"{where} has no option(s) {sorted(unknown)}"
    result = invoke_help(walked)
    assert result.exit_code == 0, result.output


def _argparse_help(main) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


def _pending(key: tuple[str, ...]) -> bool:
    if key in PENDING:
        print(f"pending: {' '.join(key)} — provided by {PENDING[key]}")
        return True
    return False


def _check_command(service: str, argv: list[str]) -> None:
    exe, args = argv[0], argv[1:]
    for arg in args:  # paths inside the image must exist in the repository
        if arg.startswith(IMAGE_ROOT + "/") and not (ROOT / arg[len(IMAGE_ROOT) + 1 :]).exists():
            assert _pending((arg,)), f"{service}: {arg} is not in the repository"
    if exe == "python":
        if args[0] == "-c":
            compile(args[1], f"<{service} healthcheck>", "exec")
            return
        assert args[0] == "-m", f"{service}: python {args[0]}"
        module = importlib.import_module(args[1])
        help_text = _argparse_help(module.main)
        unknown = _not_in_help(_flags(args[2:]), help_text)
        assert not unknown, f"{service}: python -m {args[1]} has no option(s) {sorted(unknown)}"
        return
    (script,) = entry_points(group="console_scripts", name=exe) or [None]
    if script is None:
        assert _pending((exe,)), f"{service}: {exe} is no console script of this package or a dependency"
        return
    if exe == "speckleflow":
        from speckleflow.services.cli.main import app

        group = get_command(app)
        if args and args[0] not in group.commands:
            assert _pending((exe, args[0])), f"{service}: speckleflow has no command {args[0]!r}"
            return
        _click_check(group, [exe], args, lambda walked: CliRunner().invoke(app, [*walked, "--help"]))
    elif exe == "dask":
        (sub,) = entry_points(group="dask_cli", name=args[0]) or [None]
        assert sub is not None, f"{service}: dask has no sub-command {args[0]!r}"
        command = sub.load()
        _click_check(command, [exe, args[0]], args[1:], lambda walked: ClickRunner().invoke(command, ["--help"]))
    else:  # another console script: its --help must list the options used
        # this interpreter's scripts directory first: the venv need not be activated
        search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
        path = shutil.which(exe, path=search)
        assert path, f"{exe} is a console script but not on PATH"
        help_text = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60, check=False).stdout
        unknown = _not_in_help(_flags(args), help_text)
        assert not unknown, f"{service}: {exe} has no option(s) {sorted(unknown)}"


_COMMANDS = _commands()


def test_compose_validates_against_the_compose_spec_schema():
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    validator_class = jsonschema.Draft7Validator
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_check_is_not_vacuous():
    schema = json.loads(SCHEMA.read_text())
    bad = _compose()
    bad["services"]["tiled"]["depends_on"] = {"proxy": {"condition": "when_ready"}}
    bad["services"]["proxy"]["helthcheck"] = {}
    validator = jsonschema.Draft7Validator(schema)
    assert len(list(validator.iter_errors(bad))) >= 2


def test_the_deployment_has_every_part():
    services = _services()
    commands = {name: " ".join(s.get("command", [])) for name, s in services.items()}
    assert "speckleflow.services.tiled_app" in commands["tiled"]
    assert commands["queue-server"].startswith("start-re-manager")
    assert "--redis-addr redis:6379" in commands["queue-server"]
    assert "speckleflow.streaming.proxy" in commands["proxy"]
    for kind in ("fth", "cci"):  # one service per worker type
        assert commands[f"worker-{kind}"].startswith(f"speckleflow worker {kind} ")
    assert commands["dask-scheduler"].startswith("dask scheduler")
    assert commands["dask-worker"].startswith("dask worker tcp://dask-scheduler:8786")
    assert "--scheduler tcp://dask-scheduler:8786" in commands["process-cci"]
    assert commands["dashboard"].startswith("speckleflow dashboard --tiled-uri http://tiled:8000")
    # Tiled: catalog database, writable and readable storage on volumes.
    mounts = {v.split(":")[1]: v for v in services["tiled"]["volumes"]}
    assert set(mounts) == {"/data", "/data/files", "/data/detector"}
    assert mounts["/data/detector"].endswith(":ro")
    assert set(_compose()["volumes"]) >= {v.split(":")[0] for v in services["tiled"]["volumes"]}
    # Published ports only on the host's loopback.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_dependencies_exist_and_wait_for_health():
    services = _services()
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health; it has no healthcheck"
    for name in ("worker-fth", "worker-cci", "queue-server", "dashboard", "process-cci"):
        assert services[name]["depends_on"]["tiled"]["condition"] == "service_healthy", name


def test_secrets_come_from_the_environment_only():
    text = COMPOSE.read_text()
    assert not re.search(r"\b[0-9a-fA-F]{32,}\b", text), "a literal key in compose.yaml"
    services = _services()
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(var):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {var} must be ${{VAR:?...}}"
    env = {n: s.get("environment") or {} for n, s in services.items()}
    assert env["tiled"]["SPECKLEFLOW_TILED_API_KEY"].startswith("${SPECKLEFLOW_API_KEY:?")
    assert env["tiled"]["SPECKLEFLOW_TILED_READ_API_KEY"].startswith("${SPECKLEFLOW_READ_API_KEY:?")
    # The dashboard never sees the writer key; workers and processing use it.
    assert "SPECKLEFLOW_API_KEY:?" not in json.dumps(env["dashboard"])
    assert all("SPECKLEFLOW_READ_API_KEY" in v for v in env["dashboard"].values())
    for name in ("worker-fth", "worker-cci", "process-cci", "queue-server"):
        assert env[name]["SPECKLEFLOW_API_KEY"].startswith("${SPECKLEFLOW_API_KEY:?"), name


def test_external_services_are_pinned_images():
    for name, service in _services().items():
        if "build" in service:
            assert name not in EXTERNAL
        else:
            assert name in EXTERNAL, f"{name} has no build: list it in EXTERNAL or build it"
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]), service["image"]


@pytest.mark.parametrize(("service", "what", "argv"), _COMMANDS, ids=[f"{s}-{w}" for s, w, _ in _COMMANDS])
def test_every_command_resolves(service, what, argv):
    _check_command(service, argv)
