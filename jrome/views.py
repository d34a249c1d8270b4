"""Notebook views through treescope's rendering hook (`__treescope_repr__`): a trace, an Interventions value, an
edit and an evaluation summary show their arrays as heat maps with named, labelled axes (tokens × layers, with
the token strings), beside their other fields. treescope comes with flax; `treescope.basic_interactive_setup()`
makes it the notebook's default display, and `jrome.views.show(x)` displays one value."""

from __future__ import annotations

from typing import Any

import numpy as np

LOSS_TERMS = ["total", "nll", "kl", "weight decay"]


def heatmap(array: Any, axes: list[str], labels: dict[int, list[str]] | None = None) -> Any:
    """A treescope figure of a 1-D or 2-D array: axis names, and item labels (e.g. token strings) per axis."""
    import treescope

    array = np.asarray(array, np.float32)
    names = dict(enumerate(axes))
    if array.ndim == 1:
        return treescope.render_array(array, columns=[0], axis_labels=names, axis_item_labels=labels)
    return treescope.render_array(array, rows=[0], columns=[1], axis_labels=names, axis_item_labels=labels)


def _constructor(value: Any, fields: dict[str, Any], path: str | None, subtree_renderer: Any) -> Any:
    from treescope import repr_lib

    return repr_lib.render_object_constructor(type(value), fields, path, subtree_renderer)


def trace_repr(result: Any, path: str | None, subtree_renderer: Any) -> Any:
    """A TraceResult: p(answer) per restored (token, layer) as a tokens × layers map, token strings on its rows."""
    rows, layers = result.scores.shape
    tokens = [f"{i} {t!r}" + (" *" if result.subject_range[0] <= i < result.subject_range[1] else "") for i, t in enumerate(result.tokens)]  # fmt: skip
    scores = heatmap(result.scores, ["token", "layer"], {0: tokens, 1: [str(i) for i in range(layers)]})
    fields = {
        "prompt": result.prompt, "subject": result.subject, "kind": result.kind, "answer": result.answer,
        "high_score": result.high_score, "low_score": result.low_score, "scores": scores,
        "samples": result.samples, "window": result.window, "sever": result.sever,
    }  # fmt: skip
    return _constructor(result, fields, path, subtree_renderer)


def _patch(patch: Any) -> dict[str, Any]:
    layers, tokens = np.asarray(patch.layer).tolist(), np.asarray(patch.token).tolist()
    writes = [f"layer {layer}, token {token}" for layer, token in zip(layers, tokens, strict=True)]
    norms = np.linalg.norm(np.asarray(patch.value, np.float32).reshape(len(writes), -1, patch.value.shape[-1]), axis=-1)
    return {"writes": writes, "value_norm": heatmap(norms.T, ["row", "write"], {1: writes})}


def interventions_repr(iv: Any, path: str | None, subtree_renderer: Any) -> Any:
    """Interventions: each site's writes by layer and token, with the norm of each written value; the noise
    added to the embeddings as a (row ×) token × dimension map."""
    fields: dict[str, Any] = {}
    if iv.embed_add is not None:
        noise = np.asarray(iv.embed_add, np.float32)
        noise = noise.reshape(-1, noise.shape[-1]) if noise.ndim == 2 else noise[0]
        fields["embed_add"] = heatmap(noise, ["token", "d_model"])
    for site in ("resid", "attn", "mlp", "mlp_add", "resid_add"):
        patch = getattr(iv, site)
        if patch is not None:
            fields[site] = _patch(patch)
    if iv.row_edits is not None:  # which layer each slot edits, and how large each row's Λ is
        fields["row_edits"] = {
            "layer": np.asarray(iv.row_edits.layer).tolist(),
            "|lam|": heatmap(np.linalg.norm(np.asarray(iv.row_edits.lam, np.float32), axis=-1), ["slot", "row"]),
        }
    fields["capture"] = list(iv.capture)
    return _constructor(iv, fields, path, subtree_renderer)


def edit_repr(edit: Any, path: str | None, subtree_renderer: Any) -> Any:
    """A ROME Edit: the request and layer, û and Λ as vectors, and the loss terms at every Adam step."""
    steps = edit.losses.shape[0]
    fields = {
        "request": edit.request, "layer": edit.layer,
        "u_hat": heatmap(edit.u_hat, ["MLP unit"]), "lam": heatmap(edit.lam, ["d_model"]),
        "losses": heatmap(edit.losses, ["step", "term"], {0: [str(i) for i in range(steps)], 1: LOSS_TERMS}),
        "seconds": edit.seconds,
    }  # fmt: skip
    return _constructor(edit, fields, path, subtree_renderer)


class Summary(dict):
    """An evaluation summary (the dict run_eval returns) that shows its metrics as a metric × before/after map."""

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        names = list(self["metrics"])
        table = [[self["metrics"][m].get(w, {}).get("mean", np.nan) for w in ("pre", "post")] for m in names]
        fields = {"n": self["n"], "metrics": heatmap(np.array(table), ["metric", "when"], {0: names, 1: ["before", "after"]})}  # fmt: skip
        fields |= {k: v for k, v in self.items() if k not in ("n", "metrics")}
        return _constructor(self, fields, path, subtree_renderer)


def show(value: Any) -> None:
    """Display one value with treescope in a notebook (or its text form elsewhere)."""
    import treescope

    treescope.display(value)
