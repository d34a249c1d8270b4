"""Edit datasets as one record type: CounterFact (original and compact formats), zsRE (MEND format), known facts.

Files are read from $JROME_DATA_DIR, else from the published copies, fetched into the cache on first use
(jrome.data.fetch). Offline, a missing file is one line naming the command that fetches it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..data import data_dir, fetch, find, may_download, missing
from ..editing.requests import Request
from ..files import read_json_list

DATASETS = ("counterfact", "zsre")
# Local file names to look for (first found wins); the published file (jrome.data.FILES, by the same name) otherwise.
FILES = {
    "counterfact": ["counterfact.json", "counterfact/counterfact.json", "counterfact/counterfact-edit.json"],
    "zsre": ["zsre_mend_eval.json", "zsre/zsre_mend_eval.json", "zsre/zsre_mend_train-1k.json"],
}


@dataclasses.dataclass(frozen=True)
class EditCase:
    """One evaluation case: the rewrite, and the prompts that probe it."""

    case_id: int
    dataset: str
    request: Request
    target_true: str | None  # the object the edit replaces (zsRE: None, the original does not score it)
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    neighborhood_answers: tuple[str, ...]  # the answer each neighbourhood prompt should keep
    generation_prompts: tuple[str, ...] = ()
    relation_id: str | None = None  # with target_new_id: which attribute snippets are the reference texts (RS)
    target_new_id: str | None = None


def _need(record: dict, fields: tuple[str, ...], index: int, source: str) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise ValueError(f"{source} record {index} is malformed: it has no field {missing[0]!r}")


def _text(answer: Any) -> str:
    return answer["str"] if isinstance(answer, dict) else str(answer)


def parse_counterfact(records: list[dict], source: str = "CounterFact") -> list[EditCase]:
    """CounterFact in the original ROME format (requested_rewrite, ...) or the compact one (prompt, subject, ...).

    Only the original format has generation prompts (for GE and RS) and the relation and object ids that
    pick the reference snippets; the compact one has one paraphrase and one neighbour per case.
    """
    cases = []
    for i, r in enumerate(records):
        if "requested_rewrite" in r:
            _need(r, ("case_id", "paraphrase_prompts", "neighborhood_prompts"), i, source)
            rw = r["requested_rewrite"]
            _need(rw, ("prompt", "subject", "target_new", "target_true"), i, source + " requested_rewrite")
            true = _text(rw["target_true"])
            new = rw["target_new"]
            request = Request.parse({"prompt": rw["prompt"], "subject": rw["subject"], "target_new": _text(new)})
            cases.append(
                EditCase(
                    case_id=int(r["case_id"]),
                    dataset="counterfact",
                    request=request,
                    target_true=true,
                    paraphrase_prompts=tuple(r["paraphrase_prompts"]),
                    neighborhood_prompts=tuple(r["neighborhood_prompts"]),
                    neighborhood_answers=(true,) * len(r["neighborhood_prompts"]),
                    generation_prompts=tuple(r.get("generation_prompts", ())),
                    relation_id=rw.get("relation_id"),
                    target_new_id=new.get("id") if isinstance(new, dict) else None,
                )
            )
        else:
            fields = (
                "case_id",
                "prompt",
                "subject",
                "target_new",
                "ground_truth",
                "rephrase_prompt",
                "locality_prompt",
            )
            _need(r, fields, i, source)
            request = Request.parse(
                {"prompt": r["prompt"], "subject": r["subject"], "target_new": _text(r["target_new"])}
            )
            true = _text(r["ground_truth"])
            cases.append(
                EditCase(
                    case_id=int(r["case_id"]),
                    dataset="counterfact",
                    request=request,
                    target_true=true,
                    paraphrase_prompts=(r["rephrase_prompt"],),
                    neighborhood_prompts=(r["locality_prompt"],),
                    neighborhood_answers=(_text(r.get("locality_ground_truth", true)),),
                )
            )
    return cases


def parse_zsre(records: list[dict], source: str = "zsRE") -> list[EditCase]:
    """zsRE in MEND's format (src, subject, answers, rephrase, loc, loc_ans), read as the original's MENDQADataset:
    the edit makes answers[0] the answer to src; the neighbourhood prompt is loc + "?", answered by loc_ans."""
    cases = []
    for i, r in enumerate(records):
        _need(r, ("subject", "src", "answers", "rephrase", "loc", "loc_ans"), i, source)
        if r["subject"] not in r["src"]:
            raise ValueError(f"{source} record {i} is malformed: subject {r['subject']!r} is not in src {r['src']!r}")
        if not isinstance(r["answers"], list) or not r["answers"]:
            raise ValueError(
                f"{source} record {i} is malformed: answers must be a non-empty list, got {r['answers']!r}"
            )
        request = Request.parse({"prompt": r["src"], "subject": r["subject"], "target_new": _text(r["answers"][0])})
        cases.append(
            EditCase(
                case_id=int(r.get("case_id", i)),
                dataset="zsre",
                request=request,
                target_true=None,
                paraphrase_prompts=(r["rephrase"],),
                neighborhood_prompts=(r["loc"] + "?",),
                neighborhood_answers=(_text(r["loc_ans"]),),
            )
        )
    return cases


def dataset_path(name: str, *, download: bool | None = None) -> Path:
    """The dataset's file under $JROME_DATA_DIR (the first of its usual names there), else the published copy,
    fetched into the cache on first use (download: as jrome.data.fetch)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    for candidate in FILES[name]:
        if (data_dir() / candidate).is_file():
            return data_dir() / candidate
    if find(name) is None and not may_download(download):
        where = f"{data_dir()} (as {', '.join(FILES[name])})"
        raise missing(f"dataset {name!r} is not in {where} nor cached", name, download)
    return fetch(name, download=download)


def resolve_dataset(name_or_path: str | os.PathLike, *, download: bool | None = None) -> tuple[str, Path]:
    """(format, file) of a dataset name ("counterfact", "zsre") or JSON path; an unknown one is an error."""
    path = Path(name_or_path)
    if str(name_or_path) in DATASETS:
        return str(name_or_path), dataset_path(str(name_or_path), download=download)
    if path.is_file():
        return ("zsre" if "zsre" in path.name.lower() else "counterfact"), path
    raise ValueError(f"unknown dataset {str(name_or_path)!r}; known datasets: {', '.join(DATASETS)}, or a JSON path")


def read_cases(kind: str, path: Path) -> list[EditCase]:
    """The cases of a dataset file in `kind`'s format; a file that is not a JSON list of records is an error naming it."""
    records = read_json_list(path, "records")
    return parse_zsre(records, str(path)) if kind == "zsre" else parse_counterfact(records, str(path))


def load_dataset(name_or_path: str | os.PathLike, *, download: bool | None = None) -> list[EditCase]:
    """A dataset by name ("counterfact", "zsre") or a JSON file in either format (see dataset_path for where a name
    is read from)."""
    return read_cases(*resolve_dataset(name_or_path, download=download))
