"""Reading published checkpoint folders: configs, weight files, the base path.

Pickled ``.pt``/``.bin`` files are only ever read with ``weights_only=True``.
Every error names the file and what to do about it; when Hugging Face fails to
load a model folder, ``explain_load_failure`` looks at the folder's files to
say which one is at fault.
"""
from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
import zipfile
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open

BASE_OVERRIDE_ENV = "FASTCHAT_SPEC_BASE_MODEL"
INDEX_FILES = ["model.safetensors.index.json", "pytorch_model.bin.index.json"]
SINGLE_WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]
# The JSON files Hugging Face reads when it loads a model folder with its tokenizer.
MODEL_JSON_FILES = ["config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.json", "added_tokens.json", *INDEX_FILES]
# Files that hold a vocabulary (tokenizer_config.json alone does not).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")
# What a Hugging Face hub id looks like ("name" or "org/name"); anything else is meant as a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# What a checkpoint's hub download leaves out: the base model's own weights (a checkpoint that is its own
# base has Hugging Face fetch them when the base loads), formats other than PyTorch's, and trainer state.
# Config, tokenizer and drafter files (medusa_lm_head.pt, hydra_lm_head.pt, trimlp.pt, ...) come down.
HUB_IGNORE_PATTERNS = ["pytorch_model*.bin", "model*.safetensors", "consolidated*.pth", "*.h5", "*.msgpack",
                       "*.onnx", "*.ot", "*.gguf", "*.tflite", "optimizer*.pt", "scheduler*.pt", "rng_state*.pth"]
# Globals that torch.save itself writes into a state dict's pickle.
_TORCH_GLOBALS = ("torch.", "collections.OrderedDict")


def read_json(file: str):
    """A JSON file's content; a broken file is named in the error."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); restore it from the original checkpoint") from None


def read_config(path: str) -> Optional[dict]:
    """The folder's config.json as a dict, or None when there is none."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return None
    config = read_json(file)
    if not isinstance(config, dict):
        raise ValueError(f"{file} holds a JSON {type(config).__name__}, not an object; "
                         "restore the checkpoint's config.json")
    return config


def config_int(config: dict, key: str, path: str, default: Optional[int] = None, minimum: int = 1) -> int:
    """An integer setting of ``path``/config.json, checked, with the file and key named if it is wrong."""
    value = config.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{os.path.join(path, 'config.json')}: {key} must be an integer >= {minimum}, "
                         f"got {value!r}; fix it in config.json")
    return value


def load_tensors(file: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or a pickled file (weights only)."""
    return _read_weights(file, "cpu")


def check_weight_file(file: str) -> None:
    """Raise the error ``load_tensors`` would, reading headers only (cheap on large files)."""
    _read_weights(file, "meta")


def _read_weights(file: str, map_location: str) -> dict:
    if not os.path.isfile(file):
        raise FileNotFoundError(f"weight file {file} is missing; copy it from the checkpoint or re-run training")
    try:
        state = _read_safetensors(file, map_location) if file.endswith(".safetensors") else \
            torch.load(file, map_location=map_location, weights_only=True)
    except (PermissionError, IsADirectoryError):
        raise  # these name the file and say what is wrong already
    except pickle.UnpicklingError as e:
        raise _unpickling_error(file, e) from None
    except (SafetensorError, RuntimeError, EOFError, ValueError, OSError) as e:
        # The file is there but unreadable; torch reports a zip cut short as RuntimeError
        # or as OSError "Invalid argument", depending on where the cut falls.
        raise ValueError(f"weight file {file} could not be read ({type(e).__name__}: {e}); "
                         "it is corrupt or truncated: download or train it again") from None
    if not isinstance(state, dict):
        raise ValueError(f"weight file {file} holds a {type(state).__name__}, not a state dict; "
                         "re-save it as a state dict of tensors")
    return state


def _read_safetensors(file: str, map_location: str) -> dict:
    if map_location != "meta":
        from safetensors.torch import load_file

        return load_file(file)
    with safe_open(file, "pt") as f:  # parses and checks the header, reads no tensor data
        return {k: None for k in f.keys()}


def _unpickling_error(file: str, error: pickle.UnpicklingError) -> ValueError:
    """Refused for safety (foreign Python objects) or plain corruption, and which."""
    foreign = [g for g in pickled_globals(file) if not g.startswith(_TORCH_GLOBALS)]
    if not foreign and "GLOBAL" not in str(error):
        return ValueError(f"weight file {file} could not be read (UnpicklingError); it is corrupt or truncated "
                          "(or not a PyTorch weight file): download or train it again")
    calls = f" (unpickling it would call {', '.join(foreign[:3])})" if foreign else ""
    return ValueError(f"weight file {file} holds Python objects besides tensors{calls} and is refused for "
                      "safety: it is only read with torch.load(weights_only=True), which runs none of it; "
                      "re-save it as a plain state dict of tensors or as .safetensors")


def pickled_globals(file: str) -> list[str]:
    """The names a pickled file would import when unpickled, read with pickletools (which runs nothing).

    torch.save writes a zip whose ``data.pkl`` is the pickle; older files and
    plain ``pickle.dump`` files are a few pickles in a row.
    """
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as archive:
            members = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not members:
                return []
            with archive.open(members[0]) as stream:
                return _scan_pickles(stream, count=1)
    with open(file, "rb") as stream:
        return _scan_pickles(stream, count=4)  # legacy torch files: magic, protocol, sys info, data


def _scan_pickles(stream, count: int) -> list[str]:
    found: list[str] = []
    for _ in range(count):
        try:
            found += _globals_of_one_pickle(stream)
        except ValueError:  # garbage or the end of the pickles: nothing more to name
            break
    return found


def _globals_of_one_pickle(stream) -> list[str]:
    # STACK_GLOBAL takes its module and name from the two values pushed just before
    # it (strings, or memo lookups of strings): tracking the last two is enough.
    found, memo, last, before_last = [], {}, None, None
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.append(f"{before_last}.{last}")
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = last
        elif op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name not in ("FRAME", "PROTO", "STOP", "MARK"):
            value = memo.get(arg) if op.name in ("GET", "BINGET", "LONG_BINGET") else arg
            before_last, last = last, value if isinstance(value, str) else None
    return found


def first_existing(path: str, names: list[str]) -> Optional[str]:
    for name in names:
        file = os.path.join(path, name)
        if os.path.exists(file):
            return file
    return None


def weight_files(path: str) -> list[str]:
    """The files of a Hugging Face model folder that hold its weights (one, or the shards of its index)."""
    index = first_existing(path, INDEX_FILES)
    if index is None:
        single = first_existing(path, SINGLE_WEIGHT_FILES)
        if single is None:
            raise FileNotFoundError(f"no model weights in {path}: expected one of {SINGLE_WEIGHT_FILES} or a "
                                    f"sharded checkpoint with {' or '.join(INDEX_FILES)}; copy them from the "
                                    "original checkpoint")
        return [single]
    return [os.path.join(path, name) for name in sorted(set(_weight_map(index).values()))]


def _weight_map(index: str) -> dict:
    content = read_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no weight_map (tensor name -> shard file); restore it from the checkpoint")
    return weight_map


def prefixed_tensors(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with ``prefix`` from a full (possibly sharded) HF checkpoint."""
    index = first_existing(path, INDEX_FILES)
    if index:
        files = sorted({v for k, v in _weight_map(index).items() if k.startswith(prefix)})
        files = [os.path.join(path, name) for name in files]
    else:
        files = weight_files(path)
    out = {}
    for file in files:
        if file.endswith(".safetensors") and os.path.isfile(file):
            out.update(_safetensors_with_prefix(file, prefix))  # only the heads, not the whole shard
            continue
        state = load_tensors(file)
        out.update({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return out


def _safetensors_with_prefix(file: str, prefix: str) -> dict[str, torch.Tensor]:
    try:
        with safe_open(file, "pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    except SafetensorError as e:
        raise ValueError(f"weight file {file} could not be read (SafetensorError: {e}); "
                         "it is corrupt or truncated: download or train it again") from None


def resolve_base_path(ckpt_path: str, config: dict) -> str:
    """Where the base model lives: the override variable, a path relative to the checkpoint, or a hub id."""
    override = os.environ.get(BASE_OVERRIDE_ENV)
    if override:
        return override
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{os.path.join(ckpt_path, 'config.json')} has no base_model_name_or_path; "
                         f"add it or set {BASE_OVERRIDE_ENV}=/path/to/base")
    if os.path.isabs(base):
        return base
    relative = os.path.normpath(os.path.join(ckpt_path, base))
    if os.path.isdir(relative):
        return relative
    if os.path.isdir(base):
        return os.path.abspath(base)
    return base  # a hub id: loaded as Hugging Face does; offline machines need it in the local cache


def base_source(ckpt_path: str) -> str:
    """Where the base path of ``ckpt_path`` was set, in words for an error message."""
    if os.environ.get(BASE_OVERRIDE_ENV):
        return f"{BASE_OVERRIDE_ENV}={os.environ[BASE_OVERRIDE_ENV]}"
    return f"base_model_name_or_path in {os.path.join(ckpt_path, 'config.json')}"


def is_hub_id(path: str) -> bool:
    """``path`` names nothing on this machine and reads as a Hugging Face hub id ("name" or "org/name")."""
    if os.path.exists(path) or os.path.isabs(path) or path.startswith(("~", ".")):
        return False
    return _HUB_ID.fullmatch(path) is not None


def checkpoint_folder(model_path: str, method: str, revision: Optional[str] = None) -> str:
    """The local folder of the ``method`` checkpoint ``model_path``, which holds its config.json.

    A folder is itself; a hub id is its snapshot in the Hugging Face cache,
    fetched (without the base's weights, ``HUB_IGNORE_PATTERNS``) unless
    HF_HUB_OFFLINE is set, as Hugging Face fetches models.
    """
    if os.path.isdir(model_path):
        folder, where = model_path, model_path
    elif is_hub_id(model_path):
        folder = _hub_snapshot(model_path, revision)
        where = f"{model_path} (its Hugging Face snapshot {folder})"
    elif os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path} is a file, not a folder: pass the {method} checkpoint's folder")
    else:
        raise FileNotFoundError(f"no such folder: {model_path}; pass the folder of a {method} checkpoint "
                                "or its Hugging Face hub id (org/name)")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{where} has no config.json: it is not a {method} checkpoint folder (a training "
                                "run that was stopped before it saved writes none); pass the folder that holds "
                                "the checkpoint's config.json and weights")
    return folder


def cached_checkpoint_folder(model_path: str) -> Optional[str]:
    """``model_path`` if it is a folder, the cached snapshot of a hub id that has a config.json, else None.

    Fetches nothing and raises nothing: FastChat asks for conversation
    templates with bare model names too.
    """
    if os.path.isdir(model_path):
        return model_path
    if not is_hub_id(model_path):
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id=model_path, local_files_only=True)
    except (OSError, ValueError):
        return None
    return folder if os.path.isfile(os.path.join(folder, "config.json")) else None


def _hub_snapshot(repo_id: str, revision: Optional[str]) -> str:
    """The checkpoint's snapshot folder in the Hugging Face cache, fetched when missing and online."""
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        return snapshot_download(repo_id=repo_id, revision=revision, ignore_patterns=HUB_IGNORE_PATTERNS,
                                 local_files_only=offline)
    except (OSError, ValueError) as error:
        where = f"{repo_id} is neither a local folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        if offline:
            raise OSError(f"{where}, and HF_HUB_OFFLINE is set, so it was not fetched; pass the checkpoint's "
                          "local folder, or fetch it once with HF_HUB_OFFLINE unset") from error
        raise OSError(f"{where}, and fetching it from the Hugging Face hub failed ({type(error).__name__}: {error}); "
                      "check the folder or hub id, the network, and HF_TOKEN for a private or gated repo") from error


def check_base_path(ckpt_path: str, base: str) -> None:
    """A base that is meant as a local folder must be one (a hub id is left to Hugging Face)."""
    if os.path.isdir(base):
        return
    if not is_hub_id(base):
        raise FileNotFoundError(
            f"the base model {base} ({base_source(ckpt_path)}) is not a model folder; put the base model "
            f"there, or point base_model_name_or_path or {BASE_OVERRIDE_ENV} at the folder that holds it")


def explain_load_failure(path: str, ckpt_path: str, error: Exception) -> Optional[Exception]:
    """A clearer error for a failed Hugging Face load of the model in ``path``, or None when the
    folder's files show nothing wrong (the original error then stands as it is).

    ``ckpt_path`` is the checkpoint the user asked for; ``path`` is its base (or itself).
    """
    is_base = os.path.normpath(path) != os.path.normpath(ckpt_path)
    if not os.path.isdir(path):
        return _not_found(path, ckpt_path, is_base, error) if isinstance(error, OSError) else None
    problem = _folder_problem(path, error)
    if problem is None or not is_base:
        return problem
    return type(problem)(f"{problem} (this is the base model of {ckpt_path}, from {base_source(ckpt_path)})")


def _not_found(path: str, ckpt_path: str, is_base: bool, error: OSError) -> OSError:
    if is_base:
        what = f"the base model {path!r} ({base_source(ckpt_path)})"
        fix = f"base_model_name_or_path or {BASE_OVERRIDE_ENV}"
    else:
        what, fix = f"the model {path!r}", "--model-path"
    return OSError(f"{what} is not a local folder and could not be loaded from the Hugging Face cache ({error}); "
                   f"download it and point {fix} at its folder")


def _folder_problem(path: str, error: Exception) -> Optional[Exception]:
    """The first thing wrong with the folder's files, in the order Hugging Face reads them."""
    for find in (_json_problem, _tokenizer_problem, _weights_problem):
        problem = find(path)
        if problem is not None:
            return problem
    return _size_mismatch(path, error) if "size mismatch" in str(error) else None


def _json_problem(path: str) -> Optional[Exception]:
    for name in MODEL_JSON_FILES:
        if os.path.isfile(os.path.join(path, name)):
            try:
                read_json(os.path.join(path, name))
            except ValueError as e:
                return e
    return None


def _tokenizer_problem(path: str) -> Optional[Exception]:
    names = os.listdir(path)
    if any(n in TOKENIZER_FILES or n.endswith(".tiktoken") for n in names):
        return None
    return FileNotFoundError(f"no tokenizer in {path}: expected one of {list(TOKENIZER_FILES)} (with "
                             "tokenizer_config.json); copy the tokenizer files of the model into the folder")


def _weights_problem(path: str) -> Optional[Exception]:
    try:
        for file in weight_files(path):
            check_weight_file(file)
    except (FileNotFoundError, ValueError) as e:
        return e
    return None


def _size_mismatch(path: str, error: Exception) -> ValueError:
    config = read_config(path) or {}
    sizes = ", ".join(f"{k}={config[k]}" for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                   "head_dim", "intermediate_size", "vocab_size") if k in config)
    detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
    weights = ", ".join(weight_files(path))
    return ValueError(f"{os.path.join(path, 'config.json')} does not fit the weights in {weights} "
                      f"({detail.rstrip('.')}): it says {sizes}; restore the model's original config.json")


def check_drafter_fits(name: str, hidden: int, vocab: Optional[int], base_config, file: str) -> None:
    base_hidden = base_config.hidden_size
    base_vocab = base_config.vocab_size
    if hidden != base_hidden:
        raise ValueError(f"{name} in {file} expect hidden size {hidden} but the base model has {base_hidden}; "
                         f"point base_model_name_or_path (or {BASE_OVERRIDE_ENV}) at the base they were trained on")
    if vocab is not None and vocab != base_vocab:
        raise ValueError(f"{name} in {file} predict {vocab} tokens but the base vocabulary has {base_vocab}; "
                         f"point base_model_name_or_path (or {BASE_OVERRIDE_ENV}) at the base they were trained on")


def write_drafter_checkpoint(out_dir: str, config: dict, parts: dict, safetensors: bool = True) -> list[str]:
    """Write ``config.json`` and one weight file per part (``{name}.safetensors`` or ``{name}.pt``).

    ``parts`` maps a file stem (``medusa_lm_head``, ``trimlp``...) to its state dict.
    Returns the written weight files.
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    files = []
    for name, state in parts.items():
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        if safetensors:
            from safetensors.torch import save_file

            file = os.path.join(out_dir, f"{name}.safetensors")
            save_file(state, file)
        else:
            file = os.path.join(out_dir, f"{name}.pt")
            torch.save(state, file)
        files.append(file)
    return files
