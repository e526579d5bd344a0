"""Web plumbing every area's pages and API share: the staff check, page-or-fragment, errors, throttles."""
