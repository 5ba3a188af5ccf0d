"""Hugging Face export: Auto classes, save/reload, and loading with `trust_remote_code` where moderngpt2 is absent."""

import ast
import json
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import moderngpt2
from moderngpt2.modeling_moderngpt2 import CACHE_NAME
from moderngpt2 import (
    ModernGPT2Config,
    ModernGPT2ForCausalLM,
    ModernGPT2ForSequenceClassification,
    ModernGPT2ForTokenClassification,
    ModernGPT2Model,
)

WORKER = Path(__file__).parent / "workers" / "export_clean_load.py"
# A checkpoint saved by release 0.1.0 (its model code, transformers 5.17): a tiny untied per-layer model, its inputs,
# logits and greedy tokens, all computed by that release.
RELEASE = Path(__file__).parent / "fixtures" / "release_0_1_0"
VOCAB, PER_LAYER_VOCAB = 96, 40
CONFIGS = {
    "plain": dict(attn_logit_softcapping=20.0, final_logit_softcapping=15.0, sliding_window=4),
    "per_layer": dict(
        use_per_layer_embedding=True,
        per_layer_vocab_size=PER_LAYER_VOCAB,
        per_layer_hidden_size=8,
        per_layer_combination_method="gated",
        final_logit_softcapping=15.0,
    ),
}


def build_model(name: str) -> ModernGPT2ForCausalLM:
    """A tiny model whose every parameter (norm gains and PLE mixing logits included) is random and matters."""
    config = ModernGPT2Config(model_size_name="tiny", vocab_size=VOCAB, pad_token_id=0, **CONFIGS[name])
    model = ModernGPT2ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    if config.use_per_layer_embedding:
        # not Gemma3n's default (id itself below V_p, else 0): a random map over the whole per-layer vocabulary
        model.set_per_layer_token_map(torch.randint(0, PER_LAYER_VOCAB, (VOCAB,)))
    return model.eval()


def sample_inputs() -> dict:
    input_ids = torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :2], attention_mask[1, :2] = 0, 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (model, directory with the checkpoint, its inputs and their logits)."""
    torch.manual_seed(0)
    saved = {}
    for name in CONFIGS:
        model, directory = build_model(name), tmp_path_factory.mktemp(name)
        model.save_pretrained(directory)
        inputs = sample_inputs()
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.save(inputs, directory / "inputs.pt")
        torch.save(logits, directory / "reference_logits.pt")
        saved[name] = (model, directory)
    return saved


def test_auto_classes_resolve_after_import():
    config = AutoConfig.for_model("moderngpt2", model_size_name="tiny", vocab_size=VOCAB)
    assert type(config) is ModernGPT2Config and config.n_layer == 2
    for auto_class, expected in [
        (AutoModel, ModernGPT2Model),
        (AutoModelForCausalLM, ModernGPT2ForCausalLM),
        (AutoModelForSequenceClassification, ModernGPT2ForSequenceClassification),
        (AutoModelForTokenClassification, ModernGPT2ForTokenClassification),
    ]:
        assert type(auto_class.from_config(config)) is expected


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_reloads_with_identical_logits(checkpoints, name):
    model, directory = checkpoints[name]
    reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()  # the installed package, no remote code
    assert type(reloaded) is ModernGPT2ForCausalLM
    inputs = sample_inputs()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, torch.load(directory / "reference_logits.pt"))
    if model.config.use_per_layer_embedding:
        assert torch.equal(reloaded.model.per_layer_token_map, model.model.per_layer_token_map)


def test_checkpoint_carries_self_contained_code(checkpoints):
    _, directory = checkpoints["per_layer"]
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_moderngpt2.ModernGPT2Config",
        "AutoModel": "modeling_moderngpt2.ModernGPT2Model",
        "AutoModelForCausalLM": "modeling_moderngpt2.ModernGPT2ForCausalLM",
        "AutoModelForSequenceClassification": "modeling_moderngpt2.ModernGPT2ForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_moderngpt2.ModernGPT2ForTokenClassification",
    }
    copied = {path.stem for path in directory.glob("*.py")}
    assert {"configuration_moderngpt2", "modeling_moderngpt2"} <= copied
    for path in directory.glob("*.py"):
        assert path.read_bytes() == (Path(moderngpt2.__file__).parent / path.name).read_bytes()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in copied, f"{path.name} imports .{node.module}, not copied"
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] == "moderngpt2" for n in names), f"{path.name} imports the package"


def load_without_the_package(checkpoints, tmp_path):
    """Load checkpoints ({name: directory}) in a fresh interpreter that cannot import moderngpt2; its JSON result."""
    request = {
        "site_packages": site.getsitepackages() + [site.getusersitepackages()],
        "checkpoints": {name: str(directory) for name, directory in checkpoints.items()},
        "threads": torch.get_num_threads(),
        "output": str(tmp_path / "result.json"),
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "HOME": str(tmp_path),
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-I", "-S", str(WORKER), str(tmp_path / "request.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.slow
def test_loads_without_the_package_via_trust_remote_code(checkpoints, tmp_path):
    """A fresh interpreter that cannot import moderngpt2 loads both checkpoints with plain transformers."""
    result = load_without_the_package({name: directory for name, (_, directory) in checkpoints.items()}, tmp_path)
    assert result["moderngpt2_importable"] is False
    for name, (model, _) in checkpoints.items():
        loaded = result["checkpoints"][name]
        assert loaded["config_class"].startswith("transformers_modules.")
        assert loaded["config_class"].endswith("configuration_moderngpt2.ModernGPT2Config")
        assert loaded["model_class"].startswith("transformers_modules.")
        assert loaded["model_class"].endswith("modeling_moderngpt2.ModernGPT2ForCausalLM")
        assert loaded["equal"], f"{name}: max |logit diff| {loaded['max_abs_diff']:.3e}"
        # every Auto class the package registers resolves to the checkpoint's own code
        assert loaded["auto_map"] == ["AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                      "AutoModelForSequenceClassification", "AutoModelForTokenClassification"]
        assert loaded["base_model_class"].startswith("transformers_modules.")
        assert loaded["base_model_class"].endswith("modeling_moderngpt2.ModernGPT2Model") and loaded["base_equal"]
        for auto_name, kind in (("AutoModelForSequenceClassification", "SequenceClassification"),
                                ("AutoModelForTokenClassification", "TokenClassification")):
            head = loaded["heads"][auto_name]
            assert head["class"].startswith("transformers_modules.")
            assert head["class"].endswith(f"modeling_moderngpt2.ModernGPT2For{kind}")
        assert loaded["heads"]["AutoModelForSequenceClassification"]["logits_shape"] == [2, 3]
        assert loaded["heads"]["AutoModelForTokenClassification"]["logits_shape"] == [2, 10, 3]
        assert loaded["generation_equals_recomputation"], name
        if model.config.use_per_layer_embedding:
            assert loaded["token_map"] == model.model.per_layer_token_map.tolist()


def test_token_map_matters(checkpoints):
    """Negative control: the same weights with Gemma3n's default map give different logits."""
    model, directory = checkpoints["per_layer"]
    default = ModernGPT2ForCausalLM.from_pretrained(directory).eval()
    ids = torch.arange(VOCAB)
    default.set_per_layer_token_map(torch.where(ids < PER_LAYER_VOCAB, ids, torch.zeros_like(ids)))
    with torch.no_grad():
        diff = (default(**sample_inputs()).logits - torch.load(directory / "reference_logits.pt")).abs().max()
    assert diff > 1e-2


def release_outputs():
    return torch.load(RELEASE / "inputs.pt"), torch.load(RELEASE / "reference_logits.pt"), json.loads(
        (RELEASE / "greedy_tokens.json").read_text())


def test_release_checkpoint_loads_with_the_package_and_reproduces_the_release():
    inputs, reference, greedy = release_outputs()
    model = AutoModelForCausalLM.from_pretrained(RELEASE).eval()
    assert type(model) is ModernGPT2ForCausalLM
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference, atol=0, rtol=0)
        generated = model.generate(torch.tensor(greedy["prompt"]), max_new_tokens=12, min_new_tokens=12,
                                   do_sample=False)
    assert generated.tolist() == greedy["tokens"]


@pytest.mark.slow
def test_release_checkpoint_loads_via_trust_remote_code_and_a_resaved_copy_generates(tmp_path):
    """The release's own code reads the cache only as `past_key_values`: its cached generate is right only where
    transformers still passes that name (< 5.24). Re-saving with this package refreshes the code; that copy is
    right everywhere."""
    inputs, reference, greedy = release_outputs()
    resaved = tmp_path / "resaved"
    ModernGPT2ForCausalLM.from_pretrained(RELEASE).save_pretrained(resaved)
    torch.save(inputs, resaved / "inputs.pt")
    torch.save(reference, resaved / "reference_logits.pt")
    (tmp_path / "load").mkdir()
    result = load_without_the_package({"release": RELEASE, "resaved": resaved}, tmp_path / "load")
    release, copy = result["checkpoints"]["release"], result["checkpoints"]["resaved"]
    assert release["equal"] and copy["equal"]
    assert release["auto_map"] == ["AutoConfig", "AutoModelForCausalLM"] and copy["base_equal"]
    assert copy["generated"] == greedy["tokens"] and copy["generation_equals_recomputation"]
    assert release["generation_equals_recomputation"] == (CACHE_NAME == "past_key_values")
