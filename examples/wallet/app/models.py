"""Wallets with a balance in tokens, and their entries: every change of a balance is one entry, in the same
transaction (the opening deposit, each Stripe top-up, each charge). A top-up's entry carries its Checkout Session
as ``ref``, unique: a redelivered webhook cannot credit it twice."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Wallet(Base):
    __tablename__ = "wallets"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    balance: Mapped[int] = mapped_column(Integer, default=0)


class Entry(Base):
    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # open | top-up | charge
    amount: Mapped[int] = mapped_column(Integer)  # tokens: credits positive, charges negative
    ref: Mapped[str | None] = mapped_column(String(100), unique=True)  # a top-up's Checkout Session
