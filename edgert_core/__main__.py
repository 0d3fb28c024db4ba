"""``python -m edgert_core`` runs the ``edge-rt`` command."""

from edgert_core.cli.app import main

main()
