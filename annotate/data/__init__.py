"""Data in and out: imports, exports, dataset cards."""
