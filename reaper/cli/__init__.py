"""The command-line shell: argparse commands, rendering, `reaper invoke` and `reaper demo`."""
