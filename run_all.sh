#!/usr/bin/env bash
# Regenerates results/ (see README): sets itself up, then runs a suite (suites/*.yaml, `harness suite --list`).
# Runs whose record matches their configuration are skipped and interrupted runs resume, so rerunning after a stop
# finishes the job; --force redoes every run. A failed job is listed at the end and makes the exit status 2.
#   ./run_all.sh [--epochs N] [--force]                 suite default: synthetic data, tiny preset, CPU, every
#                                                       method on unc with the full tiny recipe (50 epochs)
#   ./run_all.sh --all-datasets [--epochs N] [--force]  suite all-datasets: the same on all five dataset names
#                                                       -> results/all_datasets/
#   ./run_all.sh --sweep [--epochs N] [--force]         suite sweep: each method's encoder-side lr chosen on val
#                                                       over a grid, then 3 seeds of the choice -> results/sweep/
#   ./run_all.sh --random-init [--epochs N] [--force]   suite random-init -> results/random_init/
#   ./run_all.sh --transfer [--epochs N] [--force]      suite transfer: every method on unc with the full tiny
#                                                       recipe (50 epochs) from random encoders -> results/transfer/
#   ./run_all.sh --m2ist-variants [--epochs N] [--force] suite m2ist-variants: M2IST's released default and its three
#                                                       variants, 3 seeds each, on unc -> rows of results/main.md
#   ./run_all.sh --efficiency                           suite efficiency: paper-preset profiles on CUDA, batch 64,
#                                                       fp32 + bf16, optimized and released runtimes
#   ./run_all.sh --paper --data-root DIR --weights DIR  suite paper: real data, paper recipe; DIR of weights holds
#                                                       detr-r50-{unc,gref,referit}.pth and bert-base-uncased/
# Other arguments after `--` go to `harness suite` (e.g. -- --workers 1 --threads 2, or -- --launcher slurm
# --partition P --gpus-per-job 1 --time 2:00:00 to submit each run to a SLURM cluster).
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"

suite=default data_root="" weights="" epochs="" extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --force) extra+=(--force) ;;
        --all-datasets) suite=all-datasets ;;
        --sweep) suite=sweep ;;
        --efficiency) suite=efficiency ;;
        --paper) suite=paper ;;
        --random-init) suite=random-init ;;
        --transfer) suite=transfer ;;
        --m2ist-variants) suite=m2ist-variants ;;
        --data-root|--weights|--epochs)
            [ $# -ge 2 ] || { echo "error: $1 needs a value (see ./run_all.sh --help)" >&2; exit 2; }
            case "$1" in --data-root) data_root="$2" ;; --weights) weights="$2" ;; --epochs) epochs="$2" ;; esac
            shift ;;
        --) shift; extra+=("$@"); break ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see ./run_all.sh --help)" >&2; exit 2 ;;
    esac
    shift
done

[ -n "$epochs" ] && extra+=(--var "epochs=$epochs")
case "$suite" in
    paper)
        [ -n "$data_root" ] && [ -n "$weights" ] || { echo "error: --paper needs --data-root DIR and --weights DIR" >&2; exit 2; }
        extra+=(--var "data_root=$data_root" --var "weights=$weights") ;;
    efficiency)
        extra=(--gpus 0 "${extra[@]}") ;;  # one GPU: one profile at a time
esac
exec harness suite "$suite" "${extra[@]}"
