"""The on-device recipe search behind `sdk.optimize` (see docs/optimize.md).

The package is named `optimizer` so that importing it never replaces the function `sdk.optimize`.
"""
from __future__ import annotations

from sdk.optimizer.search import Candidate, Estimate, OptimizeResult, SearchCost, Unavailable, optimize
from sdk.optimizer.space import Budget, SearchSpace

__all__ = ["Budget", "Candidate", "Estimate", "OptimizeResult", "SearchCost", "SearchSpace", "Unavailable", "optimize"]
