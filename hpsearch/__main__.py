"""`python -m hpsearch` is the `hpsearch` command (how launch starts its workers)."""

from hpsearch.cli import main

main()
