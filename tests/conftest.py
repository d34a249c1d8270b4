"""Shared fixtures: tiny random checkpoints built by transformers, the embedded SmolLM2, the data folder, the
original code's outputs (the golden files), and the expensive results several test files check (one ROME edit)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import jrome
from jrome.files import atomic_write_bytes

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA_DIR = Path(os.environ.get("JROME_DATA_DIR", SHARED / "data")).resolve()
GOLDEN_DIR = Path(os.environ.get("JROME_GOLDEN_DIR", SHARED / "golden")).resolve()
os.environ["JROME_DATA_DIR"] = str(DATA_DIR)  # the library, subprocesses and notebook kernels read the same folder
# Nothing a test runs reaches the internet: a missing file is the offline one-line error. The tests of fetching unset
# this and point jrome at a server on 127.0.0.1 (tests/hub.py).
os.environ["JROME_OFFLINE"] = "1"


def _one_core_per_worker() -> None:
    """With as many pytest-xdist workers as cores, each worker (and what it starts) runs on a core of its own, so
    XLA sizes its thread pool to one thread and two workers' parallel ops never wait on each other's threads."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if worker and cores and count >= len(cores):
        os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})


_one_core_per_worker()  # before JAX starts its CPU backend


def _required(path: Path, what: str) -> Path:
    """path if it exists; else skipped, unless JROME_REQUIRE_DATA=1 (CI) makes a missing file a failure."""
    if not path.is_file():
        message = f"{path} is missing; {what}"
        if os.environ.get("JROME_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def data_file(relative: str) -> Path:
    """A file of the shared data folder (the one place tests read data from)."""
    return _required(DATA_DIR / relative, "see data/README.md (set JROME_DATA_DIR)")


def golden_file(name: str) -> Path:
    """An output of the original code (kmeng01/rome), the oracle of the fidelity tests; see its README."""
    return _required(GOLDEN_DIR / name, "the original code's outputs live in ../shared/golden (set JROME_GOLDEN_DIR)")


# Tiny configs that exercise what differs between the families: partial and interleaved rotary, parallel
# residuals with one or two norms, grouped-query attention, biases, tied and untied heads; and the Llama-layout
# families: Mistral (a sliding window), Qwen2 (q/k/v biases), Qwen3 (q/k norms, head_dim apart from d/heads),
# Gemma (scale-minus-one norms, scaled embeddings, GeGLU, one kv head), Gemma 2 (norms after attention and MLP,
# soft caps small enough to bite, a query scale apart from head_dim, a window on every other layer), Gemma 3 (q/k
# norms, local and global layers with rotary thetas far apart).
TINY = {
    "gpt2": dict(n_layer=3, n_embd=32, n_head=4, vocab_size=96, n_positions=64, n_inner=48),
    "gptj": dict(n_layer=3, n_embd=64, n_head=4, vocab_size=96, n_positions=64, rotary_dim=8),
    "gpt_neox": dict(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=96,
        rotary_pct=0.5, max_position_embeddings=64,
    ),
    "gpt_neox_sequential": dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=96,
        use_parallel_residual=False, max_position_embeddings=64,
    ),
    "llama": dict(
        num_hidden_layers=3, hidden_size=48, num_attention_heads=6, num_key_value_heads=2, intermediate_size=64,
        vocab_size=96, rope_theta=100000.0, max_position_embeddings=64, tie_word_embeddings=True,
    ),
    "mistral": dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
        vocab_size=96, max_position_embeddings=64, sliding_window=16, head_dim=8,
    ),
    "qwen2": dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
        vocab_size=96, max_position_embeddings=64, tie_word_embeddings=False, rope_theta=1000000.0,
    ),
    "qwen3": dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
        vocab_size=96, max_position_embeddings=64, head_dim=12, tie_word_embeddings=True,
    ),
    "gemma": dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1, intermediate_size=40,
        vocab_size=96, max_position_embeddings=64, head_dim=16,
    ),
    "gemma2": dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
        vocab_size=96, max_position_embeddings=64, head_dim=16, sliding_window=16, query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
    ),
    "gemma3": dict(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
        vocab_size=96, max_position_embeddings=64, head_dim=16, sliding_window=16, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    ),
    "llama_bias": dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=40,
        vocab_size=96, attention_bias=True, mlp_bias=True, max_position_embeddings=64,
    ),
}  # fmt: skip


def build_torch_model(name: str, seed: int = 0):
    """A tiny transformers model of one family with weights large enough that mistakes show."""
    import torch
    import transformers

    family = name.split("_sequential")[0].split("_bias")[0]
    config_cls, model_cls = {
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
        "gptj": (transformers.GPTJConfig, transformers.GPTJForCausalLM),
        "gpt_neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    }[family]
    torch.manual_seed(seed)
    config = config_cls(**TINY[name], bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in pname or "ln" in pname) and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


WORDS = [
    "the",
    "eiffel",
    "tower",
    "is",
    "located",
    "in",
    "city",
    "of",
    "paris",
    "rome",
    "space",
    "needle",
    "seattle",
    "louvre",
    "a",
    "an",
    "and",
    "to",
    "big",
    "old",
    "new",
    "famous",
    "museum",
    "river",
    "bridge",
    "capital",
    "country",
    "france",
    "italy",
    "speaks",
    "language",
    "french",
]


def tiny_tokenizer():
    """A word-level tokenizer over a few dozen words (ids below the tiny models' vocabulary of 96)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


# The files whose tests take longest, longest first: they start first, so the two workers (pytest-xdist) finish
# together instead of one running a long file alone at the end.
FIRST = ("test_notebooks.py", "test_memit.py", "test_golden_counterfact.py", "test_golden_trace.py", "test_docs.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that runs the real SmolLM2 (directly or through a fixture) is marked slow: `-m "not slow"` is the
    quick loop. The longest files run first (FIRST); the others keep their order."""
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))


def one_worker(module: str) -> pytest.MarkDecorator:
    """`pytestmark = one_worker(__name__)` keeps a file's tests on one pytest-xdist worker (--dist loadgroup), for a
    file whose module-scoped fixture is too costly to compute on both."""
    return pytest.mark.xdist_group(module)


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    """A factory: family name → a tiny model with the word-level tokenizer, for tests that need text."""
    tok = tiny_tokenizer()
    return lambda name: jrome.load(tiny_dir(name), tokenizer=tok)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A factory: family name → directory holding that tiny model, saved as safetensors."""
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            path = tmp_path_factory.mktemp(name)
            build_torch_model(name).save_pretrained(path, safe_serialization=True)
            cache[name] = path
        return cache[name]

    return make


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Key statistics and other caches go to a fresh folder, so tests never read a cache their run did not write.

    Compiled XLA programs are kept between sessions (JAX's persistent cache, keyed by the program and the JAX
    version, in $JAX_COMPILATION_CACHE_DIR or ~/.cache/jrome/xla-tests) and shared with the subprocesses the tests
    start, so a program is compiled once on a machine, not once per test run.
    """
    import jax

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers of one run share it (files are written atomically)
        root = root.parent
    shared = root / "jrome-cache"
    shared.mkdir(exist_ok=True)
    os.environ["JROME_CACHE_DIR"] = str(shared)
    compiled = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache/jrome/xla-tests"))
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the many small programs add up too
    jax.config.update("jax_compilation_cache_dir", compiled)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


MAPPINGS_LIMIT = 30_000  # Linux allows 65,530 memory mappings per process (vm.max_map_count)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """After a test file, when this process holds many memory mappings, drop JAX's in-memory compiled programs (the
    persistent cache keeps them on disk). Each CPU executable keeps a few mappings of its machine code; a full run
    kept ~20,000 programs alive and reached Linux's 65,530 mappings, where the next mapping failed and XLA
    segfaulted. Clearing only past a threshold keeps the programs the next files reuse (tracing them again costs)."""
    yield
    maps = Path("/proc/self/maps")
    if maps.exists() and len(maps.read_bytes().splitlines()) > MAPPINGS_LIMIT:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


def separate_compiled_programs(env: dict[str, str]) -> dict[str, str]:
    """env for a subprocess that simulates several CPU devices: its compiled programs go to their own persistent
    cache, never read by single-device processes (an executable compiled beside 8 devices is not one for 1)."""
    return env | {"JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"] + "-multidevice"}


@pytest.fixture(scope="session")
def smollm2() -> jrome.LM:
    return jrome.load("smollm2")


@pytest.fixture(scope="session")
def golden_rome() -> dict:
    """The original's ROME edit of SmolLM2 (Eiffel Tower → Rome at layer 4): its inputs and outputs."""
    import json

    record = json.loads(golden_file("rome_smollm2_eiffel_L4.json").read_text())
    with np.load(golden_file("rome_smollm2_eiffel_L4.npz")) as arrays:
        record["arrays"] = {k: arrays[k] for k in arrays.files}
    return record


@pytest.fixture(scope="session")
def golden_hparams(golden_rome):
    """jrome's hyperparameters for the golden edit: the original's ROME defaults, layer 4, its six templates."""
    from jrome.editing import RomeHparams

    h = golden_rome["hparams"]
    return RomeHparams(
        layer=golden_rome["layer"], fact_token=h["fact_token"], v_num_grad_steps=h["v_num_grad_steps"], v_lr=h["v_lr"],
        v_weight_decay=h["v_weight_decay"], clamp_norm_factor=h["clamp_norm_factor"], kl_factor=h["kl_factor"],
        mom2_adjustment=h["mom2_adjustment"], context_templates=tuple(golden_rome["templates"]),
    )  # fmt: skip


@pytest.fixture(scope="session")
def eiffel_edit(smollm2, golden_rome, golden_hparams):
    """The one Eiffel Tower → Rome edit the tests share: jrome.rome.edit with the golden settings and C. Computed
    once per run: the first pytest-xdist worker to need it writes its Edit record to the run's shared cache
    folder (under a lock), and the other applies that record to its own SmolLM2 (`rome.apply`, as `edit` does)."""
    import dataclasses
    import fcntl
    import pickle

    record = Path(os.environ["JROME_CACHE_DIR"]) / "eiffel_edit.pickle"
    with open(record.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.exists():
            return jrome.rome.apply(smollm2, pickle.loads(record.read_bytes()))
        new, undo = jrome.rome.edit(smollm2, golden_rome["request"], golden_hparams, stats=golden_rome["arrays"]["C"])
        atomic_write_bytes(record, pickle.dumps(dataclasses.replace(undo.edits[0], old_kernel=None)))  # apply sets it
        return new, undo


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
