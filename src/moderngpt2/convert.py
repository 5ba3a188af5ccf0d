"""Turn a transformers Gemma2 checkpoint into a ModernGPT2 one (`moderngpt2 convert-gemma2 SRC DST`).

ModernGPT2 keeps Gemma2's module names, so the conversion is the config mapping of `gemma2_mapping` plus a check
that every tensor has its place. Tensors are streamed one safetensors shard at a time (a 27B checkpoint never
sits in memory twice), the result is written to a temporary directory beside DST and renamed into place only
once complete, and the tokenizer files travel along. The output carries the modeling code and an ``auto_map``, like any ``save_pretrained``.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .arguments import build_config
from .devices import DTYPES
from .errors import UserError
from .fileio import write_json
from .gemma2_mapping import moderngpt2_config_kwargs, read_gemma2_config, to_moderngpt2_key

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)


def shard_files(src: Path) -> list[str]:
    """The safetensors files of SRC, in index order (a single ``model.safetensors`` or a sharded index)."""
    index_path = src / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"{index_path} is not a safetensors index ({error})") from None
        files = list(dict.fromkeys(weight_map.values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise UserError(
            f"{src} has no model.safetensors (or model.safetensors.index.json); re-save the model with "
            "save_pretrained(..., safe_serialization=True) first"
        )
    for name in files:
        if not (src / name).is_file():
            raise UserError(f"{src / name} is listed in the checkpoint index but missing")
    return files


def check_tensor_names(src: Path, files: list[str], model, translate=to_moderngpt2_key) -> dict[str, str]:
    """Validate every tensor's name and shape against ``model`` (the target class, built on the meta device).

    Returns the stored name -> target name map (``translate`` maps one name). A tied LM head stored in the
    checkpoint is dropped.
    """
    tied = model.config.tie_word_embeddings
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items() if not name.endswith("_token_map")}
    if tied:
        expected.pop("lm_head.weight", None)
    names = {}
    for file in files:
        with safe_open(src / file, framework="pt") as shard:
            for key in shard.keys():
                target = translate(key)
                if target == "lm_head.weight" and tied:
                    continue
                shape = tuple(shard.get_slice(key).get_shape())
                if expected.get(target) != shape:
                    raise UserError(
                        f"{src / file}: tensor '{key}' has shape {shape}, but the config implies {expected.get(target)}"
                    )
                names[key] = target
    missing = sorted(set(expected) - set(names.values()))
    if missing:
        raise UserError(f"{src}: the checkpoint lacks {len(missing)} tensors the config implies, e.g. '{missing[0]}'")
    return names


def write_shards(src: Path, files: list[str], names: dict[str, str], out: Path, dtype) -> None:
    """Copy the tensors shard by shard under their new names, cast to ``dtype`` when one is given."""
    weight_map, total_size = {}, 0
    for file in tqdm(files, desc="converting", unit="shard"):
        tensors = {}
        with safe_open(src / file, framework="pt") as shard:
            for key in shard.keys():
                if key in names:
                    tensor = shard.get_tensor(key)
                    tensors[names[key]] = tensor if dtype is None else tensor.to(dtype)
        save_file(tensors, out / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total_size += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if len(files) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(out / "model.safetensors.index.json", index)


# safetensors' dtype codes of the dtypes a checkpoint may hold.
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def stored_dtype(src: Path, files: list[str]) -> torch.dtype:
    """The dtype of the checkpoint's first tensor, read from the header (Gemma2 stores one dtype throughout)."""
    with safe_open(src / files[0], framework="pt") as shard:
        code = shard.get_slice(next(iter(shard.keys()))).get_dtype()
    if code not in SAFETENSORS_DTYPES:
        raise UserError(f"{src / files[0]} stores {code} tensors; expected float32, bfloat16 or float16")
    return DTYPES[SAFETENSORS_DTYPES[code]]


def write_metadata(src: Path, out: Path, model) -> None:
    """Config, modeling code with ``auto_map``, generation config and tokenizer files."""
    from transformers import GenerationConfig
    from transformers.dynamic_module_utils import custom_object_save

    if getattr(model, "_auto_class", None) is not None:
        custom_object_save(model, out, config=model.config)
    model.config.save_pretrained(out)
    if (src / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(src)
        generation_config.cache_implementation = None  # Gemma2's "hybrid" cache is Gemma2-specific
    else:
        generation_config = GenerationConfig.from_model_config(model.config)
    generation_config.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)


@contextmanager
def staged_output(dst: Path, overwrite: bool):
    """Yield an empty directory beside ``dst`` that replaces ``dst`` only once the block completes.

    An existing non-empty ``dst`` is refused unless ``overwrite``; on any error the staging directory is
    removed and ``dst`` is left as it was.
    """
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise UserError(f"{dst} exists and is not empty; choose another output directory or pass --overwrite")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield staging
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert_gemma2(src, dst, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Convert the Gemma2 checkpoint directory ``src`` into a ModernGPT2 checkpoint directory ``dst``."""
    from .modeling_moderngpt2 import ModernGPT2ForCausalLM

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory; give a Gemma2 checkpoint directory")
    try:
        config = build_config(moderngpt2_config_kwargs(read_gemma2_config(src)))
    except UserError as error:
        raise UserError(f"{src / 'config.json'}: {error}") from None
    files = shard_files(src)
    config.dtype = dtype or stored_dtype(src, files)
    with torch.device("meta"):
        model = ModernGPT2ForCausalLM(config)
    names = check_tensor_names(src, files, model)

    with staged_output(dst, overwrite) as staging:
        write_shards(src, files, names, staging, dtype)
        write_metadata(src, staging, model)
    return dst

