"""Optimizers for embedding tables: sparse gradients, only the rows a batch touched are updated.

A dense optimizer over two 1M x 64 tables reads and writes every row (and two moment tables)
each step, although a batch of 8192 pairs touches at most 8192 rows of each; at that size the
optimizer, not the towers, bounds the step. ``build_optimizer`` gives embedding tables sparse
gradients and their own optimizer (``RowWiseAdagrad`` or ``torch.optim.SparseAdam``), and the
rest of the model (MLPs, temperature) a dense one such as AdamW, combined into the one optimizer
Lightning's automatic optimization and learning-rate schedulers expect.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

TABLE_TYPES = (nn.Embedding, nn.EmbeddingBag)


def embedding_tables(model: nn.Module) -> list[nn.Module]:
    """Every embedding table of ``model`` once (a table shared by two encoders counts once)."""
    seen: dict[int, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, TABLE_TYPES) and module.weight.requires_grad:
            seen.setdefault(id(module.weight), module)
    return list(seen.values())


def build_optimizer(
    model: nn.Module,
    dense: Callable[..., Optimizer],
    tables: Callable[..., Optimizer] | None = None,
) -> Optimizer:
    """The optimizer of ``model``'s trainable parameters.

    Args:
        dense: ``partial(torch.optim.AdamW, lr=...)``; with ``tables=None`` it trains everything.
        tables: the optimizer of the embedding tables, e.g. ``partial(RowWiseAdagrad, lr=0.05)``
            or ``partial(torch.optim.SparseAdam, lr=...)``. The tables are switched to sparse
            gradients (``sparse=True``) so a step costs the rows a batch touched, not the table.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if tables is None:
        return dense(params=trainable)
    modules = embedding_tables(model)
    if not modules:
        raise ValueError("a table optimizer was given but the model has no trainable embedding tables")
    for module in modules:
        module.sparse = True
    table_ids = {id(m.weight) for m in modules}
    dense_params = [p for p in trainable if id(p) not in table_ids]
    parts = [tables(params=[m.weight for m in modules])]
    if dense_params:
        parts.append(dense(params=dense_params))
    return parts[0] if len(parts) == 1 else CombinedOptimizer(parts)


class CombinedOptimizer(Optimizer):
    """Several optimizers over disjoint parameters, stepped as one.

    ``param_groups`` are the optimizers' own group dicts, so a learning-rate scheduler of the
    combination sets every optimizer's learning rate; ``state`` is read through to theirs.
    """

    def __init__(self, optimizers: Sequence[Optimizer]):
        self.optimizers = list(optimizers)
        super().__init__([group for o in self.optimizers for group in o.param_groups], defaults={})

    @property
    def state(self) -> dict[torch.Tensor, Any]:  # type: ignore[override]
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @state.setter
    def state(self, value: Any) -> None:
        # Optimizer.__init__ assigns an empty state; the state lives in the combined optimizers.
        if value:
            raise AttributeError("a CombinedOptimizer's state is that of its optimizers; load it with load_state_dict")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _run_closure(closure)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            found = "no 'optimizers' entry" if saved is None else f"{len(saved)} optimizers"
            raise ValueError(f"optimizer state has {found}; this CombinedOptimizer has {len(self.optimizers)}")
        for optimizer, state in zip(self.optimizers, saved):
            optimizer.load_state_dict(state)
        # Loading replaces each optimizer's group dicts; a scheduler must keep reaching them.
        self.param_groups = [group for o in self.optimizers for group in o.param_groups]


class RowWiseAdagrad(Optimizer):
    """Adagrad with one accumulator per table row, as TorchRec/FBGEMM's row-wise Adagrad.

    Per touched row r with gradient g_r: ``acc[r] += mean(g_r ** 2)``, then
    ``w_r -= lr * g_r / (sqrt(acc[r]) + eps)``. The state is one float per row (not one per
    weight), and a sparse gradient updates only its rows, without waiting for the device (no
    ``coalesce()``, whose output size the host must read). A dense gradient gives the same result
    (a row with zero gradient is left unchanged), so a table shared with a dense path still works.

    Args:
        params: 2-d tables (rows x dim).
        lr: learning rate.
        eps: added to the root of the accumulator.
        initial_accumulator_value: starting value of every row's accumulator.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 0.05, eps: float = 1e-8, initial_accumulator_value: float = 0.0):
        if lr <= 0:
            raise ValueError(f"RowWiseAdagrad lr={lr} must be positive")
        if initial_accumulator_value < 0:
            raise ValueError(f"RowWiseAdagrad initial_accumulator_value={initial_accumulator_value} must be >= 0")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator_value": initial_accumulator_value})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad updates 2-d tables (rows x dim); got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _run_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["sum"] = torch.full((p.shape[0],), group["initial_accumulator_value"], dtype=torch.float32, device=p.device)
                grad = p.grad
                if grad.is_sparse:
                    rows, values = sum_duplicate_rows(grad._indices()[0], grad._values())  # (nnz,), (nnz, dim)
                    state["sum"].index_add_(0, rows, values.float().pow(2).mean(1))
                    std = state["sum"][rows].sqrt_().add_(group["eps"])  # (nnz,)
                    p.index_add_(0, rows, (values / std.unsqueeze(1)).to(p.dtype), alpha=-group["lr"])
                else:
                    state["sum"].add_(grad.float().pow(2).mean(1))
                    std = state["sum"].sqrt().add_(group["eps"])  # (rows,)
                    p.add_((grad / std.unsqueeze(1)).to(p.dtype), alpha=-group["lr"])
        return loss


def sum_duplicate_rows(rows: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of each distinct row, in shapes fixed by the input (no host sync, unlike ``coalesce``).

    Args:
        rows: (nnz,) row of each gradient entry, repeats allowed (an id twice in a batch).
        values: (nnz, dim) the entries.
    Returns:
        (nnz,) rows and (nnz, dim) summed gradients: one slot per distinct row, then unused slots
        holding row 0 with a zero gradient (a no-op for an update that scales the gradient).
    """
    order = torch.argsort(rows)
    rows = rows[order]
    starts = torch.ones_like(rows, dtype=torch.bool)
    starts[1:] = rows[1:] != rows[:-1]
    slot = starts.cumsum(0) - 1  # (nnz,) the slot of each entry's row
    summed = torch.zeros_like(values).index_add_(0, slot, values[order])
    slot_rows = torch.zeros_like(rows).scatter_(0, slot, rows)
    return slot_rows, summed


def _run_closure(closure: Callable[[], Any] | None) -> Any:
    """The loss of an optimizer's closure, evaluated with gradients on (``step`` itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
