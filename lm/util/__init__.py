"""Small helpers every layer may use: atomic file writes, one process per directory, fonts."""
