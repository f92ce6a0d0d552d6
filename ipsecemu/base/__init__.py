"""Shared foundations every other package may import: the error tree, the algorithm registry and the
SA types the protocol cores and the data-path backends agree on.  Nothing here does I/O."""
