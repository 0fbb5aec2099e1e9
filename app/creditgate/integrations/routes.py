"""POST /integrations/lago/webhook and POST /auth/telegram/exchange."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from creditgate.auth.deps import RuntimeDep
from creditgate.errors import InvalidRequest, ServiceUnavailable
from creditgate.errors_http import ERROR_RESPONSES
from creditgate.http_guard import GuardedRoute
from creditgate.integrations import lago, telegram

router = APIRouter(route_class=GuardedRoute, tags=["integrations"])


class LagoResult(BaseModel):
    outcome: str = Field(description="what the webhook did: `plan <name>`, `subscription ended`, `duplicate`, …")


@router.post("/integrations/lago/webhook", response_model=LagoResult, responses=ERROR_RESPONSES(400, 422, 503))
async def lago_webhook(request: Request, rt: RuntimeDep) -> LagoResult:
    """Lago's signed subscription webhooks (hmac or jwt); each applied once by X-Lago-Unique-Key."""
    if not (rt.settings.lago_hmac_key or rt.settings.lago_public_key):
        raise ServiceUnavailable("Lago webhooks are not configured: set CREDITGATE_LAGO_HMAC_KEY or _PUBLIC_KEY")
    payload = lago.verify(await request.body(), dict(request.headers), rt.settings)
    unique_key = request.headers.get("x-lago-unique-key")
    if not unique_key:
        raise InvalidRequest("missing X-Lago-Unique-Key")
    for attempt in range(2):
        try:
            async with rt.sessionmaker.begin() as session:
                return LagoResult(
                    outcome=await lago.apply(session, payload, unique_key=unique_key, settings=rt.settings)
                )
        except IntegrityError:  # the same webhook committed first on another worker: now it is a duplicate
            if attempt:
                raise
    raise AssertionError("unreachable")


class TelegramExchange(BaseModel):
    init_data: str = Field(min_length=1, max_length=8192, description="`Telegram.WebApp.initData`, unchanged")


class TelegramKey(BaseModel):
    api_key: str = Field(description="a gateway API key for this user, valid for `expires_in` seconds")
    expires_in: int
    user_id: int


@router.post("/auth/telegram/exchange", response_model=TelegramKey, responses=ERROR_RESPONSES(401, 422, 503))
async def telegram_exchange(body: TelegramExchange, rt: RuntimeDep) -> TelegramKey:
    """Trade a Mini App's initData for a short-lived API key (the user is linked or created)."""
    if not rt.settings.telegram_bot_token:
        raise ServiceUnavailable("Telegram sign-in is not configured: set CREDITGATE_TELEGRAM_BOT_TOKEN")
    user = telegram.verify(body.init_data, rt.settings)
    async with rt.sessionmaker.begin() as session:
        key, ttl, user_id = await telegram.exchange(session, user, rt.settings)
    return TelegramKey(api_key=key, expires_in=ttl, user_id=user_id)
