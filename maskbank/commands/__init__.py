"""Sub-commands of the ``maskbank`` command line, one Typer app per file."""
