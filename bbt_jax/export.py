"""A saved prompt as a Hugging Face PEFT prompt-tuning adapter (adapter_config.json +
adapter_model.safetensors), loadable with `peft.PeftModel.from_pretrained(base, DIR)`.

PEFT prompt tuning (peft_model.py, PeftModelForCausalLM.forward) concatenates the N virtual
token embeddings BEFORE the embeddings of the whole input and extends the attention mask with
N ones; the model then runs on `inputs_embeds`. Only a layout that equals this exports:

  decoders, placement "prefix" (template "{prompt}" + input + cue; our decoders add no BOS):
    the N slots are the first N positions, the prompt REPLACES their embeddings, positions
    (RoPE) count from 0 over slots then text: exactly PEFT's sequence. With
    --decoder-splice add the fed vectors are the placeholder tokens' embeddings
    (ids 1000..1000+N-1) plus the prompt; those sums are what we export. Feed the PEFT model
    the same token rows without the slots (tokenize input + cue with add_special_tokens=False:
    a BOS would not be where the prompt was tuned), right-padded; its logits have N + L
    positions, so our answer position (which counts the slots) indexes them unchanged.
  decoders, "suffix" / "cue": the prompt sits after the input; PEFT cannot put it there.
  masked LMs (RoBERTa "add" and "cat"): none. bbt.py adds (add) or writes (cat) the prompt
    AFTER the embedding LayerNorm, and cat vectors carry no position; PEFT's virtual tokens
    are inputs_embeds, to which RobertaEmbeddings adds position and token-type embeddings and
    then applies LayerNorm, and they shift the text's positions by N. No vector reproduces that.
  deep prompts (BBTv2, deep prompt tuning): added to every layer's hidden input; PEFT prompt
    tuning has input vectors only (its prefix tuning is key/value prefixes, another thing).

Shape letters: N prompt tokens, D hidden.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bbt_jax.errors import UserError
from bbt_jax.io import safetensors_bytes, write_bytes_atomic, write_json_atomic
from bbt_jax.tasks import PLACEHOLDER_OFFSET

EXPORTABLE = ("prefix",)  # decoder placements whose logits PEFT prompt tuning reproduces
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def check_exportable(saved) -> None:
    """A one-line UserError unless the saved prompt's layout is PEFT prompt tuning's (module docstring)."""
    from bbt_jax.models.registry import FAMILIES

    card, where = saved.card, f"--prompt {saved.path}"
    placement = card.get("placement")
    family = FAMILIES.get(card.get("family"))
    if saved.layers_YxNxD is not None:
        raise UserError(f"{where}: a deep prompt ({saved.layers_YxNxD.shape[0]} layers, method "
                        f"{card.get('method')}) is added at every layer; PEFT prompt tuning holds input vectors only "
                        f"(exportable: input prompts in placement {', '.join(EXPORTABLE)})")
    if family is None:
        raise UserError(f"{where}: unknown model family {card.get('family')!r}")
    if family.kind == "masked":
        raise UserError(f"{where}: placement {placement!r} on a masked LM puts the prompt after the embedding "
                        "LayerNorm; PEFT prompt tuning prepends inputs_embeds that get position embeddings and "
                        f"LayerNorm, so no masked-LM placement exports (exportable: {', '.join(EXPORTABLE)} on "
                        "decoders)")
    if placement not in EXPORTABLE:
        raise UserError(f"{where}: placement {placement!r} puts the prompt after the input; PEFT prompt tuning "
                        f"prepends it (exportable: {', '.join(EXPORTABLE)})")
    if not str(card.get("template", "")).startswith("{prompt}"):
        raise UserError(f"{where}: template {card.get('template')!r} does not start with the prompt")


def peft_prompt(saved, model) -> np.ndarray:
    """N x D float32: the vectors PEFT must prepend, i.e. what our model is fed at the N slots."""
    check_exportable(saved)
    if model.vocab.bos_id is not None:
        raise UserError(f"--prompt {saved.path}: this vocabulary adds a BOS before the prompt; PEFT prepends the "
                        "prompt before everything")
    prompt_NxD = np.asarray(saved.prompt_NxD, np.float32)
    if saved.card["config"]["prompt"].get("decoder_splice") == "add":
        word_VxD = np.asarray(model.family.word_embeddings(model.params), np.float32)
        prompt_NxD = prompt_NxD + word_VxD[PLACEHOLDER_OFFSET + np.arange(prompt_NxD.shape[0])]
    return prompt_NxD


def adapter_config(saved, model, base_model: str) -> dict:
    """adapter_config.json as peft 0.17+ writes it for PromptTuningConfig(task_type="CAUSAL_LM")."""
    n, d = saved.prompt_NxD.shape
    return {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "num_virtual_tokens": int(n), "token_dim": int(d), "num_transformer_submodules": 1,
            "num_attention_heads": int(model.config.num_attention_heads),
            "num_layers": int(model.config.num_hidden_layers), "prompt_tuning_init": "RANDOM",
            "prompt_tuning_init_text": None, "tokenizer_name_or_path": None, "tokenizer_kwargs": None,
            "inference_mode": True, "revision": None, "modules_to_save": None, "auto_mapping": None}


def base_model_name(saved, base_model: str | None) -> str:
    """--base-model, else the card's model where PEFT can load it (a checkpoint folder or hub id)."""
    if base_model:
        return base_model
    source = str(saved.card.get("model", ""))
    if not source or source.startswith("preset:") or source.endswith(".gguf"):
        raise UserError(f"--prompt {saved.path}: the prompt was tuned on {source!r}, which transformers cannot "
                        "load as a base model; pass --base-model (the hub id or folder of the same weights)")
    return source


def export_peft(saved, out_dir: str | Path, model, *, base_model: str | None = None) -> dict[str, Path]:
    """Write the PEFT prompt-tuning adapter of `saved` (artifact.SavedPrompt; `model` the LoadedModel
    it was tuned on) into `out_dir`; returns both paths."""
    prompt_NxD = peft_prompt(saved, model)
    config = adapter_config(saved, model, base_model_name(saved, base_model))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--peft {out_dir}: is a file, expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--peft {out_dir}: cannot create the folder ({e.strerror})") from None
    blob = safetensors_bytes({"prompt_embeddings": np.ascontiguousarray(prompt_NxD)},
                             metadata={"format": "pt", "bbt_jax_prompt": json.dumps(str(saved.path))})
    write_bytes_atomic(out / WEIGHTS_FILE, blob)
    write_json_atomic(out / CONFIG_FILE, config)
    return {"config": out / CONFIG_FILE, "weights": out / WEIGHTS_FILE}
