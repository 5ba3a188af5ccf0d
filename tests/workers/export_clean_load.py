"""Load saved checkpoints with plain transformers and `trust_remote_code=True`, where moderngpt2 cannot be imported.

Run as `python -I -S export_clean_load.py REQUEST.json`: isolated mode ignores PYTHONPATH and the current
directory, and -S skips the site-packages `.pth` files (among them the editable install's path hook). The
request names the site-packages directories to use and the checkpoints to load; the result is written as JSON.
"""

import importlib.abc
import json
import sys
from pathlib import Path


class RefuseModernGPT2(importlib.abc.MetaPathFinder):
    """Makes `import moderngpt2` fail even where the package sits inside site-packages (a non-editable install)."""

    def find_spec(self, name, path=None, target=None):
        if name == "moderngpt2" or name.startswith("moderngpt2."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


def main():
    request = json.loads(Path(sys.argv[1]).read_text())
    sys.path.extend(p for p in request["site_packages"] if not (Path(p) / "moderngpt2" / "__init__.py").is_file())
    sys.meta_path.insert(0, RefuseModernGPT2())
    try:
        import moderngpt2  # noqa: F401

        importable = True
    except ModuleNotFoundError:
        importable = False

    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    torch.set_num_threads(request["threads"])
    results = {"moderngpt2_importable": importable, "checkpoints": {}}
    for name, checkpoint in request["checkpoints"].items():
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()
        inputs = torch.load(Path(checkpoint) / "inputs.pt")
        reference = torch.load(Path(checkpoint) / "reference_logits.pt")
        with torch.no_grad():
            logits = model(**inputs).logits
            prompt = inputs["input_ids"][:1]  # the unpadded row
            generated = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)
            recomputed = prompt
            for _ in range(12):
                next_token = model(recomputed, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                recomputed = torch.cat((recomputed, next_token), dim=1)
        token_map = getattr(model.model, "per_layer_token_map", None)
        # Every Auto class the checkpoint's auto_map names (a release before the full auto_map names two).
        registered = set(getattr(config, "auto_map", {}))
        base_class = base_equal = None
        heads = {}
        with torch.no_grad():
            if "AutoModel" in registered:
                base = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
                base_class = f"{type(base).__module__}.{type(base).__name__}"
                base_equal = torch.equal(base(**inputs).last_hidden_state, model.model(**inputs).last_hidden_state)
            for auto_class in (AutoModelForSequenceClassification, AutoModelForTokenClassification):
                if auto_class.__name__ in registered:
                    head = auto_class.from_pretrained(checkpoint, trust_remote_code=True, num_labels=3).eval()
                    heads[auto_class.__name__] = {"class": f"{type(head).__module__}.{type(head).__name__}",
                                                  "logits_shape": list(head(**inputs).logits.shape)}
        results["checkpoints"][name] = {
            "auto_map": sorted(registered),
            "base_model_class": base_class,
            "base_equal": base_equal,
            "heads": heads,
            "config_class": f"{type(config).__module__}.{type(config).__name__}",
            "model_class": f"{type(model).__module__}.{type(model).__name__}",
            "max_abs_diff": (logits - reference).abs().max().item(),
            "equal": torch.equal(logits, reference),
            "generated": generated.tolist(),
            "generation_equals_recomputation": torch.equal(generated, recomputed),
            "token_map": None if token_map is None else token_map.tolist(),
        }
    Path(request["output"]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
