"""CLI verbs of this Lib (plugged into `xraytodrr` through the xraytodrr.commands entry point)."""
