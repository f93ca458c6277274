"""The hosted checkout page a session's redirectUrl opens: what is bought, a payment method
(those the session's paymentOptions allow), Pay or Cancel, and back to the shop."""

import re

from flask import Blueprint, abort, current_app, redirect, render_template, request

bp = Blueprint("hosted", __name__)
ACCENT = "#f97316"  # unless the session's brandingOptions.primaryColor says otherwise

KINDS = {"momo": "Mobile Money", "card": "Card", "bank": "Bank", "wallet": "Wallet"}
PROVIDERS = {  # Monime's provider ids, from its OpenAPI document
    "momo": {"m17": "Orange Money", "m18": "Africell Money"},
    "card": {"": "Visa or Mastercard"},
    "bank": {"slb001": "SLCB", "slb004": "slb004", "slb007": "slb007"},
    "wallet": {"dw001": "SafulPay"},
}


def store():
    return current_app.extensions["simulator"]


def find(session_id: str) -> dict:
    store().sweep()  # a session past its expireTime is expired before anyone sees it
    session = store().sessions.get(session_id)
    if session is None:
        abort(404)
    return session


@bp.get("/checkout/<session_id>")
def page(session_id: str):
    return show(find(session_id))


def show(session: dict, status: int = 200):
    lines = [line_of(item) for item in (session.get("lineItems") or {}).get("data") or []]
    total = sum(line["amount"] for line in lines)
    currency = lines[0]["currency"] if lines else ""
    methods = payment_methods(session.get("paymentOptions"))
    color = (session.get("brandingOptions") or {}).get("primaryColor") or ""
    accent = color if re.fullmatch(r"#[0-9a-fA-F]{3,8}", color) else ACCENT
    page = render_template(
        "checkout.html", s=session, lines=lines, total=total, currency=currency, methods=methods, accent=accent
    )
    return page, status


def line_of(item: dict) -> dict:
    """What the page shows of a line item; Monime's schema leaves price and quantity optional."""
    price, quantity = item.get("price") or {}, item.get("quantity") or 1
    amount = (price.get("value") or 0) * quantity
    return {"name": item.get("name", ""), "quantity": quantity, "currency": price.get("currency", ""), "amount": amount}


def payment_methods(options: dict | None) -> list[dict]:
    """[{"value": "momo:m17", "kind": "Mobile Money", "label": "Orange Money"}, …]: each kind
    unless disabled, each provider unless left out by enabledProviders or disabledProviders."""
    methods = []
    for kind, label in KINDS.items():
        option = (options or {}).get(kind) or {}
        if not option.get("disable"):
            methods += [
                {"value": f"{kind}:{code}".rstrip(":"), "kind": label, "label": name}
                for code, name in PROVIDERS[kind].items()
                if allowed(code, option)
            ]
    return methods


def allowed(provider: str, option: dict) -> bool:
    """enabledProviders, when given, is the list; else all but disabledProviders."""
    if option.get("enabledProviders"):
        return provider in option["enabledProviders"]
    return provider not in (option.get("disabledProviders") or [])


@bp.post("/checkout/<session_id>/<choice>")
def choose(session_id: str, choice: str):
    session = find(session_id)
    status = {"pay": "completed", "cancel": "cancelled"}.get(choice) or abort(404)
    offered = [method["value"] for method in payment_methods(session.get("paymentOptions"))]
    method = request.form.get("method") or (offered[0] if offered else None)
    if status == "completed" and method not in offered:
        abort(400, f"{method!r} is not a payment method this session offers")
    if store().transition(session_id, status, paid_with=method if status == "completed" else None) is None:
        return show(session, 409)
    store().emit(session, status)
    back = session["successUrl" if status == "completed" else "cancelUrl"]
    if not back:  # a session made without the URL: nowhere to send the shopper
        return show(session)
    return redirect(back, 303)
