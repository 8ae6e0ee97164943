import pytest
import torch

from twotower.data.datamodule import IndexBatches
from twotower.data.store import CSR, Batch, FeatureStore


def test_csr_gather_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.randint(0, 20, (200,), generator=g), torch.randint(0, 50, (200,), generator=g)
    csr = CSR.from_pairs(rows, cols, num_rows=25)
    asked = torch.tensor([3, 0, 24, 3, 7])
    pos, got = csr.gather(asked)
    for i, r in enumerate(asked.tolist()):
        assert sorted(got[pos == i].tolist()) == sorted(cols[rows == r].tolist())


def test_feature_store_checks_rows_and_gathers():
    store = FeatureStore({"a": torch.arange(4), "b": torch.arange(8).view(4, 2)}, num_rows=4)
    out = store.gather(torch.tensor([2, 0]))
    assert out["a"].tolist() == [2, 0] and out["b"].tolist() == [[4, 5], [0, 1]]
    with pytest.raises(ValueError, match=r"\{'b': 3\} do not have 4 rows"):
        FeatureStore({"a": torch.arange(4), "b": torch.arange(3)}, num_rows=4)


def test_batch_to_moves_every_tensor():
    batch = Batch({"u": torch.zeros(2)}, {"i": torch.zeros(2)}, torch.zeros(2), torch.zeros(2), torch.zeros(2))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and moved.query["u"].device.type == "cpu"


def test_index_batches_cover_each_row_once_per_epoch_across_ranks():
    shards = [IndexBatches(103, 10, shuffle=True, seed=1, drop_last=True, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([b for shard in shards for b in shard])
    assert len(seen) == 100 and len(set(seen.tolist())) == 100  # 51 rows per rank, 5 full batches each
    assert all(len(shard) == 5 for shard in shards)
    again = IndexBatches(103, 10, shuffle=True, seed=1, drop_last=True, rank=0, world_size=2)
    first_epoch = torch.cat(list(again))
    assert torch.equal(first_epoch, torch.cat(seen[:50].split(10)))  # deterministic for a seed and epoch
    assert not torch.equal(torch.cat(list(again)), first_epoch)  # a new permutation next epoch
