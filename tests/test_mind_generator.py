"""The MIND-format generator's planted truth, its oracle and its difficulty knobs."""
from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pytest

from twotower.datasets.mind.generator import PRESETS, generate_mind, main
from twotower.datasets.mind.oracle import PLANTED_FILE, oracle_scores, overlap_scores
from twotower.datasets.mind.source import read_behaviors

FILES = ("train/behaviors.tsv", "train/news.tsv", "dev/behaviors.tsv", "dev/news.tsv")


def lines(path, directory="dev"):
    return (path / directory / "behaviors.tsv").read_text().splitlines()


def test_default_output_is_unchanged(tmp_path):
    # Hashes of the generator's files before the oracle and the knobs existed: the default data,
    # and so every figure measured on it, stays the same draw for draw.
    generate_mind(tmp_path, users=30, news=60, seed=3)
    digests = {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in FILES}
    assert lines(tmp_path)[0].split("\t")[:4] == ["1", "U29", "11/15/2019 1:08:26 AM", "N58 N38 N30 N52 N26"]
    assert digests == {
        "train/behaviors.tsv": "defc0b39e34ab8b396b0a81b228a92e64495d621e78e67369886616c5ab8a0e3",
        "train/news.tsv": "c266c866b46ee0b38e493f200c38dc874988cfc0518d03d3c6bbe27c5b017a33",
        "dev/behaviors.tsv": "04f7c931dedf760ead76c89c70397c91d86826c7417dc944fff8ca9afb4876f5",
        "dev/news.tsv": "7b4eaea6900a7b2de54051883b4b666fb9ab8b91e3a1c1a63e14ed33df5a59c9",
    }


def test_oracle_is_the_planted_probability_and_its_auc_is_counted_pair_by_pair(tmp_path):
    counts = generate_mind(tmp_path, users=30, news=60, seed=3, click_noise=0.2)
    planted = json.loads((tmp_path / PLANTED_FILE).read_text())
    behaviors = read_behaviors(tmp_path / "dev" / "behaviors.tsv")
    scores = oracle_scores(planted, behaviors)

    # The first line by hand: p = 0.8 * sigmoid(1.6 log(12 liking) + 0.8 log(quality) - 5.5) + 0.2 * dev base rate.
    first = behaviors.iloc[0]
    names, rule = planted["categories"], planted["click_probability"]
    by_hand = []
    for news_id in first["news"]:
        item = planted["news"][news_id]
        liking = planted["users"][first["user_id"]][names.index(item["category"])]
        logit = 1.6 * math.log(liking * 12) + 0.8 * math.log(item["quality"]) - 5.5
        by_hand.append(0.8 / (1 + math.exp(-logit)) + 0.2 * rule["base_rate"]["dev"])
    assert rule["click_noise"] == 0.2 and len(names) == 12
    assert scores[: len(by_hand)].tolist() == pytest.approx(by_hand, rel=1e-12)

    # The reported oracle AUC: the mean over dev lines of the share of (click, skip) pairs it orders right.
    aucs, at = [], 0
    for labels in behaviors["labels"]:
        s = scores[at : at + len(labels)]
        at += len(labels)
        clicks = [x for x, y in zip(s, labels) if y == 1]
        skips = [x for x, y in zip(s, labels) if y == 0]
        right = sum((c > k) + 0.5 * (c == k) for c in clicks for k in skips)
        aucs.append(right / (len(clicks) * len(skips)))
    assert counts["oracle_auc"] == pytest.approx(sum(aucs) / len(aucs), abs=1e-12)


def test_overlap_is_the_share_of_the_history_in_the_category():
    behaviors = pd.DataFrame({"history": [["N1", "N2", "N3"], []], "news": [["N4", "N5", "N6"], ["N4", "N5"]]})
    category = {"N1": "sports", "N2": "sports", "N3": "news", "N4": "sports", "N5": "news", "N6": "tv"}
    # Line 1: 2 of 3 history items are sports, 1 of 3 news, none tv; line 2 has no history.
    assert overlap_scores(behaviors, category).tolist() == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0, 0.0])


def test_empty_history_share_is_the_share_of_users_and_lines_without_history(tmp_path):
    generate_mind(tmp_path, users=600, news=300, seed=0, empty_history_share=0.4, dev_history_continues=False)
    for directory in ("train", "dev"):
        histories = [line.split("\t")[3] for line in lines(tmp_path, directory)]
        assert sum(h == "" for h in histories) / len(histories) == pytest.approx(0.4, abs=0.06)
    # The default continues the dev history with the train clicks: an empty one stays rare there.
    generate_mind(tmp_path / "continued", users=600, news=300, seed=0, empty_history_share=0.4)
    histories = [line.split("\t")[3] for line in lines(tmp_path / "continued")]
    assert sum(h == "" for h in histories) / len(histories) < 0.15


def test_history_variation_grows_each_line_by_the_clicks_of_the_earlier_ones(tmp_path):
    generate_mind(tmp_path, users=40, news=100, seed=1, history_variation=True)
    for directory in ("train", "dev"):
        last = {}  # user -> (history, clicks) of their previous line
        grown = 0
        for line in lines(tmp_path, directory):
            _, user, _, history, shown = line.split("\t")
            history = history.split()
            if user in last:
                before, clicks = last[user]
                assert history == before + [c for c in dict.fromkeys(clicks) if c not in before], (directory, user)
                grown += len(history) > len(before)
            last[user] = (history, [s[:-2] for s in shown.split() if s.endswith("-1")])
        assert grown > 10, directory


def test_click_noise_lowers_the_oracle(tmp_path):
    clean = generate_mind(tmp_path / "clean", users=300, news=500, seed=0)
    noisy = generate_mind(tmp_path / "noisy", users=300, news=500, seed=0, click_noise=0.6)
    assert clean["oracle_auc"] > 0.85
    assert noisy["oracle_auc"] < clean["oracle_auc"] - 0.15
    # Noise moves clicks, not their number: the noisy share falls at the split's mean rate.
    assert noisy["dev_clicks"] == pytest.approx(clean["dev_clicks"], rel=0.1)


def test_realistic_preset_and_a_knob_over_it(tmp_path):
    counts = generate_mind(tmp_path, users=300, news=500, seed=0, preset="realistic", click_noise=0.0)
    planted = json.loads((tmp_path / PLANTED_FILE).read_text())
    assert planted["settings"] == {"seed": 0, "preset": "realistic", **PRESETS["realistic"], "click_noise": 0.0}
    histories = [line.split("\t")[3] for line in lines(tmp_path)]
    assert sum(h == "" for h in histories) / len(histories) == pytest.approx(1 / 3, abs=0.08)
    assert counts["oracle_auc"] > 0.85  # the knob given wins over the preset's noise


def test_bad_knobs_name_the_knob_and_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown preset 'hard' \(presets: easy, realistic\)"):
        generate_mind(tmp_path, users=30, news=60, preset="hard")
    with pytest.raises(ValueError, match=r"click_noise=1.5 must be in \[0, 1\]"):
        generate_mind(tmp_path, users=30, news=60, click_noise=1.5)


def test_command_line_prints_the_oracle(tmp_path, capsys):
    main([str(tmp_path), "--users", "30", "--news", "60", "--preset", "realistic", "--history-variation"])
    out = capsys.readouterr().out
    assert "oracle_auc=0." in out
    assert json.loads((tmp_path / PLANTED_FILE).read_text())["settings"]["history_variation"] is True
