"""The `hpsearch` command line (`main`); devices, seeds, storages and environment variables are
resolved here, at the edge, and passed down as plain arguments."""

from hpsearch.cli.main import main

__all__ = ["main"]
