"""Settings for bench/web.py only: the product's settings with a URLconf that adds a bare view to compare against."""

from annotate.settings import *  # noqa: F403

ROOT_URLCONF = "bench.web_urls"
ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]  # noqa: F405 (the query count runs through Django's test client)
