"""Text encoder: token ids -> embeddings -> (optional transformer layer) -> pooled vector."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextEncoder(nn.Module):
    """``text`` features: (B, max_len) token ids, 0-padded -> (B, dim).

    Args:
        pooling: ``mean`` (EmbeddingBag, no (B, L, dim) tensor) or ``attention`` (additive attention,
            as in NRMS/LSTUR news encoders).
        transformer_layers: self-attention layers over the tokens before pooling (0: bag of words).
    """

    def __init__(self, cardinality: int, dim: int, pooling: str = "mean", transformer_layers: int = 0, heads: int = 2, max_len: int = 64):
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"text pooling '{pooling}' is not one of mean, attention")
        self.embedding = nn.Embedding(cardinality, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.pooling, self.out_dim = pooling, dim
        self.encoder = None
        if transformer_layers:
            self.position = nn.Embedding(max_len, dim)
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.1, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, transformer_layers, enable_nested_tensor=False)
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.encoder is None and self.pooling == "mean":
            return F.embedding_bag(tokens, self.embedding.weight, mode="mean", padding_idx=0, sparse=self.embedding.sparse)
        pad = tokens == 0  # (B, L)
        x = self.embedding(tokens)  # (B, L, dim)
        if self.encoder is not None:
            x = x + self.position(torch.arange(tokens.shape[1], device=tokens.device))
            mask = pad.clone()
            # A row of only padding would attend to nothing (NaN); let it attend to position 0.
            mask[:, 0] &= ~pad.all(1)
            x = self.encoder(x, src_key_padding_mask=mask)
        if self.pooling == "mean":
            weights = (~pad).float() / (~pad).sum(1, keepdim=True).clamp(min=1)
        else:
            weights = torch.softmax(self.attention(x).squeeze(-1).masked_fill(pad, float("-inf")), -1).nan_to_num(0.0)
        return torch.einsum("bl,bld->bd", weights, x)  # empty text: all weights 0 -> zero vector
