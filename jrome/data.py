"""Where the public datasets live: `$JROME_DATA_DIR`, with a clear error that says where to get a missing file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SOURCES = {
    "known_1000.json": "https://rome.baulab.info/data/dsets/known_1000.json",
}


def data_dir() -> Path:
    """The folder named by JROME_DATA_DIR (default: ./data)."""
    return Path(os.environ.get("JROME_DATA_DIR", "data"))


def data_path(relative: str) -> Path:
    """A dataset file under the data folder, or FileNotFoundError naming the folder and where to get the file."""
    path = data_dir() / relative
    if not path.is_file():
        source = SOURCES.get(relative, "see data/README.md")
        raise FileNotFoundError(
            f"{relative} is not in {data_dir()} (set JROME_DATA_DIR to the folder that holds it; get it from {source})"
        )
    return path


def load_known(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """ROME's known facts: dicts with subject, attribute, template, prompt, relation_id, known_id."""
    records = json.loads(Path(path or data_path("known_1000.json")).read_text())
    for i, record in enumerate(records):
        missing = [k for k in ("subject", "attribute", "prompt") if k not in record]
        if missing:
            raise ValueError(f"known-facts record {i} has no field {missing[0]!r}")
    return records
