"""BYOK keys, Fernet-encrypted with ``CREDITGATE_BYOK_ENCRYPTION_KEY``; only the last 4 characters are ever shown."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from creditgate.cache import changed
from creditgate.catalog.service import Catalog
from creditgate.db.models import ProviderKey
from creditgate.errors import InvalidRequest, NotFound, ServiceUnavailable
from creditgate.settings import Settings


def _fernet(settings: Settings) -> Fernet:
    if not settings.byok_encryption_key:
        raise ServiceUnavailable("BYOK is not configured: set CREDITGATE_BYOK_ENCRYPTION_KEY (a Fernet key)")
    return Fernet(settings.byok_encryption_key.encode())


async def store(
    session: AsyncSession, *, user_id: int, provider: str, key: str, settings: Settings, catalog: Catalog
) -> ProviderKey:
    """Save (or replace) the user's key for ``provider``."""
    if provider not in {p.name for p in catalog.providers}:
        raise InvalidRequest(f"unknown provider {provider!r}; GET /catalog/providers lists them", param="provider")
    token = _fernet(settings).encrypt(key.encode()).decode()
    row = await session.scalar(
        select(ProviderKey).where(ProviderKey.user_id == user_id, ProviderKey.provider == provider)
    )
    if row is None:
        row = ProviderKey(user_id=user_id, provider=provider, encrypted_key=token, last4=key[-4:])
        session.add(row)
    else:
        row.encrypted_key, row.last4 = token, key[-4:]
    await session.flush()
    await changed(session, "byok", user_id)
    return row


async def listed(session: AsyncSession, *, user_id: int) -> list[ProviderKey]:
    return list(
        await session.scalars(select(ProviderKey).where(ProviderKey.user_id == user_id).order_by(ProviderKey.provider))
    )


async def remove(session: AsyncSession, *, user_id: int, provider: str) -> None:
    result = await session.execute(
        delete(ProviderKey).where(ProviderKey.user_id == user_id, ProviderKey.provider == provider)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"no key stored for provider {provider!r}")
    await changed(session, "byok", user_id)


async def keys_for(session: AsyncSession, *, user_id: int, settings: Settings) -> dict[str, str]:
    """The user's decrypted keys by provider ({} when BYOK is off or they have none)."""
    if not settings.byok_encryption_key:
        return {}
    rows = await listed(session, user_id=user_id)
    if not rows:
        return {}
    fernet = _fernet(settings)
    keys: dict[str, str] = {}
    for row in rows:
        try:
            keys[row.provider] = fernet.decrypt(row.encrypted_key.encode()).decode()
        except InvalidToken:  # the encryption key was rotated without re-encrypting; the key is unusable
            continue
    return keys
