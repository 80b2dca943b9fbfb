"""The NVFlare FedAvg job for the bundle (NVFlare's ``FedAvgRecipe``): the server averages the sites'
weights each round and keeps the best global model by the sites' validation score; each site runs
:mod:`nodule_bundle.apps.fl.site_client`. ``simulate`` runs it with NVFlare's simulator on this machine;
``export`` writes the job folder that a provisioned NVFlare deployment submits."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nodule_bundle.apps.fl import site_client

#: The bundle's network as NVFlare builds the initial global model (the same as train.json's network_def).
NETWORK = {"class_path": "nodule_bundle.network.networks.MultiTaskNoduleNet", "args": {"in_channels": 1, "channels": [16, 32, 64, 128]}}


def initial_model(path: str | os.PathLike, seed: int) -> Path:
    """The global model's first weights, drawn with ``seed`` and saved to ``path`` (a state dict, as
    NVFlare's ``initial_ckpt`` takes it): left to NVFlare, the server draws them unseeded, so two runs
    with one seed start from different models."""
    from nodule_bundle.network.networks import MultiTaskNoduleNet

    torch.manual_seed(seed)
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(MultiTaskNoduleNet(**NETWORK["args"]).state_dict(), path)
    return path


def fedavg_recipe(
    bundle_root: str | os.PathLike, data_root: str | os.PathLike, work_root: str | os.PathLike, sites: int, rounds: int,
    local_epochs: int = 1, exclude_vars: str | None = None, percentile_privacy: bool = False, audit: str | os.PathLike | None = None,
    seed: int = 0, initial_ckpt: str | os.PathLike | None = None,
):  # fmt: skip
    """FedAvg over ``sites`` sites for ``rounds`` rounds, from the weights in ``initial_ckpt``
    (:func:`initial_model`; ``None``: NVFlare's own draw), each site's training seeded with ``seed``,
    the sites' weights averaged in site-name order (:class:`~nodule_bundle.apps.fl.aggregator.SiteOrderedAverage`).

    Privacy options (NVFlare's own filters): ``exclude_vars`` (a regex of parameter names) keeps
    those parameters at each site, never sent; ``percentile_privacy`` makes sites send weight
    differences through NVFlare's ``PercentilePrivacy`` filter (only the largest 10 % of changes,
    clipped). ``audit``: a JSON-lines file where the server records every message
    (:class:`~nodule_bundle.apps.fl.audit.MessageAudit`).
    """
    from nvflare.apis.dxo import DataKind
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe

    from nodule_bundle.apps.fl.aggregator import SiteOrderedAverage

    train_args = (f"--bundle_root {bundle_root} --data_root {data_root} --work_root {work_root} --local_epochs {local_epochs}"
                  f" --total_epochs {rounds * local_epochs} --seed {seed}")  # fmt: skip
    recipe = FedAvgRecipe(
        name="lung_nodule_fedavg", model=NETWORK, initial_ckpt=None if initial_ckpt is None else str(initial_ckpt),
        min_clients=sites, num_rounds=rounds,
        train_script=site_client.__file__, train_args=train_args + (" --send_weight_diff" if percentile_privacy else ""),
        key_metric=site_client.KEY_METRIC, exclude_vars=exclude_vars, aggregator=SiteOrderedAverage(exclude_vars),
        aggregator_data_kind=DataKind.WEIGHT_DIFF if percentile_privacy else DataKind.WEIGHTS,
    )  # fmt: skip
    if percentile_privacy:
        from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy

        recipe.add_client_output_filter(PercentilePrivacy(percentile=10, gamma=0.01), tasks=["train"])
    if audit is not None:
        from nodule_bundle.apps.fl.audit import MessageAudit

        recipe.add_server_input_filter(MessageAudit(str(audit), "received"), tasks=["train"])
        recipe.add_server_output_filter(MessageAudit(str(audit), "sent"), tasks=["train"])
    return recipe


def simulate(recipe, sites: int, workspace: str | os.PathLike) -> Path:
    """Run ``recipe`` in NVFlare's simulator (sites as threads of one process); returns the job's result folder."""
    from nvflare.recipe import SimEnv

    run = recipe.execute(SimEnv(clients=[f"site-{k + 1}" for k in range(sites)], num_threads=sites, workspace_root=str(workspace)))
    return Path(run.get_result())


def server_app(result: str | os.PathLike) -> Path:
    """The server's app folder in a simulated job's ``result`` folder (:func:`simulate`'s): its
    config and the global models NVFlare saved (``best_FL_global_model.pt``: ``{"model": state dict}``)."""
    return Path(result) / "server" / "simulate_job" / "app_server"
