"""Print users' top-k recommendations with the items' titles and genres:

    python -m twotower.show_recommendations <artifact_dir> --users 1 2 3 [--k 10]
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd

from twotower.data.tables import ITEM
from twotower.retriever import Retriever

#: Item columns shown next to each recommendation, where the items table has them.
SHOWN = ("title", "genres", "year")


def format_recommendations(retriever: Retriever, users: Sequence[str], k: int = 10) -> str:
    """One block per user: rank, item id, score, and the item's title/genres/year when known."""
    result = retriever.recommend(list(users), k=k)
    items = retriever.items.set_index(ITEM) if retriever.items is not None else pd.DataFrame()
    columns = [c for c in SHOWN if c in items.columns]
    blocks = []
    for user, ids, scores in zip(users, result.item_ids, result.scores):
        lines = [f"user {user}: top-{k}"]
        for rank, (item, score) in enumerate(zip(ids, scores), 1):
            if not item:
                break
            info = items.loc[item, columns] if item in items.index else None
            details = "  ".join(_cell(info[c]) for c in columns) if info is not None else ""
            lines.append(f"{rank:3d}. {item:>8s}  {score:6.3f}  {details}".rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if pd.isna(value) else str(value)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Show top-k recommendations from an exported artifact.")
    parser.add_argument("artifact", help="artifact directory written by export.py")
    parser.add_argument("--users", nargs="+", required=True, help="user ids")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    print(format_recommendations(Retriever.load(args.artifact), args.users, args.k))


if __name__ == "__main__":
    main()
