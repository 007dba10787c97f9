"""The ``mol`` command line: one module per command under mol_cli/commands/, each registering its subcommand
(mol_cli/main.py collects them). The engine's commands (train, sweep, export, interpolate, eval-task, replicate,
demo) call mol_engine's library functions, the service's (up, api, worker, token) api/service.py and api/auth.py,
and ``mol client`` the REST API through api/client.py. Nothing imports this package but the ``mol`` entry point.
"""
