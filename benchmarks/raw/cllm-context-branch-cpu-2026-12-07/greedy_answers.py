"""Greedy answers (128 tokens) of the nano base to the 32 held-out prompts per domain that cllm_eval decodes."""
import sys, json, torch
sys.path.insert(0, '.')  # run from the repository root
from transformers import AutoModelForCausalLM, AutoTokenizer
from fastchat_spec.train.cllm_eval import heldout_prompts
from fastchat_spec.train.data import read_fastchat_json
from fastchat_spec.conversation import conversation_template
path = 'fastchat_spec/models/vicuna-nano'
tok = AutoTokenizer.from_pretrained(path, use_fast=False)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
convs = read_fastchat_json('data/cllm/heldout_all.json')
template = conversation_template(path)
res = {}
for dom in ('code', 'all'):
    prompts = heldout_prompts(convs, template, 32, dom)
    outs = []
    for p in prompts:
        ids = tok(p).input_ids
        with torch.no_grad():
            g = model.generate(torch.tensor([ids]), max_new_tokens=128, do_sample=False, eos_token_id=tok.eos_token_id)
        outs.append((ids, g[0, len(ids):].tolist()))
    res[dom] = outs
json.dump(res, open('benchmarks/raw/cllm-context-branch-cpu-2026-12-07/greedy_nano.json', 'w'))
