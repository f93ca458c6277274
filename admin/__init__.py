"""The operator page, /admin: orders and their history, the review queue, deliveries and a
landing page "at a glance", server-rendered (Jinja, no script, every asset served here).

Switched on by ADMIN_TOKEN: unset, nothing is registered and every /admin URL is a 404. A person
signs in with the token (compared with hmac.compare_digest); Flask's signed session cookie then
says so, HttpOnly, SameSite=Strict, path /admin, Secure when the request came over https, for
SESSION_HOURS at most, and only while ADMIN_TOKEN is the token it was signed in with (a new token
signs everyone out). The cookie is signed with SECRET_KEY, or when that is unset with a key derived
from ADMIN_TOKEN by HMAC, so every replica with the same token agrees.

Every form carries a CSRF token (Flask-WTF's CSRFProtect, checked for every POST here; a POST
without one is a 400 and changes nothing). Every action is logged as JSON with the request id.
The pages read and act only through the modules that own the rules: orders (resolve, held,
sessions, resolutions), events (about, stored, replay), notifications (listed, redeliver).
"""

import hashlib
import hmac
import time

from flask import Blueprint, Flask, abort, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

from admin import formatting

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")
csrf = CSRFProtect()

SESSION_HOURS = 12  # a sign-in lasts this long at most
SESSION_COOKIE = "monime_admin"
# The admin's own stylesheet and inline SVG; nothing else, no script at all.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC_ENDPOINTS = {"admin.sign_in", "admin.static"}


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, Secure whenever the request came over https (behind a
    proxy: with PROXY_HOPS set, as X-Forwarded-Proto says), not only when configured so."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def derived_secret_key(token: str) -> str:
    """The session-signing key when SECRET_KEY is unset: HMAC-SHA256 of a fixed label keyed by
    ADMIN_TOKEN, hex. Stable across restarts and the same on every replica given the same token."""
    return hmac.new(token.encode(), b"monime-checkout admin session key", hashlib.sha256).hexdigest()


def token_tag(token: str) -> str:
    """What the session keeps of the token it was signed in with: an HMAC of it, never the token."""
    return hmac.new(token.encode(), b"monime-checkout admin signed in", hashlib.sha256).hexdigest()


def signed_in() -> bool:
    """Whether this request's session was signed in with the current ADMIN_TOKEN within SESSION_HOURS."""
    entry = session.get("admin")
    if not isinstance(entry, dict) or not isinstance(entry.get("tag"), str):
        return False
    fresh = time.time() - float(entry.get("at", 0)) < SESSION_HOURS * 3600
    return fresh and hmac.compare_digest(entry["tag"], token_tag(current_app.config["ADMIN_TOKEN"]))


def sign_in_session() -> None:
    """Start a signed-in session (a fresh one: nothing from before sign-in is kept)."""
    session.clear()
    session["admin"] = {"tag": token_tag(current_app.config["ADMIN_TOKEN"]), "at": int(time.time())}


@bp.before_request
def guard():
    """Signed in, or sent to sign in (GET) / refused with 401 (anything else); every POST's
    CSRF token checked (CSRFError, a 400)."""
    if request.endpoint not in PUBLIC_ENDPOINTS and not signed_in():
        if request.method == "GET":
            return redirect(url_for("admin.sign_in", next=request.full_path.rstrip("?")))
        abort(401)
    if request.method == "POST":
        csrf.protect()
    return None


@bp.after_request
def harden(response):
    """The admin's own CSP (set before api/guard.py's strict default, which keeps it); a
    same-origin Referer, which Flask-WTF's CSRF check requires over https."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.errorhandler(CSRFError)
def csrf_refused(exc: CSRFError):
    return render_template("admin/error.html", title="Form refused", message=exc.description), 400


@bp.errorhandler(401)
def not_signed_in(_exc):
    return render_template("admin/error.html", title="Sign in first", message="Your session has ended."), 401


@bp.errorhandler(404)
def not_found(exc):
    return render_template("admin/error.html", title="Not found", message=exc.description), 404


@bp.context_processor
def page_context() -> dict:
    return {"signed_in": signed_in(), "request_id": g.get("request_id", "")}


bp.add_app_template_filter(formatting.money, "money")
bp.add_app_template_filter(formatting.when, "when")


def init_app(app: Flask) -> None:
    """Register /admin when ADMIN_TOKEN is set (config.check has validated it); otherwise do nothing."""
    token = app.config.get("ADMIN_TOKEN")
    if not token:
        return
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = derived_secret_key(token)
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        WTF_CSRF_CHECK_DEFAULT=False,  # checked by `guard` for /admin only: the JSON API takes no cookies
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600,
    )
    app.session_interface = SessionInterface()
    csrf.init_app(app)
    from admin import views  # noqa: F401  (registers the routes on bp)

    app.register_blueprint(bp)
