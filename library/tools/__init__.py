"""The logic behind the command-line tools in ``tools/`` (also called by the GUI)."""
