"""CLI verbs: filled in by the registration issue."""
