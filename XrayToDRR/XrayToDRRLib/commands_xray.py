"""CLI verbs: filled in by their own step of the foundation issue."""
