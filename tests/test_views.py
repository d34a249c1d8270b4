"""Notebook views: treescope renders a trace, Interventions, an edit and an evaluation summary with their arrays
as labelled heat maps (the labels are in the HTML that a notebook shows)."""

from __future__ import annotations

import json
from html import unescape

import numpy as np
import treescope

import jrome
from jrome import Interventions, Patch
from jrome.views import Summary


def html(value) -> str:
    """The HTML a notebook gets, with entities decoded (the heat maps' axis specs are JSON inside it)."""
    return unescape(treescope.render_to_html(value, compressed=False))


def axis(name: str) -> str:
    return f'"label": "{name}"'


def test_a_trace_shows_tokens_by_layers_with_the_token_strings(tiny_lm):
    lm = tiny_lm("llama")
    result = jrome.trace(lm, "a famous museum the louvre is in the city of", "the louvre", samples=2, noise=1.0, progress=False)  # fmt: skip
    page = html(result)
    assert "arrayviz" in page and axis("token") in page and axis("layer") in page  # a heat map with named axes
    assert "louvre" in page and " *" in page  # token strings label its rows, the subject's marked
    assert result.prompt in page and f"{result.high_score}" in treescope.render_to_text(result)


def test_interventions_show_each_write_and_the_noise():
    iv = Interventions(
        embed_add=np.ones((3, 5, 4), np.float32),
        resid=Patch.at([1, 2], [3, 4], np.arange(8, dtype=np.float32).reshape(2, 4)),
        capture=("mlp",),
    )
    page = html(iv)
    assert "layer 1, token 3" in page and "layer 2, token 4" in page and axis("d_model") in page and "capture" in page


def test_an_edit_shows_its_vectors_and_every_loss_term(tiny_lm):
    lm = tiny_lm("llama")
    hp = {"layer": 1, "mom2_adjustment": False, "context_templates": ["{}"], "v_num_grad_steps": 3}
    request = {"prompt": "{} is located in the city of", "subject": "the eiffel tower", "target_new": "rome"}
    _, undo = jrome.rome.edit(lm, request, hp, progress=False)
    page = html(undo.edits[0])
    assert all(term in page for term in ("weight decay", axis("MLP unit"), axis("step"), "the eiffel tower"))


def test_a_summary_shows_metrics_before_and_after():
    metrics = {"ES": {"pre": {"mean": 0.25, "ci95": 0.1, "n": 2}, "post": {"mean": 1.0, "ci95": 0.0, "n": 2}},
               "NS": {"post": {"mean": 0.5, "ci95": 0.2, "n": 2}}}  # fmt: skip
    summary = Summary(n=2, metrics=metrics, method="rome")
    page = html(summary)
    assert axis("metric") in page and '"before"' in page and '"after"' in page and "rome" in page
    assert "ES" in page and "NS" in page  # a metric measured only after the edit has its row too
    # still the dict run_eval always returned: written to summary.json and read back as that JSON
    written = '{"n": 2, "metrics": {"ES": {"pre": {"mean": 0.25, "ci95": 0.1, "n": 2}, "post": {"mean": 1.0, "ci95": 0.0, "n": 2}}, "NS": {"post": {"mean": 0.5, "ci95": 0.2, "n": 2}}}, "method": "rome"}'  # fmt: skip
    assert json.loads(json.dumps(summary)) == json.loads(written) and summary == json.loads(written)
