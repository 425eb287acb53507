"""Which model scores a sensor: an assigned one (first matching pattern), its own learned
one, or the default."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from edge_agent.core.model import SensorModel


class UnknownSensor(LookupError):
    """No model scores this sensor (no assignment matches and there is no default)."""


class ModelRouter:
    """Shipped models by name, patterns assigning them, and the models sensors learned."""

    def __init__(
        self,
        models: Mapping[str, SensorModel],
        assign: Sequence[tuple[str, str]] = (),
        default: str | None = None,
        learned: Mapping[str, SensorModel] | None = None,
    ) -> None:
        for pattern, name in assign:
            if name not in models:
                raise KeyError(f"models.assign maps {pattern!r} to model {name!r}, which is not loaded")
        if default is not None and default not in models:
            raise KeyError(f"default model {default!r} is not loaded")
        self.models = dict(models)
        self.assign = list(assign)
        self.default = default
        self.learned = dict(learned or {})  # sensor id -> its own model (learned, or loaded from the state dir)

    def assigned(self, sensor_id: str) -> SensorModel | None:
        """The model a pattern assigns to this sensor, else the one it learned; None if neither."""
        for pattern, name in self.assign:
            if fnmatch.fnmatchcase(sensor_id, pattern):
                return self.models[name]
        return self.learned.get(sensor_id)

    def default_model(self, sensor_id: str | None) -> SensorModel:
        if self.default is None:
            raise UnknownSensor(
                f"no model for sensor {sensor_id!r}: no models.assign pattern matches and models.default is unset"
            )
        return self.models[self.default]
