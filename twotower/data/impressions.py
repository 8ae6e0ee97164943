"""Impressions: what each user was shown and what they clicked, where a source records it.

Training reads the items shown with a click but skipped (impression negatives); evaluation scores every
shown item of the evaluation impressions (impression AUC, MRR, nDCG).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from twotower.data.store import CSR


@dataclass
class Impressions:
    """Attributes:
        of_train_pair: (n_train,) the impression of each training pair (aligned with ``Prepared.train_pairs``).
        skipped: impression -> the item rows shown in it and not clicked (training impressions only).
        entries: per evaluation split, (3, n) item row, impression, label (1 = clicked) of every shown item.
        users: per evaluation split, (n,) the user row of each entry.
        by_user: per evaluation split, user row -> positions in that split's entries.
        item_seen_in_train: (n_items,) bool, the item was shown in the training period (False: fresh).
        user_of: (n_impressions,) the user row of each impression.
        histories: (n_impressions, L) catalogue rows + 1 of each impression's own click history, most
            recent first (0 = empty), where the source records one per impression; training clicks and
            evaluation impressions read it instead of the user's. None: they read the user's.
    """

    of_train_pair: torch.Tensor
    skipped: CSR
    entries: dict[str, torch.Tensor]
    users: dict[str, torch.Tensor]
    by_user: dict[str, CSR]
    item_seen_in_train: torch.Tensor
    user_of: torch.Tensor
    histories: torch.Tensor | None = None

    def to(self, device: torch.device) -> Impressions:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                moved[f.name] = {k: v.to(device) for k, v in value.items()} if isinstance(value, dict) else value.to(device)
        return replace(self, **moved)

    def skipped_items(self, impressions: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``m`` distinct skipped items of each impression, from a random start: item rows (B, m)
        and the padding mask (B, m), True where the impression had fewer than ``m`` skips."""
        lengths = self.skipped.row_lengths(impressions)  # (B,)
        slot = torch.arange(m, device=impressions.device)
        start = (torch.rand(len(impressions), device=impressions.device) * lengths).long()
        position = (start.unsqueeze(1) + slot) % lengths.clamp(min=1).unsqueeze(1)  # (B, m)
        padding = slot.unsqueeze(0) >= lengths.unsqueeze(1)
        if len(self.skipped.indices) == 0:
            return torch.zeros_like(position), torch.ones_like(padding)
        index = (self.skipped.indptr[impressions].unsqueeze(1) + position).masked_fill(padding, 0)
        return self.skipped.indices[index], padding

    def of_users(self, users: torch.Tensor, split: str) -> torch.Tensor:
        """(4, n) position in ``users``, item row, impression, label of every item shown to these users in ``split``."""
        position, entry = self.by_user[split].gather(users)
        item, impression, label = self.entries[split][:, entry]
        return torch.stack([position, item, impression, label])
