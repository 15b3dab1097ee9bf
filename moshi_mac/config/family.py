"""What a config file does not say outright: its model family, and how two configs of one
model differ.

- `infer_model_type`: Kyutai's own files may carry no family (a Rust TOML has no
  `[moshi_mac]` table; a `config.json` may lack `model_type`). The family decides the
  delays and the end-of-input flush, so it is never defaulted silently: it is inferred
  from evidence the file carries (a `description` LUT conditioner plus a 48001-entry text
  vocabulary is Hibiki; a 32001-entry vocabulary and no conditioner is Moshi 7B) and one
  line says so, or the load is refused in one line naming the key to add.
- `structural_differences`: the fields that change the tensors or the computation, for
  the one-line note printed when the config shipped with the weights and the packaged
  fallback disagree (the shipped one wins).
- `notice`: how such one-line notes reach the user (the `moshi_mac` logger; with no
  logging configured, Python prints WARNING records to stderr as the bare message).
"""

from __future__ import annotations

import logging

from ..errors import ConfigError
from .schema import LmConfig

log = logging.getLogger("moshi_mac")

HIBIKI_TEXT_VOCAB = 48001  # text_in_vocab_size = text_card + 1 of tokenizer_spm_48k_multi6_2
MOSHI_TEXT_VOCAB = 32001  # of tokenizer_spm_32k_3


def notice(message: str) -> None:
    """One line for the user (stderr by default); tests read it with caplog."""
    log.warning("note: %s", message)


def infer_model_type(cfg: LmConfig, source: str, key: str, default_delays: bool = False) -> str:
    """The family of a config whose file names none; `key` is what the user should add,
    with `{}` for the family. Prints what was inferred (and the family's delays when the
    file gives none either)."""
    vocab = cfg.text_in_vocab_size
    if "description" in cfg.conditioners and vocab == HIBIKI_TEXT_VOCAB:
        family, why = "hibiki", (f"its `description` LUT conditioner and {vocab}-entry text "
                                 f"vocabulary (Hibiki)")
    elif not cfg.conditioners and vocab == MOSHI_TEXT_VOCAB:
        family, why = "moshi", f"its {vocab}-entry text vocabulary and no conditioner (Moshi 7B)"
    else:
        what = ", ".join(f"{n} conditioner" for n in cfg.conditioners) or "no conditioner"
        raise ConfigError(
            f"{source} does not say which model family it is ({vocab}-entry text vocabulary, "
            f"{what}): add {key.format('hibiki')} (or \"moshi\")")
    delays = f" with delays of {2 if family == 'hibiki' else 1}" if default_delays else ""
    notice(f"{source} names no model family; running it as {family}{delays}, inferred from {why}")
    return family


def structural_fields(cfg: LmConfig) -> dict[str, object]:
    """The fields of `cfg` that decide tensor names, shapes or the computation (equivalent
    spellings, such as the Rust and PyTorch feed-forward rules, compare equal)."""
    out: dict[str, object] = {
        "text_in_vocab_size": cfg.text_in_vocab_size,
        "text_out_vocab_size": cfg.text_out_vocab_size,
        "audio_vocab_size": cfg.audio_vocab_size, "audio_codebooks": cfg.audio_codebooks,
        "norm_eps": cfg.norm_eps, "conditioners": sorted(cfg.conditioners),
    }
    stacks = [("transformer", cfg.transformer)]
    if cfg.depformer is not None:
        stacks.append(("depformer.transformer", cfg.depformer.transformer))
        out["depformer.num_slices"] = cfg.depformer.num_slices
        out["depformer.low_rank_embeddings"] = cfg.depformer.low_rank_embeddings
    for name, t in stacks:
        for f in ("d_model", "num_heads", "num_layers", "mlp_hidden", "kv_repeat", "gating",
                  "norm", "positional_embedding", "layer_scale", "bias_ff", "bias_attn"):
            out[f"{name}.{f}"] = getattr(t, f)
        if t.positional_embedding != "None":
            out[f"{name}.max_period"] = t.max_period
    out["transformer.context"] = cfg.transformer.context
    mm = cfg.moshi_mac
    for f in ("model_type", "delays", "depformer_weights_per_step_schedule", "depformer_norm",
              "depformer_multi_linear", "depformer_weights_per_step", "rope_layout",
              "bias_proj", "text_padding_id", "end_of_text_padding_id", "text_eos_alias_pad"):
        out[f"moshi_mac.{f}"] = getattr(mm, f)
    return out


def structural_differences(a: LmConfig, b: LmConfig) -> list[tuple[str, object, object]]:
    """(field, value in a, value in b) for every structural field that differs."""
    fa, fb = structural_fields(a), structural_fields(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
