"""Loading the model of a finished (or interrupted) training run from its run directory."""

from __future__ import annotations

from pathlib import Path

from torch import nn

import nasrec.zoo  # noqa: F401 - registers the zoo's models with ModelSpec (see nasrec.model.spec)
from nasrec import rundir
from nasrec.device import resolve_device
from nasrec.errors import NasrecError
from nasrec.model.spec import ModelSpec
from nasrec.rundir import load_checkpoint


def load_trained(run: Path | str, which: str = "final", device: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """The model of a run directory with its final (`checkpoint.pt`) or best (`best.pt`) weights, on `device` (cpu)."""
    target = resolve_device(device)  # before any work: an unavailable device fails at once
    run = Path(run)
    spec = ModelSpec.from_dict(rundir.read_model(run))
    model = spec.build()
    # a run that restores its best evaluation's weights has them as its final model (TrainConfig.restore_best)
    ck = load_checkpoint(rundir.weights_path(run, which))
    if ck.get("shards"):
        raise NasrecError(
            f"{run}: its embedding tables are sharded over {ck['shards']['world']} processes; "
            f"`nasrec unshard {run} --out DIR` writes a copy with whole tables for evaluate, predict, export and search"
        )
    try:
        model.load_state_dict(ck["model"])  # read onto the CPU whatever device the run trained on
    except RuntimeError as e:  # e.g. a model with layer norms saved before the head was centred
        first = str(e).splitlines()[0]
        raise NasrecError(
            f"{run}: its weights do not fit the model built from its model.json ({first}); "
            "was it saved by an older nasrec?"
        ) from None
    return model.to(target).eval(), spec
