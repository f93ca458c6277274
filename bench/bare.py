"""The baseline for bench/run: bare Flask that parses a JSON body and answers it.

Served by the same gunicorn.conf.py as the service, so the difference between
the two is what the service itself does (signature, schema, database, logs).
"""

from flask import Flask, request

app = Flask(__name__)
# gunicorn.conf.py's post_worker_init starts the notification relay for any Flask app it serves;
# this one has nothing to deliver.
app.config.update(NOTIFY_URL="", NOTIFY_RELAY=False)


@app.post("/api/webhooks/monime")
def webhook():
    event = request.get_json()
    return {"received": True, "eventId": event["event"]["id"]}
