"""The command line, one module per `python -m minissd <command>`: each defines
`add_arguments(parser)` and `run(args)` and only parses, checks paths and calls the
algorithm modules (which never import from here)."""
