import os

from flask import Flask, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
webhook = Webhook(os.environ["NOTIFY_SECRET"].split(",")[0])
seen = set()  # in production: a table with the webhook-id as its primary key


@app.post("/")
def order_notification():
    try:
        notification = webhook.verify(request.get_data(), request.headers)
    except WebhookVerificationError:
        return "bad signature", 400
    if request.headers["webhook-id"] not in seen:  # delivered at least once: act once
        seen.add(request.headers["webhook-id"])
        order = notification["order"]
        print(notification["type"], order["orderId"], order["status"], flush=True)  # ship, email, …
    return "", 204
