"""Queue-server profile configuration: options, command lines, secrets (no processes started)."""

from __future__ import annotations

import pydantic
import pytest
from speckleflow.services.queue import STARTUP_DIR, RedisServer, REManagerProcess
from speckleflow.services.queue.profile import QueueProfileSettings
from speckleflow.services.serve import ServeOptions


@pytest.mark.parametrize(
    "kwargs, match",
    [({"detector_size": 63}, "detector-size"), ({"n_families": 0}, "families"),
     ({"temperature": 0.0}, "temperature"), ({"states_file": "nowhere.npz"}, "states-file")],
)
def test_serve_options_name_the_bad_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServeOptions(**kwargs).validate()


def test_startup_directory_is_shipped():
    assert (STARTUP_DIR / "user_group_permissions.yaml").is_file()
    scripts = sorted(STARTUP_DIR.glob("*.py"))
    assert [p.name for p in scripts] == ["00-speckleflow.py"]


def test_re_manager_command_line_binds_loopback_and_carries_no_key(tmp_path):
    key = "0123456789abcdef-secret"
    manager = REManagerProcess(tmp_path / "queue", tmp_path / "m.log", redis_addr="127.0.0.1:6400",
                               env={"SPECKLEFLOW_API_KEY": key})
    argv = manager.argv()
    assert argv[argv.index("--startup-dir") + 1] == str(STARTUP_DIR)
    assert argv[argv.index("--redis-addr") + 1] == "127.0.0.1:6400"
    assert argv[argv.index("--zmq-control-addr") + 1].startswith("tcp://127.0.0.1:")
    assert argv[argv.index("--existing-plans-devices") + 1].startswith(str(tmp_path))
    assert key not in " ".join(argv)


def test_redis_binds_loopback_and_says_how_to_install(tmp_path):
    redis = RedisServer(tmp_path, tmp_path / "redis.log", executable="no-such-redis-server")
    with pytest.raises(FileNotFoundError, match="apt-get install -y redis-server"):
        redis.argv()
    assert redis.address.startswith("127.0.0.1:")


def test_profile_settings_come_from_the_environment_and_hide_the_key(monkeypatch, tmp_path):
    for name in ("DATA_DIR", "TILED_URI", "API_KEY", "BUS_FRONTEND", "BUS_BACKEND"):
        monkeypatch.delenv(f"SPECKLEFLOW_{name}", raising=False)
    with pytest.raises(pydantic.ValidationError, match="tiled_uri"):
        QueueProfileSettings(data_dir=tmp_path)
    monkeypatch.setenv("SPECKLEFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SPECKLEFLOW_TILED_URI", "http://127.0.0.1:8000")
    monkeypatch.setenv("SPECKLEFLOW_API_KEY", "writer-secret")
    monkeypatch.setenv("SPECKLEFLOW_BUS_FRONTEND", "tcp://127.0.0.1:5567")
    monkeypatch.setenv("SPECKLEFLOW_BUS_BACKEND", "tcp://127.0.0.1:5568")
    monkeypatch.setenv("SPECKLEFLOW_SAMPLE_TEMPERATURE_K", "280")
    s = QueueProfileSettings()
    assert s.sample_temperature_k == 280.0 and s.api_key.get_secret_value() == "writer-secret"
    assert "writer-secret" not in repr(s) and "writer-secret" not in str(s.model_dump())
