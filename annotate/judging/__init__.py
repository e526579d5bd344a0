"""The AI judge: an OpenAI-compatible model that votes beside the people, its measured trust, and the routing
that trust earns (issue 20, parts 1-3)."""
