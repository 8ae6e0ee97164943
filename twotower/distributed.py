"""Cross-device in-batch negatives: every query sees the candidates of every rank's batch.

Under data parallelism each rank holds B training pairs. Without gathering, a query's softmax
runs over its rank's B candidates only, so adding GPUs shrinks nothing but also adds no
negatives: the loss of W ranks is W separate B-way softmaxes. Gathering the candidate vectors
(with their ids and log-probabilities, and the query ids for same-user masking) makes it one
(W*B)-way softmax per query, the loss that one process would compute on the concatenated batch.

Gradients: ``torch.distributed.nn.functional.all_gather`` sums, in backward, the gradient every
rank computed for a gathered copy into the rank that owns it. With DDP averaging parameter
gradients over ranks, the update equals the gradient of the mean loss over all W*B queries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

# The differentiable all-gather (torch.distributed.nn.functional.all_gather is deprecated in its favour).
from torch.distributed._functional_collectives import all_gather_single


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class RemoteCandidates:
    """The other ranks' candidates, in rank order with this rank's own rows left out.

    ``vectors`` keeps the autograd graph back to the ranks that encoded them.
    """

    vectors: torch.Tensor  # (N, D), N = (W - 1) * B
    ids: torch.Tensor  # (N,) item ids
    log_q: torch.Tensor  # (N,) sampling log-probabilities
    query_ids: torch.Tensor  # (N,) the user whose positive each row is

    def same_user_mask(self, query_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) True where a remote candidate is another positive of the local row's user."""
        return query_ids.unsqueeze(1) == self.query_ids.unsqueeze(0)


def gather_remote_candidates(
    candidate: torch.Tensor, candidate_ids: torch.Tensor, log_q: torch.Tensor, query_ids: torch.Tensor
) -> RemoteCandidates:
    """All-gathers one batch's candidates from every rank and returns the other ranks' rows.

    The local rows stay out: the caller keeps using its own ``candidate`` tensor, whose
    row i is the positive of query i, and appends these rows as extra negatives. Column order
    does not change a softmax, so the loss equals the single-process loss on the concatenated
    batch. Every rank must call this with the same B (``IndexBatches`` gives each rank the same
    number of rows and drops the ragged last batch).

    Args:
        candidate: (B, D) candidate vectors of this rank's batch.
        candidate_ids, log_q, query_ids: (B,) item ids, sampling log-probabilities, user ids.
    Returns:
        The other ranks' rows; empty (0 rows) when not distributed.
    """
    rank, world_size = world()
    if world_size == 1:
        return RemoteCandidates(candidate[:0], candidate_ids[:0], log_q[:0], query_ids[:0])
    vectors = all_gather_single(candidate.contiguous(), gather_dim=0, group=dist.group.WORLD)  # (W*B, D), differentiable
    ids, log_q_all, users = (_all_gather(t) for t in (candidate_ids, log_q, query_ids))  # (W*B,) each
    batch = candidate.shape[0]
    others = torch.ones(world_size * batch, dtype=torch.bool, device=candidate.device)
    others[rank * batch : (rank + 1) * batch] = False
    return RemoteCandidates(vectors[others], ids[others], log_q_all[others], users[others])


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """(W*B, ...) concatenation over ranks, without gradients."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
