from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

# Credits go over the wire as strings ("12.30"): JSON numbers would be floats in most clients.
Credits = Annotated[Decimal, PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json")]


def _iso_8601(value: object) -> object:
    # Pydantic would read "0.5" as a Unix timestamp; the schema promises ISO 8601 date-times only.
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("expected an ISO 8601 date-time such as 2026-01-31T00:00:00Z") from None
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_8601)]


class Balance(BaseModel):
    balance: Credits
    held: Credits
    currency: str = "credits"


class Transaction(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    amount: Credits
    balance_after: Credits
    description: str | None
    created_at: datetime


class TransactionPage(BaseModel):
    data: list[Transaction]
    total: int
    limit: int
    offset: int


class TransactionSummary(BaseModel):
    total_spent: Credits
    total_purchased: Credits
    total_bonus: Credits
    total_refunded: Credits
    net_balance: Credits
    start: datetime | None
    end: datetime | None


class UsageOut(BaseModel):
    request_id: str
    model: str
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    credits: Credits
    latency_ms: int
    outcome: str
    byok: bool
    created_at: datetime


class UsagePage(BaseModel):
    data: list[UsageOut]
    total: int
    limit: int
    offset: int
