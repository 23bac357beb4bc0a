"""`harness` command line: one subcommand per job, each a thin shell over a library function.

Errors that are the user's to fix (HarnessError, DataError) end in one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

import yaml

from datasets.errors import DataError
from harness.errors import HarnessError
from harness.executor import PARENT_ENV


def _cmd_data_synth(args):
    from datasets.synth import write_synthetic

    print(write_synthetic(args.root, seed=args.seed, images=args.images, force=args.force))


def _cmd_data_prepare(args):
    from datasets.prepare import prepare

    root = {"refer": args.refer_root, "mdetr": args.mdetr_root, "berkeley": args.berkeley_root}[args.source]
    if root is None:
        raise HarnessError(f"--from {args.source} needs --{args.source}-root DIR")
    prepare(args.source, root, args.dataset, args.out, images=args.images, force=args.force)


def _cmd_data_check(args):
    from datasets.check import check_dataset, format_report

    report = check_dataset(args.root, args.dataset, split_root=args.split_root, image_root=args.image_root)
    print(format_report(report))


def _cmd_data_baseline(args):
    import json

    from datasets.baseline import format_baselines, text_blind_baselines
    from datasets.catalog import resolve_paths

    if args.root is None:  # the synthetic set `harness run` uses by default
        from harness.run import synthetic_root

        args.root = synthetic_root()
    paths = resolve_paths(args.root, args.split_root, args.image_root)
    results = text_blind_baselines(paths, args.dataset)
    print(format_baselines(args.dataset, results))
    if args.output:
        from harness.records import baseline_records, write_json_atomic

        from harness.records import read_record

        for record in baseline_records(args.dataset, results, paths):
            path = Path(args.output) / f"{record['run_id']}.json"
            try:
                same = path.is_file() and {k: read_record(path)[k] for k in ("config_hash", "results")} == \
                    {k: json.loads(json.dumps(record[k])) for k in ("config_hash", "results")}
            except HarnessError:
                same = False
            print(f"{record['run_id']}: up to date ({path}), skipped" if same else
                  f"record written to {write_json_atomic(path, record)}")


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="generate or validate REC data in the TransVG index format")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="write the synthetic dataset under all five dataset names")
    synth.add_argument("--root", required=True, help="output folder (data/, ln_data/, vocab.txt)")
    synth.add_argument("--seed", type=int, default=13)
    synth.add_argument("--images", type=int, default=None, help="images per dataset name (default: the generator's)")
    synth.add_argument("--force", action="store_true",
                       help="replace ROOT even if it is not empty and holds no synthetic set")
    synth.set_defaults(func=_cmd_data_synth)
    prep = data_sub.add_parser("prepare", help="build the TransVG index of a dataset from REFER's or MDETR's raw "
                               "annotations (README, 'Real data')")
    prep.add_argument("--from", dest="source", required=True, choices=["refer", "mdetr", "berkeley"])
    prep.add_argument("--refer-root", default=None, help="REFER's data folder: <dataset>/refs(<split_by>).p and "
                                                         "<dataset>/instances.json")
    prep.add_argument("--mdetr-root", default=None, help="folder of MDETR's finetune_<dataset>_<split>.json files")
    prep.add_argument("--berkeley-root", default=None,
                      help="folder of the Berkeley ReferItGame split files: "
                           "referit_query_{train,val,trainval,test}.json, referit_bbox.json")
    prep.add_argument("--dataset", required=True, help="unc, unc+, gref, gref_umd (refer, mdetr); referit (berkeley)")
    prep.add_argument("--out", required=True, help="data root: the index goes to OUT/data/<name>/")
    prep.add_argument("--images", default=None, help="image folder to check against (default: OUT/ln_data/ + the "
                                                     "dataset's folder, e.g. other/images/mscoco/images/train2014)")
    prep.add_argument("--force", action="store_true", help="replace an existing OUT/data/<name>/")
    prep.set_defaults(func=_cmd_data_prepare)
    check = data_sub.add_parser("check", help="count and validate every record of a dataset; a data card with the "
                                "published sizes")
    check.add_argument("--root", required=True, help="data root holding data/ (index) and ln_data/ (images)")
    check.add_argument("--dataset", required=True)
    check.add_argument("--split-root", default=None, help="index folder (default ROOT/data)")
    check.add_argument("--image-root", default=None, help="image folder (default ROOT/ln_data)")
    check.set_defaults(func=_cmd_data_check)
    base = data_sub.add_parser("baseline", help="Acc@0.5 of text-blind predictors (largest, most central, random "
                               "object) on a dataset's eval splits: the floor a REC result must clear")
    base.add_argument("--dataset", required=True)
    base.add_argument("--root", default=None, help="data root (default: the synthetic set, made once, cached)")
    base.add_argument("--split-root", default=None, help="index folder (default ROOT/data)")
    base.add_argument("--image-root", default=None, help="image folder (default ROOT/ln_data)")
    base.add_argument("--output", default=None, help="also write one record per rule here (the tables show them as "
                                                     "the floor rows), e.g. results/runs")
    base.set_defaults(func=_cmd_data_baseline)


def _cmd_fetch_data(args):
    from harness.fetch import fetch_data

    fetch_data(args)


def _cmd_fetch_weights(args):
    from harness.fetch import fetch_weights

    fetch_weights(args)


def _add_fetch(sub) -> None:
    """`harness fetch data|weights`, beside their handlers."""
    fetch = sub.add_parser("fetch", help="download the public data or weights (resume, mirrors, checksums), then "
                           "lay them out, prepare and check them")
    fetch_sub = fetch.add_subparsers(dest="fetch_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifest", default=None, help="another manifest of harness/manifest.yaml's format")
    common.add_argument("--mirror", default=None, help="a site's own mirror, tried first: MIRROR/<file name>")
    common.add_argument("--from-dir", default=None, help="use the files downloaded elsewhere into this folder "
                                                         "(verified the same way) instead of the network")
    data = fetch_sub.add_parser("data", parents=[common], help="COCO train2014 images and a dataset's annotations "
                                "-> DATA/data/<name>/ (index) and DATA/ln_data/ (images), then prepare and check")
    data.add_argument("--dataset", required=True, help="unc, unc+, gref, gref_umd (referit: README, 'Real data')")
    data.add_argument("--root", required=True, help="data root to fill (archives kept in ROOT/downloads/)")
    data.add_argument("--source", default="refer", choices=["refer", "mdetr"],
                      help="annotations: REFER's archives (default) or MDETR's")
    data.add_argument("--weights", default=None, help="weights folder named in the printed commands "
                                                      "(default: ROOT/../weights)")
    data.set_defaults(func=_cmd_fetch_data)
    weights = fetch_sub.add_parser("weights", parents=[common], help="DETR-R50 and bert-base-uncased into OUT")
    weights.add_argument("--out", required=True, help="weights folder")
    weights.set_defaults(func=_cmd_fetch_weights)


def _cmd_methods(args):
    from methods import describe_methods, method_names

    print(" ".join(method_names()) if args.names else describe_methods(preset=args.preset))


def _add_methods(sub) -> None:
    methods = sub.add_parser("methods", help="list the registered methods and their tunable parameters")
    methods.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    methods.add_argument("--names", action="store_true", help="print only the names, space-separated")
    methods.set_defaults(func=_cmd_methods)


def _read_config_file(path) -> dict:
    import yaml

    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise HarnessError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise HarnessError(f"config file {path} is a folder: pass a YAML file") from None
    except UnicodeDecodeError:
        raise HarnessError(f"config file {path} is not UTF-8 text: pass a YAML file") from None
    except yaml.YAMLError as err:
        raise HarnessError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    unknown = sorted(set(data) - {"method", "recipe", "data"})
    if not isinstance(data, dict) or unknown:
        raise HarnessError(f"config file {path}: top-level keys must be method, recipe, data (got {unknown})")
    return data


def _data_section(data, args) -> dict:
    """The --config file's `data:` section, checked: known keys, a mapping for image_dirs, and folders that only
    mean something next to --data-root."""
    data = data or {}
    if not isinstance(data, dict):
        raise HarnessError(f"config file {args.config}: data: must be a mapping, got {data!r}")
    unknown = sorted(set(data) - {"split_root", "image_root", "image_dirs"})
    if unknown:
        raise HarnessError(f"config file {args.config}: unknown data option(s) {', '.join(unknown)}; known: "
                           "image_dirs, image_root, split_root")
    if data.get("image_dirs") is not None and not isinstance(data["image_dirs"], dict):
        raise HarnessError(f"config file {args.config}: data: image_dirs must map a dataset name to its image folder "
                           f"(e.g. {{unc: other/images/train2014}}), got {data['image_dirs']!r}")
    given = [k for k in ("split_root", "image_root", "image_dirs") if data.get(k) is not None]
    if given and args.data_root is None:
        raise HarnessError(f"config file {args.config}: data: {', '.join(given)} need --data-root (without it the run "
                           "uses the synthetic set)")
    return data


def _overrides(args):
    """(method overrides, recipe overrides, --set overrides, run-id tag): --config file sections, then --set."""
    from harness.options import MAX_TAG, overrides_tag, parse_sets
    from harness.recipe import Recipe
    from methods import method_class

    config = _read_config_file(getattr(args, "config", None))
    set_method, set_recipe = parse_sets(args.set, method_class(args.method).Config, Recipe, f"method '{args.method}'")
    method = {**(config.get("method") or {}), **set_method}
    recipe = {**(config.get("recipe") or {}), **set_recipe}
    if args.tag is not None and (not args.tag or not all(c.isalnum() or c in "-_.+=" for c in args.tag)
                                 or len(args.tag) > MAX_TAG):
        raise HarnessError(f"--tag {args.tag[:40]!r}: use up to {MAX_TAG} letters, digits and - _ . + = (it becomes "
                           "part of file names)")
    # a seed other than the recipe's is part of the run id, so that the seeds of one configuration sit side by side
    seed = f"seed{args.seed}" if getattr(args, "seed", None) is not None and args.seed != Recipe.seed else None
    tag = "_".join(t for t in (args.tag, overrides_tag(set_method, set_recipe), seed) if t) or None
    return config, method, recipe, {"method": set_method, "recipe": set_recipe}, tag


def _cmd_run(args):
    from harness.sweep import selected_set
    from harness.run import RunConfig, run

    if args.selected:  # the sweep's choice for this method, as if given with --set
        chosen = selected_set(args.selected, args.method)
        given = {item.partition("=")[0].removeprefix("recipe.").removeprefix("method.") for item in args.set}
        clash = [c for c in chosen if c.partition("=")[0] in given]
        if clash:
            raise HarnessError(f"--selected gives {clash[0]} and --set gives {clash[0].partition('=')[0]} too: "
                               "drop one")
        args.set = [*args.set, *chosen]
    if args.random_init and (args.vision_weights or args.language_weights or args.init_checkpoint):
        raise HarnessError("--random-init contradicts --vision-weights/--language-weights/--init-checkpoint: drop one")
    config, method, recipe, sets, tag = _overrides(args)
    data = _data_section(config.get("data"), args)
    flags = {"epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size, "seed": args.seed,
             "num_workers": args.num_workers}
    for key, value in flags.items():  # the flag would win silently while the run id names the --set value
        if value is not None and key in recipe and recipe[key] != value:
            raise HarnessError(f"--{key.replace('_', '-')} {value} contradicts recipe.{key}={recipe[key]} from --set "
                               "or --config: give one")
    recipe.update({k: v for k, v in flags.items() if v is not None})
    if args.amp:
        recipe["amp"] = True
    cfg = RunConfig(method=args.method, dataset=args.dataset, preset=args.preset, data_root=args.data_root,
                    split_root=data.get("split_root"), image_root=data.get("image_root"),
                    image_dirs=data.get("image_dirs"), tokenizer=args.tokenizer, vision_weights=args.vision_weights,
                    language_weights=args.language_weights, init_checkpoint=args.init_checkpoint,
                    method_overrides=method, recipe_overrides=recipe, set_overrides=sets, device=args.device,
                    output=args.output, work_dir=args.work_dir, tag=tag, restart=args.restart,
                    skip_done=args.skip_done, reuse=args.reuse, synthetic_images=args.synthetic_images,
                    stand_in_encoders=not args.random_init, trust_pickles=args.trust_pickles)
    record = run(cfg)
    for split, res in record["results"].items():
        print(f"{record['dataset']} {split}: Acc@0.5 {res['accuracy']:.4f}  mIoU {res['miou']:.4f}  (n={res['n']})")


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train one method on one dataset, evaluate every split, write a run record")
    run.add_argument("--method", required=True)
    run.add_argument("--dataset", required=True, help="unc, unc+, gref, gref_umd, referit")
    run.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    run.add_argument("--data-root", default=None, help="folder with data/ and ln_data/ (default: synthetic data)")
    run.add_argument("--synthetic-images", type=int, default=None,
                     help="images per dataset name of the generated synthetic set (default: the generator's)")
    run.add_argument("--epochs", type=int, default=None)
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    run.add_argument("--batch-size", type=int, default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--num-workers", type=int, default=None)
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--amp", action="store_true", help="bf16 autocast (the paper trains in fp32)")
    run.add_argument("--vision-weights", default=None, help="DETR/TransVG detr-r50-*.pth (DETR key layout)")
    run.add_argument("--language-weights", default=None, help="BERT: HF id in the local cache, or a folder")
    run.add_argument("--random-init", action="store_true",
                     help="random encoders; without weights the tiny preset on synthetic data otherwise starts from "
                          "the stand-in pretrained ones (`harness pretrain`, made once and cached)")
    run.add_argument("--tokenizer", default=None, help="HF id, folder or vocab.txt (default: the BERT's)")
    run.add_argument("--config", default=None, help="YAML with method:, recipe: and data: overrides")
    _add_set(run)
    run.add_argument("--init-checkpoint", default=None,
                     help="start from a whole-model checkpoint: TransVG's own ({'model': ...}, e.g. "
                          "TransVG_R50_unc.pth) or one of this project's; the method is applied after loading")
    run.add_argument("--trust-pickles", action="store_true", help=TRUST_HELP)
    run.add_argument("--output", default="results/runs", help="folder for the run record")
    run.add_argument("--work-dir", default="runs", help="folder for checkpoints")
    run.add_argument("--tag", default=None, help="suffix for the run id (keeps variants apart)")
    run.add_argument("--selected", default=None, metavar="FILE",
                     help="train the configuration `harness select` chose for this method (its lr_encoder, as "
                          "--set would give it)")
    run.add_argument("--resume", action="store_true",
                     help="(the default, kept for old scripts) a run continues from its own last checkpoint")
    run.add_argument("--restart", action="store_true",
                     help="delete the run's checkpoints (saying so) and start at epoch 1 instead of resuming")
    run.add_argument("--skip-done", action="store_true",
                     help="do nothing if the run's record exists, is ok and has the same configuration; "
                          "a checkpoint of another configuration is then deleted (saying so), not refused")
    run.add_argument("--reuse", default=None, metavar="DIR",
                     help="a folder of run records (e.g. results/runs): if one finished with exactly this "
                          "configuration, copy it as this run's record (naming it in reused_from) instead of training")
    run.set_defaults(func=_cmd_run)


def _cmd_eval(args):
    from harness.checkpoint_eval import evaluate_checkpoint

    if args.batch_size < 1:
        raise HarnessError(f"--batch-size must be >= 1, got {args.batch_size}")
    results = evaluate_checkpoint(args.checkpoint, args.dataset, data_root=args.data_root, device=args.device,
                                  batch_size=args.batch_size, tokenizer=args.tokenizer,
                                  trust_pickles=args.trust_pickles)
    for split, res in results.items():
        print(f"{args.dataset} {split}: Acc@0.5 {res['accuracy']:.4f}  mIoU {res['miou']:.4f}  (n={res['n']})")


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a checkpoint written by `harness run`, or TransVG's own "
                                     "(e.g. TransVG_R50_unc.pth), on a dataset's splits")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--tokenizer", default=None, help="HF id, folder or vocab.txt (default: the checkpoint's; "
                                                      "a TransVG checkpoint has none)")
    ev.add_argument("--trust-pickles", action="store_true", help=TRUST_HELP)
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--data-root", default=None, help="default: the synthetic data")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_cmd_eval)


def _cmd_profile(args):
    import json

    from harness.profile import loader_throughput, profile, summary

    if args.loader:
        out = loader_throughput(args.preset, args.dataset, args.data_root, args.num_workers,
                                64 if args.batch_size is None else args.batch_size, args.steps,
                                tokenizer=args.tokenizer, coco_like=args.coco_like)
        w = out["per_worker"]
        print(json.dumps(out, indent=2) if args.json else
              f"loader ({out['data']} {args.dataset}, {out['image_size']} px, augmentation on, "
              f"{out['num_workers']} workers): {out['samples_per_s']:.1f} samples/s over {out['batches']} batches\n"
              + "per worker (samples/s, one thread):\n"
              + "".join(f"  {rate:7.1f}  {name}\n" for name, rate in w["variants_samples_per_s"].items())
              + f"  {w['cpu_pipeline_decoded_once_samples_per_s']:7.1f}  CPU runs' pipeline with the images kept "
              "decoded (synthetic set, no workers)\n"
              + f"  {w['decode_floor_samples_per_s']:7.1f}  decode-only floor (PIL) on the same {w['samples']} files "
              f"({w['mean_jpeg_kib']:.0f} KiB mean)\n"
              f"speed-up {w['speedup']:.2f}x; now {100 * w['pipeline_share_of_floor']:.0f}% of the floor; the batch "
              f"side on this CPU: " + ", ".join(f"{k} {v:.2f} ms" for k, v in w["batch_side_cpu_ms_per_sample"].items())
              + " per sample")
        return
    if not args.method:
        raise HarnessError("harness profile needs --method NAME (or --loader for the data loader alone)")
    if args.batch_size is not None and args.batch_size < 1:
        raise HarnessError(f"--batch-size must be >= 1, got {args.batch_size}")
    _, method, recipe, _, tag = _overrides(args)
    record = profile(args.method, preset=args.preset, batch_size=args.batch_size, device=args.device, amp=args.amp,
                     dataset=args.dataset, train_size=args.train_size, data_root=args.data_root, steps=args.steps,
                     warmup=args.warmup, output=args.output, runtime=args.runtime, frozen_chunk=args.frozen_chunk,
                     flops=not args.no_flops, method_overrides=method, recipe_overrides=recipe, tag=tag,
                     skip_done=args.skip_done)
    print(json.dumps(record, indent=2, sort_keys=True, default=str) if args.json else summary(record))


def _add_profile(sub) -> None:
    prof = sub.add_parser("profile", help="params, FLOPs, peak training memory and step time of one method "
                                          "on synthetic tensors at the preset's shapes; writes a profile record")
    prof.add_argument("--method", default=None)
    prof.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    prof.add_argument("--batch-size", type=int, default=None, help="training batch (default: the recipe's)")
    prof.add_argument("--device", default="auto", help="auto, cpu or cuda")
    prof.add_argument("--amp", action="store_true", help="bf16 autocast (the paper trains in fp32)")
    prof.add_argument("--dataset", default="unc", help="sets the query length and the train size for epoch time")
    prof.add_argument("--train-size", type=int, default=None, help="train-split size for the extrapolated epoch time")
    prof.add_argument("--data-root", default=None, help="count the train split here instead of --train-size")
    prof.add_argument("--steps", type=int, default=20, help="timed steps (median; >= 20 for reported figures)")
    prof.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps")
    prof.add_argument("--json", action="store_true", help="print the record instead of a summary")
    prof.add_argument("--runtime", default=None, choices=["optimized", "released"],
                      help="optimized (default: BatchNorm folding, fused attention, channels-last, cuDNN autotune) or "
                           "released (the released TransVG/M2IST code's attention and settings, as the paper measured)")
    _add_set(prof)
    prof.add_argument("--tag", default=None, help="suffix for the profile record's name")
    prof.add_argument("--skip-done", action="store_true",
                      help="do nothing if the profile record exists, is ok and has the same configuration")
    prof.add_argument("--frozen-chunk", type=int, default=None,
                      help="run frozen (no-autograd) encoders in chunks of this many samples")
    prof.add_argument("--no-flops", action="store_true", help="skip the FLOP counts (quick memory/time sweeps)")
    prof.add_argument("--loader", action="store_true",
                      help="measure the training data loader alone (samples/s at the preset's image size)")
    prof.add_argument("--num-workers", type=int, default=8, help="data loader workers for --loader")
    prof.add_argument("--tokenizer", default=None, help="for --loader --data-root: HF id, folder or vocab.txt "
                                                        "(default: bert-base-uncased)")
    prof.add_argument("--coco-like", type=int, default=None, metavar="N",
                      help="for --loader: time N generated COCO-like 640x480 JPEGs (quality 90; made once, cached)")
    prof.add_argument("--output", default="results/profile", help="folder for the profile record")
    prof.set_defaults(func=_cmd_profile)


def _cmd_pretrain(args):
    from harness.pretrain import cli

    cli(args)


def _add_pretrain(sub) -> None:
    pre = sub.add_parser("pretrain", help="pretrain the tiny encoders on a synthetic source task (a stand-in for "
                                          "DETR/BERT pretraining) and save them as DETR vision.pth + HF BERT folder")
    pre.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
    pre.add_argument("--out", default=None, help="output folder (default: the cache, keyed by preset, seed and config)")
    pre.add_argument("--seed", type=int, default=13)
    pre.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    pre.add_argument("--force", action="store_true", help="pretrain again even if the folder is complete")
    pre.add_argument("--path-only", action="store_true",
                     help="print only the output folder on stdout (progress goes to stderr); for scripts")
    pre.add_argument("--vision-steps", type=int, default=None, help=argparse.SUPPRESS)  # small runs (tests)
    pre.add_argument("--text-steps", type=int, default=None, help=argparse.SUPPRESS)
    pre.add_argument("--images", type=int, default=None, help=argparse.SUPPRESS)
    pre.add_argument("--captions", type=int, default=None, help=argparse.SUPPRESS)
    pre.set_defaults(func=_cmd_pretrain)


def _cmd_suite(args):
    from harness.executor import run_suite
    from harness.suites import load_suite, suite_names

    if args.list or not args.name:
        for name in suite_names():
            print(f"{name:<12} {' '.join(str(load_suite(name).get('description', '')).split())}")
        return
    variables = {}
    for item in args.var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"--var {item!r}: expected KEY=VALUE")
        try:  # YAML values (1.0e-4, 3, null); a comma makes a list
            parts = [yaml.safe_load(v) for v in value.split(",")]
        except yaml.YAMLError:
            raise HarnessError(f"--var {item!r}: VALUE is not YAML") from None
        variables[key] = parts if "," in value else parts[0]
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise HarnessError(f"{flag} must be >= 1, got {value}")
    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else None
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
    except ValueError:
        raise HarnessError(f"--seeds {args.seeds!r}: expected integers separated by commas, e.g. 13,14,15") from None
    launcher = None
    if args.launcher:
        launcher = {"cluster": args.launcher, "partition": args.partition, "gpus_per_job": args.gpus_per_job,
                    "time_min": _minutes(args.time), "folder": args.submitit_folder}
    elif args.partition or args.gpus_per_job or args.time or args.submitit_folder:
        raise HarnessError("--partition, --gpus-per-job, --time and --submitit-folder go with --launcher slurm")
    run_suite(args.name, variables, workers=args.workers, threads=args.threads, gpus=gpus, force=args.force,
              dry_run=args.dry_run, logs=args.logs, record=args.record, seeds=seeds, launcher=launcher,
              check=_check_job)


def _check_job(argv: list, name: str) -> None:
    """A suite job's command line as the CLI would parse it, before any job runs (an unknown flag used to surface
    only when its job ran, possibly hours in)."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv)
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise HarnessError(f"suite job '{name}': {lines[-1] if lines else 'bad command line'} "
                           f"(harness {' '.join(argv)})") from None


def _minutes(text: str | None) -> int | None:
    """--time in SLURM's forms (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes, seconds rounded up."""
    if text is None:
        return None
    days, _, clock = text.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        if not 1 <= len(parts) <= 3 or min(parts) < 0:
            raise ValueError
        if days:  # D-H, D-H:M, D-H:M:S
            h, m, sec = (parts + [0, 0])[:3]
            minutes = int(days) * 24 * 60 + h * 60 + m + (sec > 0)
        else:  # M, M:S, H:M:S
            h, m, sec = ([0, 0] + parts)[-3:] if len(parts) == 3 else (0, *(parts + [0])[:2])
            minutes = h * 60 + m + (sec > 0)
    except ValueError:
        raise HarnessError(f"--time {text!r}: use SLURM's forms, e.g. 90 (minutes), 1:30:00 or 1-12:00") from None
    if minutes < 1:
        raise HarnessError(f"--time {text!r}: at least one minute")
    return minutes


SWEEP_SELECTION = "sweep/selection.json"  # under results/: where suites/sweep.yaml's select job writes


def _add_suite(sub) -> None:
    suite = sub.add_parser("suite", help="run a named suite of jobs (suites/NAME.yaml): runs, profiles, tables; "
                                         "up-to-date runs are skipped, interrupted ones resume, failures are listed")
    suite.add_argument("name", nargs="?", help="a suite name (see --list) or a suite file")
    suite.add_argument("--list", action="store_true", help="list the suites")
    suite.add_argument("--workers", type=int, default=None, help="jobs at a time (default: 2 on CPU, one per GPU)")
    suite.add_argument("--threads", type=int, default=None,
                       help="torch threads per job (default: the CPU count / workers); fixed, so a run's numbers do "
                            "not depend on what runs beside it")
    suite.add_argument("--gpus", default=None, help="comma-separated GPU indices: one job per GPU")
    suite.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="fill {KEY} in the suite")
    suite.add_argument("--seeds", default=None, help="comma-separated seeds: every run job once per seed (tables show "
                                                     "mean +- std and n over them)")
    suite.add_argument("--force", action="store_true", help="redo runs whose record is up to date")
    suite.add_argument("--dry-run", action="store_true", help="print the jobs and stop")
    suite.add_argument("--logs", default=None, help="folder for the jobs' logs (default runs/suite-logs/NAME)")
    suite.add_argument("--record", default=None, help="the suite record (default results/suites/NAME.json)")
    suite.add_argument("--launcher", choices=["slurm", "local", "debug"], default=None,
                       help="submit each run and profile as its own job through submitit: slurm (sbatch), or "
                            "submitit's local / debug executors on this machine; tables and selection stay here")
    suite.add_argument("--partition", default=None, help="SLURM partition (--launcher slurm)")
    suite.add_argument("--gpus-per-job", type=int, default=0,
                       help="GPUs per job; a run with more than one trains with torchrun (DDP) inside its job")
    suite.add_argument("--time", default=None, help="time limit per job: minutes, H:MM:SS or D-HH:MM")
    suite.add_argument("--submitit-folder", default=None,
                       help="where submitit keeps its job files (default: the suite's log folder /submitit)")
    suite.set_defaults(func=_cmd_suite)


def _cmd_table(args):
    from harness.tables import build_tables

    selected = args.selected
    if selected is None and (Path(args.out) / SWEEP_SELECTION).is_file():  # the sweep's rows stay in main.md
        selected = str(Path(args.out) / SWEEP_SELECTION)
    for path in build_tables(runs=args.runs, profiles=args.profiles, out=args.out, selected=selected):
        print(f"wrote {path}")


def _add_table(sub) -> None:
    table = sub.add_parser("table", help="regenerate results/main.md, efficiency.md and tradeoff.png from records")
    table.add_argument("--runs", default="results/runs", help="folder of run records")
    table.add_argument("--profiles", default="results/profile", help="folder of profile records")
    table.add_argument("--out", default="results", help="folder for the tables and the plot")
    table.add_argument("--selected", default=None, metavar="FILE",
                       help="a `harness select` file: main.md also shows each method's configuration selected on val "
                            "(its runs, all seeds, from the folder the file names) beside the published one (default: "
                            f"OUT/{SWEEP_SELECTION} where the sweep suite has written it)")
    table.set_defaults(func=_cmd_table)


def _cmd_select(args):
    from dataclasses import fields

    from harness.recipe import Recipe
    from harness.sweep import run_select

    tunable = sorted(f.name for f in fields(Recipe) if f.type in ("float", "int"))
    if args.key not in tunable:  # an unknown key matched no grid and dropped every tuned method
        raise HarnessError(f"select --key {args.key!r}: choose a numeric recipe option ({', '.join(tunable)})")
    run_select(args.runs, args.dataset, args.out, key=args.key, seed=args.seed)
    print(f"wrote {args.out} and {Path(args.out).with_name('sensitivity.png')}")


TRUST_HELP = ("allow index, weight and checkpoint files that only a full (unsafe) unpickler reads; such a file "
              "can run any code: use only for files from a source you trust")


def _add_select(sub) -> None:
    select = sub.add_parser("select", help="choose each method's encoder-side learning rate on val from a sweep's "
                                           "grid runs; writes the selection and sensitivity.png beside it")
    select.add_argument("--runs", required=True, help="folder of the grid's run records")
    select.add_argument("--dataset", default="unc")
    select.add_argument("--out", required=True, help="the selection file (JSON)")
    select.add_argument("--key", default="lr_encoder", help="the tuned recipe option")
    select.add_argument("--seed", type=int, default=13, help="the seed the grid trained at")
    select.set_defaults(func=_cmd_select)


def _add_set(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a method or recipe option (repeatable): method.NAME=V, recipe.NAME=V or a "
                             "bare NAME; V is YAML (true, 3, 1.0e-4, [a, b]); recorded and added to the run id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_data, _add_fetch, _add_run, _add_eval, _add_profile, _add_pretrain, _add_suite, _add_table,
                _add_select, _add_methods):
        add(sub)
    return parser


def _one_line(err: Exception) -> str:
    """The message; a DataLoader worker re-raises a DataError with its traceback in the message: keep its last line."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def _stop_on_sigterm() -> None:
    """SIGTERM (a suite stopping its jobs, SLURM ending a job, a kill) interrupts like Ctrl-C, so a run writes its
    `interrupted` record; a suite's job also gets SIGTERM when the suite that started it dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG), instead of running on as an orphan that holds its run's lock."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    parent = os.environ.get(PARENT_ENV)
    if parent and sys.platform.startswith("linux") and str(os.getppid()) == parent:  # torchrun's ranks: not ours
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        if str(os.getppid()) != parent:  # the suite died before the line above
            raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _stop_on_sigterm()
        args.func(args)
    except (HarnessError, DataError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # writing a record, checkpoint, table or index: read-only folder, full disk
        where = f"{err.filename}: " if err.filename else ""
        flags = [f for f in ("--output", "--work-dir", "--out", "--root", "--record", "--logs")
                 if getattr(args, f[2:].replace("-", "_"), None) is not None]
        fix = f"free space or choose another {' / '.join(flags)}" if flags else "free space or check the folder"
        print(f"error: {where}{err.strerror or err}; {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint (--restart starts over)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
