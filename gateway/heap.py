"""The garbage collector's settings for a long-running server process.

CPython's cyclic collector scans every tracked object in its oldest generation on a full
collection. After start a gateway holds a few hundred thousand objects that live as long as
the process (modules, classes, configuration, compiled routes); scanning them made each full
collection a pause of ~50 ms under load, stalling every request on the event loop at once.
:func:`settle` moves them out of the collector's sight once the service is up (``gc.freeze``)
and makes young collections rarer, so the collector's work follows what is allocated while
serving rather than what was loaded at start.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Allocations (minus deallocations) of tracked objects between young collections (CPython: 700)."""


def settle() -> None:
    """Freeze what exists now and space out young collections; call once the service is up."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
