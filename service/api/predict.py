"""Stateless prediction for one partial history (the seed's `evaluate_model.py --sequence`)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Request

from core.errors import InvalidInput, ModelUnavailable
from core.features import encode_context
from core.reference import history_array
from core.scoring import Weights
from service.auth import Principal, Role, require
from service.bodies import JSONRoute
from service.schemas import Metrics, PredictIn, PredictionPublic
from service.state import state_of

router = APIRouter(prefix="/v1", tags=["predict"], route_class=JSONRoute)


@router.post(
    "/predict",
    response_model=PredictionPublic,
    responses={503: {"description": "no model is active (the checkpoints use the median rule)"}},
)
async def predict(
    body: PredictIn, request: Request, _: Principal = Depends(require(Role.worker))
) -> PredictionPublic:
    rows = list(
        zip(body.epochs, body.mqe, body.topographic_error, body.dead_neuron_ratio, strict=True)
    )
    history = history_array(rows, body.max_epochs)
    if not np.all(np.isfinite(history[:, 1:4])):
        # The input's fault, not the service's: a 503 would have clients retry it forever.
        raise InvalidInput(
            "mqe, topographic_error and dead_neuron_ratio must all be finite to forecast: "
            "a diverged map (null, NaN or Infinity) has nothing to forecast from"
        )
    predictor = state_of(request).models.current
    if predictor is None:
        raise ModelUnavailable("no model is active yet; decisions use the median rule meanwhile")
    weights = (
        tuple(body.weights)
        if body.weights
        else (
            Weights().mqe,
            Weights().topographic_error,
            Weights().dead_neuron_ratio,
        )
    )
    p = predictor.predict(history, weights, encode_context(body.config, body.max_epochs))
    return PredictionPublic(
        predicted_final=Metrics(
            mqe=p.final[0], topographic_error=p.final[1], dead_neuron_ratio=p.final[2]
        ),
        predicted_score=p.score,
        score_interval=p.interval(0.8),
        model_version=p.model_version,
    )
