"""Teacher-forced scoring: how well does the model predict a recording's Mimi codes?

    python examples/score_codes.py MODEL INPUT.wav

The recording is Mimi-encoded and placed in the model's own audio stream, with the text
stream all padding and no user input; `moshi_mac.score` returns the logits of every
position at once (the MLX twin of the reference's `LMModel.forward`). The script prints
the cross-entropy of each generated codebook, in nats per code, and its perplexity.
"""

import argparse

import mlx.core as mx
import numpy as np

import moshi_mac


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("input")
    args = p.parse_args()

    model = moshi_mac.load(args.model)
    cfg = model.config
    audio_codes = model.encode(args.input)  # [codebooks, frames]
    frames = audio_codes.shape[1]
    codes = np.full((1, 1 + cfg.audio_codebooks, frames), -1, np.int32)  # -1: no token
    codes[0, 0] = cfg.moshi_mac.text_padding_id
    codes[0, 1:1 + cfg.dep_q] = audio_codes[:cfg.dep_q]

    out = moshi_mac.score(model, mx.array(codes))
    logp = np.array(out.logits - mx.logsumexp(out.logits, axis=-1, keepdims=True))
    mask = np.array(out.mask)[0]  # [dep_q, frames]: positions with a prediction
    print(f"{model.name}: {frames} frames of {args.input}")
    for k in range(cfg.dep_q):
        valid = np.flatnonzero(mask[k])
        nll = -logp[0, k, valid, codes[0, 1 + k, valid]].mean()
        print(f"  codebook {k}: {nll:.3f} nats/code, perplexity {np.exp(nll):.1f} "
              f"({valid.size} codes)")


if __name__ == "__main__":
    main()
