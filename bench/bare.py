"""The baseline for bench/run: bare Flask that parses a JSON body and answers it.

Served by the same gunicorn.conf.py as the service, so the difference between
the two is what the service itself does (signature, schema, database, logs).
"""

from flask import Flask, request

app = Flask(__name__)


@app.post("/api/webhooks/monime")
def webhook():
    event = request.get_json()
    return {"received": True, "eventId": event["event"]["id"]}
