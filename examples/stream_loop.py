"""A streaming loop: feed audio in small chunks, as a microphone would, and handle the
speech and text as they come.

    python examples/stream_loop.py MODEL INPUT.wav [OUT.wav] [--chunk-ms 100] [--seed N] [--max-tail-s S]

Each `feed` runs the model over the complete 80 ms frames received so far and returns
their events: "audio" (80 ms of 24 kHz speech) and "text" (a piece of the transcript).
`close` ends the input (Hibiki: the end-of-input flush) and returns the last events.
"""

import argparse

import numpy as np
import soundfile as sf

import moshi_mac


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a registry name or a model folder")
    p.add_argument("input", help="an audio file, played as if it came from a microphone")
    p.add_argument("out", nargs="?", default="streamed.wav", help="the speech, as a wav")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per feed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tail-s", type=float, help="Hibiki: most silence after the input")
    args = p.parse_args()

    model = moshi_mac.load(args.model)
    audio, rate = sf.read(args.input, dtype="float32")
    chunk = max(1, int(rate * args.chunk_ms / 1000))
    speech = []

    def handle(events) -> None:
        for event in events:
            if event.kind == "audio":
                speech.append(event.pcm)  # e.g. play it
            else:
                print(f"[{event.start:6.2f} s] {event.text!r}", flush=True)

    with model.stream(seed=args.seed, max_tail_s=args.max_tail_s) as stream:
        for start in range(0, len(audio), chunk):
            handle(stream.feed(audio[start:start + chunk], sample_rate=rate))
        handle(stream.close())

    out = np.concatenate(speech) if speech else np.zeros(0, np.float32)
    sf.write(args.out, out, 24000)
    print(f"text: {stream.result().text}")
    print(f"wrote {args.out} ({out.size / 24000:.2f} s)")


if __name__ == "__main__":
    main()
