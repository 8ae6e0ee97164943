"""``rank`` in chunks against ``top_k`` of the whole score matrix (brute force), ties tolerated."""
import pytest
import torch

from twotower.task.retrieval import Scratch, rank, top_k


def _problem(n_users: int, n_items: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    # Quarters: every product and sum is exact in float32, so any chunking of the product gives the same
    # scores bit for bit (random floats would differ in the last bit between BLAS kernels). Ties happen.
    query = torch.randint(-8, 9, (n_users, 8), generator=generator).float() / 4
    items = torch.randint(-8, 9, (n_items, 8), generator=generator).float() / 4
    known = torch.rand(n_users, n_items, generator=generator) < 0.3
    known[0] = True  # a user with every item known: all -inf
    known[1, :-3] = True  # fewer than k items left
    exclude = known.nonzero().T.flip(1)  # (2, nnz), rows in descending order: rank must not rely on sorted pairs
    candidates = torch.rand(n_items, generator=generator) < 0.7
    return query, items, exclude, candidates


def _assert_same_ranking(chunked, whole, scores: torch.Tensor, ranked: torch.Tensor) -> None:
    """Equal values; each index a distinct item whose score is its value, never an unranked one above -inf."""
    assert torch.equal(chunked.values, whole.values)
    assert chunked.indices.shape == whole.indices.shape
    for row in range(len(scores)):
        indices = chunked.indices[row]
        assert len(set(indices.tolist())) == len(indices)
        finite = chunked.values[row].isfinite()
        assert ranked[row, indices[finite]].all()
        assert torch.equal(scores[row, indices[finite]], chunked.values[row, finite])


@pytest.mark.parametrize("max_scores", [1, 7, 40, 130, 600])
@pytest.mark.parametrize("with_candidates", [False, True])
def test_chunked_rank_equals_the_whole_matrix(max_scores, with_candidates):
    # 23 users x 31 items = 713 scores: every budget below forces user chunks (130, 600: several users per chunk)
    # or item chunks too (1, 7: fewer scores than one user has items), each chunk's exclusions scattered in place.
    query, items, exclude, candidates = _problem(23, 31)
    candidates = candidates if with_candidates else None
    scores = query @ items.T
    ranked = torch.ones_like(scores, dtype=torch.bool)
    ranked[exclude[0], exclude[1]] = False
    if candidates is not None:
        ranked &= candidates
    for k in (1, 5, 31, 50):
        whole = top_k(scores.clone(), k, exclude, candidates)
        chunked = rank(query, items, k, exclude, candidates, max_scores=max_scores)
        _assert_same_ranking(chunked, whole, scores, ranked)


def test_chunked_rank_of_a_user_chunk_without_exclusions():
    query, items, exclude, _ = _problem(10, 12)
    keep = exclude[0] != 4  # user 4 has nothing excluded: an empty slice of the pairs
    exclude = exclude[:, keep]
    scores = query @ items.T
    ranked = torch.ones_like(scores, dtype=torch.bool)
    ranked[exclude[0], exclude[1]] = False
    _assert_same_ranking(rank(query, items, 4, exclude, max_scores=12), top_k(scores.clone(), 4, exclude), scores, ranked)


def test_rank_without_exclusions_and_one_chunk_is_the_plain_product():
    query, items, _, _ = _problem(5, 9)
    expected = (query @ items.T).topk(3, dim=1)
    got = rank(query, items, 3)
    assert torch.equal(got.values, expected.values) and torch.equal(got.indices, expected.indices)
    assert torch.equal(rank(query, items, 3, max_scores=9).values, expected.values)


def test_rank_with_autograd_and_empty_inputs():
    query, items, exclude, _ = _problem(6, 5)
    query.requires_grad_(True)  # no reusable out= buffer with autograd
    got = rank(query, items, 2, exclude, max_scores=5)
    assert torch.equal(got.values.detach(), top_k((query @ items.T).detach(), 2, exclude).values)
    assert rank(query[:0].detach(), items, 3, max_scores=2).values.shape == (0, 3)


def test_rank_refuses_a_budget_below_one():
    query, items, _, _ = _problem(2, 3)
    with pytest.raises(ValueError, match="max_scores=0"):
        rank(query, items, 1, max_scores=0)


def test_rank_reuses_its_scratch_buffer_across_calls():
    query, items, exclude, candidates = _problem(12, 10)
    scratch = Scratch()
    first = rank(query, items, 4, exclude, candidates, max_scores=40, scratch=scratch)
    buffer = scratch.tensor.data_ptr()
    second = rank(query, items, 4, exclude, candidates, max_scores=40, scratch=scratch)
    assert scratch.tensor.data_ptr() == buffer  # the same 4 x 10 buffer, not a fresh one
    assert torch.equal(first.values, second.values) and torch.equal(first.indices, second.indices)
    assert torch.equal(first.values, top_k(query @ items.T, 4, exclude, candidates).values)
    rank(query, torch.cat([items, items]), 4, max_scores=40, scratch=scratch)  # 2 x 20: fits, kept
    assert scratch.tensor.data_ptr() == buffer
    rank(query, items, 4, max_scores=80, scratch=scratch)  # 8 x 10: grown
    assert scratch.tensor.numel() == 80


def test_validation_metrics_do_not_depend_on_the_rank_chunk():
    import pytorch_lightning as pl

    from benchmarks import throughput

    source = throughput.SkewedSource(300, 200, 6_000)
    dm = throughput.prepared_datamodule(source.generate(), source.n_genres, val_share=0.1, batch_size=64, eval_batch_size=128)
    metrics = []
    for rank_chunk in (10**9, 450, 150):  # the whole batch at once; 2 users per product; 150 of the 200 items at once
        torch.manual_seed(0)
        module = throughput.twotower_module(dm, rank_chunk=rank_chunk)
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        metrics.append(trainer.validate(module, datamodule=dm, verbose=False)[0])
    assert metrics[0]["val/recall@100"] > 0
    for other in metrics[1:]:
        assert other == pytest.approx(metrics[0], abs=1e-6)
