"""Every example choreography in one ``ac.App``, for running them in sidecar processes.

Each sidecar process imports this module, so each has its own ledgers: the bank example's
``bank_a`` sidecar owns ``BANK_A`` and the ``bank_b`` sidecar owns ``BANK_B``, as two banks
would. Run a role with::

    accompanist sidecar --app examples.app:app --role buyer --listen 127.0.0.1:7001 \\
        --api 127.0.0.1:8001 --peer seller=127.0.0.1:7002
"""

from __future__ import annotations

import accompanist as ac
from examples.bank_transfer import Ledger, make_transfer
from examples.bookseller import bookseller
from examples.diffie_hellman import group_key_exchange
from examples.merge_sort import merge_sort, sort_remotely
from examples.travel import Cars, Flights, Hotels, make_trip

__all__ = ["BANK_A", "BANK_B", "CARS", "FLIGHTS", "HOTELS", "app"]

BANK_A = Ledger({"alice": 1_000_000})
BANK_B = Ledger({"bob": 0})
FLIGHTS, HOTELS, CARS = Flights(seats=100), Hotels(), Cars(per_city=1)  # each in its own role's sidecar

app = ac.App(
    bookseller,
    group_key_exchange,
    make_transfer(BANK_A, BANK_B, source="alice", target="bob"),
    merge_sort,
    sort_remotely,
    make_trip(FLIGHTS, HOTELS, CARS),
)
