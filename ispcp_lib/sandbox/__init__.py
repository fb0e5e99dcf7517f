"""The demo and test world: a dead ispCP server's backup and a fresh target, with real services.

`ispcp_lib.sandbox.world.build_world` is the entry point. Modules stay importable on their own
(nothing heavy is imported here), so e.g. the Postfix or DNS helpers don't pull in MariaDB setup.
"""
