"""Which version people prefer: Bradley-Terry ratings of head-to-head votes."""
