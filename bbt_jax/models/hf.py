"""Read Hugging Face checkpoints: a local directory or a hub id (when online).

Only reading lives here; each backbone family converts the state dict itself
(`roberta.from_hf`, `llama.from_hf`) and refuses config keys it does not handle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bbt_jax.errors import UserError

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json",
                 "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                 "vocab.json", "merges.txt", "special_tokens_map.json"]


def resolve_checkpoint_dir(path_or_id: str, flag_value: str | None = None) -> Path:
    """Return a local directory for `path_or_id`, downloading a hub id if needed.

    `flag_value`: what the user typed for --model, if it differs (a preset name for a hub id)."""
    flag_value = flag_value or path_or_id
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"--model {flag_value}: is a file, expected a checkpoint directory")
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1:
        raise UserError(f"--model {flag_value}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_id, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, auth...
        raise UserError(
            f"--model {flag_value}: not a local directory and the hub download of {path_or_id} failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def read_config(ckpt_dir: Path) -> dict:
    """Read config.json of a checkpoint directory."""
    cfg = ckpt_dir / "config.json"
    if not cfg.is_file():
        raise UserError(f"{cfg}: missing config.json")
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg}: unreadable config ({e})") from None


def read_state_dict(ckpt_dir: Path) -> dict[str, np.ndarray]:
    """Read every tensor of the checkpoint into float32/int numpy arrays."""
    st = sorted(ckpt_dir.glob("*.safetensors"))
    if st:
        from safetensors.numpy import load_file

        state: dict[str, np.ndarray] = {}
        for f in st:
            try:
                state.update(load_file(str(f)))
            except Exception as e:
                raise UserError(f"{f}: unreadable safetensors file ({e})") from None
        return state
    binf = ckpt_dir / "pytorch_model.bin"
    if binf.is_file():
        try:
            import torch
        except ImportError:
            raise UserError(f"{binf}: reading .bin checkpoints needs torch (pip install torch)") from None
        try:
            sd = torch.load(str(binf), map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{binf}: unreadable checkpoint ({e})") from None
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    raise UserError(f"{ckpt_dir}: no weights found (expected one of {', '.join(_WEIGHT_FILES)})")


def check_config_keys(config: dict, allowed: frozenset[str], expected: dict, source: str) -> None:
    """Refuse any key outside `allowed` and any `expected` key with another value."""
    for key in sorted(config):
        if key not in allowed:
            raise UserError(f"{source}: unsupported config key {key!r} (value {config[key]!r})")
    for key, value in expected.items():
        if key in config and config[key] != value:
            raise UserError(f"{source}: unsupported config value {key}={config[key]!r} (supported: {value!r})")


def weight_getter(state: dict, prefix: str, source: str):
    """name -> float32 numpy tensor of a state dict whose keys may carry `prefix`; a missing name is a UserError."""
    state = {k.removeprefix(prefix): v for k, v in state.items()}

    def get(name: str) -> np.ndarray:
        if name not in state:
            raise UserError(f"{source}: missing weight {name!r}")
        return np.asarray(state[name], np.float32)

    return get


def tokenizer_file(ckpt_dir: Path) -> Path | None:
    """The fast-tokenizer file shipped with a checkpoint, if any."""
    f = ckpt_dir / "tokenizer.json"
    return f if f.is_file() else None


def load_tokenizer(path: str | Path | None, what: str):
    """A `tokenizers.Tokenizer` from tokenizer.json; every problem is a one-line UserError."""
    from tokenizers import Tokenizer

    if not path:
        raise UserError(f"--model {what}: no tokenizer.json found; pass --tokenizer")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tokenizer {path}: file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise UserError(f"--tokenizer {path}: unreadable tokenizer ({e})") from None


def read_prompt_tensor(path: str | Path, flag: str = "--init-prompt") -> np.ndarray:
    """An N x D prompt tensor from .safetensors (key 'prompt', else its only tensor; also a prompt artifact:
    its prompt.json or the train --out folder holding it) or a torch .pt file (a tensor, a {'weight': tensor}
    dict, or a pickled nn.Embedding, as bbt.py's nli_base_prompt.pt)."""
    path = Path(path)
    if path.is_dir() and (path / "prompt.safetensors").is_file():  # a train --out folder (its prompt artifact)
        path = path / "prompt.safetensors"
    elif path.suffix == ".json" and path.with_suffix(".safetensors").is_file():  # an artifact's prompt.json
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if "prompt" in tensors:
                arr = tensors["prompt"]
            elif len(tensors) == 1:
                arr = next(iter(tensors.values()))
            else:
                raise ValueError(f"several tensors ({', '.join(sorted(tensors))}) and none named 'prompt'")
        else:
            import torch

            obj = torch.load(str(path), map_location="cpu", weights_only=False)  # bbt.py pickles an nn.Embedding
            obj = getattr(obj, "weight", obj)
            obj = obj["weight"] if isinstance(obj, dict) else obj
            arr = obj.detach().float().numpy()
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
        raise UserError(f"{flag} {path}: unreadable prompt tensor ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr, np.float32)
    return arr.reshape(-1, arr.shape[-1]) if arr.ndim > 2 else arr
