"""The ``sjd-jax`` command line: ``main`` dispatches one subcommand per job to its module."""
