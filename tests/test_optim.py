"""Sparse / row-wise optimizers of the embedding tables (twotower.optim) and their wiring into the module."""
import copy
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from twotower.data import TwoTowerDataModule
from twotower.data.sources import SyntheticSource
from twotower.data.splits import RandomSplit
from twotower.model import build_two_tower
from twotower.module import TwoTowerModule
from twotower.optim import CombinedOptimizer, RowWiseAdagrad, build_optimizer, embedding_tables, sum_duplicate_rows


def _table() -> nn.Parameter:
    return nn.Parameter(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))


def _sparse_grad() -> torch.Tensor:
    # Row 1 twice in one batch: the two gradients are summed to (4, 6).
    return torch.sparse_coo_tensor([[1, 1]], [[1.0, 2.0], [3.0, 4.0]], (3, 2), check_invariants=True)


def test_rowwise_adagrad_matches_hand_computed_steps():
    table = _table()
    optimizer = RowWiseAdagrad([table], lr=0.1)
    table.grad = _sparse_grad()
    optimizer.step()
    # acc = mean(4^2, 6^2) = 26; w = 2 - 0.1 * (4, 6) / sqrt(26)
    assert table.data.tolist()[1] == pytest.approx([1.9215535, 1.8823303])
    table.grad = _sparse_grad()
    optimizer.step()
    # acc = 52; w -= 0.1 * (4, 6) / sqrt(52)
    assert table.data.tolist()[1] == pytest.approx([1.8660835, 1.7991253])
    assert table.data[[0, 2]].tolist() == [[1.0, 1.0], [3.0, 3.0]]  # untouched rows: exactly unchanged
    assert optimizer.state[table]["sum"].tolist() == [0.0, 52.0, 0.0]


def test_rowwise_adagrad_dense_gradient_gives_the_sparse_result():
    sparse_table, dense_table = _table(), _table()
    sparse_opt, dense_opt = RowWiseAdagrad([sparse_table], lr=0.1), RowWiseAdagrad([dense_table], lr=0.1)
    for _ in range(3):
        sparse_table.grad, dense_table.grad = _sparse_grad(), _sparse_grad().to_dense()
        sparse_opt.step()
        dense_opt.step()
    torch.testing.assert_close(sparse_table.data, dense_table.data)


def test_sum_duplicate_rows_gives_one_slot_per_row_then_zero_slots():
    rows, values = sum_duplicate_rows(torch.tensor([4, 1, 4, 4]), torch.tensor([[1.0], [2.0], [3.0], [5.0]]))
    assert rows.tolist() == [1, 4, 0, 0]
    assert values.flatten().tolist() == [2.0, 9.0, 0.0, 0.0]


def test_rowwise_adagrad_rejects_what_it_cannot_update():
    with pytest.raises(ValueError, match=r"2-d tables.*shape \(3,\)"):
        RowWiseAdagrad([nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="lr=0"):
        RowWiseAdagrad([_table()], lr=0)


class _TinyTower(nn.Module):
    """Two tables (one shared through a functional embedding_bag, as the history encoder does) and an MLP."""

    def __init__(self):
        super().__init__()
        self.ids = nn.Embedding(10, 4)
        self.tags = nn.EmbeddingBag(6, 4, mode="mean", padding_idx=0)
        self.mlp = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        history = nn.functional.embedding_bag(tags, self.ids.weight, mode="mean", padding_idx=0, sparse=self.ids.sparse)
        return self.mlp(torch.cat([self.ids(ids) + history, self.tags(tags)], -1))


@pytest.mark.parametrize("tables", [partial(RowWiseAdagrad, lr=0.1), partial(torch.optim.SparseAdam, lr=0.1)], ids=["rowwise_adagrad", "sparse_adam"])
def test_table_optimizer_updates_only_touched_rows_and_the_mlp(tables):
    torch.manual_seed(0)
    model = _TinyTower()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, partial(torch.optim.AdamW, lr=0.1), tables)
    assert isinstance(optimizer, CombinedOptimizer)
    assert model.ids.sparse and model.tags.sparse
    ids, tags = torch.tensor([1, 3]), torch.tensor([[2, 0], [5, 2]])
    model(ids, tags).square().sum().backward()
    assert model.ids.weight.grad.is_sparse and model.tags.weight.grad.is_sparse
    optimizer.step()
    changed_ids = (model.ids.weight != before["ids.weight"]).any(1).nonzero().flatten().tolist()
    changed_tags = (model.tags.weight != before["tags.weight"]).any(1).nonzero().flatten().tolist()
    assert changed_ids == [1, 2, 3, 5]  # looked up as ids (1, 3) and as history (2, 5)
    assert changed_tags == [2, 5]  # the padding row 0 has no gradient
    assert not torch.equal(model.mlp.weight, before["mlp.weight"])


def test_without_table_optimizer_the_dense_one_trains_everything_with_dense_gradients():
    model = _TinyTower()
    optimizer = build_optimizer(model, partial(torch.optim.AdamW, lr=0.1))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert not model.ids.sparse
    assert [m for m in embedding_tables(model)] == [model.ids, model.tags]


def test_table_optimizer_needs_tables():
    with pytest.raises(ValueError, match="no trainable embedding tables"):
        build_optimizer(nn.Linear(2, 2), partial(torch.optim.AdamW), partial(RowWiseAdagrad))


def test_combined_optimizer_schedules_and_round_trips_its_state():
    def make():
        torch.manual_seed(0)
        model = _TinyTower()
        return model, build_optimizer(model, partial(torch.optim.AdamW, lr=0.1), partial(RowWiseAdagrad, lr=0.2))

    def train(model, optimizer, steps):
        for step in range(steps):
            optimizer.zero_grad()
            model(torch.tensor([step % 10, 4]), torch.tensor([[1, 2], [3, 0]])).square().sum().backward()
            optimizer.step()

    model, optimizer = make()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert [g["lr"] for o in optimizer.optimizers for g in o.param_groups] == [0.1, 0.05]
    del scheduler
    train(model, optimizer, 2)
    assert len(optimizer.state) == len(list(model.parameters()))
    saved = copy.deepcopy(optimizer.state_dict())  # as a checkpoint file holds it: no tensors shared with the live state

    resumed_model, resumed = make()
    resumed_model.load_state_dict(model.state_dict())
    resumed.load_state_dict(saved)
    loaded_lrs = [g["lr"] for g in resumed.param_groups]
    assert loaded_lrs == [0.1, 0.05]  # the scheduled rates, tables first
    for group in resumed.param_groups:
        group["lr"] = 0.0  # what a scheduler resumed on the combination does
    assert [g["lr"] for o in resumed.optimizers for g in o.param_groups] == [0.0, 0.0]
    for group, lr in zip(resumed.param_groups, loaded_lrs):
        group["lr"] = lr
    train(model, optimizer, 2)
    train(resumed_model, resumed, 2)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="1 optimizers; this CombinedOptimizer has 2"):
        resumed.load_state_dict({"optimizers": saved["optimizers"][:1]})


@pytest.mark.parametrize("table_optimizer", [
    pytest.param(partial(RowWiseAdagrad, lr=0.05), id="rowwise_adagrad"),
    pytest.param(partial(torch.optim.SparseAdam, lr=0.01), id="sparse_adam", marks=pytest.mark.slow),
])
def test_module_trained_with_a_table_optimizer_learns(table_optimizer):
    torch.manual_seed(0)
    features = {
        "query": [{"name": "user_id", "kind": "id"}, {"name": "segment", "kind": "categorical"}, {"name": "history", "kind": "history", "max_len": 16}],
        "candidate": [{"name": "item_id", "kind": "id"}, {"name": "genres", "kind": "multi_hot", "separator": "|"}],
    }
    datamodule = TwoTowerDataModule(SyntheticSource(n_users=150, n_items=120, seed=1), features, RandomSplit(test=0.0, val=0.1), batch_size=128)
    datamodule.setup("fit")
    model = build_two_tower(datamodule.prepared.preprocessor, embedding_dim=16, hidden_dims=[32], output_dim=16)
    module = TwoTowerModule(model, partial(torch.optim.AdamW, lr=0.01), table_optimizer=table_optimizer, ks=[20])
    trainer = pl.Trainer(max_epochs=5, check_val_every_n_epoch=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    # log(127 negatives + 1) = 4.85 for a model that learned nothing.
    assert float(trainer.callback_metrics["train/loss_epoch"]) < 4.3
    # The planted genre structure: random ranking of 120 items would give recall@20 near 0.17.
    assert float(trainer.callback_metrics["val/recall@20"]) > 0.3
