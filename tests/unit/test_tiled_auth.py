"""Provisioning of the writer and read-only keys in Tiled's authentication database."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from speckleflow.services.tiled_auth import (
    READER,
    READER_SCOPES,
    WRITER,
    WRITER_SCOPES,
    check_key,
    provision_api_keys,
)


def _lookup(uri: str, key: str) -> tuple[set[str], int] | None:
    """Scopes and principal id Tiled resolves for `key` (its own lookup), or None."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from tiled.authn_database.core import lookup_valid_api_key
    from tiled.utils import ensure_specified_sql_driver

    async def lookup():
        engine = create_async_engine(ensure_specified_sql_driver(uri))
        try:
            async with AsyncSession(engine) as db:
                row = await lookup_valid_api_key(db, bytes.fromhex(key))
                return None if row is None else (set(row.scopes), row.principal_id)
        finally:
            await engine.dispose()

    return asyncio.run(lookup())


def test_keys_get_their_scopes_and_rotate(tmp_path):
    uri = f"sqlite:///{tmp_path / 'authn.db'}"
    writer, reader = secrets.token_hex(16), secrets.token_hex(16)
    provision_api_keys(uri, {WRITER: writer, READER: reader})
    w, r = _lookup(uri, writer), _lookup(uri, reader)
    assert w is not None and w[0] == set(WRITER_SCOPES)
    assert r is not None and r[0] == set(READER_SCOPES)
    assert "write:data" not in r[0] and "create:node" not in r[0]
    assert w[1] != r[1]  # two service principals

    # Provisioning again is idempotent; a new read-only key replaces the old one.
    provision_api_keys(uri, {WRITER: writer, READER: reader})
    new_reader = secrets.token_hex(16)
    provision_api_keys(uri, {WRITER: writer, READER: new_reader})
    assert _lookup(uri, reader) is None
    assert _lookup(uri, new_reader) == (set(READER_SCOPES), r[1])
    assert _lookup(uri, writer) == w

    # A kind of key no longer given stops working.
    provision_api_keys(uri, {WRITER: writer})
    assert _lookup(uri, new_reader) is None
    assert _lookup(uri, writer) == w
    # The database holds hashes only.
    blob = (tmp_path / "authn.db").read_bytes()
    for key in (writer, reader, new_reader):
        assert key.encode() not in blob and bytes.fromhex(key) not in blob


def test_bad_keys_are_refused_without_being_shown(tmp_path):
    uri = f"sqlite:///{tmp_path / 'authn.db'}"
    for bad in ("not-hex-" + "0" * 30, "abc123", "a" * 33):
        with pytest.raises(ValueError, match="SPECKLEFLOW_X") as info:
            check_key(bad, "SPECKLEFLOW_X")
        assert bad not in str(info.value)
    key = secrets.token_hex(16)
    with pytest.raises(ValueError, match="must differ"):
        provision_api_keys(uri, {WRITER: key, READER: key})


def test_key_lookups_are_cached_per_key_and_refusals_are_not(monkeypatch):
    from speckleflow.services import tiled_auth
    from tiled.server import authentication as authn

    calls: list[str] = []

    async def principal(api_key, authenticated, db, settings):
        calls.append(api_key)
        return None if api_key == "bad" else f"principal of {api_key}"

    async def scopes(api_key, settings, authenticated, db):
        calls.append("scopes " + api_key)
        return {"read:data"}

    async def tags(api_key, authenticated, db):
        return None

    monkeypatch.setattr(authn, "get_current_principal_from_api_key", principal)
    monkeypatch.setattr(authn, "get_scopes_from_api_key", scopes)
    monkeypatch.setattr(authn, "get_access_tags_from_api_key", tags)
    tiled_auth.cache_api_key_lookups(ttl_s=60)

    async def requests():
        for db in ("session 1", "session 2"):  # a new DB session per request
            assert await authn.get_current_principal_from_api_key("good", True, db, None) == "principal of good"
            assert await authn.get_current_principal_from_api_key("bad", True, db, None) is None
            assert await authn.get_scopes_from_api_key("good", None, True, db) == {"read:data"}

    asyncio.run(requests())
    assert calls == ["good", "bad", "scopes good", "bad"]  # the refusal is asked again

    tiled_auth.cache_api_key_lookups(ttl_s=0)  # patching twice does not wrap twice
    assert authn.get_current_principal_from_api_key.__wrapped__ is principal
