#!/usr/bin/env bash
# Regenerates results/ (see README). Default: synthetic data, tiny preset, CPU, every registered method on
# all five dataset names, then the tables. Runs whose record matches their configuration are skipped and
# interrupted runs resume, so rerunning after a stop finishes the job; --force redoes everything.
#   ./run_all.sh [--force]
#   ./run_all.sh --efficiency                           paper-preset profiles on CUDA, batch 64, fp32 + bf16
#   ./run_all.sh --paper --data-root DIR --weights DIR  real data, paper recipe; DIR of weights holds
#                                                       detr-r50-{unc,gref,referit}.pth and bert-base-uncased/
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"

mode=default force=0 data_root="" weights=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --efficiency) mode=efficiency ;;
        --paper) mode=paper ;;
        --data-root) data_root="$2"; shift ;;
        --weights) weights="$2"; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
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

case "$mode" in
    default)
        runs tiny --device cpu
        # the same preset's memory and time on this CPU, for the efficiency table and the trade-off plot
        for m in $methods; do
            echo "== profile $m (tiny, cpu) =="
            harness profile --method "$m" --preset tiny --device cpu | tail -n 3
        done
        ;;
    efficiency)
        # FLOPs do not depend on the precision: counted once, in the fp32 profiles
        for precision in fp32 bf16; do
            for m in $methods; do
                echo "== profile $m ($precision) =="
                extra=(); [ "$precision" = bf16 ] && extra=(--amp --no-flops)
                harness profile --method "$m" --preset paper --batch-size 64 --device cuda "${extra[@]}" \
                    --dataset unc --train-size 120624
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
echo "results/ regenerated: results/main.md, results/efficiency.md, results/tradeoff.png"
