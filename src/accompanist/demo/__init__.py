"""The Online Boutique checkout as a choreography: the application behind ``accompanist demo``.

Google's Online Boutique is a shop of small gRPC services (cart, product catalog, currency,
payment, shipping, email) and a checkout service that calls them in turn. The Java original
of Accompanist replaced that checkout with a choreography of sidecars beside the services;
this package does the same in Python, as real processes:

- :mod:`.services`: the services, each a process with its own gRPC API and SQLite database,
  written as if they existed before the choreography (idempotent by a request id);
- :mod:`.checkout`: the checkout choreography over the roles ``frontend``, ``cart``,
  ``catalog``, ``currency``, ``payment``, ``shipping`` and ``email``;
- :mod:`.services.checkout`: the orchestrated checkout kept beside it, for comparison;
- :mod:`.cluster`, :mod:`.verify` and :mod:`.run`: what ``accompanist demo`` starts, checks
  and prints.

It needs gRPC (``pip install 'accompanist[demo]'``); importing this package does not.
"""

__all__: list[str] = []
