#!/usr/bin/env bash
# Before/after sweep behind the efficiency settings (paper preset, batch 64, CUDA): each method's peak memory
# and step time with and without the numerics-preserving speed-ups, frozen-encoder chunk sizes, the data
# loader's throughput and the harness's own overhead. Quick figures (10 timed steps, no FLOP counts), written
# to $SWEEP_OUT (default sweep/); the reported table comes from `./run_all.sh --efficiency`.
set -euo pipefail
out="${SWEEP_OUT:-sweep}"; mkdir -p "$out"
p() { harness profile --preset paper --batch-size 64 --device cuda --steps 10 --warmup 3 --no-flops \
        --output "$out/profiles" "$@" | grep -E "^(full|frozen|m2ist|unipt|adapter|lora|vlpet) |memory:|step:" ; }
for amp in "" --amp; do
    echo "### precision: ${amp:-fp32}"
    echo "## before: the released runtime (explicit attention keeping its maps, no BN folding, no channels-last, no cuDNN autotune)"
    for m in full frozen m2ist; do p --method $m $amp --runtime released; done
    echo "## after"
    p --method full $amp
    for m in frozen m2ist; do for c in 0 16 8; do
        echo "# chunk $c"; if [ "$c" = 0 ]; then p --method $m $amp; else p --method $m $amp --frozen-chunk $c; fi
    done; done
done
echo "### data loader (training augmentation, 640 px)"
for w in 15; do harness profile --loader --preset paper --num-workers $w --steps 20 --batch-size 64; done
echo "### harness overhead: full through \`harness run\` (data, hooks, logging) vs the bare loop above"
harness run --method full --dataset unc --preset paper --device cuda --epochs 1 --max-steps 30 --num-workers 15 \
    --output "$out/runs" --work-dir "$out/work" | grep -v "^unc_full" || true
python - "$out/runs/unc_full_paper.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["time"]
print(f"harness run: median step {t['median_step_s']*1000:.1f} ms, median iteration (incl. data wait) "
      f"{t['median_iteration_s']*1000:.1f} ms over {t['timed_steps']} steps")
PY
