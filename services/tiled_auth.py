"""Tiled access control: a writer key and a read-only key, as Tiled service-principal API keys.

Tiled's single-user mode knows one API key with every scope. A read-only key for the
dashboard and analysis clients needs Tiled's multi-user mode (documented in Tiled's
"Create and Use API Keys" and "Scopes" pages): an authentication database, principals
with roles, and API keys whose *scopes* restrict what each may do. Tiled creates such
keys through its admin API (``tiled admin api_key create UUID --scopes read:data``);
here the server process provisions them itself, before it serves, from keys it is
given, so that the embedded server (keys in the data directory) and compose (keys in
environment variables) work without an interactive admin login:

=================  ============  ====================================================
key                principal     scopes
=================  ============  ====================================================
writer             service,      read:metadata read:data write:metadata write:data
                   role admin    create:node register delete:revision delete:node
read-only          service,      read:metadata read:data
                   role user
=================  ============  ====================================================

Tiled stores only the SHA-256 of each key (``api_keys.hashed_secret``), so the
database holds no key material. A key that changes (rotation) replaces the old one.
A request whose key lacks the scope an endpoint needs is refused with HTTP 401.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "READER",
    "READER_SCOPES",
    "WRITER",
    "WRITER_SCOPES",
    "KeySpec",
    "authentication",
    "check_key",
    "provision_api_keys",
]

#: What TiledWriter, the online workers and full processing need: create runs and
#: results, register the detector's HDF5 files, append, replace results.
WRITER_SCOPES = (
    "read:metadata",
    "read:data",
    "write:metadata",
    "write:data",
    "create:node",
    "register",
    "delete:revision",
    "delete:node",
)
#: Dashboards and analysis clients: read raw/ and analysis/, nothing else.
READER_SCOPES = ("read:metadata", "read:data")

_HEX_KEY = re.compile(r"[0-9a-fA-F]{32,}")


@dataclass(frozen=True)
class KeySpec:
    """One kind of API key: its note in Tiled's key table, its principal's role, its scopes."""

    note: str
    role: str
    scopes: tuple[str, ...]


WRITER = KeySpec("speckleflow writer", "admin", WRITER_SCOPES)
READER = KeySpec("speckleflow read-only", "user", READER_SCOPES)


def check_key(key: str, name: str) -> None:
    """Check that an API key is usable by Tiled's multi-user mode, without showing it.

    Parameters
    ----------
    key : str
        The key: an even number (>= 32) of hex digits (Tiled hashes ``bytes.fromhex(key)``).
    name : str
        Where it came from (an environment variable or file), for the message.

    Raises
    ------
    ValueError
        If it is not hex or too short; the message names `name`, never the key.
    """
    if not _HEX_KEY.fullmatch(key) or len(key) % 2:
        raise ValueError(
            f"{name} must be an even number (>= 32) of hex digits, e.g. from "
            f"`python -c 'import secrets; print(secrets.token_hex(16))'`"
        )


def provision_api_keys(database_uri: str, keys: Mapping[KeySpec, str]) -> None:
    """Create Tiled's authentication database if needed and make it hold exactly these keys.

    For each :class:`KeySpec` a service principal is kept (found again through the
    note of its key); its key is replaced when the given key differs, and the key of
    a kind (:data:`WRITER`, :data:`READER`) that is not given is deleted.

    Parameters
    ----------
    database_uri : str
        SQLAlchemy URI of Tiled's authentication database, e.g. ``sqlite:///DIR/authn.db``.
    keys : mapping KeySpec -> str
        The key of each kind (hex, see :func:`check_key`).

    Raises
    ------
    ValueError
        If a key is malformed or two kinds share a key.
    """
    for spec, key in keys.items():
        check_key(key, f"the {spec.note} key")
    if len({k.lower() for k in keys.values()}) != len(keys):
        raise ValueError("the writer and read-only keys must differ")

    from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
    from tiled.authn_database.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.authn_database.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(database_uri)

    async def provision() -> bool:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(uri)
        created = False
        try:
            try:
                await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
            except UninitializedDatabase:
                # What `tiled admin initialize-database` does (then stamps alembic).
                await initialize_database(engine)
                created = True
            await _upsert_keys(engine, keys)
        finally:
            await engine.dispose()
        return created

    if asyncio.run(provision()):
        stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)


async def _upsert_keys(engine: Any, keys: Mapping[KeySpec, str]) -> None:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession
    from tiled.authn_database import orm
    from tiled.authn_database.core import create_service

    async with AsyncSession(engine, autoflush=False, expire_on_commit=False) as db:
        for spec, key in keys.items():
            secret = bytes.fromhex(key)
            hashed = hashlib.sha256(secret).digest()
            rows = (await db.execute(select(orm.APIKey).filter(orm.APIKey.note == spec.note))).unique().scalars().all()
            principal_id = rows[0].principal_id if rows else None
            current = [
                r
                for r in rows
                if secrets.compare_digest(r.hashed_secret, hashed) and list(r.scopes) == list(spec.scopes)
            ]
            for row in rows:
                if row not in current:
                    await db.delete(row)
            if current:
                continue
            if principal_id is None:
                principal_id = (await create_service(db, spec.role)).id
            db.add(
                orm.APIKey(
                    principal_id=principal_id,
                    expiration_time=None,
                    note=spec.note,
                    scopes=list(spec.scopes),
                    access_tags=None,
                    first_eight=secret.hex()[:8],
                    hashed_secret=hashed,
                )
            )
        # A kind of key no longer given (e.g. the read-only key unset) stops working.
        given = {spec.note for spec in keys}
        for spec in (WRITER, READER):
            if spec.note not in given:
                stale = await db.execute(select(orm.APIKey).filter(orm.APIKey.note == spec.note))
                for row in stale.unique().scalars().all():
                    await db.delete(row)
        await db.commit()


def authentication() -> Any:
    """Tiled's multi-user authentication settings for a server whose only credentials are API keys.

    Returns
    -------
    tiled.config.Authentication
        Anonymous access off; one internal provider with no users (it only switches
        Tiled into multi-user mode: nobody can log in with a password, every client
        uses an API key); a fresh token-signing secret per process (no sessions are
        issued, so none need to survive a restart).
    """
    from tiled.config import Authentication, AuthenticationProviderSpec

    return Authentication(
        providers=[
            AuthenticationProviderSpec(
                provider="speckleflow",
                authenticator="tiled.authenticators:DictionaryAuthenticator",
                args={"users_to_passwords": {}},
            )
        ],
        allow_anonymous_access=False,
        secret_keys=[secrets.token_hex(32)],
    )


#: Seconds a resolved API key (principal, scopes, access tags) is reused before Tiled's
#: authentication database is asked again. The keys are provisioned when the server
#: starts and are not revoked while it runs.
API_KEY_CACHE_TTL_S = 60.0


def cache_api_key_lookups(ttl_s: float = API_KEY_CACHE_TTL_S) -> None:
    """Resolve each API key against Tiled's authentication database once per ``ttl_s``.

    Tiled 0.2.20 looks a key up three times per request (principal, scopes, access
    tags, each an ORM query with eager loads) and commits the key's
    ``latest_activity``: measured 80–115 ms of server CPU per metadata request against
    23 ms in single-user mode, which throttles the embedded server to a few requests
    per second on a loaded two-core machine (workers fell behind and a Ctrl-C'd run
    took minutes to flush). Only successful lookups are cached; an unknown key is
    refused by Tiled every time. ``latest_activity`` is then updated once per TTL.

    Patches the module-level helpers of ``tiled.server.authentication`` (they are
    looked up by name at call time); call before the app serves.
    """
    import time

    from tiled.server import authentication as authn

    def cached(original: Any, key_of: Any) -> Any:
        cache: dict[Any, tuple[float, Any]] = {}

        async def lookup(*args: Any) -> Any:
            key = key_of(*args)
            now = time.monotonic()
            hit = cache.get(key)
            if hit is not None and now < hit[0]:
                return hit[1]
            value = await original(*args)
            if value is not None:
                cache[key] = (now + ttl_s, value)
            return value

        lookup.__wrapped__ = original  # type: ignore[attr-defined]
        return lookup

    if getattr(authn.get_current_principal_from_api_key, "__wrapped__", None) is not None:
        return  # already patched in this process
    # (api_key, authenticated, db, settings), (api_key, settings, authenticated, db),
    # (api_key, authenticated, db): the key and the mode decide the answer, not the session.
    authn.get_current_principal_from_api_key = cached(
        authn.get_current_principal_from_api_key, lambda k, a, db, s: (k, a))
    authn.get_scopes_from_api_key = cached(authn.get_scopes_from_api_key, lambda k, s, a, db: (k, a))
    authn.get_access_tags_from_api_key = cached(authn.get_access_tags_from_api_key, lambda k, a, db: (k, a))
