"""Webhooks: staff register URLs for events; each event is delivered signed (Standard Webhooks) from a worker after
the transaction that made it commits, retried with backoff, its attempts recorded."""
