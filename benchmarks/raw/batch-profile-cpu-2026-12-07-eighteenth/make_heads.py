# Random Hydra++ and Chimera heads (4 each) on the bundled nano base, written as checkpoints into OUT_DIR:
#   PYTHONPATH=$PWD python3 benchmarks/raw/batch-profile-cpu-2026-12-07-eighteenth/make_heads.py OUT_DIR
import os
import sys

from transformers import AutoModelForCausalLM

from fastchat_spec.methods import METHODS
from tests import tiny

out, base_dir = sys.argv[1], "fastchat_spec/models/vicuna-nano"
base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
METHODS["hydra"].write_checkpoint(os.path.join(out, "hydra-pp-vicuna-nano"),
                                  tiny.oracle_hydra_heads(base, 4, "prefix-mlp"), base_dir)
METHODS["chimera"].write_checkpoint(os.path.join(out, "chimera-vicuna-nano"), tiny.random_chimera_drafter(base, 4),
                                    base_dir)
