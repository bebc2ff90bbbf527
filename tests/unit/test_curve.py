"""CURVE encryption of bus links: encrypted frames arrive; a client without the server's key,
or with a key the server does not authorize, gets nothing."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from speckleflow.streaming import (
    BusPublisher,
    BusReceiver,
    CurveConfig,
    FrameMessage,
    HeartbeatMessage,
    ProxyThread,
    make_certificate,
    stop_authenticators,
)
from speckleflow.streaming.curve import AUTHORIZED_DIR_ENV, SECRET_FILE_ENV, SERVER_KEY_FILE_ENV

pytestmark = pytest.mark.timeout(60)

#: How long a client that must get nothing is watched, ms. Absence can only be shown
#: by watching; the authorized client on the same publisher gets every frame meanwhile.
QUIET_MS = 1500


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    stop_authenticators(ctx)
    ctx.term()


@pytest.fixture
def certs(tmp_path):
    server_pub, server_sec = make_certificate(tmp_path / "server", "server")
    authorized = tmp_path / "authorized"
    _, client_sec = make_certificate(authorized, "client")
    _, stranger_sec = make_certificate(tmp_path / "stranger", "stranger")
    return {
        "server_pub": server_pub, "server_sec": server_sec, "authorized": authorized,
        "client_sec": client_sec, "stranger_sec": stranger_sec,
    }


def _until_connected(publisher: BusPublisher, receiver: BusReceiver, timeout_ms: int = 10_000) -> None:
    """Heartbeat until the receiver sees one (PUB/SUB joins late), bounded."""
    waited = 0
    while waited < timeout_ms:
        publisher.heartbeat()
        if isinstance(receiver.recv(timeout_ms=50), HeartbeatMessage):
            return
        waited += 50
    raise TimeoutError("encrypted receiver never saw a heartbeat")


def _frames(receiver: BusReceiver, n: int) -> list[FrameMessage]:
    got: list[FrameMessage] = []
    while len(got) < n:
        message = receiver.recv(timeout_ms=5000)
        assert message is not None, f"only {len(got)} of {n} frames arrived"
        if isinstance(message, FrameMessage):
            got.append(message)
    return got


def _silent(receiver: BusReceiver) -> bool:
    return receiver.recv(timeout_ms=QUIET_MS) is None and receiver.recv(timeout_ms=0) is None


def test_encrypted_publisher_to_subscriber_and_strangers_get_nothing(context, certs):
    server = CurveConfig.from_files(certs["server_sec"], authorized_dir=certs["authorized"])
    client = CurveConfig.from_files(certs["client_sec"], certs["server_pub"])
    publisher = BusPublisher("tcp://127.0.0.1:*", bind=True, context=context, curve=server)
    assert publisher.address.startswith("tcp://127.0.0.1:")
    good = BusReceiver(publisher.address, context=context, curve=client)
    # Knows the server key but is not authorized; knows nothing; speaks plain TCP.
    unauthorized = BusReceiver(
        publisher.address, context=context,
        curve=CurveConfig.from_files(certs["stranger_sec"], certs["server_pub"]),
    )
    wrong_server = BusReceiver(
        publisher.address, context=context,
        curve=CurveConfig.from_files(certs["client_sec"], certs["client_sec"].with_suffix(".key")),
    )
    plain = BusReceiver(publisher.address, context=context)
    try:
        _until_connected(publisher, good)
        frames = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
        for i in range(4):
            publisher.publish_frames("run-1", "ccd", frames + i)
        got = _frames(good, 4)
        for i, message in enumerate(got):
            np.testing.assert_array_equal(message.frames, frames + i)
        assert good.stats()["missed"] == 0
        for name, receiver in (("unauthorized", unauthorized), ("wrong server key", wrong_server), ("plain", plain)):
            assert _silent(receiver), name
            assert receiver.frames == 0 and receiver.heartbeats == 0, name
    finally:
        for receiver in (good, unauthorized, wrong_server, plain):
            receiver.close()
        publisher.close(linger_ms=0)


def test_proxy_with_curve_from_environment(context, certs, monkeypatch):
    """The cross-host shape: CURVE proxy, publisher and worker configured by environment."""
    monkeypatch.setenv(SECRET_FILE_ENV, str(certs["server_sec"]))
    monkeypatch.setenv(AUTHORIZED_DIR_ENV, str(certs["authorized"]))
    proxy_curve = CurveConfig.from_env()
    monkeypatch.setenv(SECRET_FILE_ENV, str(certs["client_sec"]))
    monkeypatch.setenv(SERVER_KEY_FILE_ENV, str(certs["server_pub"]))
    monkeypatch.delenv(AUTHORIZED_DIR_ENV)
    client = CurveConfig.from_env()
    assert client is not None and client.server_public_key is not None
    assert client.secret_key not in repr(client).encode()  # repr never shows the secret key

    with ProxyThread(context=context, curve=proxy_curve) as proxy:
        publisher = BusPublisher(proxy.frontend_address, context=context, curve=client)
        receiver = BusReceiver(proxy.backend_address, context=context, curve=client)
        stranger = BusReceiver(
            proxy.backend_address, context=context,
            curve=CurveConfig.from_files(certs["stranger_sec"], certs["server_pub"]),
        )
        try:
            _until_connected(publisher, receiver)
            publisher.publish_frames("run-2", "ccd", np.ones((2, 8, 8), np.float32))
            (message,) = _frames(receiver, 1)
            assert message.frames.shape == (2, 8, 8) and float(message.frames.sum()) == 128.0
            assert _silent(stranger)
        finally:
            for s in (publisher, receiver, stranger):
                s.close()


def test_no_curve_without_environment_and_bad_files_are_named(tmp_path, certs, context):
    assert CurveConfig.from_env({}) is None
    with pytest.raises(ValueError, match="no secret key"):
        CurveConfig.from_files(certs["server_pub"])
    with pytest.raises(ValueError, match="does not exist"):
        CurveConfig.from_files(tmp_path / "missing.key_secret")
    socket = context.socket(zmq.SUB)
    try:
        with pytest.raises(ValueError, match="server's public key"):
            CurveConfig.from_files(certs["client_sec"]).secure_client(socket)
    finally:
        socket.close(linger=0)
