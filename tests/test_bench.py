"""The benchmark's protocol holds (disjoint concepts, held-out prompts, equal search budgets, one
selection rule, honest intervals), and ``concept-erase bench --quick`` runs the whole path."""

from __future__ import annotations

import json

import pytest

from concept_erase.bench import ABLATIONS, DEFAULT_TUNING, load_tuning, run_bench
from concept_erase.bench.protocol import (
    CURVE,
    DEV_CONCEPTS,
    HEADLINE,
    QUICK,
    TEST_CONCEPTS,
    TUNING,
    check_held_out,
    eval_prompts,
    training_inputs,
)
from concept_erase.bench.search import GRIDS, QUICK_SETTINGS, SEARCH_SIZE, select
from concept_erase.bench.stats import summarize, t_interval, wilson
from concept_erase.cli import main
from concept_erase.concepts import Concept, load_preset
from concept_erase.errors import InvalidConfigError, InvalidPromptError
from concept_erase.methods import METHODS, method_config
from concept_erase.world.captions import parse_prompt
from concept_erase.world.presets import MAX_FORGET
from concept_erase.world.vocab import HELDOUT_TEMPLATES, SYNONYMS

ALL = DEV_CONCEPTS + TEST_CONCEPTS


# ---------------------------------------------------------------- protocol invariants
def test_dev_and_test_concepts_are_disjoint_and_the_bench_refuses_dev_ones(tmp_path):
    assert len(DEV_CONCEPTS) == len(TEST_CONCEPTS) == 3 and not set(DEV_CONCEPTS) & set(TEST_CONCEPTS)
    kinds = lambda names: sorted(next(iter(load_preset(n).target)) for n in names)  # noqa: E731
    assert kinds(DEV_CONCEPTS) == kinds(TEST_CONCEPTS) == ["background", "colour", "shape"]
    with pytest.raises(InvalidConfigError, match="dev concepts"):
        run_bench(tmp_path / "b", concepts=["no-blue"], tuning={"methods": {}}, progress=False)


def test_presets_are_given_as_users_give_them():
    for name in ALL:
        c = load_preset(name)
        assert c.phrase and 1 <= len(c.forget) <= MAX_FORGET and len(set(c.forget)) == len(c.forget)
        assert len(c.anchor) == len(c.forget) and 0 < len(c.retain) <= 8


@pytest.mark.parametrize("name", ALL)
def test_no_evaluation_prompt_is_a_training_input(name):
    concept = load_preset(name)
    seen = training_inputs(concept)
    (key, value), = concept.target.items()
    for sizes in (HEADLINE, CURVE, TUNING, QUICK):
        sets = eval_prompts(concept, sizes)
        assert {k: len(v) for k, v in sets.items()} == sizes.to_dict()
        for prompts in sets.values():
            assert not {p.lower() for p in prompts} & seen
        assert all(getattr(parse_prompt(p), key) == value for p in sets["forget"] + sets["paraphrase"])
        assert all(getattr(parse_prompt(p), key) != value for p in sets["retain"])
        synonyms = SYNONYMS.get(value, ())
        for p in sets["paraphrase"]:  # a synonym of the concept or a held-out template
            assert any(f" {s}" in f" {p}" for s in synonyms) or any(_matches(p, t) for t in HELDOUT_TEMPLATES), p
    assert eval_prompts(concept, HEADLINE) == eval_prompts(concept, HEADLINE)  # the same draw every time


def _matches(prompt: str, template: str) -> bool:
    import re

    pattern = re.escape(template).replace(r"\{c\}", r"\w+").replace(r"\{s\}", r"\w+").replace(r"\{b\}", r"\w+")
    return re.fullmatch(pattern, prompt) is not None


def test_a_leaked_prompt_is_refused():
    concept = load_preset("no-red")
    with pytest.raises(InvalidConfigError, match="training inputs"):
        check_held_out(concept, {"forget": [concept.forget[0]], "retain": []})
    with pytest.raises(InvalidConfigError, match="erased colour"):
        check_held_out(concept, {"retain": ["a red heart on a striped background"]})


def test_every_method_searches_the_same_number_of_valid_configurations():
    assert set(GRIDS) == set(METHODS) == set(QUICK_SETTINGS)
    for method, grid in GRIDS.items():
        assert len(grid) == SEARCH_SIZE, method
        assert len({json.dumps(c, sort_keys=True) for c in grid}) == SEARCH_SIZE, f"{method}: duplicate configs"
        for config in grid:
            method_config(method, **{**config, **QUICK_SETTINGS[method]})  # every entry is a valid config
            method_config(method, **config)
    for overrides in ABLATIONS.values():
        method_config("semu", **overrides)


def test_selection_rule():
    rows = [dict(forget=0.0, paraphrase=0.0, retain=0.90, seconds=1),   # erases, but breaks retain
            dict(forget=0.2, paraphrase=0.3, retain=0.99, seconds=9),
            dict(forget=0.2, paraphrase=0.3, retain=0.99, seconds=2),   # same rates, cheaper
            dict(forget=0.5, paraphrase=0.5, retain=1.00, seconds=1)]
    assert select(rows, base_retain=1.0) == (2, True)
    assert select(rows[:1] + rows[3:], base_retain=1.0) == (1, True)
    assert select([dict(forget=0.0, paraphrase=0.0, retain=0.5, seconds=1),
                   dict(forget=0.9, paraphrase=0.9, retain=0.7, seconds=1)], base_retain=1.0) == (1, False)


def test_intervals():
    lo, hi = wilson(0, 48)
    assert lo == 0 and 0.05 < hi < 0.1
    assert t_interval([0.5]) == (0.5, 0.5)
    s = summarize([0.0, 0.0, 0.0], [24, 24, 24])  # seeds that agree still leave image uncertainty
    assert s["mean"] == 0 and s["lo"] == 0 and s["hi"] > 0.03 and s["n_images"] == 72
    s = summarize([0.1, 0.5, 0.9], [24, 24, 24])
    assert s["lo"] == 0 and s["hi"] == 1  # three seeds that disagree: a wide t-interval, clipped


def test_concept_phrase_is_checked():
    assert load_preset("no-striped").phrase_prompts() == ["striped background"]
    assert Concept(name="x", forget=["a red circle"], anchor="a gray circle").phrase_prompts() == ["a red circle"]
    with pytest.raises(InvalidPromptError, match="phrase"):
        Concept(name="x", forget=["a red circle"], anchor="a gray circle", phrase="  ")


def test_tuning_file_errors_are_clear(tmp_path):
    with pytest.raises(InvalidConfigError, match="No tuning file"):
        load_tuning(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"methods": 3}')
    with pytest.raises(InvalidConfigError, match="not a tuning file"):
        load_tuning(bad)
    if DEFAULT_TUNING.is_file():  # the committed tuning covers every method, with equal search sizes
        data = load_tuning()
        assert set(data["methods"]) == set(METHODS) and set(data["search_size"].values()) == {SEARCH_SIZE}
        assert data["dev_concepts"] == list(DEV_CONCEPTS) and not data["quick"]


# ---------------------------------------------------------------- the quick path, end to end
def test_tuning_quick_writes_one_choice_per_method(tmp_path):
    out = tmp_path / "tuning.json"
    assert main(["bench", "--tune", "--quick", "--methods", "uce", "codebook", "--tuning-out", str(out), "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert data["dev_concepts"] == ["no-blue"] and set(data["methods"]) == {"uce", "codebook"}
    for m, entry in data["methods"].items():
        assert len(entry["search"]) == data["search_size"][m] == 2
        assert entry["chosen"] == entry["search"][entry["chosen_index"]]["config"]
    assert main(["bench", "--tune", "--quick", "--methods", "uce", "--tuning-out", str(out), "--quiet"]) == 2  # exists


def test_bench_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--methods", "semu", "uce", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "bench.json").read_text())
    assert data["schema"] == 1 and data["quick"]
    assert {"protocol", "tuning", "base", "results", "ablations", "timing"} <= set(data)
    p = data["protocol"]
    assert p["test_concepts"] == ["no-red"] and p["seeds"] == [0, 1] and p["selection_rule"]
    assert set(data["tuning"]) == {"semu", "uce"}
    rows = {r["method"]: r for r in data["results"]}
    assert set(rows) == {"semu", "uce"}
    for r in rows.values():
        assert sorted(r["per_seed"]) == ["0", "1"]
        for name in ("forget", "paraphrase", "kept", "retain", "specificity"):
            s = r["summary"][name]
            assert 0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1 and s["seeds"] == 2
        assert r["seconds"] > 0 and r["peak_memory_mib"] > 0 and r["fid_kid"]["n"] == 2 * QUICK.retain
        assert "warning" in r["fid_kid"]  # 24 images < 128 features: said, not hidden
        assert [pt["scale"] for pt in r["curve"]] == p["curve_scales"]
        rob = r["robustness"]
        assert 0 <= rob["attack_success_rate"] <= 1 and 0 <= rob["membership_auc"] <= 1
        assert rob["relearn_curve"][0]["step"] == 0
    assert rows["semu"]["time_ratio_to_semu"] == pytest.approx(1.0)
    assert {a["variant"] for a in data["ablations"]} == {"random-subspace"}
    text = (out / "bench.md").read_text()
    assert "| no-red | semu |" in text and "matched forget rate" in text and "SEMU ablations" in text
    assert (out / "curve-no-red.png").stat().st_size > 0
