"""One module per ``rram`` subcommand; shared argument helpers in :mod:`.common`."""
