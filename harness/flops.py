"""FLOP counting as DESIGN.md defines it ("Counting and measuring"), on synthetic tensors at a model's real
input shapes (image size, query length, vocabulary); no dataset is read.

- `forward_flops(model)`: fvcore's FlopCountAnalysis on one forward pass at batch 1 with eager attention in
  force, so attention matmuls are counted. fvcore counts one multiply-add as one flop, i.e. its totals are
  MACs; `gflops` = 2 x GMACs is stored beside them. A handle for `aten::baddbmm` (nn.MultiheadAttention's
  explicit path computes q.k^T with it when a padding mask is given) is added, since fvcore has none.
- `train_step_flops(model, batch_size)`: torch.utils.flop_counter.FlopCounterMode over forward + loss +
  backward of one training step (optimizer excluded); its unit is FLOPs = 2 x MACs. It also runs with eager
  attention: on CPU, PyTorch 2.14 sends SDPA to `_scaled_dot_product_flash_attention_for_cpu`, which has no
  FlopCounterMode formula, so fused attention would count as zero. Autograd skips the weight gradients of
  frozen weights and everything under no_grad, so PETL savings in backward show up here.

Counts depend only on shapes, not on the device; they run wherever the model lives.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn

from harness.model import COMPONENTS

MACS_UNIT = "GMACs (fvcore: 1 multiply-add = 1 flop)"
FLOPS_UNIT = "FLOPs (torch.utils.flop_counter: 1 multiply-add = 2 FLOPs)"
# Ops whose absence from a count would drop attention; reported loudly if they ever show up unsupported.
FUSED_ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::_native_multi_head_attention",
                       "aten::_transformer_encoder_layer_fwd")


def synthetic_batch(config, batch_size: int = 1, device="cpu", seed: int = 0) -> tuple:
    """(image, image_mask, word_ids, word_mask, box) at the config's shapes: a full image, a full-length query
    (TransVG pads every query to max_query_len, so the compute is the same for any text)."""
    g = torch.Generator().manual_seed(seed)
    s, length = config.image_size, config.max_query_len
    image = torch.randn(batch_size, 3, s, s, generator=g)
    image_mask = torch.zeros(batch_size, s, s, dtype=torch.bool)
    word_ids = torch.randint(1, config.language.vocab_size, (batch_size, length), generator=g)
    word_mask = torch.ones(batch_size, length, dtype=torch.long)
    box = torch.rand(batch_size, 4, generator=g) * 0.5 + 0.25
    return tuple(t.to(device) for t in (image, image_mask, word_ids, word_mask, box))


def _device_of(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def eager_attention(model):
    """Switch every attention layer to its explicit matmul path; restore each layer's setting afterwards."""
    layers = [m for m in model.modules() if hasattr(m, "eager_attention")]
    saved = [m.eager_attention for m in layers]
    bert = getattr(getattr(model, "textmodel", None), "bert", None)
    saved_bert = bert.config._attn_implementation if bert is not None else None
    model.set_eager_attention(True)
    try:
        yield
    finally:
        for m, value in zip(layers, saved):
            m.eager_attention = value
        if bert is not None and saved_bert is not None:
            bert.set_attn_implementation(saved_bert)


@contextmanager
def _mode(model, train: bool):
    was = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was)


class _Positional(nn.Module):
    """fvcore traces a module called with a tuple of tensors and returning a tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *tensors):
        return self.model(*tensors)


def _baddbmm_flop_jit(inputs, outputs):
    """aten::baddbmm(input, batch1, batch2, beta, alpha): the batch1 @ batch2 MACs (the add is ignored, as
    fvcore ignores the bias add of addmm)."""
    from fvcore.nn.jit_handles import get_shape

    (n, c, t), d = get_shape(inputs[1]), get_shape(inputs[2])[-1]
    return n * c * t * d


def fvcore_analysis(module, inputs: tuple):
    """A FlopCountAnalysis with this project's extra handles and quiet warnings (the caller reads
    `unsupported_ops()` instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore.nn import calls torch.jit.script (FutureWarning in torch 2.14)
        from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs).set_op_handle("aten::baddbmm", _baddbmm_flop_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def _total(analysis) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit tracing is deprecated in torch 2.14 (FutureWarning)
        return int(analysis.total())


def _component(scope: str) -> str:
    name = scope + "."
    for component, prefixes in COMPONENTS.items():
        if name.startswith(prefixes):
            return component
    return "other"


def forward_flops(model, batch: int = 1) -> dict:
    """fvcore count of one forward pass at `batch` (default 1) with eager attention, on synthetic inputs at the
    model's shapes. The model's train/eval mode and attention setting are restored afterwards."""
    inputs = synthetic_batch(model.config, batch, _device_of(model))[:4]
    with eager_attention(model), _mode(model, False), torch.no_grad():
        analysis = fvcore_analysis(_Positional(model), inputs)
        macs = _total(analysis)
        by_module = analysis.by_module()
        unsupported = dict(sorted(analysis.unsupported_ops().items()))
        by_operator = dict(sorted(analysis.by_operator().items()))
    components = {c: 0 for c in (*COMPONENTS, "other")}
    for scope, count in by_module.items():  # direct children of the model: "model.<child>"
        parts = scope.split(".")
        if len(parts) == 2 and parts[0] == "model":
            components[_component(parts[1])] += count
    components["other"] += macs - sum(components.values())  # ops at the model's own level
    fused = {op: n for op, n in unsupported.items() if op in FUSED_ATTENTION_OPS}
    return {
        "macs": macs, "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9, "unit": MACS_UNIT,
        "gflops_unit": "GFLOPs = 2 x GMACs", "batch": batch,
        "by_component_gmacs": {c: v / 1e9 for c, v in components.items() if v or c != "other"},
        "by_operator_gmacs": {k: v / 1e9 for k, v in by_operator.items()},
        "unsupported_ops": unsupported, "uncounted_attention_ops": fused,
        "how": "fvcore FlopCountAnalysis, forward at batch %d, eager attention (explicit q.k^T and attn.v "
               "matmuls; aten::baddbmm handle added), synthetic inputs at %d px and %d tokens; unsupported ops "
               "(elementwise, softmax, ...) count as zero" % (batch, model.config.image_size,
                                                              model.config.max_query_len),
    }


def train_step_flops(model, batch_size: int, amp: bool = False) -> dict:
    """FlopCounterMode over forward + L1/GIoU loss + backward of one training step at `batch_size` (optimizer
    excluded), eager attention, synthetic inputs. Gradients already on the model are put back afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.losses import rec_loss

    device = _device_of(model)
    *inputs, box = synthetic_batch(model.config, batch_size, device)
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with eager_attention(model), _mode(model, True), FlopCounterMode(display=False) as counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(*inputs)
            loss = rec_loss(pred.float(), box)["loss"]
            if loss.requires_grad:
                loss.backward()
        total = int(counter.get_total_flops())
        by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
    return {
        "flops": total, "tflops": total / 1e12, "unit": FLOPS_UNIT, "batch": batch_size,
        "per_sample_gflops": total / batch_size / 1e9,
        "by_operator_flops": dict(sorted(by_op.items())),
        "how": "torch.utils.flop_counter.FlopCounterMode over forward + loss + backward at batch %d (optimizer "
               "excluded), eager attention (PyTorch 2.14 has no formula for CPU fused SDPA); matmul and "
               "convolution formulas only" % batch_size,
    }
