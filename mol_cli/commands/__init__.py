"""One module per ``mol`` command, each with its ``register(subparsers)`` (mol_cli/subcommand.py); the client's
helpers (client.py's, client_refs.py) sit beside the client's commands."""
