"""Which votes to trust: agreement statistics, annotator quality, preference rules."""
