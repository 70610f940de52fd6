"""Peak memory and time of HEAR embeddings for long audio (a random-weight student: the same
compute as the official model, no download).

    python plugins/soundnet-hear/examples/memory.py 20 soundnet8
    python plugins/soundnet-hear/examples/memory.py 2 mfcc
"""

from __future__ import annotations

import argparse
import resource
import time

import soundnet_hear
import torch

from soundnet_cli.students import soundnet8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("minutes", type=float)
    parser.add_argument("student", choices=["soundnet8", "mfcc"])
    args = parser.parse_args()
    if args.student == "soundnet8":
        student = soundnet8()
    else:
        from soundnet_mfcc.student import MfccStudent

        student = MfccStudent()
    model = soundnet_hear.HearModel(student)
    audio = torch.rand(1, int(args.minutes * 60 * 22050)) * 2 - 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    embeddings, _ = soundnet_hear.get_timestamp_embeddings(audio, model)
    soundnet_hear.get_scene_embeddings(audio, model)
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(
        f"{args.student}/{model.layer}, {args.minutes:g} min: embeddings "
        f"{tuple(embeddings.shape)}, {seconds:.1f} s for timestamp + scene embeddings, "
        f"peak {peak:.0f} MB above the input audio"
    )


if __name__ == "__main__":
    main()
