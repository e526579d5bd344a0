"""Sampling pairs from the model server into the ready-pair buffer; the model server's client."""
