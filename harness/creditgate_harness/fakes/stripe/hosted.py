"""The fake's hosted Checkout page: what a customer sees at a Checkout Session's ``url``.

``GET /c/pay/{id}`` shows the amount and a Pay button; pressing it (``POST``) completes the session as
Stripe would and delivers the resulting events, signed, to the fake's webhook target (``deliver_webhooks_to``);
the page then shows each delivery and what the gateway answered, with a button that delivers the same
event again (Stripe delivers at least once; the gateway must credit once). Pay on a paid session, or a
reload, completes nothing twice. ``GET /c/return`` is a landing page for success and cancel URLs.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from creditgate_harness.fakes.stripe.signing import sign_payload

if TYPE_CHECKING:
    from creditgate_harness.fakes.stripe.app import FakeStripe


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook delivery the page made and the gateway's answer."""

    event_id: str
    event_type: str
    status: int | None  # None: no answer
    outcome: str


_STYLE = """
body{font-family:system-ui,sans-serif;background:#f6f9fc;margin:0;color:#1a1f36}
main{max-width:420px;margin:48px auto;background:#fff;border-radius:8px;padding:32px;box-shadow:0 2px 8px #0002}
.amount{font-size:2rem;font-weight:600;margin:8px 0 24px}
.test{background:#ffde92;color:#8a5300;font-size:.75rem;padding:2px 6px;border-radius:4px}
button{width:100%;padding:12px;border:0;border-radius:6px;background:#635bff;color:#fff;font-size:1rem;cursor:pointer}
button.secondary{background:#e3e8ee;color:#1a1f36;margin-top:8px}
input{width:100%;box-sizing:border-box;padding:10px;margin:4px 0 16px;border:1px solid #e3e8ee;border-radius:6px}
li{margin:4px 0}
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<meta name=viewport content='width=device-width'><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status)


def _usd(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def _deliveries(session: dict[str, Any]) -> list[Delivery]:
    found: list[Delivery] = session.setdefault("_deliveries", [])
    return found


async def deliver(fake: FakeStripe, session: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """POST each event, signed like Stripe, to the webhook target; record what came back on the session."""
    if fake.webhook_target is None:
        _deliveries(session).append(Delivery("-", "-", None, "no webhook target configured"))
        return
    url, secret = fake.webhook_target
    async with httpx.AsyncClient(timeout=30) as client:
        for event in events:
            payload = json.dumps(event).encode()
            headers = {"Content-Type": "application/json", "Stripe-Signature": sign_payload(payload, secrets=[secret])}
            try:
                response = await client.post(url, content=payload, headers=headers)
            except httpx.HTTPError as exc:
                _deliveries(session).append(Delivery(event["id"], event["type"], None, type(exc).__name__))
                continue
            try:
                outcome = str(response.json().get("outcome") or response.json().get("error", {}).get("message"))
            except (ValueError, AttributeError):
                outcome = response.text[:200]
            _deliveries(session).append(Delivery(event["id"], event["type"], response.status_code, outcome))


def _session_events(fake: FakeStripe, session_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in fake.events
        if e["type"].startswith("checkout.session.") and e["data"]["object"].get("id") == session_id
    ]


def routes(fake: FakeStripe) -> list[Route]:
    """The page's routes, on the fake's app."""

    def session_or_404(session_id: str) -> dict[str, Any] | None:
        obj = fake.objects.get(session_id)
        return obj if obj is not None and obj["object"] == "checkout.session" else None

    async def show(request: Request) -> Response:
        session_id = request.path_params["id"]
        session = session_or_404(session_id)
        if session is None:
            return _page("Not found", "<h1 id=status>No such checkout</h1>", 404)
        amount = _usd(session["amount_total"])
        email = html.escape(session.get("customer_email") or "")
        if session["status"] == "open":
            body = (
                "<p><span class=test>TEST MODE</span> creditgate (fake Stripe)</p>"
                f"<h1 id=status>Top up</h1><div class=amount id=amount>{amount}</div>"
                f"<label>Email<input value='{email}' readonly></label>"
                "<label>Card<input value='4242 4242 4242 4242' readonly></label>"
                f"<form method=post action='{html.escape(session_id)}'><button id=pay type=submit>Pay {amount}</button>"
                "</form>"
            )
            if session.get("cancel_url"):
                body += f"<p><a id=cancel href='{html.escape(session['cancel_url'])}'>Cancel</a></p>"
            return _page(f"Pay {amount}", body)
        if session["status"] == "expired":
            return _page("Expired", "<h1 id=status>This checkout expired</h1>")
        items = "".join(
            f"<li class=delivery data-status='{d.status or ''}'>{html.escape(d.event_type)} → "
            f"{d.status or 'no answer'}: <span class=outcome>{html.escape(d.outcome)}</span></li>"
            for d in _deliveries(session)
        )
        body = (
            f"<h1 id=status>Payment succeeded</h1><div class=amount id=amount>{amount}</div>"
            f"<p>Webhooks delivered to the gateway:</p><ul id=deliveries>{items}</ul>"
            f"<form method=post action='{html.escape(session_id)}/resend'>"
            "<button id=resend class=secondary type=submit>Send the webhook again</button></form>"
        )
        if session.get("success_url"):
            url = str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session_id)
            body += f"<p><a id=continue href='{html.escape(url)}'>Continue</a></p>"
        return _page("Paid", body)

    async def pay(request: Request) -> Response:
        session_id = request.path_params["id"]
        session = session_or_404(session_id)
        if session is None:
            return _page("Not found", "<h1 id=status>No such checkout</h1>", 404)
        if session["status"] == "open":  # a second press or a resubmitted form completes nothing twice
            before = len(fake.events)
            fake.complete_checkout_session(session_id)
            await deliver(fake, session, fake.events[before:])
        return RedirectResponse(f"../pay/{session_id}", status_code=303)

    async def resend(request: Request) -> Response:
        session_id = request.path_params["id"]
        session = session_or_404(session_id)
        if session is None:
            return _page("Not found", "<h1 id=status>No such checkout</h1>", 404)
        completed = [e for e in _session_events(fake, session_id) if e["type"] == "checkout.session.completed"]
        await deliver(fake, session, completed)
        return RedirectResponse(f"../{session_id}", status_code=303)

    async def landing(request: Request) -> Response:
        if request.query_params.get("cancelled"):
            return _page("Cancelled", "<h1 id=status>Checkout cancelled</h1><p>Nothing was charged.</p>")
        return _page(
            "Thank you",
            "<h1 id=status>Thank you</h1><p>Your credits are on your balance: "
            "<code>curl -s $GATEWAY/user/balance -H 'Authorization: Bearer $KEY'</code></p>",
        )

    return [
        Route("/c/pay/{id}", show, methods=["GET"]),
        Route("/c/pay/{id}", pay, methods=["POST"]),
        Route("/c/pay/{id}/resend", resend, methods=["POST"]),
        Route("/c/return", landing, methods=["GET"]),
    ]
