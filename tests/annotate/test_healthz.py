import pytest

pytestmark = pytest.mark.django_db


def test_health_reports_every_part(client, make_pair, settings):
    settings.VLLM_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
    make_pair(), make_pair()

    response = client.get("/healthz")

    assert response.status_code == 200
    report = response.json()
    assert report["database"] == "ok"
    assert report["broker"] == "ok"
    assert report["vllm"] == "unreachable"
    assert report["status"] == "degraded"
    assert report["serving_model_version"] == "policy-v0-secret-name"
    assert report["ready_pairs"] == 2
    assert report["serving_model_loaded"] is False
    assert report["last_round"] is None


def test_health_needs_no_login_and_reports_an_unreachable_broker(client, settings):
    from annotate.celery import app

    previous = app.conf.broker_write_url
    app.conf.broker_write_url = "redis://127.0.0.1:9/0"
    try:
        report = client.get("/healthz").json()
    finally:
        app.conf.broker_write_url = previous
    assert report["broker"].startswith("unreachable")
    assert report["serving_model_version"] is None and report["ready_pairs"] == 0
