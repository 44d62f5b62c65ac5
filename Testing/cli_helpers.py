"""Running the `xraytodrr` CLI in-process for tests."""

from typer.testing import CliRunner

from XrayToDRRLib import cli

cli._load_commands()
_runner = CliRunner()


def run_cli(*args):
    """Invoke `xraytodrr ARGS...`; returns click's Result (exit_code, output, stderr)."""
    return _runner.invoke(cli.app, [str(a) for a in args], catch_exceptions=False)
