#!/usr/bin/env bash
# Regenerates results/ (see README). Default: synthetic data, tiny preset, CPU: pretrain the tiny encoders once on
# the synthetic source task (cached; a stand-in for DETR/BERT pretraining), then every registered method on all
# five dataset names from those encoders, then the tables. Runs whose record matches their configuration are
# skipped and interrupted runs resume, so rerunning after a stop finishes the job; --force redoes every run.
#   ./run_all.sh [--epochs N] [--force]                 N epochs per run (default 1; the tiny recipe is 50)
#   ./run_all.sh --random-init [--epochs N] [--force]   the same suite from random encoders -> results/random_init/
#   ./run_all.sh --transfer [--epochs N] [--force]      every method on unc with the full tiny recipe (50 epochs),
#                                                       from the stand-in and from random encoders -> results/transfer/
#   ./run_all.sh --efficiency                           paper-preset profiles on CUDA, batch 64, fp32 + bf16,
#                                                       optimized and released runtimes
#   ./run_all.sh --paper --data-root DIR --weights DIR  real data, paper recipe; DIR of weights holds
#                                                       detr-r50-{unc,gref,referit}.pth and bert-base-uncased/
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"

mode=default force=0 data_root="" weights="" epochs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --efficiency) mode=efficiency ;;
        --paper) mode=paper ;;
        --data-root|--weights|--epochs)
            [ $# -ge 2 ] || { echo "error: $1 needs a value (see ./run_all.sh --help)" >&2; exit 2; }
            case "$1" in --data-root) data_root="$2" ;; --weights) weights="$2" ;; --epochs) epochs="$2" ;; esac
            shift ;;
        --random-init) mode=random_init ;;
        --transfer) mode=transfer ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see ./run_all.sh --help)" >&2; exit 2 ;;
    esac
    shift
done

methods=$(harness methods --names)
datasets="unc unc+ gref gref_umd referit"
keep=(--resume --skip-done)
[ "$force" = 1 ] && keep=()

runs() {  # runs PRESET EXTRA_ARGS...: every method on every dataset
    local preset="$1"; shift
    local total=$(( $(echo $methods | wc -w) * $(echo $datasets | wc -w) )) k=0
    for ds in $datasets; do
        for m in $methods; do
            k=$((k + 1))
            echo "== [$k/$total] $m on $ds ($preset) =="
            harness run --method "$m" --dataset "$ds" --preset "$preset" "${keep[@]}" "$@" $(extra_for "$ds")
        done
    done
}
extra_for() { :; }

# The default suite's budget: one epoch per run (about 125-155 steps on the default synthetic set), so that every
# method on every name fits in about 20 minutes on 2 cores. Far too short for the fusion to ground the text (see
# README, "What the default suite can and cannot show"); the full tiny recipe is 50 epochs (--epochs 50).
suite=(--device cpu --epochs "${epochs:-1}")
start=$SECONDS
case "$mode" in
    default)
        # The tiny encoders' stand-in pretraining (harness/pretrain.py): done once, then found in the cache.
        enc=$(harness pretrain --preset tiny --path-only)
        echo "tiny encoders pretrained on the synthetic source task: $enc (see $enc/source.json)"
        runs tiny "${suite[@]}" --vision-weights "$enc/vision.pth" --language-weights "$enc/bert"
        # the same preset's memory and time on this CPU, for the efficiency table and the trade-off plot
        for m in $methods; do
            echo "== profile $m (tiny, cpu) =="
            harness profile --method "$m" --preset tiny --device cpu | tail -n 3
        done
        ;;
    random_init)
        # The same suite from random encoders, kept apart from the default results for comparison.
        runs tiny "${suite[@]}" --random-init --output results/random_init/runs --work-dir runs/random_init
        harness table --runs results/random_init/runs --out results/random_init
        echo "results/random_init/ regenerated in $(( SECONDS - start )) s: main.md, efficiency.md, tradeoff.png"
        exit 0
        ;;
    transfer)
        # What the default suite is too short to show: does the stand-in pretraining give the methods features to
        # use? Every method on unc with the full tiny recipe (hours on 2 cores; resumable), both ways.
        enc=$(harness pretrain --preset tiny --path-only)
        epochs_arg=(); [ -n "$epochs" ] && epochs_arg=(--epochs "$epochs")
        for m in $methods; do
            for init in pretrained random_init; do
                echo "== $m on unc, $init encoders (tiny recipe) =="
                if [ "$init" = pretrained ]; then init_args=(--vision-weights "$enc/vision.pth" --language-weights "$enc/bert")
                else init_args=(--random-init); fi
                harness run --method "$m" --dataset unc --preset tiny --device cpu "${epochs_arg[@]}" "${keep[@]}" \
                    "${init_args[@]}" --output "results/transfer/$init" --work-dir "runs/transfer/$init"
            done
        done
        for init in pretrained random_init; do
            harness table --runs "results/transfer/$init" --profiles results/transfer/none --out "results/transfer/$init"
        done
        echo "results/transfer/ regenerated in $(( SECONDS - start )) s"
        exit 0
        ;;
    efficiency)
        # Both runtimes: optimized (this suite's default) and released (the released code's attention and settings,
        # the paper's Fig. 1 conditions). FLOPs depend on neither the precision nor the runtime: counted once.
        for runtime in optimized released; do
            for precision in fp32 bf16; do
                for m in $methods; do
                    echo "== profile $m ($precision, $runtime runtime) =="
                    extra=(); { [ "$precision" = bf16 ] || [ "$runtime" = released ]; } && extra=(--no-flops)
                    [ "$precision" = bf16 ] && extra+=(--amp)
                    harness profile --method "$m" --preset paper --batch-size 64 --device cuda "${extra[@]}" \
                        --runtime "$runtime" --dataset unc --train-size 120624
                done
            done
        done
        ;;
    paper)
        [ -n "$data_root" ] && [ -n "$weights" ] || { echo "error: --paper needs --data-root DIR and --weights DIR" >&2; exit 2; }
        extra_for() {  # TransVG's per-dataset DETR initialisation (train.sh)
            case "$1" in unc|unc+) w=unc ;; gref|gref_umd) w=gref ;; *) w=referit ;; esac
            echo --vision-weights "$weights/detr-r50-$w.pth"
        }
        runs paper --data-root "$data_root" --language-weights "$weights/bert-base-uncased" --device cuda
        ;;
esac
harness table
echo "results/ regenerated in $(( SECONDS - start )) s: results/main.md, results/efficiency.md, results/tradeoff.png"
