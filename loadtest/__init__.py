"""The load tester behind ``smsgw loadtest``: open-loop arrivals, loss accounting, reports.

See :mod:`loadtest.runner` for the run, :mod:`loadtest.scenarios` for what it sends.
"""

from .histogram import Histogram
from .scenarios import SCENARIOS, LoadTestError

__all__ = ["SCENARIOS", "Histogram", "LoadTestError"]
