"""The simulator speaks Monime's OpenAPI where SDKs notice: a webhook secret of Monime's length,
the Monime-Version header checked against its enum, and the list of checkout sessions paged
with `limit`, `after` and `pagination.next`. Over real HTTP."""

import logging
import re

import pytest
import requests
from test_simulator import SESSIONS, created, monime_error, official_headers

import simulator as simulator_package
from conftest import ROOT
from simulator import openapi
from simulator.settings import DEFAULT_WEBHOOK_SECRET
from support import SESSION_REQUEST

SETTINGS_LOGGER = "simulator.settings"

# --- the webhook secret -----------------------------------------------------------------------


def test_the_default_webhook_secret_is_as_long_as_monime_requires():
    secret = openapi.document()["components"]["schemas"]["Webhook"]["properties"]["verificationMethod"]
    limits = secret["oneOf"][0]["properties"]["secret"]  # HS256

    assert limits["minLength"] <= len(DEFAULT_WEBHOOK_SECRET) <= limits["maxLength"]
    assert simulator_package.WEBHOOK_SECRET == DEFAULT_WEBHOOK_SECRET


def test_make_dev_gives_the_service_and_the_simulator_the_simulators_default_secret():
    script = (ROOT / "scripts/dev").read_text()

    assert re.search(r'MONIME_WEBHOOK_SECRET="\$\{MONIME_WEBHOOK_SECRET:-([^}]*)\}"', script)[1] == (
        DEFAULT_WEBHOOK_SECRET
    )
    assert 'SIMULATOR_WEBHOOK_SECRET="${SIMULATOR_WEBHOOK_SECRET:-${MONIME_WEBHOOK_SECRET%%,*}}"' in script


def settings_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SETTINGS_LOGGER and r.levelno == logging.WARNING]


def test_a_simulator_started_with_a_short_secret_warns_without_showing_it(caplog):
    with caplog.at_level(logging.WARNING, logger=SETTINGS_LOGGER):
        simulator_package.create_app({"WEBHOOK_SECRET": "whsec_simulator"})

    assert settings_warnings(caplog) == [
        "the simulator's webhook secret is 15 characters; Monime's are 32 to 256, and a verifier "
        "as strict as Monime's SDKs will refuse every event signed with it"
    ]
    assert "whsec_simulator" not in caplog.text


def test_a_simulator_started_with_its_default_secret_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger=SETTINGS_LOGGER):
        simulator_package.create_app({})

    assert settings_warnings(caplog) == []


def test_configuring_a_short_secret_while_running_warns_and_a_long_one_does_not(simulator, caplog):
    with caplog.at_level(logging.WARNING, logger=SETTINGS_LOGGER):
        simulator.configure(webhook_secret="whsec_" + "s" * 25)  # 31 characters
        simulator.configure(webhook_secret="whsec_" + "l" * 26)  # 32

    assert len(settings_warnings(caplog)) == 1
    assert "is 31 characters" in settings_warnings(caplog)[0]


# --- Monime-Version ---------------------------------------------------------------------------

VERSIONS = ["caph.2025-08-23", "caph.2025-06-20"]  # the header's enum in Monime's OpenAPI


def call(simulator, operation: str, version: str | None, session_id: str = "scs-unknown") -> requests.Response:
    """One of the four checkout-session operations, with `version` as Monime-Version (None: no header)."""
    headers = official_headers(simulator, f"key-{operation}-{version}")
    if version is not None:
        headers["Monime-Version"] = version
    method, path, body = {
        "create": ("POST", SESSIONS, SESSION_REQUEST),
        "list": ("GET", SESSIONS, None),
        "get": ("GET", f"{SESSIONS}/{session_id}", None),
        "delete": ("DELETE", f"{SESSIONS}/{session_id}", None),
    }[operation]  # fmt: skip
    return requests.request(method, simulator.url + path, json=body, headers=headers, timeout=10)


def test_the_versions_checked_are_the_openapi_enum_of_every_operation():
    one = f"{SESSIONS}/{{id}}"
    for path, method in [(SESSIONS, "post"), (SESSIONS, "get"), (one, "get"), (one, "delete")]:
        assert [v for v in openapi.parameter(path, method, "Monime-Version")["enum"] if v] == VERSIONS


@pytest.mark.parametrize("version", [*VERSIONS, None], ids=[*VERSIONS, "absent"])
@pytest.mark.parametrize("operation", ["create", "list", "get", "delete"])
def test_each_operation_accepts_a_version_of_the_enum_or_none(simulator, operation, version):
    session_id = created(simulator, key="key-target")["id"]

    response = call(simulator, operation, version, session_id)

    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


@pytest.mark.parametrize("version", ["caph.2024-01-01", "", "CAPH.2025-08-23", "caph.2025-08-23 ", "siriusb"])
@pytest.mark.parametrize("operation", ["create", "list", "get", "delete"])
def test_each_operation_refuses_a_version_outside_the_enum_in_monimes_error_shape(simulator, operation, version):
    session_id = created(simulator, key="key-target")["id"]

    error = monime_error(call(simulator, operation, version, session_id), 400, "invalid_header")

    assert "Monime-Version" in error["message"] and all(v in error["message"] for v in VERSIONS)
    assert [s["id"] for s in simulator.sessions()] == [session_id], "nothing was made or deleted"


# --- listing sessions, a page at a time -------------------------------------------------------


def page(simulator, **query) -> dict:
    """One page of GET /v1/checkout-sessions, checked to be Monime's list envelope."""
    response = requests.get(
        simulator.url + SESSIONS, params=query, headers=official_headers(simulator, None), timeout=10
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"success", "messages", "result", "pagination"}
    assert set(body["pagination"]) == {"count", "next"}
    assert body["pagination"]["count"] == len(body["result"])
    return body


def every_page(simulator, **query) -> list[list[str]]:
    """The ids of each page, following pagination.next until it is null (at most 100 pages),
    from the cursor query["after"] if given."""
    pages = []
    for _ in range(100):
        body = page(simulator, **query)
        pages.append([session["id"] for session in body["result"]])
        query["after"] = body["pagination"]["next"]
        if query["after"] is None:
            return pages
    raise AssertionError(f"pagination.next never became null: {pages}")


def make(simulator, count: int, start: int = 0) -> list[str]:
    return [created(simulator, key=f"key-{number}")["id"] for number in range(start, start + count)]


def test_an_empty_list_is_one_page_with_no_next(simulator):
    assert page(simulator) == {"success": True, "messages": [], "result": [], "pagination": {"count": 0, "next": None}}


def test_a_page_holds_ten_sessions_unless_a_limit_is_given(simulator):
    ids = make(simulator, 12)

    first = page(simulator)

    assert [s["id"] for s in first["result"]] == ids[:10]
    assert first["pagination"]["next"] is not None
    assert "callbackState" not in first["result"][0] and "sequence" not in first["result"][0]


def test_paging_until_next_is_null_shows_every_session_once_in_the_order_made(simulator):
    ids = make(simulator, 23)

    assert every_page(simulator) == [ids[:10], ids[10:20], ids[20:]]
    assert every_page(simulator, limit=7) == [ids[:7], ids[7:14], ids[14:21], ids[21:]]


@pytest.mark.parametrize("limit", [1, 50])
def test_the_limits_at_the_edges_are_accepted(simulator, limit):
    ids = make(simulator, 51)

    assert [s["id"] for s in page(simulator, limit=limit)["result"]] == ids[:limit]


def test_a_last_page_that_is_exactly_full_has_no_next(simulator):
    ids = make(simulator, 10)

    assert every_page(simulator) == [ids]


def test_sessions_made_and_deleted_while_paging_neither_skip_nor_repeat_another(simulator):
    ids = make(simulator, 12)
    first = page(simulator, limit=5)
    made = make(simulator, 3, start=12)
    for gone in (ids[2], ids[7]):  # one already shown, one not yet
        assert requests.delete(f"{simulator.url}{SESSIONS}/{gone}", headers=official_headers(simulator), timeout=10).ok

    rest = every_page(simulator, limit=5, after=first["pagination"]["next"])

    shown = [s["id"] for s in first["result"]] + [i for p in rest for i in p]
    assert shown == [i for i in ids + made if i != ids[7]]


@pytest.mark.parametrize("limit", ["0", "51", "-1", "ten", "1.5", "", " 5", "٥"])
def test_a_limit_outside_1_to_50_is_refused_in_monimes_error_shape(simulator, limit):
    response = requests.get(
        simulator.url + SESSIONS, params={"limit": limit}, headers=official_headers(simulator, None), timeout=10
    )

    error = monime_error(response, 400, "validation_failed")
    assert error["details"] == ["limit: limit must be a whole number from 1 to 50"]


@pytest.mark.parametrize("after", ["nonsense", "c2NzOng", "c2NzOi0x", "x" * 2001])
def test_a_cursor_this_api_did_not_give_is_refused(simulator, after):
    make(simulator, 2)
    response = requests.get(
        simulator.url + SESSIONS, params={"after": after}, headers=official_headers(simulator, None), timeout=10
    )

    error = monime_error(response, 400, "validation_failed")
    assert error["details"] == ["after: not a cursor this API gave"]
