"""Read one trial's TensorBoard run (scalars and HParams) back with TensorBoard's own reader.

The trainer writes every trial to ``studies/<study>/runs/<uid>/trial-<number>/tb/``; this is how the tests check what
TensorBoard will show, without a private parser of the event format.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

# 0 = keep every event of a kind; the defaults drop scalars beyond 10,000 points by reservoir sampling.
_KEEP_ALL = {"scalars": 0, "tensors": 0}


def trial_run_dir(studies_dir: str | os.PathLike, study_name: str, study_uid: str, trial_number: int) -> Path:
    """Where the trainer writes trial ``trial_number``'s events: ``<studies_dir>/<study>/runs/<uid>/trial-<n>/tb``."""
    return Path(studies_dir) / study_name / "runs" / study_uid / f"trial-{trial_number}" / "tb"


def read_tensorboard(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Scalars and HParams of one run directory, as TensorBoard's ``EventAccumulator`` reads them.

    Returns ``{"scalars": {tag: [(step, value), ...]}, "hparams": {name: value},
    "metrics": {tag: last value of each HParams metric}, "status": "STATUS_SUCCESS" | ... | None}``.
    A step written twice (a resumed run) keeps its last value.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"TensorBoard run directory {run_dir} does not exist")
    accumulator = EventAccumulator(str(run_dir), size_guidance=_KEEP_ALL)
    accumulator.Reload()

    scalars: dict[str, list[tuple[int, float]]] = {}
    for tag in accumulator.Tags()["scalars"]:
        by_step = {event.step: float(event.value) for event in accumulator.Scalars(tag)}
        scalars[tag] = sorted(by_step.items())

    hparams: dict[str, Any] = {}
    metric_tags: list[str] = []
    status: str | None = None
    try:
        contents = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    except KeyError:  # the run has no HParams summaries (e.g. the trainer stopped before writing them)
        contents = {}
    if hparams_metadata.EXPERIMENT_TAG in contents:
        experiment = hparams_metadata.parse_experiment_plugin_data(contents[hparams_metadata.EXPERIMENT_TAG])
        metric_tags = [info.name.tag for info in experiment.metric_infos]
    if hparams_metadata.SESSION_START_INFO_TAG in contents:
        start = hparams_metadata.parse_session_start_info_plugin_data(
            contents[hparams_metadata.SESSION_START_INFO_TAG]
        )
        hparams = {name: _proto_value(value) for name, value in start.hparams.items()}
    if hparams_metadata.SESSION_END_INFO_TAG in contents:
        end = hparams_metadata.parse_session_end_info_plugin_data(contents[hparams_metadata.SESSION_END_INFO_TAG])
        status = api_pb2.Status.Name(end.status)

    metrics = {tag: scalars[tag][-1][1] for tag in metric_tags if tag in scalars}
    return {"scalars": scalars, "hparams": hparams, "metrics": metrics, "status": status}


def _proto_value(value: Any) -> Any:
    """A ``google.protobuf.Value`` as a Python bool, float or string (the kinds HParams stores)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "string_value":
        return value.string_value
    return None
