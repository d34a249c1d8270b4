"""Edit requests: "(subject, relation) → new object", parsed and checked against a model before any work."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

from ..models.lm import LM
from ..tokens import check_prompt_end, placeholder_span, spaced


@dataclasses.dataclass(frozen=True)
class Request:
    """Rewrite (subject, relation) → target: prompt holds "{}" where the subject goes (or the subject itself)."""

    prompt: str
    subject: str
    target_new: str

    @classmethod
    def parse(cls, request: Request | dict[str, Any]) -> Request:
        """A Request from itself, from a dict with prompt, subject and target_new (a string or {"str": ...}), or
        from a CounterFact record in the original format (its "requested_rewrite" is the request)."""
        if isinstance(request, Request):
            return request
        if not isinstance(request, dict):
            raise ValueError(f"a request is a dict with prompt, subject and target_new; got {request!r}")
        request = request.get("requested_rewrite", request)
        missing = [k for k in ("prompt", "subject", "target_new") if k not in request]
        if missing:
            raise ValueError(f"a request needs prompt, subject and target_new; this one has no {missing[0]!r}")
        prompt, subject, target = (_text(request[k], k) for k in ("prompt", "subject", "target_new"))
        if "{}" not in prompt:  # the subject written out: make it the placeholder
            if not subject.strip() or subject not in prompt:
                raise ValueError(
                    f"subject {subject!r} is not in the prompt {prompt!r}, and the prompt has no '{{}}' placeholder"
                )
            if prompt.count(subject) > 1:
                warnings.warn(f"subject {subject!r} occurs {prompt.count(subject)} times in {prompt!r}; the first "
                              "is the subject (write '{}' there to choose another)", stacklevel=2)  # fmt: skip
            prompt = prompt.replace(subject, "{}", 1)
        return check_words(cls(prompt=prompt, subject=subject, target_new=target))

    @property
    def text(self) -> str:
        """The prompt with the subject written in."""
        return self.prompt.replace("{}", self.subject)


def _text(value: Any, field: str) -> str:
    """A request's field as text: a string, or CounterFact's {"str": ...}; anything else is an error naming it."""
    value = value.get("str") if isinstance(value, dict) else value
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text such as 'Rome' (or {{'str': 'Rome'}}), got {value!r}")
    return value


def check_words(request: Request) -> Request:
    """The checks that need no model (one placeholder, a subject, a target), so bad words fail before it loads."""
    if request.prompt.count("{}") != 1:
        raise ValueError(f"the prompt must contain '{{}}' exactly once where the subject goes; got {request.prompt!r}")
    check_prompt_end(request.prompt)
    if not request.subject.strip():
        raise ValueError("the subject is empty")
    if not request.target_new.strip():
        raise ValueError(f"the target {request.target_new!r} is empty; give the new object's words, e.g. 'Rome'")
    return request


def target_ids(lm: LM, request: Request) -> list[int]:
    """Check a request against the model before anything is computed; return the target's token ids.

    As the original does, a target without a leading space gets one ("Rome" is scored as " Rome").
    """
    check_words(request)
    placeholder_span(lm.tokenizer, request.prompt, request.subject)
    ids = lm.tokenizer(spaced(request.target_new), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the target {request.target_new!r} tokenises to nothing")
    return ids


def parse_requests(
    lm: LM, requests: Request | dict | Sequence[Request | dict], method: str
) -> tuple[list[Request], list[list[int]]]:
    """One request or several, parsed and checked against the model: (requests, each target's token ids)."""
    reqs = [requests] if isinstance(requests, Request | dict) else list(requests)
    if not reqs:
        raise ValueError("no requests to apply")
    if lm.tokenizer is None:
        raise ValueError(f"{method} needs the model's tokenizer")
    reqs = [Request.parse(r) for r in reqs]
    return reqs, [target_ids(lm, r) for r in reqs]
