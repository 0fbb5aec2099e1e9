"""A stateful fake of the Stripe API: customers, Checkout, billing portal, payment intents, refunds, disputes.

Speaks Stripe's wire format: form-encoded (nested ``a[b][0]``) parameters, JSON objects with an
``object`` field, Stripe error bodies, and ``Idempotency-Key`` (same key + same parameters → the
same response replayed; different parameters → ``idempotency_error``). It records every event it
would send in ``events``; ``StripeWebhooks`` signs and delivers them.

Test-only routes (not Stripe's): ``POST /_test/checkout/sessions/{id}/complete`` pays a session,
``POST /_test/disputes`` opens a dispute on a charge, ``GET /_test/events?object=<id>`` lists the events it emitted
(about one object), ``GET /_test/payments`` the payments it completed (``payments``: the money oracle's record).

The hosted Checkout page a session's ``url`` points
to (``/c/pay/{id}``, see ``hosted.py``) is served under ``public_url`` when one is set; its Pay button
delivers the signed webhooks to the target given to ``deliver_webhooks_to``.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from creditgate_harness.fakes.stripe import hosted

API_VERSION = "2026-10-28.endive"
_TOKEN = re.compile(r"[^\[\]]+")


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding (``metadata[k]=v``, ``line_items[0][quantity]=1``) → nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = _TOKEN.findall(key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    decoded: dict[str, Any] = _listify(root)
    return decoded


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_listify(node[k]) for k in sorted(node, key=int)]
        return {k: _listify(v) for k, v in node.items()}
    return node


class StripeFakeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        error = {"type": self.type, "message": self.message}
        if self.param:
            error["param"] = self.param
        if self.code:
            error["code"] = self.code
        return JSONResponse({"error": error}, status_code=self.status)


class FakeStripe:
    """The fake's state; ``app`` is its ASGI app."""

    def __init__(self, *, api_key: str | None = "sk_test_creditgate", public_url: str | None = None) -> None:
        self.api_key = api_key  # None: any test-mode secret key (``sk_test_…``) is accepted
        self.public_url = public_url  # where the hosted pages are reachable; None: a placeholder URL
        self.webhook_target: tuple[str, str] | None = None  # (url, signing secret) for the hosted page's Pay
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.payments: list[dict[str, Any]] = []  # every Checkout payment completed, in order
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self._idempotency: dict[str, tuple[str, int, Any]] = {}
        self._ids = itertools.count(1)

    def deliver_webhooks_to(self, url: str, *, secret: str) -> FakeStripe:
        """The hosted page's Pay delivers the events it causes to ``url``, signed with ``secret``; returns self."""
        self.webhook_target = (url, secret)
        return self

    # -- helpers ---------------------------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        return f"{prefix}_test_{next(self._ids):06d}{secrets.token_hex(4)}"

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["id"]] = obj
        return obj

    def get(self, object_id: str, kind: str | None = None) -> dict[str, Any]:
        obj = self.objects.get(object_id)
        if obj is None or (kind is not None and obj["object"] != kind):
            raise StripeFakeError(
                404, f"No such {kind or 'object'}: '{object_id}'", code="resource_missing", param="id"
            )
        return obj

    def emit(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Record the event Stripe would send for ``obj``."""
        event = {
            "id": self._id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "type": type_,
            "livemode": False,
            "pending_webhooks": 1,
            "data": {"object": json.loads(json.dumps(obj))},
            "request": {"id": None, "idempotency_key": None},
        }
        self.events.append(event)
        return event

    # -- resources -------------------------------------------------------------------------------------------
    def create_customer(self, p: dict[str, Any]) -> dict[str, Any]:
        return self._store(
            {
                "id": self._id("cus"),
                "object": "customer",
                "email": p.get("email"),
                "metadata": p.get("metadata", {}),
                "created": int(time.time()),
                "livemode": False,
            }
        )

    def create_checkout_session(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("mode") != "payment":
            raise StripeFakeError(400, "This fake supports mode=payment only.", param="mode")
        items = p.get("line_items")
        if not isinstance(items, list) or not items:
            raise StripeFakeError(400, "Missing required param: line_items.", param="line_items")
        total = 0
        for i, item in enumerate(items):
            try:
                total += int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
            except (KeyError, TypeError, ValueError):
                raise StripeFakeError(400, "Invalid line item.", param=f"line_items[{i}]") from None
        if total < 50:
            raise StripeFakeError(400, "Amount must be at least 50 cents.", param="line_items", code="amount_too_small")
        if p.get("customer"):
            self.get(p["customer"], "customer")
        session_id = self._id("cs")
        return self._store(
            {
                "id": session_id,
                "object": "checkout.session",
                "mode": "payment",
                "status": "open",
                "payment_status": "unpaid",
                "amount_total": total,
                "currency": items[0]["price_data"].get("currency", "usd"),
                "customer": p.get("customer"),
                "customer_email": p.get("customer_email"),
                "client_reference_id": p.get("client_reference_id"),
                "metadata": p.get("metadata", {}),
                "payment_intent": None,
                "success_url": p.get("success_url"),
                "cancel_url": p.get("cancel_url"),
                "url": f"{(self.public_url or 'https://checkout.stripe.test').rstrip('/')}/c/pay/{session_id}",
                "created": int(time.time()),
                "livemode": False,
                "_pi_metadata": (p.get("payment_intent_data") or {}).get("metadata", {}),
            }
        )

    def expire_checkout_session(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id, "checkout.session")
        if session["status"] != "open":
            raise StripeFakeError(400, f"Only open sessions can be expired; this one is {session['status']}.")
        session["status"] = "expired"
        self.emit("checkout.session.expired", self._public(session))
        return session

    def complete_checkout_session(self, session_id: str) -> dict[str, Any]:
        """Test-only: the customer pays. Creates the payment intent and charge, emits the events."""
        session = self.get(session_id, "checkout.session")
        if session["status"] != "open":
            raise StripeFakeError(400, f"Session is {session['status']}, not open.")
        pi_id, charge_id = self._id("pi"), self._id("ch")
        metadata = dict(session["_pi_metadata"])
        self._store(
            {
                "id": charge_id,
                "object": "charge",
                "amount": session["amount_total"],
                "amount_refunded": 0,
                "refunded": False,
                "disputed": False,
                "currency": session["currency"],
                "payment_intent": pi_id,
                "metadata": metadata,
                "status": "succeeded",
                "paid": True,
                "created": int(time.time()),
            }
        )
        self._store(
            {
                "id": pi_id,
                "object": "payment_intent",
                "amount": session["amount_total"],
                "currency": session["currency"],
                "status": "succeeded",
                "metadata": metadata,
                "latest_charge": charge_id,
                "customer": session["customer"],
                "created": int(time.time()),
            }
        )
        session.update(status="complete", payment_status="paid", payment_intent=pi_id)
        self.emit("checkout.session.completed", self._public(session))
        self.payments.append(
            {
                "checkout_session": session_id,
                "payment_intent": pi_id,
                "amount_cents": session["amount_total"],
                "client_reference_id": session["client_reference_id"],
                "metadata": dict(session["metadata"]),
                "completed_at": time.time(),
            }
        )
        return session

    def create_refund(self, p: dict[str, Any]) -> dict[str, Any]:
        if p.get("payment_intent"):
            charge = self.get(self.get(p["payment_intent"], "payment_intent")["latest_charge"], "charge")
        elif p.get("charge"):
            charge = self.get(p["charge"], "charge")
        else:
            raise StripeFakeError(400, "Provide a charge or a payment_intent.", param="charge")
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = int(p.get("amount", remaining))
        if amount <= 0 or amount > remaining:
            raise StripeFakeError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount ({remaining}).",
                param="amount",
                code="amount_too_large",
            )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refund = self._store(
            {
                "id": self._id("re"),
                "object": "refund",
                "amount": amount,
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "status": "succeeded",
                "currency": charge["currency"],
                "created": int(time.time()),
            }
        )
        self.emit("charge.refunded", charge)
        return refund

    def create_dispute(self, p: dict[str, Any]) -> dict[str, Any]:
        """Test-only: the cardholder disputes a charge."""
        charge = self.get(p.get("charge", ""), "charge")
        amount = int(p.get("amount", charge["amount"]))
        charge["disputed"] = True
        dispute = self._store(
            {
                "id": self._id("dp"),
                "object": "dispute",
                "amount": amount,
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "status": "needs_response",
                "reason": p.get("reason", "fraudulent"),
                "currency": charge["currency"],
                "created": int(time.time()),
            }
        )
        self.emit("charge.dispute.created", dispute)
        return dispute

    def create_portal_session(self, p: dict[str, Any]) -> dict[str, Any]:
        customer = self.get(p.get("customer", ""), "customer")
        session_id = self._id("bps")
        return self._store(
            {
                "id": session_id,
                "object": "billing_portal.session",
                "customer": customer["id"],
                "return_url": p.get("return_url"),
                "url": f"https://billing.stripe.test/p/session/{session_id}",
                "created": int(time.time()),
                "livemode": False,
            }
        )

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    # -- HTTP ------------------------------------------------------------------------------------------------
    @functools.cached_property
    def app(self) -> Starlette:
        routes = [
            ("/v1/customers", "POST", lambda r, p: self.create_customer(p)),
            ("/v1/customers/{id}", "GET", lambda r, p: self.get(r.path_params["id"], "customer")),
            ("/v1/checkout/sessions", "POST", lambda r, p: self.create_checkout_session(p)),
            ("/v1/checkout/sessions/{id}", "GET", lambda r, p: self.get(r.path_params["id"], "checkout.session")),
            (
                "/v1/checkout/sessions/{id}/expire",
                "POST",
                lambda r, p: self.expire_checkout_session(r.path_params["id"]),
            ),
            ("/v1/payment_intents/{id}", "GET", lambda r, p: self.get(r.path_params["id"], "payment_intent")),
            ("/v1/charges/{id}", "GET", lambda r, p: self.get(r.path_params["id"], "charge")),
            ("/v1/refunds", "POST", lambda r, p: self.create_refund(p)),
            ("/v1/billing_portal/sessions", "POST", lambda r, p: self.create_portal_session(p)),
            (
                "/_test/checkout/sessions/{id}/complete",
                "POST",
                lambda r, p: self.complete_checkout_session(r.path_params["id"]),
            ),
            ("/_test/disputes", "POST", lambda r, p: self.create_dispute(p)),
        ]
        return Starlette(
            routes=[Route(path, self._endpoint(handler), methods=[method]) for path, method, handler in routes]
            + hosted.routes(self)
            + [
                Route("/_test/events", self._list_events, methods=["GET"]),
                Route("/_test/payments", self._list_payments, methods=["GET"]),
            ]
        )

    async def _list_events(self, request: Request) -> JSONResponse:
        wanted = request.query_params.get("object")
        return JSONResponse(
            [e for e in self.events if wanted is None or e["data"]["object"].get("id") == wanted],
        )

    async def _list_payments(self, request: Request) -> JSONResponse:
        return JSONResponse(self.payments)

    def _endpoint(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            raw = (await request.body()).decode()
            params = decode_form(raw)
            self.requests.append((request.method, request.url.path, params))
            try:
                if not request.url.path.startswith("/_test/"):
                    self._authenticate(request)
                key = request.headers.get("idempotency-key")
                if key and request.method == "POST":
                    signature = f"{request.url.path}?{sorted(parse_qsl(raw))}"
                    if key in self._idempotency:
                        seen_signature, status, body = self._idempotency[key]
                        if seen_signature != signature:
                            raise StripeFakeError(
                                400,
                                f"Keys for idempotent requests can only be used with the same parameters they "
                                f"were first used with. Try using a key other than '{key}'.",
                                type="idempotency_error",
                            )
                        return JSONResponse(body, status_code=status, headers={"Idempotent-Replayed": "true"})
                    body = self._public(handler(request, params))
                    self._idempotency[key] = (signature, 200, body)
                    return JSONResponse(body)
                return JSONResponse(self._public(handler(request, params)))
            except StripeFakeError as exc:
                return exc.response()

        return endpoint

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        expected = f"Bearer {self.api_key}" if self.api_key else "Bearer sk_test_"
        if not (header == expected if self.api_key else header.startswith(expected)):
            raise StripeFakeError(401, "Invalid API Key provided.", type="invalid_request_error")
