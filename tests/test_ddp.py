"""Cross-device negatives: 2 gloo processes give the loss and gradients of one process on the whole batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from twotower.module import TwoTowerModule

CONF = str(Path(__file__).resolve().parents[1] / "conf")
# training_step logs through a Trainer; these tests call it without one.
pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*:UserWarning")
WORLD = 2
PER_RANK = 24
# Few users and items, so the concatenated batch holds the same item and the same user on both
# ranks: global accidental-hit and same-user masking then change the loss.
OVERRIDES = ["data=synthetic", "data.source.n_users=30", "data.source.n_items=25", "data.source.interactions_per_user=10"]


def build(cross_device_negatives: bool = True):
    """The datamodule and a freshly seeded module, identical in every process."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=OVERRIDES)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = instantiate(cfg.model)(preprocessor=datamodule.prepared.preprocessor)
    options = {**OmegaConf.to_container(cfg.loss, resolve=True), "cross_device_negatives": cross_device_negatives}
    module = TwoTowerModule(model=model, optimizer=instantiate(cfg.optimizer), **options)
    return datamodule, module


def batch_rows(datamodule) -> torch.Tensor:
    return torch.randperm(len(datamodule.prepared.train_pairs), generator=torch.Generator().manual_seed(1))[: WORLD * PER_RANK]


def loss_and_grads(module: TwoTowerModule, batch) -> tuple[float, dict[str, torch.Tensor]]:
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for switch in (True, False):
            datamodule, module = build(cross_device_negatives=switch)
            rows = batch_rows(datamodule)[rank * PER_RANK : (rank + 1) * PER_RANK]
            loss, grads = loss_and_grads(module, datamodule.train_batch(rows))
            # What DDP does after backward: average every parameter's gradient over the ranks.
            for g in grads.values():
                dist.all_reduce(g)
                g /= WORLD
            torch.save({"loss": loss, "grads": grads}, f"{out}/rank{rank}_{switch}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[bool, list[dict]]:
    """Each rank's loss and DDP-averaged gradients, with cross-device negatives on (True) and off (False)."""
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, str(out)), nprocs=WORLD, join=True)
    return {switch: [torch.load(out / f"rank{r}_{switch}.pt") for r in range(WORLD)] for switch in (True, False)}


def test_cross_device_loss_and_gradients_equal_one_process_on_the_concatenated_batch(two_ranks):
    results = two_ranks[True]
    datamodule, module = build()
    whole = datamodule.train_batch(batch_rows(datamodule))
    # The batch must exercise global masking: an item and a user that appear on both ranks.
    halves = [set(t[:PER_RANK].tolist()) & set(t[PER_RANK:].tolist()) for t in (whole.candidate_ids, whole.query_ids)]
    assert all(halves), "test batch has no item or user on both ranks"
    loss, grads = loss_and_grads(module, whole)

    # Each rank's loss is the mean over its queries; their mean is the loss over all queries.
    assert sum(r["loss"] for r in results) / WORLD == pytest.approx(loss, rel=1e-5)
    for rank in results:
        assert rank["grads"].keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(rank["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_switched_off_each_rank_sees_only_its_own_batch(two_ranks):
    results = two_ranks[False]
    datamodule, module = build()
    rows = batch_rows(datamodule)
    for rank, result in enumerate(results):
        local, _ = loss_and_grads(module, datamodule.train_batch(rows[rank * PER_RANK : (rank + 1) * PER_RANK]))
        assert result["loss"] == pytest.approx(local, rel=1e-5)
    whole, _ = loss_and_grads(module, datamodule.train_batch(rows))
    assert sum(r["loss"] for r in results) / WORLD != pytest.approx(whole, rel=1e-3)
