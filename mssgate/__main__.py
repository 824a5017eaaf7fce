"""`python -m mssgate` is the `mssgate` command."""

from mssgate.cli import main

main()
