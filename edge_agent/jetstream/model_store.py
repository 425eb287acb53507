"""Learned models in a JetStream object store, by partition and sensor, so a sensor that moves keeps its model.

An object is named ``<partition>/<sha256 of the sensor id>`` (as the local state dir names
folders) and holds the model's files; the manifest's sha256 digests are checked when it is
loaded, as for a model on disk. A partition's models are loaded when an agent takes the
partition, before it pulls the partition's first reading.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from pathlib import Path

from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from edge_agent.core.model import ModelError, SensorModel
from edge_agent.learning import folder_name, model_dir, save_learned
from edge_agent.model_files import load_model

log = logging.getLogger(__name__)


def pack(folder: Path) -> bytes:
    """A model folder's files as one JSON object: file name -> base64 of its bytes."""
    files = {p.name: base64.b64encode(p.read_bytes()).decode() for p in sorted(folder.iterdir()) if p.is_file()}
    return json.dumps(files).encode()


def unpack(data: bytes, sensor_id: str | None) -> SensorModel:
    """The model an object holds, its digests checked; raises ModelError when it is not one."""
    try:
        files = json.loads(data)
        if not isinstance(files, dict):
            raise ValueError("not an object of files")
        with tempfile.TemporaryDirectory(prefix="edge-model-") as tmp:
            for name, text in files.items():
                if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") or not isinstance(text, str):
                    raise ValueError(f"file name {name!r} is not a plain file name")
                (Path(tmp) / name).write_bytes(base64.b64decode(text, validate=True))
            model = load_model(Path(tmp), require_digest=True)
    except (ValueError, OSError) as e:
        raise ModelError(f"stored model is unreadable: {e}") from e
    stored_id = model.manifest.get("sensor_id")
    if (sensor_id is not None and stored_id != sensor_id) or not isinstance(stored_id, str):
        raise ModelError(f"stored model names sensor {stored_id!r}, not the one its name says")
    return model


class ModelStore:
    """The object store bucket; every method runs on the NATS loop."""

    def __init__(self, store: ObjectStore, state_dir: Path) -> None:
        self.store = store
        self.state_dir = state_dir

    async def save(self, partition: int, sensor_id: str) -> None:
        folder = model_dir(self.state_dir, sensor_id)
        await self.store.put(f"{partition}/{folder_name(sensor_id)}", pack(folder))

    async def load(self, partition: int) -> dict[str, SensorModel]:
        """Every model stored for ``partition``, also saved to the local state dir; bad ones are logged and skipped."""
        try:
            infos = await self.store.list(ignore_deletes=True)
        except NotFoundError:
            return {}
        out: dict[str, SensorModel] = {}
        prefix = f"{partition}/"
        for info in infos:
            if not info.name.startswith(prefix):
                continue
            try:
                result = await self.store.get(info.name)
                model = unpack(result.data or b"", None)
                sensor_id = str(model.manifest["sensor_id"])
                if folder_name(sensor_id) != info.name[len(prefix):]:
                    raise ModelError("its sensor id does not hash to its name")
                out[sensor_id] = save_learned(self.state_dir, sensor_id, model)
            except (ModelError, OSError) as e:
                log.error("ignoring stored model %s (the sensor learns again): %s", info.name, e)
        return out
