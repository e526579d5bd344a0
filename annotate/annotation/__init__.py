"""The annotation queue: leases, votes, campaigns, the annotate page and the annotators' API."""
