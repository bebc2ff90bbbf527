"""Safe by default: every socket and server binds 127.0.0.1 unless configured otherwise.

Three checks: every place in the code that binds (found by reading the source, so a new
one fails here until it is reviewed and listed), every default bind address or host
(parameters, dataclass fields, settings, argparse options, module constants), and the
endpoints the defaults actually resolve to.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import speckleflow.devices
import speckleflow.plans
import speckleflow.services
import speckleflow.streaming

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (speckleflow.streaming, speckleflow.services, speckleflow.devices, speckleflow.plans)
LOOPBACK = "127.0.0.1"

#: Every function that calls ``.bind(...)`` / ``uvicorn.run(host=...)``, and where its
#: address comes from. A new bind site fails the test until it is added here.
BIND_SITES = {
    ("streaming/proxy.py", "_bind_pair"): "frontend/backend of run_proxy / ProxyThread",
    ("streaming/proxy.py", "ProxyThread._run"): "inproc control socket (no network)",
    ("streaming/publisher.py", "BusPublisher.__init__"): "address, only with bind=True",
    ("streaming/publisher.py", "StatusCollector.__init__"): "address, default loopback",
    ("services/processes.py", "free_tcp_port"): "host, default loopback (probe only)",
    ("services/tiled_app.py", "main"): "--host, default loopback (uvicorn)",
    ("services/dashboard/app.py", "serve"): "host, default loopback (uvicorn)",
}

ADDRESS_NAMES = {"address", "frontend", "backend", "host", "bind_host", "DEFAULT_FRONTEND", "DEFAULT_BACKEND"}


_NETWORK = re.compile(r"(tcp://|\d+\.\d+\.\d+\.\d+|localhost|\[?::|\*$)")


def _host_of(value: str) -> str:
    """The host part of ``tcp://HOST:PORT`` or a bare host."""
    m = re.fullmatch(r"(?:tcp://)?\[?([^\]/]+?)\]?(?::(?:\d+|\*))?", value)
    assert m, f"unrecognised address {value!r}"
    return m.group(1)


def _modules():
    for package in PACKAGES:
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


def _source_files():
    for folder in ("streaming", "services", "devices", "plans"):
        yield from sorted((ROOT / folder).rglob("*.py"))


class _BindFinder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.stack: list[str] = []
        self.sites: set[str] = set()

    def _scoped(self, node) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        is_uvicorn = name == "run" and any(k.arg == "host" for k in node.keywords)
        if name in ("bind", "bind_to_random_port") or is_uvicorn:
            self.sites.add(".".join(self.stack))
        self.generic_visit(node)


def test_every_bind_site_is_known():
    found = set()
    for path in _source_files():
        finder = _BindFinder()
        finder.visit(ast.parse(path.read_text(), str(path)))
        found |= {(path.relative_to(ROOT).as_posix(), site) for site in finder.sites}
    assert found == set(BIND_SITES), (
        f"new bind sites {sorted(found - set(BIND_SITES))}: make them default to {LOOPBACK} "
        f"and list them in BIND_SITES; gone: {sorted(set(BIND_SITES) - found)}"
    )


def test_every_default_address_is_loopback():
    checked: dict[str, str] = {}

    def check(where: str, value: object) -> None:
        # Only network addresses (a `backend` may also be an FFT library's name).
        if isinstance(value, str) and _NETWORK.match(value):
            checked[where] = value
            assert _host_of(value) == LOOPBACK, f"{where} defaults to {value!r}"

    for module in _modules():
        for name, value in vars(module).items():
            if name in ADDRESS_NAMES:
                check(f"{module.__name__}.{name}", value)
            if getattr(value, "__module__", None) != module.__name__:
                continue
            functions = [value] if inspect.isfunction(value) else []
            if inspect.isclass(value):
                functions += [f for f in vars(value).values() if inspect.isfunction(f)]
                if dataclasses.is_dataclass(value):
                    for field in dataclasses.fields(value):
                        if field.name in ADDRESS_NAMES:
                            check(f"{value.__qualname__}.{field.name}", field.default)
                for fname, field in getattr(value, "model_fields", {}).items():  # pydantic settings
                    if fname in ADDRESS_NAMES:
                        check(f"{value.__qualname__}.{fname}", field.default)
            for function in functions:
                for pname, param in inspect.signature(function).parameters.items():
                    if pname in ADDRESS_NAMES:
                        check(f"{function.__qualname__}({pname})", param.default)

    # Command-line defaults of the processes that bind.
    from speckleflow.services import tiled_app
    from speckleflow.streaming import proxy

    for mod in (tiled_app, proxy):
        captured: dict[str, argparse.Namespace] = {}
        original = argparse.ArgumentParser.parse_args

        def spy(self, args=None, namespace=None, _c=captured, _o=original):
            _c["defaults"] = argparse.Namespace(**{a.dest: a.default for a in self._actions})
            raise SystemExit(0)

        argparse.ArgumentParser.parse_args = spy
        try:
            with pytest.raises(SystemExit):
                mod.main([])
        finally:
            argparse.ArgumentParser.parse_args = original
        for dest in ("host", "frontend", "backend"):
            if hasattr(captured["defaults"], dest):
                check(f"{mod.__name__} --{dest}", getattr(captured["defaults"], dest))

    print("\n".join(f"{k} = {v}" for k, v in sorted(checked.items())))
    expected = {
        "speckleflow.streaming.proxy.DEFAULT_FRONTEND",
        "ProxyThread.__init__(frontend)",
        "StatusCollector.__init__(address)",
        "Settings.bind_host",
        "EmbeddedTiled.__init__(host)",
        "LiveSession.__init__(host)",
        "free_tcp_port(host)",
        "speckleflow.services.tiled_app --host",
        "speckleflow.streaming.proxy --frontend",
    }
    assert expected <= set(checked), sorted(expected - set(checked))


def test_defaults_resolve_to_loopback():
    from speckleflow.streaming import ProxyThread, StatusCollector

    with ProxyThread() as proxy, StatusCollector() as collector:
        for endpoint in (proxy.frontend_address, proxy.backend_address, collector.address):
            assert _host_of(endpoint) == LOOPBACK, endpoint
