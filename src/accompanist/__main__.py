"""``python -m accompanist`` is the ``accompanist`` command."""

from accompanist.cli import main

main()
