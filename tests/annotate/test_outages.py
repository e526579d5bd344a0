"""The broker or the model server down or broken: pages still answer, /healthz says what is wrong."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

# transaction=True: the refill request is sent on commit, as in production, so it really reaches the broker.
pytestmark = pytest.mark.django_db(transaction=True)


def test_pages_and_the_api_answer_with_the_broker_down(broker_down, client, annotator, make_pair):
    client.force_login(annotator)
    waiting = client.get("/")  # nothing ready: the page asks for a refill, which cannot be sent
    assert waiting.status_code == 200
    assert 'data-testid="waiting"' in waiting.content.decode()

    api = APIClient()
    api.force_authenticate(annotator)
    cache.clear()
    assert api.get("/api/pairs/next/").status_code == 204

    pair = make_pair()  # what is ready is still served
    served = api.get("/api/pairs/next/")
    assert served.status_code == 200 and served.json()["pair"] == pair.pk

    report = client.get("/healthz").json()
    assert report["broker"].startswith("unreachable") and report["status"] == "degraded"


def test_the_health_check_reports_the_broker_down(broker_down, client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["broker"].startswith("unreachable")


class _BrokenModelServer(BaseHTTPRequestHandler):
    status = 500
    body = b"{}"

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def broken_model_server(settings):
    def start(status, body):
        handler = type("Handler", (_BrokenModelServer,), {"status": status, "body": body})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        settings.VLLM_BASE_URL = f"http://127.0.0.1:{server.server_address[1]}"

    servers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "state"),
    [
        (500, b"internal error", "unreachable"),  # the client treats a 5xx as "not available now"
        (401, b'{"error": "bad key"}', "error"),
        (200, b"not json at all", "error"),
        (200, b"[1, 2, 3]", "error"),
        (200, b'{"data": [{"no_id": 1}]}', "error"),
    ],
)
def test_the_health_check_survives_a_model_server_that_answers_badly(broken_model_server, client, status, body, state):
    broken_model_server(status, body)
    response = client.get("/healthz")
    assert response.status_code == 200
    report = response.json()
    assert report["vllm"].startswith(state) and report["status"] == "degraded"
    assert report["database"] == "ok" and report["serving_model_loaded"] is False
