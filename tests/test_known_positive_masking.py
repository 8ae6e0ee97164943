"""data.mask_known_positives through the module: every softmax column of a user's training item is masked for that user."""
from functools import partial

import torch

from twotower.data import TwoTowerDataModule
from twotower.data.sources import SyntheticSource
from twotower.data.splits import RandomSplit
from twotower.model import build_two_tower
from twotower.module import TwoTowerModule
from twotower.task.losses import Columns, Softmax, exclude_known_items, softmax_logits

IDS_ONLY = {"query": [{"name": "user_id", "kind": "id"}], "candidate": [{"name": "item_id", "kind": "id"}]}


def test_mask_covers_in_batch_and_sampled_columns_as_brute_force():
    datamodule = TwoTowerDataModule(SyntheticSource(n_users=30, n_items=300), IDS_ONLY, RandomSplit(test=0.0, val=0.2), batch_size=16, num_negatives=6, mask_known_positives=True)
    datamodule.setup("fit")
    module = TwoTowerModule(build_two_tower(datamodule.prepared.preprocessor, embedding_dim=4, hidden_dims=[8], output_dim=4), partial(torch.optim.AdamW))
    torch.manual_seed(0)
    batch = datamodule.train_batch(torch.arange(16))
    candidate = module.model.encode_candidate(batch.candidate)
    columns = Columns(candidate, batch.candidate_ids, batch.log_q, batch.query_ids) + module._extra_negatives(batch, candidate)
    logits, excluded = softmax_logits(module.model.encode_query(batch.query), columns, 1.0)
    softmax = Softmax(module.model.encode_query(batch.query), columns, 1.0, logits, excluded, known_items=batch.known_items)
    exclude_known_items(softmax)
    mask = softmax.excluded  # (16, 16 + 6)
    pairs = set(map(tuple, datamodule.prepared.train_pairs.tolist()))
    columns = torch.cat([batch.candidate_ids, batch.negative_ids]).tolist()
    expected = [[(user, item) in pairs for item in columns] for user in batch.query_ids.tolist()]
    assert mask.tolist() == expected
    assert mask.any() and not mask.all()
