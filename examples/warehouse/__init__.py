"""The warehouse order saga of the Java original, as real processes.

Three small HTTP services, each with its own SQLite database (:mod:`.services`), three
sidecars running the ``order`` choreography (:mod:`.saga`) in fault-tolerant mode, and a demo
that starts them all and places orders through the initiator's HTTP API (:mod:`.demo`)::

    python -m examples.warehouse.demo --orders 50

:mod:`.cluster` starts and stops the processes; the integration test and the saga fault
campaign use it too.
"""
