"""The staff dashboard: a summary that reads every area."""
