"""Hyperparameter presets: the paper models' presets equal the original code's files field by field."""

from __future__ import annotations

import pytest

from jrome.editing import MemitHparams, RomeHparams, hparams_for, load_preset, presets

# The originals' values, read from kmeng01/rome@0874014 hparams/ROME/*.json and kmeng01/memit@80426fd
# hparams/{ROME/EleutherAI_gpt-neox-20b,MEMIT/*}.json (layers as jrome's single `layer` for ROME); mom2_published is
# the folder the original's layer_stats downloads from (config._name_or_path with "/" as "_").
SHARED_ROME = {
    "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": 0.5, "v_weight_decay": 0.5, "kl_factor": 0.0625,
    "mom2_adjustment": True, "context_template_length_params": ((5, 10), (10, 10)), "mom2_n_samples": 100000,
}  # fmt: skip
ORIGINAL_ROME = {
    "gpt2-medium": {"layer": 8, "v_loss_layer": 23, "clamp_norm_factor": 3, "mom2_published": "gpt2-medium"},
    "gpt2-large": {"layer": 12, "v_loss_layer": 35, "clamp_norm_factor": 4, "mom2_published": "gpt2-large"},
    "gpt2-xl": {"layer": 17, "v_loss_layer": 47, "clamp_norm_factor": 4, "mom2_published": "gpt2-xl"},
    "gpt-j-6b": {"layer": 5, "v_loss_layer": 27, "clamp_norm_factor": 4, "mom2_published": "EleutherAI_gpt-j-6B"},
    "gpt-neox-20b": {"layer": 15, "v_loss_layer": 43, "clamp_norm_factor": 4, "mom2_published": None},
}
SHARED_MEMIT = {
    "fact_token": "subject_last", "v_lr": 0.5, "v_weight_decay": 0.5, "kl_factor": 0.0625, "clamp_norm_factor": 0.75,
    "mom2_n_samples": 100000,
}  # fmt: skip
ORIGINAL_MEMIT = {
    "gpt2-xl": {
        "layers": (13, 14, 15, 16, 17),
        "v_num_grad_steps": 20,
        "v_loss_layer": 47,
        "mom2_update_weight": 20000,
        "mom2_published": "gpt2-xl",
    },
    "gpt-j-6b": {
        "layers": (3, 4, 5, 6, 7, 8),
        "v_num_grad_steps": 25,
        "v_loss_layer": 27,
        "mom2_update_weight": 15000,
        "mom2_published": "EleutherAI_gpt-j-6B",
    },
}


# jianghoucheng/AlphaEdit@f5248d3 hparams/AlphaEdit/{gpt2-xl,EleutherAI_gpt-j-6B,Llama3-8B}.json (mom2_update_weight is
# in their files, unread by their code).
SHARED_ALPHAEDIT = SHARED_MEMIT | {"nullspace_threshold": 2e-2, "L2": 10}
ORIGINAL_ALPHAEDIT = {
    "gpt2-xl": ORIGINAL_MEMIT["gpt2-xl"],
    "gpt-j-6b": ORIGINAL_MEMIT["gpt-j-6b"],
    "meta-llama-3-8b": {"layers": (4, 5, 6, 7, 8), "v_num_grad_steps": 25, "v_lr": 0.1, "v_loss_layer": 31,
                        "mom2_update_weight": 15000, "mom2_published": None},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ORIGINAL_ALPHAEDIT))
def test_alphaedit_presets_equal_the_authors(name):
    preset = load_preset(name, "alphaedit")
    for field, value in (SHARED_ALPHAEDIT | ORIGINAL_ALPHAEDIT[name]).items():
        assert getattr(preset, field) == value, (name, field)


@pytest.mark.parametrize("name", sorted(ORIGINAL_ROME))
def test_rome_presets_equal_the_originals(name):
    preset = load_preset(name)
    for field, value in (SHARED_ROME | ORIGINAL_ROME[name]).items():
        assert getattr(preset, field) == value, (name, field)


@pytest.mark.parametrize("name", sorted(ORIGINAL_MEMIT))
def test_memit_presets_equal_the_originals(name):
    preset = load_preset(name, "memit")
    for field, value in (SHARED_MEMIT | ORIGINAL_MEMIT[name]).items():
        assert getattr(preset, field) == value, (name, field)


def test_every_preset_loads_and_family_presets_share_the_originals_method_settings():
    assert {"gpt2", "gptj", "gpt_neox", "llama", "smollm2", *ORIGINAL_ROME} <= set(presets())
    assert {"gpt2", "gptj", "gpt_neox", "llama", "smollm2", *ORIGINAL_MEMIT} <= set(presets("memit"))
    assert {"gpt2", "gptj", "gpt_neox", "llama", *ORIGINAL_ALPHAEDIT} <= set(presets("alphaedit"))
    for family in ("gpt2", "gptj", "gpt_neox", "llama"):
        rome, memit = load_preset(family), load_preset(family, "memit")
        assert rome.layer is None and memit.layers is None  # a layer comes from a causal trace of the model
        assert rome.v_weight_decay == 0.5 and rome.clamp_norm_factor == 4 and memit.clamp_norm_factor == 0.75
        assert load_preset(family, "alphaedit").layers is None


def test_a_model_name_or_hub_id_selects_its_preset_and_otherwise_its_family():
    assert hparams_for("smollm2", "llama") == load_preset("smollm2")
    assert hparams_for("openai-community/gpt2-xl", "gpt2").layer == 17
    assert hparams_for("EleutherAI/gpt-j-6B", "gptj", "memit").v_num_grad_steps == 25
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
    with pytest.raises(ValueError, match="mom2_n_samples \\(0\\) must be positive"):
        RomeHparams(layer=1, mom2_n_samples=0)
    with pytest.raises(ValueError, match="fact_token='last'; MEMIT accepts"):
        MemitHparams(layers=(1, 2), fact_token="last")
    with pytest.raises(ValueError, match="needs one '\\{\\}'"):
        RomeHparams(layer=1, context_templates=("{} and {}",))


def test_a_published_statistics_folder_must_be_a_plain_name():
    with pytest.raises(ValueError, match=r"mom2_published='\.\./gpt2-xl': expected a model folder name"):
        RomeHparams(layer=1, mom2_published="../gpt2-xl")
    assert MemitHparams(layers=(1,), mom2_published="EleutherAI_gpt-j-6B").mom2_published == "EleutherAI_gpt-j-6B"
