"""The three checkpoint metrics measured on a MiniSom-like map, without importing MiniSom."""

from __future__ import annotations

from typing import Any, Protocol

from oracle_client.models import SomMetrics


class SomLike(Protocol):
    """What is used of MiniSom's API (2.3): any map offering these three methods will do."""

    def quantization_error(self, data: Any) -> float: ...
    def topographic_error(self, data: Any) -> float: ...
    def activation_response(self, data: Any) -> Any: ...


def som_metrics(som: SomLike, data: Any) -> SomMetrics:
    """(mqe, topographic_error, dead_neuron_ratio) of `som` on `data`, in `report`'s order.

    A dead neuron is a unit that is the best-matching unit of no sample. A diverged map gives
    NaN here, which `report` sends as null.
    """
    hits = som.activation_response(data)  # wins per unit, an array shaped like the map
    return SomMetrics(
        mqe=float(som.quantization_error(data)),
        topographic_error=float(som.topographic_error(data)),
        dead_neuron_ratio=float((hits == 0).mean()),
    )
