"""A finished pretraining run's query encoder as an MLflow model ("encoder" under the run's
Logged models), loadable with `mlflow.pytorch.load_model` and registrable from the UI.

Why a wrapper: MLflow calls a model with one input (the input example, the signature,
pyfunc serving), but the core encoder needs the convention too: forward(x, conv). So the
logged module is `ClipEncoder`, whose forward(x) encodes clips of the run's first
convention with the run's stream: exactly what evaluation extracts (pooled features,
evaluation.extract_features). `.encoder` keeps the whole multi-convention encoder and
`.features(x, convention)` encodes clips of any of `.conventions`. Pyfunc params would
also carry a convention, but only for pyfunc: `mlflow.pytorch.load_model` returns the
module itself, and a module with one obvious call is what a researcher expects.

The module is pickled (the pytorch flavor's default): loading it needs msclr installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import torch

from msclr_core.streams import to_stream

MODEL_NAME = "encoder"  # the logged model's name: runs:/<run id>/encoder
MODEL_TAG = "msclr.model_uri"  # on the run: models:/<model id> of its encoder


class ClipEncoder(torch.nn.Module):
    """The frozen query encoder of a run: forward(x) = pooled features (N x D) of clips x
    (N x C x T x V x M float32) of `convention`, in the run's `stream`."""

    def __init__(self, encoder: torch.nn.Module, conventions, stream: str):
        super().__init__()
        self.encoder = encoder
        self.conventions = tuple(conventions)
        self.convention = self.conventions[0]
        self.stream = stream
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor, convention: str | None = None) -> torch.Tensor:
        conv = convention or self.convention
        return self.encoder.features(to_stream(torch.as_tensor(x).float(), conv, self.stream), conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def clip_encoder(cfg, state: dict) -> ClipEncoder:
    from .evaluate import encoder_from_state

    return ClipEncoder(encoder_from_state(cfg, state), cfg.conventions, cfg.stream)


def input_example(cfg, ds, n: int = 2):
    """n test clips of the run's first convention (N x C x T x V x M float32)."""
    from .data import load_split

    sub = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_test_samples=n))
    return load_split(sub, cfg.data.test_part, conventions=[cfg.conventions[0]], ds=ds).arrays[cfg.conventions[0]][:n]


def model_metadata(cfg) -> dict:
    return {
        "msclr_run_name": cfg.name, "conventions": list(cfg.conventions), "convention": cfg.conventions[0],
        "stream": cfg.stream, "objective": cfg.method.objective, "model": dataclasses.asdict(cfg.model),
        "input": f"N x C x T x V x M float32 clips of {cfg.conventions[0]} (joint coordinates, metres)",
        "output": "N x hidden_dim pooled encoder features",
        "other_conventions": "model.features(x, convention)",
    }  # fmt: skip


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def tracking_uri(uri: str):
    """MLflow's fluent API on `uri` for a while, then the URI and MLFLOW_TRACKING_URI as they were
    (MLflow's own _use_tracking_uri unsets the variable when no URI had been set)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    old_uri, old_env = getattr(utils, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_uri)
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


def log_encoder_model(client, run_id: str, cfg, state: dict, ds, step: int = 0):
    """Log the run's encoder as MLflow model MODEL_NAME of run_id, without starting or ending
    a fluent run: the logged model is created for the run's experiment and linked to the run
    (Model.log with run_id), so the run stays in whatever state it is (RUNNING here). Through
    a BudgetedClient the whole upload retries within the run's outage budget. Returns the
    ModelInfo (model_uri: models:/<model id>)."""
    import mlflow
    import numpy as np
    from mlflow.models import Model

    model, example = clip_encoder(cfg, state), np.ascontiguousarray(input_example(cfg, ds), dtype=np.float32)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]

    def log():
        run = client.get_run(run_id)
        # chosen on purpose (below): MLflow's warning about pickle would only say so on every run
        with tracking_uri(client.tracking_uri), _quiet_logger("mlflow.pytorch"):  # the run's server
            # created here, not by Model.log: it would file the model under the fluent default
            # experiment, not the run's
            tags = {"msclr.run_name": cfg.name, "conventions": ",".join(cfg.conventions), "stream": cfg.stream}
            logged = mlflow.initialize_logged_model(
                name=MODEL_NAME, source_run_id=run_id, experiment_id=run.info.experiment_id,
                params=dict(run.data.params), tags=tags, model_type="encoder")  # fmt: skip
            return Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pytorch, run_id=run_id,
                             model_id=logged.model_id, step=step, pytorch_model=model, input_example=example, metadata=model_metadata(cfg),
                             pip_requirements=requirements,
                             # pickle, not MLflow's torch.export default: that loads a GraphModule traced at
                             # the example's batch size, without .encoder, .features or the conventions
                             serialization_format="pickle")  # fmt: skip

    info = client.call(log) if hasattr(client, "call") else log()
    client.set_tag(run_id, MODEL_TAG, info.model_uri)
    return info


def log_encoder(client, run_id: str, cfg, state: dict, ds, step: int):
    """The encoder of `state` (a checkpoint's: model, history) as the run's MLflow model
    "encoder" (logged_model.py). An outage raises
    TrackingUnavailable (the fallback keeps encoder_q.pt; `msclr runs sync` does not log the
    model); any other failure only warns: the weights are logged as encoder_q.pt all the same."""
    from .offline import TrackingUnavailable

    try:
        return log_encoder_model(client, run_id, cfg, state["model"], ds, step=step)
    except TrackingUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - a convenience copy of encoder_q.pt: never fail the run for it
        print(f"WARNING: the encoder was not logged as an MLflow model: {type(err).__name__}: {err}", flush=True)
        try:
            client.set_tag(run_id, "msclr.model_error", f"{type(err).__name__}: {err}"[:500])
        except TrackingUnavailable:
            raise
        except Exception:  # noqa: BLE001
            pass
        return None
