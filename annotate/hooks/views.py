"""Staff pages for webhooks: the endpoints with a form to register one (its secret shown once, on the answer to the
form), and each endpoint's deliveries with every attempt and answer. Every form is a plain POST."""

from __future__ import annotations

from django import forms
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import events
from annotate.errors import Invalid
from annotate.hooks import services as hooks
from annotate.models import WebhookEndpoint
from annotate.web.pages import AppRequest, staff_required

DELIVERIES_SHOWN = 50


class EndpointForm(forms.Form):
    url = forms.CharField(label="URL", max_length=2000, help_text="http:// or https://; no user name or password.")
    events = forms.MultipleChoiceField(
        choices=sorted(events.WEBHOOK_EVENTS.items()), widget=forms.CheckboxSelectMultiple
    )
    allow_private = forms.BooleanField(
        required=False, label="Allow private addresses", help_text="Loopback, private and link-local hosts."
    )


class ActiveForm(forms.Form):
    active = forms.ChoiceField(choices=[("on", "on"), ("off", "off")])


@require_http_methods(["GET", "POST"])
@staff_required
def webhooks_page(request: AppRequest) -> HttpResponse:
    form = EndpointForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = hooks.webhook_endpoint_create(
                url=form.cleaned_data["url"],
                event_names=form.cleaned_data["events"],
                allow_private=form.cleaned_data["allow_private"],
                created_by=request.user,
            )
        except Invalid as invalid:
            for name, message in invalid.errors.items():
                form.add_error(name if name in form.fields else None, message)
        else:
            form = EndpointForm()
    endpoints = WebhookEndpoint.objects.select_related("created_by").order_by("-id")
    context = {"form": form, "endpoints": endpoints, "created": created, "event_names": events.WEBHOOK_EVENTS}
    failed = request.method == "POST" and created is None
    return render(request, "webhooks/list.html", context, status=400 if failed else 200)


def _detail(request: AppRequest, endpoint: WebhookEndpoint, *, error: str = "", status: int = 200) -> HttpResponse:
    deliveries = endpoint.deliveries.order_by("-id")[:DELIVERIES_SHOWN]
    context = {"endpoint": endpoint, "deliveries": deliveries, "error": error}
    return render(request, "webhooks/detail.html", context, status=status)


@require_GET
@staff_required
def webhook_detail(request: AppRequest, endpoint_id: int) -> HttpResponse:
    return _detail(request, get_object_or_404(WebhookEndpoint, pk=endpoint_id))


@require_POST
@staff_required
def webhook_test(request: AppRequest, endpoint_id: int) -> HttpResponse:
    hooks.webhook_endpoint_test(endpoint=get_object_or_404(WebhookEndpoint, pk=endpoint_id))
    return HttpResponseRedirect(reverse("webhook", args=[endpoint_id]), status=303)


@require_POST
@staff_required
def webhook_active(request: AppRequest, endpoint_id: int) -> HttpResponse:
    endpoint = get_object_or_404(WebhookEndpoint, pk=endpoint_id)
    form = ActiveForm(request.POST)
    if not form.is_valid():
        return _detail(request, endpoint, error="Say whether to switch it on or off.", status=400)
    hooks.webhook_endpoint_set_active(endpoint=endpoint, active=form.cleaned_data["active"] == "on")
    return HttpResponseRedirect(reverse("webhook", args=[endpoint_id]), status=303)


@require_POST
@staff_required
def webhook_delete(request: AppRequest, endpoint_id: int) -> HttpResponse:
    hooks.webhook_endpoint_delete(endpoint=get_object_or_404(WebhookEndpoint, pk=endpoint_id))
    return HttpResponseRedirect(reverse("webhooks"), status=303)
