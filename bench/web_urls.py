"""bench/web.py's URLconf: every product URL, plus a bare view behind the same authentication as the API."""

from __future__ import annotations

import os
import random

from django.urls import path
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.models import Pair
from annotate.urls import urlpatterns as product_urlpatterns

PAIR_COUNT = int(os.environ.get("BENCH_WEB_PAIRS", "20000"))


@api_view(["GET"])
def bare(request: Request) -> Response:
    """One indexed query (a pair by primary key) behind token authentication: the floor an API view stands on."""
    pair = Pair.objects.filter(pk=random.randint(1, PAIR_COUNT)).values("id", "judgement_count").first()
    return Response({"pair": pair})


urlpatterns = [path("bench/bare/", bare, name="bench-bare"), *product_urlpatterns]
