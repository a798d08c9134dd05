class RuntimeInputError(Exception):
    """Bad input to the runtime or the crossbar mapping; the CLI prints it as one line (exit 2)."""
