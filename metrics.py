"""Prometheus metrics, served at /metrics.

Under gunicorn every worker writes its samples to PROMETHEUS_MULTIPROC_DIR
(gunicorn.conf.py sets it up) and a scrape adds them up, whichever worker
answers. Orders by status and the notification outbox's backlog are read
from the database at scrape time.
"""

import os
from datetime import UTC

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from models import Notification, NotificationStatus, Order, Status, db, utcnow

CHECKOUTS = Counter("checkouts_total", "POST /api/checkout by result", ["result"])
WEBHOOK_SIGNATURES = Counter("webhook_signatures_total", "Webhook deliveries by signature check", ["result"])
WEBHOOK_EVENTS = Counter("webhook_events_total", "Verified webhook events by outcome", ["outcome"])
WEBHOOK_EVENT_VARIANTS = Counter(
    "webhook_event_variants_total", "Deliveries of a stored event id with a different body (held for review)"
)
REDIRECT_LOOKUPS_SKIPPED = Counter(
    "redirect_lookups_skipped_total", "Shopper redirects that did not ask Monime, by reason", ["reason"]
)
NOTIFICATION_DELIVERIES = Counter(
    "notification_deliveries_total", "Attempts to deliver an order notification to NOTIFY_URL, by result", ["result"]
)
MONIME_LATENCY = Histogram(
    "monime_request_duration_seconds",
    "Each HTTP attempt at Monime's API",
    ["operation", "result"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# The bulkhead (monime.Bulkhead): calls to Monime refused because every slot of the worker was
# taken, and the slots in use and available, added up over the live workers.
MONIME_CALLS_SHED = Counter(
    "monime_calls_shed_total",
    "Calls to Monime not made because every slot of the worker was taken (MONIME_MAX_IN_FLIGHT), by operation",
    ["operation"],
)
MONIME_CALLS_IN_FLIGHT = Gauge(
    "monime_calls_in_flight", "Slots for calls to Monime in use, over every worker", multiprocess_mode="livesum"
)
MONIME_CALLS_MAX_IN_FLIGHT = Gauge(
    "monime_calls_max_in_flight",
    "Slots for calls to Monime, over every worker (0 for a process without a cap)",
    multiprocess_mode="livesum",
)


class OrdersByStatus:
    """orders{status="..."}, read from the database when scraped (inside the request)."""

    def collect(self):
        """The orders gauge, counted by status in the database at scrape time."""
        counts = dict(db.session.execute(select(Order.status, func.count()).group_by(Order.status)).all())
        family = GaugeMetricFamily("orders", "Orders by status", labels=["status"])
        for status in Status:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family


class NotificationOutbox:
    """The outbox's backlog, read from the database when scraped: how many notifications
    wait to be delivered, and for how long the oldest has waited."""

    def collect(self):
        """The outbox gauges: pending notifications, and the age in seconds of the oldest."""
        pending, oldest = db.session.execute(
            select(func.count(), func.min(Notification.created_at)).where(
                Notification.status == NotificationStatus.PENDING
            )
        ).one()
        if oldest is not None and oldest.tzinfo is None:  # SQLite: stored as UTC, read without a zone
            oldest = oldest.replace(tzinfo=UTC)
        yield GaugeMetricFamily("notifications_pending", "Order notifications not yet delivered", value=pending)
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily(
            "notifications_oldest_pending_age_seconds",
            "How long the oldest undelivered notification has waited",
            value=age,
        )


def exposition() -> tuple[bytes, str]:
    """The text a Prometheus scrape reads."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    orders = CollectorRegistry(auto_describe=True)
    orders.register(OrdersByStatus())
    orders.register(NotificationOutbox())
    return generate_latest(counters) + generate_latest(orders), CONTENT_TYPE_LATEST
