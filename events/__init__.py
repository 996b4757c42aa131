"""The durable event and impression log the serving path appends to (``events.log``), its reader and
the ``recsys-log`` command (``events.cli``).

This package is a floor: it imports only the standard library, numpy, pandas and pyarrow, so the
Triton python-backend models can import it with nothing else installed.
"""
