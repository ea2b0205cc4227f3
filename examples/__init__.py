"""Runnable example choreographies.

Each module declares one or more choreographies and explains in its docstring what it shows.
``examples/test_examples.py`` runs every example under both interpreters, so the examples
cannot silently rot; try one from the shell with::

    accompanist check examples.bookseller:bookseller SICP
"""
