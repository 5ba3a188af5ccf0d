"""``moderngpt2 convert-gemma2 SRC DST``: turn a transformers Gemma2 checkpoint into a ModernGPT2 one.

ModernGPT2 keeps Gemma2's module names, so the conversion is a config mapping plus a key map. Tensors are
streamed one safetensors shard at a time (a 27B checkpoint never sits in memory twice), the result is
written to a temporary directory beside DST and renamed into place only once complete, and the tokenizer
files travel along. The output carries the modeling code and an ``auto_map``, like any ``save_pretrained``.
"""

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .argparsing import CommandParser
from .errors import UserError
from .jsonfile import read_json_object

# Gemma2 config field -> ModernGPT2 config field. Fields not listed have no ModernGPT2 equivalent and must hold
# their neutral value (checked in `moderngpt2_config_kwargs`).
CONFIG_MAP = {
    "vocab_size": "vocab_size",
    "hidden_size": "n_embd",
    "intermediate_size": "n_inner",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "num_key_value_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "hidden_activation": "activation_function",
    "max_position_embeddings": "n_positions",
    "rms_norm_eps": "rms_norm_eps",
    "initializer_range": "initializer_range",
    "query_pre_attn_scalar": "query_pre_attn_scalar",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
    "sliding_window": "sliding_window",
    "layer_types": "layer_types",
    "attention_dropout": "attention_dropout",
    "tie_word_embeddings": "tie_word_embeddings",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
    "use_cache": "use_cache",
}

# Gemma2 tensor name -> ModernGPT2 tensor name; "{}" stands for the layer index. The names are the same by design.
KEY_MAP = {
    "model.embed_tokens.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    **{
        f"model.layers.{{}}.{name}.weight": f"model.layers.{{}}.{name}.weight"
        for name in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        )
    },
}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)

# The reverse direction, for `moderngpt2 export --format gemma2`.
GEMMA2_KEY_MAP = {ours: theirs for theirs, ours in KEY_MAP.items()}

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _translate_key(key: str, table: dict[str, str], checkpoint_kind: str) -> str:
    match = _LAYER_INDEX.search(key)
    template = key.replace(match.group(0), ".{}.", 1) if match else key
    if template not in table:
        raise UserError(f"tensor '{key}' is not part of a {checkpoint_kind} checkpoint; nothing was written")
    return table[template].format(match.group(1)) if match else table[template]


def to_moderngpt2_key(gemma2_key: str) -> str:
    """Map one Gemma2 tensor name to its ModernGPT2 name (UserError for a name Gemma2 does not have)."""
    return _translate_key(gemma2_key, KEY_MAP, "Gemma2ForCausalLM")


def to_gemma2_key(moderngpt2_key: str) -> str:
    """Map one ModernGPT2 tensor name to its Gemma2 name (UserError for a name Gemma2 has no place for)."""
    return _translate_key(moderngpt2_key, GEMMA2_KEY_MAP, "Gemma2-compatible ModernGPT2")


def read_checkpoint_config(src: Path, config_class, model_type: str, kind: str, hint: str):
    """Load SRC/config.json as ``config_class`` (its defaults fill fields the file omits); UserError for a
    missing file, another model type or an invalid config."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise UserError(f"{src} is not a checkpoint directory: {config_path} is missing")
    raw = read_json_object(config_path, "checkpoint config")
    if raw.get("model_type") != model_type:
        raise UserError(f"{config_path}: model_type is {raw.get('model_type')!r}, expected {model_type!r}; {hint}")
    try:
        return config_class.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise UserError(f"{config_path}: invalid {kind} config ({error})") from None


def read_gemma2_config(src: Path):
    """Load SRC/config.json as a transformers ``Gemma2Config``."""
    from transformers import Gemma2Config

    return read_checkpoint_config(src, Gemma2Config, "gemma2", "Gemma2", "give a Gemma2 checkpoint directory")


def moderngpt2_config_kwargs(gemma2_config) -> dict:
    """The ModernGPT2 config arguments equivalent to a Gemma2 config; UserError for features ModernGPT2 lacks."""
    if getattr(gemma2_config, "attention_bias", False):
        raise UserError("the Gemma2 config has attention_bias=true; ModernGPT2 has no attention biases")
    if getattr(gemma2_config, "use_bidirectional_attention", None):
        raise UserError("the Gemma2 config uses bidirectional attention; ModernGPT2 is a causal language model")
    rope = getattr(gemma2_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise UserError(f"the Gemma2 config uses rope_type '{rope_type}'; ModernGPT2 supports plain RoPE only")
    kwargs = {ours: getattr(gemma2_config, theirs) for theirs, ours in CONFIG_MAP.items()}
    kwargs["rope_theta"] = float(rope.get("rope_theta", getattr(gemma2_config, "rope_theta", 10000.0)))
    if "sliding_attention" not in (kwargs["layer_types"] or []):
        kwargs["sliding_window"] = None
    return kwargs


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
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def stored_dtype(src: Path, files: list[str]) -> torch.dtype:
    """The dtype of the checkpoint's first tensor, read from the header (Gemma2 stores one dtype throughout)."""
    with safe_open(src / files[0], framework="pt") as shard:
        code = shard.get_slice(next(iter(shard.keys()))).get_dtype()
    if code not in SAFETENSORS_DTYPES:
        raise UserError(f"{src / files[0]} stores {code} tensors; expected float32, bfloat16 or float16")
    return SAFETENSORS_DTYPES[code]


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
    from .configuration_moderngpt2 import ModernGPT2Config
    from .modeling_moderngpt2 import ModernGPT2ForCausalLM

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory; give a Gemma2 checkpoint directory")
    try:
        config = ModernGPT2Config(**moderngpt2_config_kwargs(read_gemma2_config(src)))
    except ValueError as error:
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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="moderngpt2 convert-gemma2",
        description="Convert a transformers Gemma2 checkpoint directory (safetensors) into a ModernGPT2 checkpoint.",
    )
    parser.add_argument("src", help="Gemma2 checkpoint directory (config.json + model*.safetensors)")
    parser.add_argument("dst", help="output directory for the ModernGPT2 checkpoint")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep the stored dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists and is not empty")
    args = parser.parse_args(argv)
    out = convert_gemma2(args.src, args.dst, DTYPES.get(args.dtype), args.overwrite)
    print(f"wrote ModernGPT2 checkpoint to {out}")
    return 0
