"""ROME hyperparameter presets shipped with the package."""

from __future__ import annotations

import pytest

from jrome.editing import RomeHparams, hparams_for, load_preset, presets


def test_presets_cover_the_families_and_the_paper_models():
    names = presets()
    assert {"gpt2", "gptj", "gpt_neox", "llama", "gpt2-xl", "gpt-j-6b", "smollm2"} <= set(names)
    assert load_preset("gpt2-xl").layer == 17 and load_preset("gpt-j-6b").layer == 5


def test_a_model_name_or_hub_id_selects_its_preset_and_otherwise_its_family():
    assert hparams_for("smollm2", "llama") == load_preset("smollm2")
    assert hparams_for("openai-community/gpt2-xl", "gpt2").layer == 17
    assert hparams_for("/models/my-llama", "llama").layer is None


def test_overrides_and_errors():
    hp = load_preset("smollm2").override(v_lr=0.1, context_templates=["{}", "Hi. {}"])
    assert hp.v_lr == 0.1 and hp.context_templates == ("{}", "Hi. {}")
    with pytest.raises(ValueError, match="unknown ROME hyperparameters \\['lr'\\]"):
        load_preset("smollm2").override(lr=0.1)
    with pytest.raises(ValueError, match="fact_token='middle'"):
        RomeHparams(layer=1, fact_token="middle")
    with pytest.raises(ValueError, match="no ROME preset .gpt5."):
        load_preset("gpt5")
