"""Start-up configuration: the service refuses to run misconfigured, naming what is wrong."""

import logging
import os
import re
import subprocess
import sys

import pytest
from dotenv import dotenv_values

from app import create_app
from config import ConfigError, check, from_environment, normalise_database_url
from conftest import ROOT
from models import db

VALID = {
    "MONIME_ACCESS_TOKEN": "mon_live_x",
    "MONIME_SPACE_ID": "spc-x",
    "MONIME_WEBHOOK_SECRET": "whsec_x",
    "PUBLIC_BASE_URL": "https://pay.shop.example",
    "APP_URL": "https://shop.example",
    "DATABASE_URL": "sqlite://",
}


def refusal(relaxed=False, **changes) -> str:
    environment = {key: value for key, value in (VALID | changes).items() if value is not None}
    with pytest.raises(ConfigError) as caught:
        check(from_environment(environment), relaxed=relaxed)
    return str(caught.value)


def started(tmp_path, **changes):
    """The service, made outside tests and development, on a SQLite file in `tmp_path`."""
    return create_app(from_environment(VALID | {"DATABASE_URL": f"sqlite:///{tmp_path}/shop.sqlite3"} | changes))


def test_a_complete_environment_is_accepted():
    config = from_environment(VALID)
    check(config, relaxed=False)
    assert config["MONIME_API_BASE_URL"] == "https://api.monime.io"
    assert config["MONIME_WEBHOOK_TOLERANCE"] == 300


@pytest.mark.parametrize("name", ["MONIME_WEBHOOK_SECRET", "PUBLIC_BASE_URL", "APP_URL"])
def test_a_missing_required_setting_is_named(name):
    assert f"{name} is required" in refusal(**{name: None})
    assert f"{name} is required" in refusal(relaxed=True, **{name: None})


@pytest.mark.parametrize("name", ["MONIME_ACCESS_TOKEN", "MONIME_SPACE_ID"])
def test_monime_credentials_are_required_outside_tests_and_development(name):
    assert f"{name} is required" in refusal(**{name: None})
    check(from_environment({k: v for k, v in VALID.items() if k != name}), relaxed=True)


def test_every_problem_is_named_at_once():
    message = refusal(MONIME_WEBHOOK_SECRET=None, APP_URL="shop.example", MONIME_READ_TIMEOUT="soon")
    assert "MONIME_WEBHOOK_SECRET" in message and "APP_URL" in message and "MONIME_READ_TIMEOUT" in message


@pytest.mark.parametrize("url", ["shop.example", "ftp://shop.example", "https://shop.example/?next=x", "https://"])
def test_urls_must_be_absolute_http(url):
    assert "APP_URL must be an absolute" in refusal(APP_URL=url)


URL_SETTINGS = ["APP_URL", "PUBLIC_BASE_URL", "MONIME_API_BASE_URL"]


@pytest.mark.parametrize("name", URL_SETTINGS)
@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://shop.example@evil.example", "user-info"),
        ("https://user:secret@shop.example", "user-info"),
        (" https://shop.example", "whitespace"),
        ("https://shop.example\n", "whitespace"),
        ("https://shop.example/ thanks", "whitespace"),
        ("https://shop.example\x00", "control characters"),
        ("https://shop.example\\@evil.example", "backslash"),
        ("https://shop.example/?next=https://evil.example", "query or a fragment"),
        ("https://shop.example/#evil", "query or a fragment"),
        ("https://shop.example/path;jsessionid=1", ";parameters"),
        ("https://", "no host"),
        ("https://:443/shop", "no host"),
        ("https://shop.example:99999", "port"),
        ("https://shop.example:0", "port"),
        ("https://shop..example", "host or path"),
        ("https://shöp.example", "host or path"),
        ("https://shop.example/<script>", "host or path"),
        ("javascript://shop.example", "http:// or https://"),
    ],
)
def test_url_settings_are_scheme_host_port_and_path_and_nothing_else(name, url, why):
    message = refusal(**{name: url})
    assert f"{name} must be an absolute http(s) URL, scheme://host[:port][/path]" in message
    assert why in message


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/store",
        "http://127.0.0.1:3000",
        "https://[::1]:8443/a/b%20c",
        "https://xn--bcher-kva.example",
    ],
)
def test_url_settings_may_have_a_port_and_a_path(url):
    config = from_environment(VALID | dict.fromkeys(URL_SETTINGS, url))
    check(config, relaxed=False)
    assert [config[name] for name in URL_SETTINGS] == [url] * 3


def test_a_cors_origin_with_user_info_is_no_origin():
    assert "not an origin" in refusal(CORS_ORIGINS="https://shop.example@evil.example")


def test_a_webhook_secret_shorter_than_monimes_32_characters_is_warned_about_but_never_shown(caplog, tmp_path):
    long_enough, short = "whsec_" + "l" * 26, "whsec_short_3f9a"
    with caplog.at_level(logging.WARNING, logger="config"):
        started(tmp_path, MONIME_WEBHOOK_SECRET=f"{long_enough},{short}")
    warnings = [record for record in caplog.records if record.name == "config"]
    assert [record.levelno for record in warnings] == [logging.WARNING]
    assert "secret 2 of 2 is shorter than the 32 characters Monime requires" in warnings[0].getMessage()
    assert long_enough not in caplog.text and short not in caplog.text


def test_webhook_secrets_of_monimes_32_characters_bring_no_warning(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="config"):
        started(tmp_path, MONIME_WEBHOOK_SECRET="whsec_" + "l" * 26)
    assert [record for record in caplog.records if record.name == "config"] == []


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["MONIME_RETRY_DEADLINE", "MONIME_VERIFY_TIMEOUT", "MONIME_WEBHOOK_TOLERANCE"])
def test_timeouts_must_be_positive_finite_numbers(name, value):
    """nan passes every comparison and inf never fires: either would switch a limit off."""
    assert f"{name} must be a positive number of seconds" in refusal(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_POOL_SIZE", "0"), ("DATABASE_POOL_SIZE", "-1"), ("DATABASE_POOL_SIZE", "8.5"),
     ("DATABASE_MAX_OVERFLOW", "-1"), ("DATABASE_MAX_OVERFLOW", "many"), ("DATABASE_MAX_OVERFLOW", "")],
)  # fmt: skip
def test_pool_sizes_must_be_whole_numbers(name, value):
    assert f"{name} must be a whole number of connections" in refusal(**{name: value})


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "many", " 4", "١٢"])
def test_the_cap_on_calls_to_monime_in_flight_is_a_whole_number_of_at_least_one(value):
    assert "MONIME_MAX_IN_FLIGHT must be a whole number of calls to Monime, at least 1" in refusal(
        MONIME_MAX_IN_FLIGHT=value
    )


@pytest.mark.parametrize(("value", "cap"), [(None, None), ("", None), ("1", 1), ("24", 24)])
def test_the_cap_on_calls_to_monime_in_flight_unset_is_left_to_the_worker(value, cap):
    config = from_environment({key: val for key, val in (VALID | {"MONIME_MAX_IN_FLIGHT": value}).items() if val})
    check(config, relaxed=False)
    assert config["MONIME_MAX_IN_FLIGHT"] == cap


def test_pool_sizes_from_the_environment_size_the_engines_pool(tmp_path):
    app = started(tmp_path, DATABASE_POOL_SIZE="3", DATABASE_MAX_OVERFLOW="0")
    options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    assert (options["pool_size"], options["max_overflow"]) == (3, 0)
    with app.app_context():
        assert (db.engine.pool.size(), db.engine.pool._max_overflow) == (3, 0)


def test_a_public_base_url_too_long_for_monimes_255_character_urls_is_refused():
    longest_allowed = "https://" + "p" * (125 - len("https://"))
    check(from_environment(VALID | {"PUBLIC_BASE_URL": longest_allowed}), relaxed=False)
    assert "PUBLIC_BASE_URL is too long" in refusal(PUBLIC_BASE_URL=longest_allowed + "p")


def test_several_webhook_secrets_may_be_given_for_rotation():
    config = from_environment(VALID | {"MONIME_WEBHOOK_SECRET": " whsec_new , whsec_old,"})
    check(config, relaxed=False)
    assert config["MONIME_WEBHOOK_SECRETS"] == ["whsec_new", "whsec_old"]


def test_trailing_slashes_are_dropped_from_urls():
    config = from_environment(VALID | {"PUBLIC_BASE_URL": "https://pay.example/", "APP_URL": "https://shop.example/"})
    check(config, relaxed=False)
    assert (config["PUBLIC_BASE_URL"], config["APP_URL"]) == ("https://pay.example", "https://shop.example")


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:p@db/shop", "postgresql+psycopg://u:p@db/shop"),
        ("postgresql://u@db/shop", "postgresql+psycopg://u@db/shop"),
        ("postgresql+psycopg://u@db/shop", "postgresql+psycopg://u@db/shop"),
        ("sqlite:////data/shop.db", "sqlite:////data/shop.db"),
    ],
)
def test_postgres_urls_are_spoken_with_psycopg_3(given, used):
    assert normalise_database_url(given) == used


@pytest.mark.parametrize("mode", ["TESTING", "DEBUG"])
def test_in_tests_and_development_without_database_url_the_service_uses_sqlite_under_instance(mode):
    app = create_app(from_environment(VALID | {"DATABASE_URL": ""}) | {mode: True})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{app.instance_path}/monime-checkout.sqlite3"


def test_elsewhere_database_url_is_required_rather_than_a_throwaway_sqlite_file():
    assert "DATABASE_URL is required" in refusal(DATABASE_URL=None)
    check(from_environment(VALID | {"DATABASE_URL": ""}), relaxed=True)
    with pytest.raises(ConfigError, match="Invalid configuration: DATABASE_URL is required"):
        create_app(from_environment(VALID | {"DATABASE_URL": ""}))


def test_sqlite_chosen_explicitly_is_accepted(tmp_path):
    app = started(tmp_path)
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/shop.sqlite3"


def test_create_app_refuses_to_start_misconfigured():
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL is required"):
        create_app(from_environment(VALID | {"PUBLIC_BASE_URL": ""}))


def test_cors_origins_are_a_list_of_origins():
    config = from_environment(VALID | {"CORS_ORIGINS": "https://shop.example/, http://127.0.0.1:3000"})
    check(config, relaxed=False)
    assert config["CORS_ORIGINS"] == ["https://shop.example", "http://127.0.0.1:3000"]
    assert "not an origin" in refusal(CORS_ORIGINS="https://shop.example/path")
    assert "not an origin" in refusal(CORS_ORIGINS="*")


def test_a_webhook_secret_of_only_commas_is_no_secret():
    assert "MONIME_WEBHOOK_SECRET holds no secret" in refusal(MONIME_WEBHOOK_SECRET=" , ,")


def test_the_retry_deadline_stays_well_under_thirty_seconds():
    check(from_environment(VALID | {"MONIME_RETRY_DEADLINE": "25"}), relaxed=False)
    assert "MONIME_RETRY_DEADLINE must be at most 25 s" in refusal(MONIME_RETRY_DEADLINE="26")


@pytest.mark.parametrize("name", ["RATELIMIT_CHECKOUT", "RATELIMIT_REDIRECT_LOOKUPS"])
@pytest.mark.parametrize("value", ["often", "10 per", ""])
def test_rate_limits_must_be_rates(name, value):
    assert f"{name} must be a rate" in refusal(**{name: value})


def test_redirects_may_ask_monime_ten_times_a_minute_per_client_by_default():
    config = from_environment(VALID)
    check(config, relaxed=False)
    assert config["RATELIMIT_REDIRECT_LOOKUPS"] == "10/minute"


NOTIFY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_order_notifications_are_off_by_default_and_configured_from_the_environment():
    config = from_environment(VALID)
    check(config, relaxed=False)
    assert (config["NOTIFY_URL"], config["NOTIFY_SECRETS"], config["NOTIFY_RETRY_FOR"]) == ("", [], 3 * 86400)
    config = from_environment(VALID | {"NOTIFY_URL": "https://shop.example/hooks", "NOTIFY_SECRET": NOTIFY_SECRET})
    check(config, relaxed=False)
    assert config["NOTIFY_SECRETS"] == [NOTIFY_SECRET] and config["NOTIFY_RELAY"] is True


@pytest.mark.parametrize(("value", "seconds"), [("3d", 259200), ("12h", 43200), ("90m", 5400), ("45", 45)])
def test_notify_retry_for_is_a_duration(value, seconds):
    config = from_environment(VALID | {"NOTIFY_RETRY_FOR": value})
    check(config, relaxed=False)
    assert config["NOTIFY_RETRY_FOR"] == seconds


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"NOTIFY_URL": "https://shop.example/hooks"}, "NOTIFY_SECRET is required when NOTIFY_URL is set"),
        ({"NOTIFY_URL": "shop.example/hooks", "NOTIFY_SECRET": NOTIFY_SECRET}, "NOTIFY_URL must be an absolute"),
        ({"NOTIFY_SECRET": "not-a-whsec"}, "NOTIFY_SECRET: secret 1 of 1 is not whsec_"),
        ({"NOTIFY_SECRET": f"{NOTIFY_SECRET},whsec_no*base64"}, "NOTIFY_SECRET: secret 2 of 2 is not whsec_"),
        ({"NOTIFY_RETRY_FOR": "3 days"}, "NOTIFY_RETRY_FOR must be a positive duration"),
        ({"NOTIFY_RELAY": "maybe"}, "NOTIFY_RELAY must be 1"),
    ],
)
def test_bad_notification_settings_are_named(changes, problem):
    assert problem in refusal(**changes)


def test_api_keys_are_name_key_pairs():
    config = from_environment(VALID | {"API_KEYS": " shop:k" + "x" * 30 + " , ops.team:" + "y" * 24})
    check(config, relaxed=False)
    assert config["API_KEYS"] == {"shop": "k" + "x" * 30, "ops.team": "y" * 24}
    check(empty := from_environment(VALID), relaxed=False)
    assert empty["API_KEYS"] == {}  # no key: the feed and resolve answer 401 to everyone


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("k" * 30, "pair 1 is not name:key"),
        (":" + "k" * 30, "pair 1 needs a name"),
        ("shop:short-secret-value", "pair 1 needs a key of at least 24"),
        ("shop:", "pair 1 needs a key of at least 24"),
        ("shop:with a space in the secret key", "pair 1 needs a key"),
        ("sh op:" + "k" * 30, "pair 1 needs a name"),
        ("shop:" + "k" * 30 + ",shop:" + "j" * 30, "pair 2 repeats the name 'shop'"),
        ("shop:" + "k" * 30 + ",ops:" + "k" * 30, "pair 2 repeats the key of another pair"),
    ],
)
def test_api_keys_are_checked_and_never_shown(value, problem):
    message = refusal(API_KEYS=value)
    assert problem in message
    assert "kkkkkkkkkkkkkk" not in message and "secret" not in message.replace("API_KEYS", "")


def test_the_order_feed_delay_is_a_positive_number_of_seconds():
    assert "ORDER_FEED_DELAY must be a positive number" in refusal(ORDER_FEED_DELAY="0")
    config = from_environment(VALID)
    check(config, relaxed=False)
    assert config["ORDER_FEED_DELAY"] == 5.0


# The environment a service started by a shell would have: none of the service's settings.
BARE = {"PATH": os.environ["PATH"], "FLASK_SKIP_DOTENV": "1", "LANG": "C.UTF-8"}
BAD = {"PROXY_HOPS": "two", "MONIME_READ_TIMEOUT": "soon", "MONIME_MAX_IN_FLIGHT": "0"}
EVERY_PROBLEM = [
    "MONIME_WEBHOOK_SECRET is required",
    "APP_URL is required",
    "MONIME_ACCESS_TOKEN is required",
    "DATABASE_URL is required outside development and tests",
    "PROXY_HOPS must be the number of proxies",
    "MONIME_READ_TIMEOUT must be a positive number of seconds",
    "MONIME_MAX_IN_FLIGHT must be a whole number of calls to Monime, at least 1",
]
COMMANDS = {
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
    "flask orders show": [sys.executable, "-m", "flask", "--app", "app", "orders", "show", "ord_1001"],
    "flask db upgrade": [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_environment_is_one_line_naming_every_problem_under_gunicorn_and_flask(command):
    run = subprocess.run(COMMANDS[command], cwd=ROOT, env=BARE | BAD, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(("Invalid configuration: ", "Error: Invalid configuration: "))
    for problem in EVERY_PROBLEM:
        assert problem in run.stderr


def test_an_unreadable_catalog_stops_gunicorn_with_one_line(tmp_path):
    settings = VALID | {"DATABASE_URL": f"sqlite:///{tmp_path}/shop.sqlite3", "CATALOG_FILE": str(tmp_path / "no")}
    run = subprocess.run(
        COMMANDS["gunicorn"], cwd=ROOT, env=BARE | settings, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"CATALOG_FILE {str(tmp_path / 'no')!r} cannot be read: ")


def test_env_example_uncommented_is_read_alike_by_make_dev_and_flask_and_is_valid(tmp_path):
    """Every `# NAME=value` line of .env.example uncommented: scripts/dev sources it with the
    shell, the flask command reads it with python-dotenv; both see the same settings, and
    they pass the service's check outside development."""
    example = (ROOT / ".env.example").read_text()
    uncommented = re.sub(r"^# ([A-Z_]+=)", r"\1", example, flags=re.MULTILINE)
    assert uncommented.count("\n# ") >= 1 and "MONIME_WEBHOOK_SECRET=" in uncommented
    env_file = tmp_path / ".env"
    env_file.write_text(uncommented)
    names = re.findall(r"^([A-Z_]+)=", uncommented, flags=re.MULTILINE)

    shell = subprocess.run(
        ["bash", "-c", 'set -euo pipefail; set -a; . "$1"; set +a; env -0', "-", str(env_file)],
        env=BARE, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    sourced = dict(line.split("=", 1) for line in shell.stdout.split("\0") if line)
    read = dotenv_values(env_file)

    assert shell.stderr == ""
    assert {name: sourced[name] for name in names} == {name: read[name] for name in names}
    check(from_environment(read), relaxed=False)
