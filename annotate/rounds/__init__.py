"""Training rounds: their lifecycle, the training process, the human canary; pages and staff API."""
