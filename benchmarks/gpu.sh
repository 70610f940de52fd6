#!/usr/bin/env bash
# SoundNet on a CUDA machine, in a few minutes, no arguments:
#   1. `soundnet extract` end to end (whole process, start-up included), x realtime, fp32 and
#      bf16, on the ESC-50 fold-4 clips copied 4 times (1,600 FLAC files, 8,000 s), with as many
#      decode workers as cores;
#   2. parity: the largest relative error of CUDA fp32 pool5 features against CPU fp32 (400 files)
#      and of CUDA bf16 against CUDA fp32;
#   3. distill throughput on CUDA (clips/s and the fraction of time waiting for data), without
#      and with --compile (benchmarks/distill.py on a synthetic corpus);
#   4. the probe sweep of the paper's layer table on CUDA (`soundnet evaluate esc50 ... -l conv4
#      ... -l conv8 --device cuda`): the probes' seconds, features cached by a first run (only
#      with ../shared/data/esc50-fold4);
#   5. the CLIP path (docs/clip.md): `prepare --teacher clip:ViT-B-32/openai` throughput (video
#      seconds/s; the cached weights if `soundnet weights fetch clip:ViT-B-32/openai` ran, else
#      random weights of the same network: the same compute) and `distill` of an embedding head
#      (InfoNCE, pool5) in clips/s, on 48 synthetic 20-s videos (needs open-clip-torch).
# Needs the repository's virtual environment (.venv, or PYTHON=...), ../shared/data/esc50-fold4
# beside the repository (else a synthetic workload of the same size), and the official weights
# (fetched once if absent and allowed). Prints one line per figure and a JSON summary at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
SOUNDNET="$(dirname "$PY")/soundnet"
[ -x "$SOUNDNET" ] || SOUNDNET="$PY -m soundnet_cli.cli.main"
CORES="$(nproc)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: no CUDA device is visible to PyTorch; nothing to measure" >&2
    exit 1
fi
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
echo "cores: $CORES | load: $(cut -d' ' -f1-3 /proc/loadavg)"

# -- the workload -----------------------------------------------------------------------------
"$PY" - "$TMP/audio" <<'EOF'
import shutil, sys
from pathlib import Path
import numpy as np
import soundfile as sf

out = Path(sys.argv[1])
out.mkdir(parents=True)
clips = sorted(Path("../shared/data/esc50-fold4/audio").glob("*.flac"))
for copy in range(4):
    if clips:
        for clip in clips:
            shutil.copyfile(clip, out / f"c{copy}-{clip.name}")
    else:  # no real data here: 400 noise-and-tone clips of the same shape
        rng = np.random.default_rng(copy)
        t = np.arange(5 * 44100) / 44100
        for i in range(400):
            wave = 0.3 * np.sin(2 * np.pi * (200 + i) * t) + 0.05 * rng.standard_normal(len(t))
            sf.write(str(out / f"c{copy}-synthetic-{i:03d}.flac"), wave.astype(np.float32), 44100)
print("workload:", len(list(out.glob("*.flac"))), "files", "(real)" if clips else "(synthetic)")
EOF
mkdir -p "$TMP/cpu-audio"
ln -s "$TMP"/audio/c0-* "$TMP/cpu-audio/"
AUDIO_SECONDS="$("$PY" -c "
import sys, soundfile as sf, pathlib
print(sum(sf.info(str(p)).duration for p in pathlib.Path(sys.argv[1]).glob('*.flac')))
" "$TMP/audio")"
$SOUNDNET weights fetch >/dev/null 2>&1 || true

# -- 1. extract end to end --------------------------------------------------------------------
extract_run() {  # $1 = name, rest = options; prints x realtime of the whole process
    local name="$1"; shift
    rm -rf "$TMP/$name"
    local start end
    start="$(date +%s.%N)"
    $SOUNDNET extract "$TMP/audio" --out "$TMP/$name" --device cuda --workers "$CORES" "$@" \
        >"$TMP/$name.log" 2>&1 || { echo "extract $name failed:"; tail -5 "$TMP/$name.log"; return 1; }
    end="$(date +%s.%N)"
    "$PY" -c "
import sys
wall = float(sys.argv[2]) - float(sys.argv[1]); audio = float(sys.argv[3])
print(f'extract {sys.argv[4]:>4} on cuda, end to end: {wall:6.2f} s, {audio / wall:8.0f}x realtime')
" "$start" "$end" "$AUDIO_SECONDS" "$name" | tee -a "$TMP/summary.txt"
}
extract_run warm >/dev/null  # first run: CUDA context, kernels, page cache
extract_run fp32
extract_run bf16 --precision bf16
grep -h "bf16:" "$TMP/bf16.log" || true  # a fallback to fp32 says why

# -- 2. parity --------------------------------------------------------------------------------
$SOUNDNET extract "$TMP/cpu-audio" --out "$TMP/cpu" --device cpu >/dev/null 2>&1
"$PY" - "$TMP" <<'EOF' | tee -a "$TMP/summary.txt"
import sys
from pathlib import Path
import numpy as np

tmp = Path(sys.argv[1])

def worst(ours_dir, ref_dir, pattern):
    errors = []
    for ref in sorted((tmp / ref_dir).rglob(pattern)):
        a, b = np.load(tmp / ours_dir / ref.relative_to(tmp / ref_dir)), np.load(ref)
        errors.append(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)))
    return len(errors), max(errors) if errors else float("nan")

n, e = worst("fp32", "cpu", "c0-*.pool5.npy")
print(f"parity cuda fp32 vs cpu fp32, pool5: max relative error {e:.2e} over {n} files")
n, e = worst("bf16", "fp32", "*.pool5.npy")
print(f"parity cuda bf16 vs cuda fp32, pool5: max relative error {e:.2e} over {n} files")
EOF

# -- 3. distill throughput --------------------------------------------------------------------
for compile in "" "--compile"; do
    "$PY" benchmarks/distill.py --device cuda --batch-sizes 64 --steps 40 --clips 512 \
        --workers "$((CORES > 8 ? 8 : CORES))" $compile >"$TMP/distill.json" 2>"$TMP/distill.err" \
        || { echo "distill ${compile:-eager} failed:"; tail -5 "$TMP/distill.err"; continue; }
    "$PY" - "$TMP/distill.json" "${compile:-eager}" <<'EOF' | tee -a "$TMP/summary.txt"
import json, sys
text = open(sys.argv[1]).read()
summary = json.loads(text[text.index("{\n"):])  # the indented JSON printed last
for row in summary["results"]:
    rate = row.get("clips_per_s", row.get("samples_per_s"))
    wait = row.get("data_wait", row.get("data_wait_fraction"))
    print(f"distill cuda {sys.argv[2]:>9}, batch {row.get('batch_size')}: {rate} clips/s, "
          f"data wait {wait}")
EOF
done

# -- 4. the probe sweep ------------------------------------------------------------------------
if [ -d ../shared/data/esc50-fold4 ]; then
    sweep=(evaluate esc50 ../shared/data/esc50-fold4 -l conv4 -l conv5 -l pool5 -l conv6 -l conv7
           -l conv8 --device cuda)
    $SOUNDNET "${sweep[@]}" --out "$TMP/sweep-warm" >/dev/null 2>&1 || true  # caches features
    start="$(date +%s.%N)"
    if $SOUNDNET "${sweep[@]}" --out "$TMP/sweep" >"$TMP/sweep.log" 2>&1; then
        end="$(date +%s.%N)"
        "$PY" - "$TMP/sweep/report.json" "$start" "$end" <<'EOF' | tee -a "$TMP/summary.txt"
import json, sys
report = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
means = " ".join(f"{k} {v['mean']:.1%}" for k, v in report["summary"].items())
print(f"evaluate esc50 six layers on cuda: {wall:.1f} s whole process, probes "
      f"{report['seconds']['probes']:.1f} s; {means}")
EOF
    else
        echo "evaluate sweep failed:"; tail -5 "$TMP/sweep.log"
    fi
else
    echo "evaluate sweep: ../shared/data/esc50-fold4 not found; skipped"
fi

# -- 5. the CLIP path: prepare and distill with a ViT-B-32 teacher ------------------------------
if "$PY" -c 'import open_clip' 2>/dev/null; then
    "$PY" - "$TMP/clipvideos" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.videos import make_video
for i in range(48):
    make_video(Path(sys.argv[1]) / f"v{i:02d}.mp4", seconds=20.0, freq=220.0 * (1 + i % 8),
               size=(320, 240))
EOF
    CLIPNAME="clip:ViT-B-32/openai"
    RANDOM_INIT=()
    "$PY" -c 'import sys; from soundnet_cli.weights.clip import cached_file; sys.exit(0 if cached_file("ViT-B-32", "openai").is_file() else 1)' \
        || RANDOM_INIT=(--random-init)
    if $SOUNDNET prepare "$TMP/clipvideos" --teacher "$CLIPNAME" "${RANDOM_INIT[@]}" \
        --device cuda --out "$TMP/clipcorpus" --json >"$TMP/clipprepare.json" 2>"$TMP/clip.log"; then
        "$PY" - "$TMP/clipprepare.json" "${#RANDOM_INIT[@]}" <<'EOF' | tee -a "$TMP/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
weights = "random weights" if sys.argv[2] != "0" else "openai weights"
print(f"prepare clip:ViT-B-32 ({weights}) on cuda: {r.get('video_seconds_per_s')} video s/s, "
      f"{r.get('videos_per_s')} videos/s, {r.get('clips')} clips")
EOF
        if $SOUNDNET distill "$TMP/clipcorpus" --out "$TMP/cliprun" --embedding-layer pool5 \
            --steps 60 --batch-size 64 --log-every 10 --eval-every 60 --held-out 0 \
            --device cuda --json >"$TMP/clipdistill.json" 2>>"$TMP/clip.log"; then
            "$PY" - "$TMP/cliprun/metrics.jsonl" <<'EOF' | tee -a "$TMP/summary.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])][1:]  # the first window holds start-up
rate = sum(r["samples_per_s"] for r in rows) / max(1, len(rows))
wait = sum(r["data_wait"] for r in rows) / max(1, len(rows))
print(f"distill embedding head (InfoNCE, pool5) on cuda: {rate:.1f} clips/s, data wait "
      f"{wait:.0%}, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
EOF
        else
            echo "clip distill failed:"; tail -5 "$TMP/clip.log"
        fi
    else
        echo "clip prepare failed:"; tail -5 "$TMP/clip.log"
    fi
else
    echo "clip: open_clip is not installed (pip install 'soundnet-cli[clip]'); skipped"
fi

echo "--- summary"
cat "$TMP/summary.txt"
