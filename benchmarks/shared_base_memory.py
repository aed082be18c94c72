"""Peak memory: one shared pretrained base with two LoRA adapters vs two separate models.

    python -m benchmarks.shared_base_memory

Saves a small pretrained-style Llama model locally, then in two fresh subprocesses loads
(a) reflection + policy as two full models and (b) one base with adapters "reflection" and
"policy" (reflectrl.backbone.TwoPlayerBackbone), runs one forward per player, and prints each
process's peak RSS growth and the ratio, measured in one run. Target (issue 3): <= 0.6x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, torch
from reflectrl.backbone import BackboneConfig, LoraSettings, TwoPlayerBackbone, build_backbone
folder, mode = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = torch.randint(0, 200, (1, 64))
if mode == "two_models":
    players = [build_backbone(BackboneConfig(name_or_path=folder, trainable=False))[0] for _ in range(2)]
    with torch.no_grad():
        for model in players:
            model(ids)
else:
    lora = LoraSettings(r=16, alpha=32)
    backbone = TwoPlayerBackbone(BackboneConfig(name_or_path=folder, lora=lora, trainable=False),
                                 BackboneConfig(name_or_path=folder, lora=lora))
    with torch.no_grad():
        for player in ("reflection", "policy"):
            with backbone.use(player) as model:
                model(ids)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
modules = players if mode == "two_models" else [backbone]
storages = {}
for module in modules:
    for tensor in list(module.parameters()) + list(module.buffers()):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
print(json.dumps({"kib": after - before, "weight_bytes": sum(storages.values())}))
"""


def main(args: list[str] | None = None) -> None:
    # No options: the parser gives `--help` (which would otherwise run the benchmark) and refuses typos.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(args)
    from transformers import AutoModelForCausalLM, LlamaConfig

    from reflectrl.backbone import build_byte_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = build_byte_tokenizer()
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.bos_token_id)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        results = {}
        for mode in ("two_models", "shared_base"):
            out = subprocess.run([sys.executable, "-c", CHILD, folder, mode], capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    two, shared = results["two_models"], results["shared_base"]
    # Weight memory (unique tensor storages) is exact; RSS growth is what the OS saw, which
    # safetensors' lazy memory-mapping can under-count.
    ratio = shared["weight_bytes"] / two["weight_bytes"]
    print(f"weights in memory: two models {two['weight_bytes'] / 2**20:.1f} MiB, shared base + 2 adapters "
          f"{shared['weight_bytes'] / 2**20:.1f} MiB, ratio {ratio:.2f} (target <= 0.6)")
    print(f"peak RSS growth:   two models {two['kib'] / 1024:.0f} MiB, shared base + 2 adapters {shared['kib'] / 1024:.0f} MiB, "
          f"ratio {shared['kib'] / max(two['kib'], 1):.2f}")


if __name__ == "__main__":
    main()
