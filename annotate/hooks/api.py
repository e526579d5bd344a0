"""The staff API for webhooks: register endpoints (the secret is in the answer to the creation only), switch them
off or on, delete them, send a test event, and read each delivery's attempts and answers."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate import events
from annotate.hooks import services as hooks
from annotate.models import WebhookDelivery, WebhookEndpoint
from annotate.web.staff_api import NOT_STAFF, page_of, paginated, staff_of

NO_ENDPOINT = OpenApiResponse(description="No such webhook endpoint.")


class EndpointItem(serializers.ModelSerializer[WebhookEndpoint]):
    secret = serializers.CharField(source="secret_masked", read_only=True, help_text="Masked: shown once, at creation.")
    url = serializers.CharField(
        source="url_masked",
        read_only=True,
        help_text="Past the host and first path segment, masked: in full at creation.",
    )
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "url", "events", "active", "allow_private", "secret", "created_by", "created_at"]


class EndpointCreated(EndpointItem):
    url = serializers.CharField(read_only=True, help_text="In full: this once only.")
    secret = serializers.CharField(read_only=True, help_text="The signing secret, in full: this once only.")


class EndpointInput(serializers.Serializer[Any]):
    url = serializers.CharField(max_length=2000, help_text="http:// or https://; no user name or password.")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(events.WEBHOOK_EVENTS)), max_length=len(events.WEBHOOK_EVENTS)
    )
    allow_private = serializers.BooleanField(
        default=False, help_text="Allow private, loopback and link-local addresses for the URL's host."
    )


class EndpointChange(serializers.Serializer[Any]):
    active = serializers.BooleanField(help_text="false: no new deliveries; pending ones fail at their next attempt.")


class DeliveryAttempt(serializers.Serializer[Any]):
    attempt = serializers.IntegerField()
    at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True, help_text="The receiver's answer; null: none came.")
    error = serializers.CharField(help_text="Empty: delivered.")
    response = serializers.CharField(help_text="The start of the answer's body (capped).")
    milliseconds = serializers.IntegerField()


class DeliveryItem(serializers.ModelSerializer[WebhookDelivery]):
    attempt_log = DeliveryAttempt(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id", "event", "message_id", "status", "attempts", "next_attempt_at", "last_status_code", "last_error",
            "last_response", "attempt_log", "payload", "created_at", "delivered_at",
        ]  # fmt: skip


def _endpoint(endpoint_id: int) -> WebhookEndpoint:
    return get_object_or_404(WebhookEndpoint.objects.select_related("created_by"), pk=endpoint_id)


def _endpoints_create(request: Request) -> Response:
    data = EndpointInput(data=request.data)
    data.is_valid(raise_exception=True)
    endpoint = hooks.webhook_endpoint_create(
        url=data.validated_data["url"],
        event_names=data.validated_data["events"],
        allow_private=data.validated_data["allow_private"],
        created_by=staff_of(request),
    )
    return Response(EndpointCreated(endpoint).data, status=status.HTTP_201_CREATED)


@extend_schema(methods=["GET"], responses={200: page_of(EndpointItem), 403: NOT_STAFF}, operation_id="webhooks_list",
               summary="List webhook endpoints (secrets masked)")  # fmt: skip
@extend_schema(
    methods=["POST"],
    request=EndpointInput,
    responses={
        201: OpenApiResponse(EndpointCreated, description="Registered; `secret` is shown in full this once."),
        400: OpenApiResponse(description="A bad URL (scheme, host, private address) or events, in `errors`."),
        403: NOT_STAFF,
    },
    operation_id="webhooks_create",
    summary="Register a webhook endpoint for events",
)
@api_view(["GET", "POST"])
@permission_classes([IsAdminUser])
def webhooks_collection(request: Request) -> Response:
    if request.method == "POST":
        return _endpoints_create(request)
    return paginated(request, WebhookEndpoint.objects.select_related("created_by").order_by("-id"), EndpointItem)


@extend_schema(methods=["GET"], responses={200: EndpointItem, 403: NOT_STAFF, 404: NO_ENDPOINT},
               summary="A webhook endpoint (secret masked)")  # fmt: skip
@extend_schema(methods=["PATCH"], request=EndpointChange,
               responses={200: EndpointItem, 400: OpenApiResponse(description="`active` missing or not a boolean."),
                          403: NOT_STAFF, 404: NO_ENDPOINT},
               summary="Switch a webhook endpoint off or on")  # fmt: skip
@extend_schema(methods=["DELETE"], responses={204: None, 403: NOT_STAFF, 404: NO_ENDPOINT},
               summary="Delete a webhook endpoint and its deliveries")  # fmt: skip
@api_view(["GET", "PATCH", "DELETE"])
@permission_classes([IsAdminUser])
def webhooks_detail(request: Request, endpoint_id: int) -> Response:
    endpoint = _endpoint(endpoint_id)
    if request.method == "DELETE":
        hooks.webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)
    if request.method == "PATCH":
        data = EndpointChange(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = hooks.webhook_endpoint_set_active(endpoint=endpoint, active=data.validated_data["active"])
    return Response(EndpointItem(endpoint).data)


@extend_schema(request=None, responses={202: DeliveryItem, 403: NOT_STAFF, 404: NO_ENDPOINT},
               operation_id="webhooks_test",
               summary="Send a webhook.test event to this endpoint (a worker sends it)")  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def webhooks_test(request: Request, endpoint_id: int) -> Response:
    delivery = hooks.webhook_endpoint_test(endpoint=_endpoint(endpoint_id))
    return Response(DeliveryItem(delivery).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(responses={200: page_of(DeliveryItem), 403: NOT_STAFF, 404: NO_ENDPOINT},
               operation_id="webhook_deliveries_list",
               summary="An endpoint's deliveries, newest first, with every attempt and answer")  # fmt: skip
@api_view(["GET"])
@permission_classes([IsAdminUser])
def webhooks_deliveries(request: Request, endpoint_id: int) -> Response:
    endpoint = _endpoint(endpoint_id)
    return paginated(request, endpoint.deliveries.order_by("-id"), DeliveryItem)
