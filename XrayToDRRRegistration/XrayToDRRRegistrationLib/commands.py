"""CLI verbs of this Lib (plugged into `xraytodrr` through the xraytodrr.commands entry point).

Each group of verbs lives in its own module; importing them here registers them.
"""

from . import commands_model, commands_register  # noqa: F401
