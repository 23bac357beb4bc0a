"""FLOP counting (fvcore forward with eager attention, FlopCounterMode training step) and `harness profile`."""
import json

import pytest
import torch
from torch import nn

from harness.errors import HarnessError
from harness.flops import _Positional, fvcore_analysis, forward_flops, synthetic_batch, train_step_flops
from harness.model.transformer import EncoderLayer
from harness.profile import profile
from harness.records import read_record, validate_record
from methods import apply_method, build_method
from helpers import tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops on a shared 2-core machine run far faster without OpenMP's thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_with(method: str):
    model = tiny_model()
    apply_method(build_method(method), model)
    return model


def attention_macs(cfg) -> int:
    """q.k^T and attn.v of every attention layer, one sample: 2 x tokens^2 x width per layer."""
    n_vis = cfg.visual_tokens
    n_vl = 1 + cfg.max_query_len + n_vis
    return (cfg.vision.layers * 2 * n_vis**2 * cfg.vision.d_model
            + cfg.language.layers * 2 * cfg.max_query_len**2 * cfg.language.hidden
            + cfg.fusion.layers * 2 * n_vl**2 * cfg.fusion.d_model)


def test_linear_units():
    """fvcore: one multiply-add = one flop (MACs); FlopCounterMode: 2 FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    layer, x = nn.Linear(12, 7, bias=False), torch.randn(5, 12)
    assert fvcore_analysis(layer, (x,)).total() == 5 * 7 * 12
    with FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == 2 * 5 * 7 * 12


def test_fvcore_encoder_layer_matches_hand_count():
    d, heads, ffn, n = 16, 4, 40, 9
    layer = EncoderLayer(d, heads, ffn, dropout=0.0).eval()
    inputs = (torch.randn(1, n, d), torch.randn(1, n, d), torch.zeros(1, n, dtype=torch.bool))
    linear = n * d * 3 * d + n * d * d + n * d * ffn + n * ffn * d  # in-proj q,k,v + out-proj + FFN
    attention = n * n * d + n * n * d  # q.k^T (aten::baddbmm with the padding mask) + attn.v (aten::bmm)
    norms = 2 * 5 * n * d  # fvcore's LayerNorm estimate: 5 per element with affine
    layer.eager_attention = True
    with torch.no_grad():
        eager = fvcore_analysis(layer, inputs)
        assert eager.total() == linear + attention + norms
        assert not eager.unsupported_ops().get("aten::baddbmm")
        layer.eager_attention = False  # fused SDPA: fvcore has no handle, the attention matmuls vanish
        fused = fvcore_analysis(layer, inputs)
        assert fused.total() == linear + norms
        assert fused.unsupported_ops()["aten::scaled_dot_product_attention"] == 1


def test_forward_flops_counts_every_attention_matmul():
    model = tiny_with("full")
    flops = forward_flops(model)
    # the same model counted by plain fvcore without eager attention misses exactly the attention matmuls
    with torch.no_grad():
        fused = fvcore_analysis(_Positional(model.eval()), synthetic_batch(model.config, 1)[:4]).total()
    assert flops["macs"] - fused == attention_macs(model.config)
    assert flops["uncounted_attention_ops"] == {}
    assert flops["gflops"] == pytest.approx(2 * flops["gmacs"])
    assert "1 multiply-add = 1 flop" in flops["unit"]
    assert sum(flops["by_component_gmacs"].values()) == pytest.approx(flops["gmacs"])
    assert flops["by_component_gmacs"]["vision"] > flops["by_component_gmacs"]["fusion"] > 0
    # the switch is undone: layers back on fused attention, BERT back on SDPA
    assert not any(layer.eager_attention for layer in model.visumodel.encoder.layers)
    assert model.textmodel.bert.config._attn_implementation == "sdpa"


def test_forward_flops_grow_quadratically_in_attention():
    """A longer query adds (L2^2 - L1^2)-proportional attention MACs on top of the linear terms."""
    short, long_ = tiny_model(max_query_len=10), tiny_model(max_query_len=20)
    for m in (short, long_):
        apply_method(build_method("frozen"), m)
    grown = forward_flops(long_)["macs"] - forward_flops(short)["macs"]
    attention_growth = attention_macs(long_.config) - attention_macs(short.config)
    linear_growth = grown - attention_growth
    # what is left grows linearly in L: per token BERT layers + projection + fusion layers, all MAC-exact
    cfg = long_.config
    per_token = (cfg.language.layers * (4 * cfg.language.hidden**2 + 2 * cfg.language.hidden * cfg.language.intermediate
                                        + 2 * 5 * cfg.language.hidden)
                 + cfg.language.hidden * cfg.fusion.d_model
                 + cfg.fusion.layers * (4 * cfg.fusion.d_model**2 + 2 * cfg.fusion.d_model * cfg.fusion.ffn
                                        + 2 * 5 * cfg.fusion.d_model))
    assert linear_growth == 10 * per_token + 10 * 5 * cfg.language.hidden  # + the embedding LayerNorm


def test_train_step_flops_backward_and_frozen_saving():
    from torch.utils.flop_counter import FlopCounterMode

    full, frozen = tiny_with("full"), tiny_with("frozen")
    inputs = synthetic_batch(full.config, 2)[:4]
    with FlopCounterMode(display=False) as counter:
        full.set_eager_attention(True)
        full(*inputs)
        full.set_eager_attention(False)
    forward_only = counter.get_total_flops()  # the same forward, FlopCounterMode units
    assert forward_only == pytest.approx(2 * 2 * forward_flops(full)["macs"], rel=0.01)  # fvcore x 2 x batch
    step_full, step_frozen = train_step_flops(full, 2), train_step_flops(frozen, 2)
    assert "2 FLOPs" in step_full["unit"]
    assert step_full["flops"] > 1.2 * forward_only  # + backward through encoders, fusion and head
    assert forward_only < step_frozen["flops"] < step_full["flops"]  # no backward through frozen encoders
    assert "aten.convolution_backward" in step_full["by_operator_flops"]
    assert "aten.convolution_backward" not in step_frozen["by_operator_flops"]
    assert all(p.grad is None for p in full.parameters())  # gradients put back as they were


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    return {m: profile(m, preset="tiny", batch_size=2, device="cpu", steps=2, warmup=1, output=out)
            for m in ("full", "frozen")}


def test_cpu_memory_proxy_shows_the_frozen_saving(profiles):
    full, frozen = profiles["full"]["memory"], profiles["frozen"]["memory"]
    for mem in (full, frozen):
        assert mem["device"] == "cpu" and mem["primary"] == "training_state_bytes"
        assert "proxy" in mem["what"] and "saved_tensors_hooks" in mem["what"]
        assert mem["training_state_bytes"] == (mem["saved_activations_bytes"] + mem["model_bytes"]
                                               + mem["grad_bytes"] + mem["optimizer_state_bytes"])
    assert frozen["saved_activations_bytes"] < full["saved_activations_bytes"] / 2
    assert frozen["training_state_bytes"] < full["training_state_bytes"]
    assert frozen["model_bytes"] == full["model_bytes"]  # same model, only what trains differs
    # AdamW keeps two fp32 moments per trainable parameter (plus a step counter per tensor)
    n_train = profiles["full"]["params"]["trainable"]
    assert 8 * n_train <= full["optimizer_state_bytes"] < 8 * n_train + 4096
    assert full["grad_bytes"] == 4 * n_train


def test_profile_record(profiles, tmp_path):
    rec = profiles["frozen"]
    validate_record(rec)
    assert read_record(rec["path"])["config_hash"] == rec["config_hash"]
    assert rec["path"].endswith("frozen_tiny_cpu_fp32_b2.json")
    assert rec["kind"] == "profile" and rec["results"] == {} and rec["data"] == "synthetic"
    assert (rec["batch_size"], rec["image_size"], rec["precision"]) == (2, 160, "fp32")
    assert rec["params"]["encoder_side_trainable"] == 0
    t = rec["time"]
    assert t["timed_steps"] == 2 and t["median_step_s"] > 0
    assert t["samples_per_s"] == pytest.approx(2 / t["median_step_s"])
    # unc's train size is the verified 120,624; the epoch is extrapolated and says so
    assert t["train_size"] == 120_624 and t["epoch_s"] == pytest.approx(60_312 * t["median_step_s"])
    assert t["epoch_s_how"].startswith("extrapolated")
    assert rec["flops"]["train_step"]["flops"] > 2 * rec["flops"]["forward"]["macs"]


def test_profile_without_train_size_leaves_epoch_empty(tmp_path):
    rec = profile("frozen", preset="tiny", batch_size=1, device="cpu", dataset="referit", steps=1, warmup=0,
                  output=tmp_path, write=False)
    assert rec["time"]["epoch_s"] is None and "unknown" in rec["time"]["train_size_source"]
    rec = profile("frozen", preset="tiny", batch_size=1, device="cpu", dataset="gref_umd", train_size=10,
                  steps=1, warmup=0, output=tmp_path, write=False)
    assert rec["time"]["epoch_s"] == pytest.approx(10 * rec["time"]["median_step_s"])
    assert rec["model_config"]["max_query_len"] == 40  # RefCOCOg's query length sets the shapes


def test_out_of_memory_is_one_clear_line(monkeypatch):
    import harness.flops

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(harness.flops, "train_step_flops", oom)
    with pytest.raises(HarnessError, match="out of GPU memory.*batch size 2.*smaller --batch-size"):
        profile("frozen", preset="tiny", batch_size=2, device="cpu", steps=1, warmup=0, write=False)


def test_cli_profile_json(tmp_path, capsys):
    from harness.cli import main

    code = main(["profile", "--method", "frozen", "--preset", "tiny", "--batch-size", "2", "--steps", "3",
                 "--warmup", "1", "--json", "--output", str(tmp_path)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "frozen" and printed["time"]["timed_steps"] == 3
    device = printed["device"]  # auto: cuda where there is one
    on_disk = read_record(tmp_path / f"frozen_tiny_{device}_{printed['precision']}_b2.json")
    assert on_disk["run_id"] == printed["run_id"] and printed["path"] == str(tmp_path / f"{on_disk['run_id']}.json")
    assert main(["profile", "--method", "nope", "--output", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


# ---- runtimes: released (the paper's measurement conditions) vs optimized ------------------------------------
def test_released_runtime_is_the_same_function():
    from harness.recipe import Recipe
    from harness.engine import prepare_runtime
    from helpers import random_batch

    batch = random_batch(tiny_with("m2ist"))[:4]
    outs = {}
    for runtime in ("released", "optimized"):
        model = tiny_with("m2ist").eval()
        prepare_runtime(model, Recipe(runtime=runtime), torch.device("cpu"))
        with torch.no_grad():
            outs[runtime] = model(*batch)
    torch.testing.assert_close(outs["released"], outs["optimized"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "m2ist"])
def test_released_runtime_saves_more_for_backward(method, tmp_path):
    """nn.MultiheadAttention(need_weights=True) and BERT's explicit attention keep the N x N maps for backward:
    the proxy sees the released code's larger activation memory. (BatchNorm folding keeps the folded copy of each
    trainable convolution weight for backward, a per-model constant that exceeds the tiny attention maps at
    batch 2 for full fine-tuning; at batch 8 the maps dominate.)"""
    recs = {rt: profile(method, preset="tiny", batch_size=8, device="cpu", steps=1, warmup=0, runtime=rt,
                        flops=False, output=tmp_path) for rt in ("released", "optimized")}
    released, optimized = (recs[rt]["memory"]["saved_activations_bytes"] for rt in ("released", "optimized"))
    assert released > optimized
    assert recs["released"]["run_id"].endswith("_released") and recs["released"]["runtime"] == "released"
    assert recs["released"]["recipe"]["runtime"] == "released"
    assert recs["released"]["config_hash"] != recs["optimized"]["config_hash"]
    # the released code's torch 1.7 allowed TF32 matmuls by default; the optimized runtime keeps today's full fp32
    assert recs["released"]["env"]["tf32"]["matmul"] is True and recs["optimized"]["env"]["tf32"]["matmul"] is False


def test_profile_skip_done_keeps_a_matching_record(tmp_path, capsys):
    kw = dict(preset="tiny", batch_size=2, device="cpu", steps=1, warmup=0, flops=False, output=tmp_path)
    first = profile("frozen", **kw)
    again = profile("frozen", skip_done=True, **kw)
    assert again["created_at"] == first["created_at"] and "up to date" in capsys.readouterr().out
    other = profile("frozen", skip_done=True, **{**kw, "steps": 2})  # another configuration: measured anew
    assert other["config_hash"] != first["config_hash"] and other["time"]["timed_steps"] == 2
    assert "up to date" not in capsys.readouterr().out
