"""Retrieval losses as pure functions of tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_softmax_loss(
    query: torch.Tensor,
    candidate: torch.Tensor,
    temperature: float | torch.Tensor = 0.05,
    log_q: torch.Tensor | None = None,
    candidate_ids: torch.Tensor | None = None,
    query_ids: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    negatives_log_q: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    logq_weight: float = 1.0,
    row_negatives: torch.Tensor | None = None,
    row_negatives_mask: torch.Tensor | None = None,
    row_negatives_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sampled softmax over in-batch candidates (plus optional extra negatives).

    Row i's positive is ``candidate[i]``; every other candidate in the batch, and every row of
    ``negatives``, is a negative.

    Args:
        query, candidate: (B, D) vectors; candidate[i] is the positive of query[i].
        temperature: logits are divided by it (a float or a learnable scalar tensor).
        log_q: (B,) log-probability that each candidate is sampled as a negative (its in-batch
            frequency). Subtracted from its logit times ``logq_weight`` (Yi et al., 2019).
        candidate_ids: (B,) item ids; a candidate equal to row i's positive is not a negative of
            row i (an accidental hit).
        query_ids: (B,) user ids; row j's positive is not a negative of row i when both rows are
            the same user (the user's other positive).
        negatives: (N, D) extra negatives shared by all rows (e.g. sampled from the corpus or
            shown-but-not-clicked items), with ``negatives_log_q`` (N,) and ``negative_ids`` (N,).
        mask: (B, B + N) bool, True where a logit must be excluded (e.g. other known positives);
            the diagonal is never excluded.
        logq_weight: 1 for the full correction, 0 for none.
        row_negatives: (B, M, D) negatives of one row each, e.g. the items shown to the user in
            the same impression as row i's click but not clicked. They join row i's softmax next
            to the in-batch negatives.
        row_negatives_mask: (B, M) bool, True where a slot holds no negative (padding).
        row_negatives_log_q: (B, M) the row negatives' items' ``log_q``, required with ``log_q``: every
            column gets its item's correction, so all logits share one scale (uncorrected, the
            row negatives would sit ~|log_q| below the corrected in-batch logits and barely count).

    Returns:
        The mean cross-entropy of each row's positive against its negatives.
    """
    batch = query.shape[0]
    columns = candidate if negatives is None else torch.cat([candidate, negatives])  # (B + N, D)
    # Scaling the (B, D) queries, not the (B, B + N) logits: one pass over B x D instead of B x (B + N), both ways.
    logits = (query / temperature) @ columns.T  # (B, B + N); diagonal = positives
    if log_q is not None:
        column_log_q = log_q if negatives is None else torch.cat([log_q, _required(negatives_log_q, "negatives_log_q")])
        logits = logits - logq_weight * column_log_q.unsqueeze(0)
    excluded = torch.zeros_like(logits, dtype=torch.bool)
    if candidate_ids is not None:
        column_ids = candidate_ids if negatives is None else torch.cat([candidate_ids, _required(negative_ids, "negative_ids")])
        excluded |= candidate_ids.unsqueeze(1) == column_ids.unsqueeze(0)
    if query_ids is not None:
        excluded[:, :batch] |= query_ids.unsqueeze(1) == query_ids.unsqueeze(0)
    if mask is not None:
        excluded |= mask
    diagonal = torch.arange(batch, device=logits.device)
    excluded[diagonal, diagonal] = False
    if row_negatives is not None:
        row_logits = torch.einsum("bd,bmd->bm", query, row_negatives) / temperature  # (B, M)
        if log_q is not None:
            row_logits = row_logits - logq_weight * _required(row_negatives_log_q, "row_negatives_log_q")
        row_excluded = row_negatives_mask if row_negatives_mask is not None else torch.zeros_like(row_logits, dtype=torch.bool)
        logits = torch.cat([logits, row_logits], dim=1)  # (B, B + N + M)
        excluded = torch.cat([excluded, row_excluded], dim=1)
    logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, diagonal)


def known_item_mask(known_items: torch.Tensor, column_ids: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, C) True where column j's item is one of row i's known items.

    Args:
        known_items: (2, nnz) pairs (row, item id).
        column_ids: (C,) the item id of each softmax column (duplicates allowed).

    Fixed shapes throughout (no ``unique``, no boolean indexing), so no host sync on a GPU;
    memory is (rows, C), not (rows, catalogue).
    """
    row, item = known_items
    sorted_ids = column_ids.sort().values  # (C,)
    canonical = torch.searchsorted(sorted_ids, column_ids)  # (C,) first slot holding each column's id
    slot = torch.searchsorted(sorted_ids, item).clamp(max=len(sorted_ids) - 1)  # (nnz,)
    hit = (sorted_ids[slot] == item).int()
    present = torch.zeros(rows, len(sorted_ids), dtype=torch.int, device=column_ids.device)
    present.index_put_((row, slot), hit, accumulate=True)  # (rows, C) by sorted slot
    return present[:, canonical] > 0


def _required(value: torch.Tensor | None, name: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} is required when extra negatives are given")
    return value
