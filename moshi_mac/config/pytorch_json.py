"""The Hugging Face `config.json` schema: the keyword arguments of PyTorch
`moshi.models.lm.LMModel`, converted to and from our `LmConfig`.

Read the way `LMModel` reads them: a missing key takes LMModel's default; the depformer
takes every main-transformer setting (kv_repeat, gating, max_period, layer_scale, norm,
num_layers, ...) unless a `depformer_`-prefixed key overrides it; `depformer_dim_feedforward`
null means hidden_scale x depformer_dim; PyTorch's and Rust's gated-MLP width rules are
reconciled. A file without `model_type` gets its family inferred (`family.py`)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .family import infer_model_type
from .schema import (MODEL_TYPES, DepformerConfig, ExtraConfig, ExtraHeadsConfig, GenerationConfig,
                     LmConfig, LutConditionerConfig, TransformerConfig, default_conditions,
                     did_you_mean)

# LMModel / StreamingTransformer defaults for keys a config.json may omit.
_JSON_DEFAULTS: dict[str, Any] = {
    "delays": [0], "n_q": 8, "dep_q": 8, "card": 1024, "text_card": 32000,
    "text_card_out": None, "demux_second_text_stream": False, "dim": 128, "num_heads": 8,
    "hidden_scale": 4, "norm": "layer_norm", "norm_emb": False, "bias_proj": False,
    "depformer_dim": 256, "depformer_dim_feedforward": None, "depformer_multi_linear": False,
    "depformer_weights_per_step": False, "depformer_weights_per_step_schedule": None,
    "depformer_low_rank_embeddings": None, "depformer_pos_emb": "sin", "depformer_norm": None,
    "existing_text_padding_id": 3, "existing_text_end_padding_id": 0,
    "extra_heads_num_heads": 0, "extra_heads_dim": 6, "context": None, "causal": True,
    # StreamingTransformer / layer kwargs
    "num_layers": None, "layer_scale": None, "positional_embedding": "sin",
    "max_period": 10000, "gating": "none", "kv_repeat": 1, "positional_scale": 1.0,
}
# Keys a config.json carries that are not LM hyper-parameters.
_JSON_META = {
    "moshi_name", "mimi_name", "tokenizer_name", "lora_name", "model_type", "lm_gen_config",
    "tts_config", "stt_config", "model_id", "mimi_config_name", "lora", "lora_rank",
    "lora_scaling", "fuser", "conditioners", "quantize", "gradient_checkpointing",
    "cross_attention", "depformer_causal",
}
_JSON_DEP_KEYS = {"depformer_num_heads", "depformer_num_layers", "depformer_context",
                  "depformer_max_period", "depformer_gating", "depformer_layer_scale",
                  "depformer_kv_repeat"}

_JSON_NORMS = {
    "rms_norm": ("RmsNorm", 1e-5), "rms_norm_f32": ("RmsNorm", 1e-8),
    "layer_norm": ("LayerNorm", 1e-5), "layer_norm_f32": ("LayerNorm", 1e-8),
}
_JSON_POS = {"rope": ("Rope", "interleaved"), "rope_concat": ("Rope", "concat"),
             "sin": ("Sin", "interleaved"), "none": ("None", "interleaved")}


def _json_ff_to_rust(d_model: int, dim_feedforward: int, gating: str | None, where: str) -> int:
    """PyTorch and Rust size gated MLPs differently when ff == 4 * d; return the Rust ff
    whose hidden width equals PyTorch's."""
    if gating is None or dim_feedforward != 4 * d_model:
        return dim_feedforward
    hidden = 21 * d_model // 8  # PyTorch ActivationGating's rule for ff == 4 * d
    if (3 * hidden) % 2 or 3 * hidden // 2 == 4 * d_model:
        raise ConfigError(f"{where}: cannot express PyTorch's gated MLP width for d_model {d_model}")
    return 3 * hidden // 2


def from_json_dict(raw: dict, source: str = "config.json") -> LmConfig:
    known = set(_JSON_DEFAULTS) | _JSON_META | _JSON_DEP_KEYS | {"depformer_gating", "demux_second_stream"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(key, known)}")
    j = {**_JSON_DEFAULTS, **{k: v for k, v in raw.items() if k not in _JSON_META}}
    if "demux_second_stream" in j:  # the older name, renamed by get_moshi_lm
        j["demux_second_text_stream"] = j.pop("demux_second_stream")

    def fail(msg):
        raise ConfigError(f"{source}: {msg}")

    if j["norm"] not in _JSON_NORMS:
        fail(f"norm must be one of {', '.join(_JSON_NORMS)}, got {j['norm']!r}")
    norm, eps = _JSON_NORMS[j["norm"]]
    if j["positional_embedding"] not in _JSON_POS:
        fail(f"positional_embedding must be one of {', '.join(_JSON_POS)}, got {j['positional_embedding']!r}")
    if j["depformer_pos_emb"] not in _JSON_POS:
        fail(f"depformer_pos_emb must be one of {', '.join(_JSON_POS)}, got {j['depformer_pos_emb']!r}")
    for flag in ("demux_second_text_stream", "norm_emb"):
        if j[flag]:
            fail(f"{flag} = true is not supported")
    if raw.get("cross_attention"):
        fail("cross_attention is not supported")
    if j["num_layers"] is None:
        fail("missing required key 'num_layers'")
    pos, rope_layout = _JSON_POS[j["positional_embedding"]]
    dep_pos, dep_rope_layout = _JSON_POS[j["depformer_pos_emb"]]
    if pos == "Rope" and dep_pos == "Rope" and rope_layout != dep_rope_layout:
        fail("the main and depformer transformers use different RoPE layouts")
    gating = None if j["gating"] == "none" else j["gating"]
    dim = j["dim"]
    context = j["context"] if j["context"] is not None else 3000
    ff = int(j["hidden_scale"] * dim)
    transformer = TransformerConfig(
        d_model=dim, num_heads=j["num_heads"], num_layers=j["num_layers"],
        dim_feedforward=_json_ff_to_rust(dim, ff, gating, source), context=context,
        max_period=int(j["max_period"]), causal=j["causal"], layer_scale=j["layer_scale"],
        positional_embedding=pos, gating=gating, norm=norm, kv_repeat=j["kv_repeat"],
    )
    depformer = None
    if j["dep_q"] > 0:
        dep_dim = j["depformer_dim"]
        dep_gating = j.get("depformer_gating", j["gating"])
        dep_gating = None if dep_gating == "none" else dep_gating
        dep_ff = j["depformer_dim_feedforward"]
        if dep_ff is None:
            dep_ff = int(j["hidden_scale"] * dep_dim)
        if isinstance(dep_ff, list):
            fail("a per-step list for depformer_dim_feedforward is not supported")
        depformer = DepformerConfig(
            transformer=TransformerConfig(
                d_model=dep_dim,
                num_heads=j.get("depformer_num_heads", j["num_heads"]),
                num_layers=j.get("depformer_num_layers", j["num_layers"]),
                dim_feedforward=_json_ff_to_rust(dep_dim, dep_ff, dep_gating, source),
                context=j.get("depformer_context") or j["dep_q"],
                max_period=int(j.get("depformer_max_period", j["max_period"])),
                causal=j["causal"],
                layer_scale=j.get("depformer_layer_scale", j["layer_scale"]),
                positional_embedding=dep_pos, gating=dep_gating, norm=norm,
                kv_repeat=j.get("depformer_kv_repeat", j["kv_repeat"]),
            ),
            num_slices=j["dep_q"],
            low_rank_embeddings=j["depformer_low_rank_embeddings"],
        )
    conditioners = {}
    for name, c in (raw.get("conditioners") or {}).items():
        if c.get("type") != "lut":
            fail(f"conditioners.{name}: only type 'lut' is supported, got {c.get('type')!r}")
        lut = c.get("lut", {})
        if lut.get("tokenizer", "noop") != "noop":
            fail(f"conditioners.{name}: only the 'noop' tokenizer is supported")
        conditioners[name] = LutConditionerConfig(
            n_bins=lut["n_bins"], dim=lut["dim"], possible_values=list(lut["possible_values"]))
    fuser = raw.get("fuser") or {}
    for method, names in fuser.items():
        if method != "sum" and names:
            fail(f"fuser method {method!r} is not supported (only 'sum')")
    model_type = raw.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        fail(f"model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    gen_raw = dict(raw.get("lm_gen_config") or {})
    gen = GenerationConfig()
    for key in ("temp", "top_k", "temp_text", "top_k_text", "cfg_coef"):
        if key in gen_raw:
            setattr(gen, key, gen_raw[key])
    default_conditions(gen, conditioners)
    extra_heads = None
    if j["extra_heads_num_heads"]:
        extra_heads = ExtraHeadsConfig(num_heads=j["extra_heads_num_heads"], dim=j["extra_heads_dim"])
    cfg = LmConfig(
        transformer=transformer, depformer=depformer,
        text_in_vocab_size=j["text_card"] + 1,
        text_out_vocab_size=j["text_card_out"] or j["text_card"],
        audio_vocab_size=j["card"] + 1, audio_codebooks=j["n_q"],
        conditioners=conditioners, extra_heads=extra_heads,
        moshi_mac=ExtraConfig(
            model_type=model_type or "moshi",
            delays=list(j["delays"]),
            depformer_weights_per_step_schedule=j["depformer_weights_per_step_schedule"],
            depformer_norm=j["depformer_norm"],
            depformer_multi_linear=j["depformer_multi_linear"],
            depformer_weights_per_step=j["depformer_weights_per_step"],
            rope_layout=rope_layout if pos == "Rope" else dep_rope_layout,
            norm_eps=eps, bias_proj=j["bias_proj"],
            text_padding_id=j["existing_text_padding_id"],
            end_of_text_padding_id=j["existing_text_end_padding_id"],
            text_eos_alias_pad=model_type == "hibiki",
            generation=gen,
        ),
    )
    if model_type is None:  # PyTorch defaults to "moshi"; a Hibiki file would then misrun
        cfg.moshi_mac.model_type = infer_model_type(cfg, source, '"model_type": "{}"')
        cfg.moshi_mac.text_eos_alias_pad = cfg.moshi_mac.model_type == "hibiki"
    return cfg.validate(source)


def to_json_dict(cfg: LmConfig) -> dict:
    """The PyTorch `LMModel` keyword arguments equivalent to `cfg` (used to build the
    reference model in parity tests, and by `convert`)."""
    t, mm = cfg.transformer, cfg.moshi_mac
    norm = {("RmsNorm", 1e-8): "rms_norm_f32", ("RmsNorm", 1e-5): "rms_norm",
            ("LayerNorm", 1e-5): "layer_norm", ("LayerNorm", 1e-8): "layer_norm_f32"}
    key = (t.norm, cfg.norm_eps)
    if key not in norm:
        raise ConfigError(f"norm {t.norm} with eps {cfg.norm_eps} has no PyTorch equivalent")

    def pos(p):
        if p == "Rope":
            return "rope_concat" if mm.rope_layout == "concat" else "rope"
        return p.lower()

    def pt_ff(tc: TransformerConfig) -> int:
        # dim_feedforward for PyTorch giving the same MLP width as the Rust rule.
        if tc.gating is not None and tc.dim_feedforward == 4 * tc.d_model:
            return 3 * tc.mlp_hidden // 2
        return tc.dim_feedforward

    out: dict[str, Any] = {
        "dim": t.d_model, "text_card": cfg.text_in_vocab_size - 1,
        "text_card_out": cfg.text_out_vocab_size, "existing_text_padding_id": mm.text_padding_id,
        "existing_text_end_padding_id": mm.end_of_text_padding_id,
        "n_q": cfg.audio_codebooks, "dep_q": cfg.dep_q, "card": cfg.card,
        "num_heads": t.num_heads, "num_layers": t.num_layers,
        "hidden_scale": pt_ff(t) / t.d_model, "causal": t.causal, "layer_scale": t.layer_scale,
        "context": t.context, "max_period": t.max_period,
        "gating": t.gating or "none", "norm": norm[key],
        "positional_embedding": pos(t.positional_embedding), "kv_repeat": t.kv_repeat,
        "bias_proj": mm.bias_proj, "delays": list(mm.delays),
    }
    if cfg.depformer is not None:
        d = cfg.depformer.transformer
        out.update({
            "depformer_dim": d.d_model, "depformer_dim_feedforward": pt_ff(d),
            "depformer_num_heads": d.num_heads, "depformer_num_layers": d.num_layers,
            "depformer_layer_scale": d.layer_scale, "depformer_max_period": d.max_period,
            "depformer_gating": d.gating or "none", "depformer_pos_emb": pos(d.positional_embedding),
            "depformer_kv_repeat": d.kv_repeat, "depformer_context": d.context,
            "depformer_multi_linear": mm.depformer_multi_linear,
            "depformer_weights_per_step": mm.depformer_weights_per_step,
            "depformer_weights_per_step_schedule": mm.depformer_weights_per_step_schedule,
            "depformer_low_rank_embeddings": cfg.depformer.low_rank_embeddings,
            "depformer_norm": mm.depformer_norm,
        })
    if cfg.extra_heads is not None:
        out["extra_heads_num_heads"] = cfg.extra_heads.num_heads
        out["extra_heads_dim"] = cfg.extra_heads.dim
    if cfg.conditioners:
        out["conditioners"] = {
            name: {"type": "lut", "lut": {"n_bins": c.n_bins, "dim": c.dim, "tokenizer": "noop",
                                          "possible_values": list(c.possible_values)}}
            for name, c in cfg.conditioners.items()}
        out["fuser"] = {"sum": list(cfg.conditioners)}
    out["model_type"] = mm.model_type
    return out
