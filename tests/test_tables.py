"""`harness table`: main.md, efficiency.md and tradeoff.png from fixture records written here."""
import json

import pytest

from harness.errors import HarnessError
from harness.records import SCHEMA_VERSION, validate_record, write_json_atomic
from harness.tables import build_tables, efficiency_tables, main_tables, provenance, read_folder, schedule_table

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PARAMS = {  # method -> (encoder-side trainable, all trainable, total)
    "full": (2_000_000, 2_100_000, 2_200_000), "frozen": (0, 100_000, 2_200_000),
    "m2ist": (60_000, 160_000, 2_260_000), "adapter": (50_000, 150_000, 2_250_000),
    "zeta": (10_000, 110_000, 2_210_000),
}
SPLITS = {"unc": ("val", "testA", "testB"), "unc+": ("val", "testA", "testB"), "gref_umd": ("val", "test"),
          "referit": ("val", "test"), "gref": ("val",)}


def make_record(method, dataset="unc", kind="run", data="synthetic", preset="tiny", acc=0.5, status="ok",
                device="cpu", memory=None, step_s=0.1, batch=2, precision="fp32", created="2026-11-20T10:00:00+00:00",
                dirty=False, flops=None, epoch_s=None, tag=None):
    """A record with exactly the schema train.py / profile.py write (only the fields the tables read filled)."""
    enc, trainable, total = PARAMS[method]
    device_name = "NVIDIA H100 80GB HBM3" if device == "cuda" else "CPU (x86_64, 2 cores, 2 threads)"
    record = {
        "schema": SCHEMA_VERSION, "kind": kind, "method": method,
        "run_id": "_".join(p for p in (dataset.replace("+", "plus"), method, preset, tag) if p),
        "method_config": {}, "dataset": dataset, "dataset_label": "RefCOCO", "data": data, "preset": preset,
        "recipe": {"batch_size": batch, "amp": precision != "fp32", "lr_encoder": 1e-5, "epochs": 2}, "weights": {},
        "env": {"git": {"commit": COMMIT, "dirty": dirty}, "device": device, "device_name": device_name},
        "params": {"encoder_side_trainable": enc, "trainable": trainable, "total": total,
                   "percent_encoder_side": 100 * enc / total},
        "flops": flops or {}, "memory": memory or {"device": device},
        "time": {"median_step_s": step_s, "samples_per_s": batch / step_s, "timed_steps": 20, "epoch_s": epoch_s,
                 "epoch_s_how": "extrapolated: ..." if epoch_s else None},
        "results": {} if kind == "profile" else {s: {"accuracy": acc + 0.01 * i, "miou": acc, "n": 100}
                                                 for i, s in enumerate(SPLITS[dataset])},
        "status": status, "error": None if status == "ok" else "boom", "created_at": created, "config_hash": "x",
    }
    if kind == "profile":
        record.update(device=device, device_name=device_name, precision=precision, batch_size=batch, image_size=160)
    else:
        record["train"] = {"epoch": 2, "history": [{"epoch": 1, "val_accuracy": acc / 2}, {"epoch": 2, "val_accuracy": acc}]}
    return validate_record(record)


def profile_record(method, proxy_bytes, step_s, **kw):
    memory = {"device": "cpu", "primary": "training_state_bytes", "training_state_bytes": proxy_bytes,
              "what": "CPU proxy, not an allocator peak: saved activations + params + grads + AdamW"}
    flops = {"forward": {"gmacs": 0.08, "gflops": 0.16}, "train_step": {"tflops": 0.0004}}
    return make_record(method, kind="profile", memory=memory, step_s=step_s, flops=flops, epoch_s=1000 * step_s,
                       created="2026-11-21T09:00:00+00:00", **kw)


@pytest.fixture
def folders(tmp_path):
    runs, profiles = tmp_path / "runs", tmp_path / "profile"
    for method, acc in (("full", 0.80), ("frozen", 0.60), ("m2ist", 0.78), ("zeta", 0.70)):
        for dataset in ("unc", "unc+", "gref_umd", "referit"):
            if (method, dataset) == ("m2ist", "unc+"):
                continue  # the missing record: empty cells, never a guess
            write_json_atomic(runs / f"{dataset}_{method}.json", make_record(method, dataset, acc=acc, dirty=True))
    # adapter: only a failed run on unc -> a row of empty cells, and a note
    write_json_atomic(runs / "unc_adapter.json", make_record("adapter", status="failed"))
    # a tagged variant (harness run --tag) is a row of its own, after its method
    write_json_atomic(runs / "unc_m2ist_par.json", make_record("m2ist", acc=0.75, tag="parallel"))
    # an older duplicate of full on unc must lose to the newer record
    write_json_atomic(runs / "unc_full_old.json", make_record("full", acc=0.10, created="2026-01-01T00:00:00+00:00"))
    # a CUDA run record of m2ist: its figures form their own efficiency group, sourced from the run
    write_json_atomic(runs / "cuda_m2ist.json", make_record(
        "m2ist", device="cuda", batch=64, memory={"device": "cuda", "peak_allocated_bytes": 15 * 2**30,
                                                  "what": "torch.cuda.max_memory_allocated"}))
    for method, proxy, step in (("full", 400 * 2**20, 0.2), ("frozen", 100 * 2**20, 0.1), ("m2ist", 120 * 2**20, 0.12)):
        write_json_atomic(profiles / f"{method}.json", profile_record(method, proxy, step))
    return runs, profiles, tmp_path / "out"


def test_main_table(folders):
    runs, profiles, out = folders
    ((heading, table, _),) = main_tables(read_folder(runs))
    assert heading == "Synthetic data, preset tiny"
    # full, frozen, the others a-z, m2ist last, each variant after its method
    assert list(table["method"]) == ["full", "frozen", "adapter", "zeta", "m2ist", "m2ist [parallel]"]
    rows = table.set_index("method")
    assert rows.loc["full", "synthetic (RefCOCO-style) val"] == "80.00"  # the newer duplicate wins
    assert rows.loc["full", "synthetic (RefCOCO-style) testB"] == "82.00"
    assert rows.loc["full", "synthetic (RefCOCOg (umd)-style) test-u"] == "81.00"
    assert rows.loc["m2ist", "synthetic (RefCOCO+-style) val"] == ""  # missing record
    assert rows.loc["m2ist", "synthetic (ReferItGame-style) test"] == "79.00"
    assert rows.loc["m2ist [parallel]", "synthetic (RefCOCO-style) val"] == "75.00"
    assert rows.loc["m2ist [parallel]", "synthetic (ReferItGame-style) test"] == ""
    assert (rows.loc["adapter"].drop(["tunable (M)", "tunable %"]) == "").all()  # failed run: empty
    assert rows.loc["m2ist", "tunable (M)"] == "0.06" and rows.loc["frozen", "tunable %"] == "0.00"
    assert rows.loc["m2ist", "encoder-side lr"] == "1e-05" and rows.loc["m2ist", "epochs trained"] == "2/2"
    assert not any("val-g" in c for c in table.columns)  # RefCOCOg google only when a record has it
    assert not any(c.startswith("RefCOCO") for c in table.columns)  # never plain RefCOCO for synthetic data

    build_tables(runs, profiles, out)
    text = (out / "main.md").read_text()
    assert "**SYNTHETIC DATA.**" in text and "not RefCOCO" in text
    assert f"{COMMIT[:12]} (dirty)" in text and "newest record: 2026-11-20T10:00:00+00:00" in text
    assert "preset(s): tiny" in text and "precision: fp32" in text and "CPU (x86_64" in text
    assert "tunable = encoder-side" in text
    assert f"harness table --runs {runs} --profiles {profiles} --out {out}" in text
    assert "unc_adapter_tiny (failed)" in text
    assert "| synthetic (RefCOCO-style) val |" in text.replace("   ", " ").replace("  ", " ")


def test_provenance_names_the_records_copied_by_reuse():
    own = make_record("full")
    copy = {**make_record("frozen"), "reused_from": "results/runs/unc_frozen_tiny.json"}
    text = provenance("t", [own, copy], [], "harness table", "toy")
    assert "- reused: 1 of these records are copies" in text and "results/runs/unc_frozen_tiny.json" in text
    assert "reused" not in provenance("t", [own], [], "harness table", "toy")


def test_real_data_keeps_plain_labels(tmp_path):
    runs = tmp_path / "runs"
    write_json_atomic(runs / "a.json", make_record("full", data="real"))
    write_json_atomic(runs / "b.json", make_record("full", "gref", data="real"))
    ((_, table, _),) = main_tables(read_folder(runs))
    assert {"RefCOCO val", "RefCOCOg (google) val-g"} <= set(table.columns)
    build_tables(runs, tmp_path / "none", tmp_path / "out")
    assert "SYNTHETIC" not in (tmp_path / "out" / "main.md").read_text()


def test_efficiency_table(folders):
    runs, profiles, out = folders
    groups = efficiency_tables(read_folder(profiles), read_folder(runs))
    by_heading = {h: (t.set_index("method"), notes) for h, t, _, notes in groups}
    cpu, notes = by_heading["preset tiny, CPU (x86_64, 2 cores, 2 threads), fp32, batch 2, optimized runtime"]
    # profile records are preferred over the run records of the same group
    assert list(cpu.index) == ["full", "frozen", "zeta", "m2ist", "m2ist [parallel]"]
    assert cpu.loc["full", "source"] == "profile" and cpu.loc["zeta", "source"] == "run unc_zeta_tiny"
    assert cpu.loc["m2ist [parallel]", "source"] == "run unc_m2ist_tiny_parallel"
    assert cpu.loc["frozen", "memory % of full"] == "25.0" and cpu.loc["full", "memory % of full"] == "100.0"
    assert cpu.loc["frozen", "step % of full"] == "50.0" and cpu.loc["m2ist", "step (ms)"] == "120.0"
    assert cpu.loc["m2ist", "epoch (min)"] == "2.0 (extrap.)" and cpu.loc["frozen", "epoch % of full"] == "50.0"
    assert cpu.loc["full", "fwd GFLOPs (b=1)"] == "0.16" and cpu.loc["full", "fwd GMACs (b=1)"] == "0.08"
    assert cpu.loc["zeta", "peak memory (GiB)"] == ""  # a CPU run record has no training-memory figure
    assert any("CPU proxy" in n for n in notes)
    gpu, _ = by_heading["preset tiny, NVIDIA H100 80GB HBM3, fp32, batch 64, optimized runtime"]
    assert gpu.loc["m2ist", "peak memory (GiB)"] == "15.000" and gpu.loc["m2ist", "memory % of full"] == ""

    build_tables(runs, profiles, out)
    text = (out / "efficiency.md").read_text()
    assert "**SYNTHETIC DATA.**" in text and "GMACs" in text and "GFLOPs = 2 x GMACs" in text
    assert "newest record: 2026-11-21T09:00:00+00:00" in text and COMMIT[:12] in text
    assert text.count("\n## ") == 2


def test_tradeoff_png(folders):
    runs, profiles, out = folders
    paths = build_tables(runs, profiles, out)
    png = out / "tradeoff.png"
    assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_empty_folders_give_empty_tables_a_missing_runs_folder_is_refused(tmp_path, capsys):
    from harness.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "main.md").write_text("committed table")
    assert main(["table", "--runs", str(tmp_path / "no_runs"), "--out", str(tmp_path / "out")]) == 2
    assert "run record folder" in capsys.readouterr().err
    assert (tmp_path / "out" / "main.md").read_text() == "committed table"  # nothing replaced
    (tmp_path / "runs").mkdir()
    build_tables(tmp_path / "runs", tmp_path / "no_profiles", tmp_path / "out")
    assert "no run records" in (tmp_path / "out" / "main.md").read_text()
    assert (tmp_path / "out" / "tradeoff.png").exists()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"schema": 1, "kind": "run"})])
def test_malformed_record_names_its_file(folders, content, capsys):
    from harness.cli import main

    runs, profiles, out = folders
    bad = runs / "broken.json"
    bad.write_text(content)
    with pytest.raises(HarnessError, match="broken.json"):
        build_tables(runs, profiles, out)
    assert main(["table", "--runs", str(runs), "--profiles", str(profiles), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "broken.json" in err and "\n" not in err


def test_cli_table(folders, capsys):
    from harness.cli import main

    runs, profiles, out = folders
    assert main(["table", "--runs", str(runs), "--profiles", str(profiles), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"main.md", "efficiency.md", "tradeoff.png", "curves.png"}
    assert "wrote" in capsys.readouterr().out


def test_seeds_of_one_configuration_share_a_row_with_mean_std_and_n(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, acc in ((13, 0.50), (14, 0.60), (15, 0.70)):
        r = make_record("m2ist", acc=acc, tag=None if seed == 13 else f"seed{seed}")
        r["recipe"]["seed"] = seed
        (runs / f"{r['run_id']}.json").write_text(json.dumps(r))
    ((_, table, _),) = main_tables(read_folder(runs))
    assert list(table["method"]) == ["m2ist"]
    assert table.set_index("method").loc["m2ist", "synthetic (RefCOCO-style) val"] == "60.00 ± 10.00 (n=3)"


def test_schedule_check_gives_each_seeds_plateau_exit_convergence_and_the_seed_spread():
    """Issue 28's criteria from the val curves: the first epoch at >= floor + 10 points, best val within 1 point
    of the mean over the last 20% of epochs, and the sample std of the final val over seeds."""
    floor = make_record("frozen", kind="baseline", acc=0.30)
    runs = []
    for seed, curve in ((13, [0.1, 0.2, 0.41, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]),  # leaves at 3, converged
                        (14, [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.45, 0.5])):  # leaves at 9, still rising
        r = make_record("m2ist", acc=curve[-1], tag=None if seed == 13 else f"seed{seed}")
        r["recipe"]["seed"] = seed
        r["train"] = {"epoch": 10, "history": [{"epoch": i + 1, "val_accuracy": v} for i, v in enumerate(curve)]}
        runs.append(r)
    row = schedule_table([*runs, floor]).set_index("method").loc["m2ist"]
    assert row["leaves the plateau (epoch, per seed)"] == "3/10, 9/10"
    assert row["best - last-20% mean (per seed)"] == "0.0, 2.5"
    assert row["converged"] == "1/2"
    assert row["final val std"] == "7.1"  # stdev(60, 50)
    # without a floor record the exit cannot be told; the other columns stay
    assert schedule_table(runs).set_index("method").loc["m2ist", "leaves the plateau (epoch, per seed)"] == "-/10, -/10"


def test_record_text_cannot_add_columns_rows_or_markup_to_main_md(tmp_path):
    """A method name or tag with "|", a line break or <script> (a hand-made or foreign record) stays one cell."""
    PARAMS["a|b\nc<script>x</script>"] = PARAMS["zeta"]
    try:
        runs = tmp_path / "runs"
        for method in ("full", "a|b\nc<script>x</script>"):
            record = make_record(method)
            write_json_atomic(runs / f"{len(method)}.json", record)
        build_tables(runs=runs, profiles=tmp_path / "none", out=tmp_path / "out")
    finally:
        del PARAMS["a|b\nc<script>x</script>"]
    text = (tmp_path / "out" / "main.md").read_text()
    table = [line for line in text.split("\n## ")[1].split("\n### ")[0].splitlines() if line.startswith("|")]
    widths = {line.replace("\\|", "").count("|") for line in table}
    assert len(widths) == 1  # every row has the header's columns
    assert sum("a\\|b c&lt;script&gt;x&lt;/script&gt;" in line for line in table) == 1
    assert "<script>" not in (tmp_path / "out" / "main.md").read_text()


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(params={}), "params.encoder_side_trainable is None, not a count"),
    (lambda r: r["recipe"].update(lr_encoder="fast"), "field 'recipe.lr_encoder' is 'fast'"),
    (lambda r: r.update(train="x"), "field 'train' is 'x'"),
    (lambda r: r["recipe"].update(seed=[13]), "field 'recipe.seed' is [13]"),
    (lambda r: r["env"].update(git="abc"), "field 'env.git' is 'abc'"),
])
def test_a_record_of_the_wrong_shape_is_one_line_in_table_and_select(tmp_path, capsys, change, message):
    from harness.cli import main

    record = make_record("full")
    change(record)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.json").write_text(json.dumps(record))
    for argv in (["table", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t")],
                 ["select", "--runs", str(tmp_path / "runs"), "--dataset", "unc", "--out", str(tmp_path / "s.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "x.json" in err and message in err and err.count("\n") == 1, err


def with_outcomes(record, hits_by_split, seed):
    """The record's results rewritten from per-expression hits (what harness.evaluate stores), for one seed."""
    from harness.evaluate import pack_outcomes

    record["recipe"]["seed"] = seed
    record["run_id"] += f"_seed{seed}"
    for split, hits in hits_by_split.items():
        record["results"][split] = {"accuracy": sum(hits) / len(hits), "miou": 0.5, "n": len(hits),
                                    "outcomes": pack_outcomes(hits)}
    return validate_record(record)


def test_difference_tables_give_paired_intervals_and_mark_what_holds(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    for seed in (13, 14):
        base = rng.random(400) < 0.5  # frozen's hits on this seed
        better = base | (rng.random(400) < 0.6)  # full: every hit of frozen and many more
        noise = base.copy()
        noise[rng.choice(400, 4, replace=False)] ^= True  # zeta: frozen with 4 expressions flipped
        for method, tag, hits in (("frozen", None, base), ("full", None, better), ("zeta", None, noise),
                                  ("zeta", "form-sequential", better)):  # a variant: compared with zeta too
            record = with_outcomes(make_record(method, tag=tag), {s: hits.tolist() for s in SPLITS["unc"]}, seed)
            write_json_atomic(runs / f"{record['run_id']}.json", record)
    build_tables(runs=runs, profiles=tmp_path / "none", out=tmp_path / "out")
    text = (tmp_path / "out" / "main.md").read_text()
    section = text.split("differences to frozen and to full")[1].split("\n### ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith("| ") and "method" not in line}
    header = [c.strip() for c in next(l for l in section.splitlines() if l.startswith("| method")).split("|")[2:-1]]
    val_vs_frozen = header.index("vs frozen: synthetic (RefCOCO-style) val")
    full_cell, zeta_cell = rows["full"][val_vs_frozen], rows["zeta"][val_vs_frozen]
    diff, low, high = (float(v) for v in full_cell.replace("[", " ").replace(",", " ").replace("]", " ").split()[:3])
    assert low < diff < high and low > 0 and full_cell.endswith("* (s=2)")
    assert "*" not in zeta_cell and zeta_cell.endswith("(s=2)")
    assert rows["frozen"][val_vs_frozen] == ""  # a row is not compared with itself
    val_vs_default = header.index("vs default: synthetic (RefCOCO-style) val")
    variant = rows["zeta [form-sequential]"][val_vs_default]
    assert variant.endswith("* (s=2)") and float(variant.split()[0]) > 0  # the variant minus zeta itself
    assert rows["zeta"][val_vs_default] == rows["full"][val_vs_default] == ""  # rows without a default to compare
    # the same records give the same tables, byte for byte (the bootstrap's generator is fixed)
    build_tables(runs=runs, profiles=tmp_path / "none", out=tmp_path / "out")
    assert (tmp_path / "out" / "main.md").read_text() == text


def test_rows_selected_on_val_are_compared_with_the_references_selected_on_val():
    """A method at its selected rate meets full fine-tuning at full's selected rate, not at its published one: the
    same rule gave both their rates."""
    from harness.tables import SELECTED_SUFFIX, difference_table

    published, selected, tuned = [True] * 60 + [False] * 40, [True] * 90 + [False] * 10, [True] * 80 + [False] * 20
    group = []
    for method, row, hits in (("frozen", "frozen", published), ("full", "full", published),
                              ("full", "full" + SELECTED_SUFFIX, selected), ("zeta", "zeta", published),
                              ("zeta", "zeta" + SELECTED_SUFFIX, tuned)):
        group.append({**with_outcomes(make_record(method), {s: hits for s in SPLITS["unc"]}, 13), "row": row})
    table = difference_table(group).set_index("method")
    vs_full = "vs full: synthetic (RefCOCO-style) val"
    assert table.loc["zeta" + SELECTED_SUFFIX, vs_full].startswith("-10.0 ")  # 80 against full's selected 90
    assert table.loc["zeta", vs_full].startswith("+0.0 ")  # the published rows meet each other
    assert table.loc["full" + SELECTED_SUFFIX, vs_full] == ""  # not compared with itself
    assert table.loc["full" + SELECTED_SUFFIX, "vs default: synthetic (RefCOCO-style) val"].startswith("+30.0 ")


def test_outcomes_that_contradict_the_accuracy_are_refused():
    record = with_outcomes(make_record("full"), {"val": [True, False, True]}, 13)
    record["results"]["val"]["accuracy"] = 1.0
    with pytest.raises(HarnessError, match="outcomes is not the hex of 3 packed bits"):
        validate_record(record)


def _text_boxes(fig):
    """Window boxes of the figure's words: title, axis labels, legend entries and any note on the axes."""
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts,
             *(ax.get_legend().get_texts() if ax.get_legend() else [])]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("figure", ["tradeoff", "curves"])
def test_figures_fit_their_canvas_label_without_overlaps_and_share_the_colours(folders, figure):
    import matplotlib.pyplot as plt

    from harness.palette import method_colour
    from harness.tables import curves_figure, tradeoff_figure

    runs, profiles, _ = folders
    mains = main_tables(read_folder(runs))
    fig = (tradeoff_figure(mains, efficiency_tables(read_folder(profiles), read_folder(runs)))
           if figure == "tradeoff" else curves_figure(mains))
    fig.canvas.draw()
    canvas = fig.bbox
    boxes = _text_boxes(fig)
    title = fig.axes[0].title
    assert title.get_text().startswith("SYNTHETIC DATA")
    for text, box in boxes:  # nothing is cut by the canvas edge, the title included
        assert canvas.x0 - 1 <= box.x0 and box.x1 <= canvas.x1 + 1, text
        assert canvas.y0 - 1 <= box.y0 and box.y1 <= canvas.y1 + 1, text
    legend = fig.axes[0].get_legend()
    entries = [(t.get_text(), t.get_window_extent(fig.canvas.get_renderer())) for t in legend.get_texts()]
    assert len(entries) >= 3
    for i, (a, box_a) in enumerate(entries):
        for b, box_b in entries[i + 1:]:
            assert not box_a.overlaps(box_b), (a, b)
    # each method's colour is the palette's, whatever the figure
    handles = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles))
    for label, handle in handles.items():
        method = label.split(" ")[0]
        if method in ("full", "frozen", "m2ist"):
            colour = handle.get_facecolor()[0] if hasattr(handle, "get_facecolor") and figure == "tradeoff" \
                else handle.get_color()
            assert matplotlib_hex(colour) == method_colour(method), label
    plt.close(fig)


def matplotlib_hex(colour) -> str:
    import matplotlib

    return matplotlib.colors.to_hex(colour, keep_alpha=False)


def test_efficiency_rows_whose_counts_differ_from_today_are_marked_stale(tmp_path):
    import torch

    from harness.model import PRESETS, TransVG, count_parameters
    from methods import apply_method, build_method

    config = PRESETS["tiny"]
    with torch.device("meta"):
        model = TransVG(config)
        apply_method(build_method("bitfit"), model)
    today = count_parameters(model)["encoder_side_trainable"]
    PARAMS["bitfit"] = (today, today + 1, 2_000_000)
    PARAMS["adapter"] = (today + 5, today + 6, 2_000_000)  # adapter counted today is not this
    try:
        profiles = tmp_path / "profile"
        for method in ("bitfit", "adapter"):
            record = profile_record(method, 100 * 2**20, 0.1)
            record.update(model_config=config.to_dict(), method_config={})
            write_json_atomic(profiles / f"{method}.json", record)
        ((_, table, _, notes),) = efficiency_tables(read_folder(profiles), [])
    finally:
        del PARAMS["bitfit"]
        PARAMS["adapter"] = (50_000, 150_000, 2_250_000)
    rows = table.set_index("method")
    assert rows.loc["bitfit", "counts as today"] == "same"
    assert rows.loc["adapter", "counts as today"].startswith("stale: today ")
    assert any("stale rows" in n and "adapter" in n for n in notes)
