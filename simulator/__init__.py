"""Sensor simulator: realistic MQTT sensor streams with labelled anomalies, for testing the edge agent."""

from simulator.streams import (
    ANOMALY_KINDS,
    CSV_HEADER,
    DEFAULT_ANOMALY_RATE,
    PROFILES,
    SENSOR_KINDS,
    SensorProfile,
    SensorSpec,
    SimReading,
    Simulation,
)

__all__ = [
    "ANOMALY_KINDS",
    "CSV_HEADER",
    "DEFAULT_ANOMALY_RATE",
    "PROFILES",
    "SENSOR_KINDS",
    "SensorProfile",
    "SensorSpec",
    "SimReading",
    "Simulation",
]
