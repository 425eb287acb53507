"""edge-anomaly-agent: an MQTT edge agent that flags sensor anomalies with an Isolation Forest."""


def package_version(unknown: str) -> str:
    """The installed edge-anomaly-agent version, or ``unknown`` when it is not installed.

    importlib.metadata is imported on the first call only: about 0.25 MB that the running
    agent, held to 50 MB, spends only when something asks for its version.
    """
    from importlib import metadata

    try:
        return metadata.version("edge-anomaly-agent")
    except metadata.PackageNotFoundError:
        return unknown
