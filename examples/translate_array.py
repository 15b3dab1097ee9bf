"""Translate (Hibiki) or answer (Moshi) audio held in a numpy array, and save the outputs.

    python examples/translate_array.py MODEL INPUT.wav [OUT_PREFIX] [--seed N] [--max-tail-s S]

MODEL is a registry name (see `moshi-mac models`) or a model folder. The audio is read
with soundfile into an array at the file's own rate and channel count: `Model.run`
converts it to 24 kHz mono, as `moshi-mac translate` does for a file.
"""

import argparse

import soundfile as sf

import moshi_mac


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("input")
    p.add_argument("out", nargs="?", default="translated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tail-s", type=float, help="Hibiki: most silence after the input")
    args = p.parse_args()

    model = moshi_mac.load(args.model)
    audio, rate = sf.read(args.input, dtype="float32")  # [samples] or [samples, channels]
    result = model.run(audio, sample_rate=rate, seed=args.seed, max_tail_s=args.max_tail_s)

    print(f"{model.name} ({model.family}): {result.duration:.2f} s of speech, {result.ending}")
    print("text:", result.text)
    for word in result.words[:10]:
        print(f"  {word.start:6.2f}-{word.end:6.2f}  {word.text}")
    for path in result.save(args.out, formats=("wav", "srt", "json")):
        print("wrote", path)


if __name__ == "__main__":
    main()
