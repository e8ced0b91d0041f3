"""A static-shape training step for CUDA: bf16 autocast, channels_last, torch.compile, CUDA graphs.

`FastStep` runs the same maths as `train.loop.train_step` (encode targets, forward, loss,
backward, SGD, scheduler) but is built for speed on one GPU:

- forward under bf16 autocast (the loss, `model.loss.ssd_loss` unless ``loss_fn`` is given, in
  float32), channels_last inputs;
- optional ``torch.compile`` of encode + forward + loss;
- optional CUDA-graph capture of encode + forward + loss + backward + optimiser step: warm-up on a
  side stream, ``torch.cuda.graph``, static input buffers each batch is copied into;
- SGD from `make_sgd`: fused (foreach as fallback) with the learning rate as a 1-element device
  tensor, so the scheduler updates it in place (``fill_``) and the captured graph reads the new
  value without recapture;
- no host sync inside the step: the loss comes back as a device tensor (read it every K steps,
  as `train.loop.train_one_epoch` does per log window). `no_host_sync()` proves it in tests.

Hard-negative mining is `model.loss.hard_negative_mask`, which selects with a single sort plus a
scatter (the references sort, then argsort the order: two full sorts); tests/test_fast_step.py
checks it against the two-sort definition on random inputs.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssdbench.precision import autocast

SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive",
            "unique_dim", "repeat_interleave", "equal", "is_nonzero")
MASK_OPS = ("index", "_index_put_impl_", "index_put", "index_put_")


def make_sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
             device: torch.device | str = "cpu") -> torch.optim.SGD:
    """SGD (benchmark.md §6 defaults) with ``lr`` as a 1-element tensor on ``device``; fused kernel.

    A tensor lr is what lets a captured CUDA graph see scheduler updates (LambdaLR writes
    tensor learning rates in place with ``fill_``). Fused SGD exists for CUDA and CPU tensors;
    where it does not (old builds), foreach is used.
    """
    lr_t = torch.tensor(float(lr), dtype=torch.float32, device=device)
    try:
        return torch.optim.SGD(params, lr=lr_t, momentum=momentum, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.SGD(params, lr=lr_t, momentum=momentum, weight_decay=weight_decay, foreach=True)


class _SyncGuard(TorchDispatchMode):
    """Raises on aten ops that read device memory from the host (`SYNC_OPS`)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS or (name in MASK_OPS and _has_bool_index(args)):
            raise RuntimeError(f"host sync inside the step: aten.{name}")
        return func(*args, **(kwargs or {}))


def _has_bool_index(args) -> bool:
    """Boolean-mask indexing (``x[mask]``) needs the mask's nonzero count on the host."""
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices)


def _raise_sync(name: str):
    def method(*_args, **_kwargs):
        raise RuntimeError(f"host sync inside the step: Tensor.{name}()")
    return method


@contextlib.contextmanager
def no_host_sync():
    """Make any host sync inside the block an error (a test/benchmark guard; slows eager code).

    On every device: ``Tensor.item``, ``__bool__``, ``__int__``, ``__float__``, ``tolist``,
    ``cpu``, ``numpy`` raise, and a dispatch mode rejects the aten ops that read values back to
    the host (``_local_scalar_dense``, behind every ``item``/``bool``; ``nonzero``; boolean
    masking; ``unique``; ...), also when C++ code calls them. On CUDA additionally
    ``torch.cuda.set_sync_debug_mode("error")``.
    """
    names = ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    cuda = torch.cuda.is_available()
    old_mode = torch.cuda.get_sync_debug_mode() if cuda else None
    try:
        for n in names:
            setattr(torch.Tensor, n, _raise_sync(n))
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        with _SyncGuard():
            yield
    finally:
        for n, m in saved.items():
            setattr(torch.Tensor, n, m)
        if cuda:
            torch.cuda.set_sync_debug_mode(old_mode)


class FastStep:
    """One training step, ``fast(batch) -> loss`` (detached float32 device scalar).

    ``batch``: ``images`` (N, 3, S, S) float normalised and either ``boxes`` (N, M, 4) ltrb
    normalised + ``labels`` (N, M) (encoded inside the step) or ``loc_targets`` (N, B, 4) +
    ``box_labels`` (N, B) (already encoded, e.g. by `data.gpu_pipeline.DevicePipeline`).
    ``model`` and ``optimizer`` as in `train.loop.StepParts` (use `make_sgd` for graphs);
    ``encoder``: `model.encoder.Encoder`. ``loss_fn``: ``(locs, scores, loc_targets, box_labels)
    -> scalar``, as ``StepParts.loss_fn`` (`train.loop.step_function` refuses a fast step whose
    loss differs from the parts'). ``amp_dtype``: None (fp32) or torch.bfloat16 (fp16
    would need a grad scaler, which this step does not do). ``cuda_graph`` needs CUDA; the graph
    is captured on the first call for that batch's shapes, and a batch of another shape (e.g.
    the last, partial batch of an epoch, which the reference keeps) runs eagerly on the same
    parameters, gradients and optimiser state (with a warning the first time).
    """

    def __init__(self, parts, compile: bool = False, cuda_graph: bool = False, warmup_steps: int = 3):
        """``parts``: the `train.loop.StepParts` this step runs (model, optimizer, scheduler or None,
        encoder, device, amp_dtype, channels_last, loss_fn; its scaler is not used)."""
        model, optimizer, encoder, amp_dtype = parts.model, parts.optimizer, parts.encoder, parts.amp_dtype
        scheduler, channels_last, loss_fn = parts.scheduler, parts.channels_last, parts.loss_fn
        self.device = torch.device(parts.device)
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph needs a CUDA device, got {self.device}")
        if amp_dtype not in (None, torch.bfloat16):
            raise ValueError(f"amp_dtype must be None or torch.bfloat16, got {amp_dtype}")
        self.model, self.optimizer, self.encoder = model, optimizer, encoder
        self.scheduler, self.amp_dtype, self.channels_last = scheduler, amp_dtype, channels_last
        self.cuda_graph, self.warmup_steps = cuda_graph, int(warmup_steps)
        self.loss_fn = loss_fn
        self._forward = torch.compile(self._forward_loss) if compile else self._forward_loss
        self._graph = self._static = self._static_loss = None
        self._graph_key = None
        self._warned_shapes: set = set()

    # ------------------------------------------------------------------ the maths
    def _forward_loss(self, images, a, b, encoded: bool):
        """(images, boxes, labels) or (images, loc_targets, box_labels) -> float32 loss."""
        loc_targets, box_labels = (a, b) if encoded else self.encoder(a, b)
        with autocast(self.device, self.amp_dtype):
            locs, scores = self.model(images)
        return self.loss_fn(locs, scores, loc_targets, box_labels)

    def _inputs(self, batch: dict):
        encoded = "loc_targets" in batch and "box_labels" in batch
        keys = ("loc_targets", "box_labels") if encoded else ("boxes", "labels")
        images = batch["images"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        tensors = (images, *(batch[k].to(self.device, non_blocking=True) for k in keys))
        return tensors, encoded

    def _eager(self, tensors, encoded: bool, set_to_none: bool = True) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        loss = self._forward(*tensors, encoded)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self, batch: dict) -> torch.Tensor:
        tensors, encoded = self._inputs(batch)
        if not self.cuda_graph:
            loss = self._eager(tensors, encoded)
        else:
            key = (encoded, *(tuple(t.shape) for t in tensors))
            if self._graph is None:
                self._capture(tensors, encoded, key)
            if key == self._graph_key:
                for static, t in zip(self._static, tensors):
                    static.copy_(t, non_blocking=True)
                self._graph.replay()
                loss = self._static_loss.clone()  # the next replay overwrites the static loss
            else:
                if key not in self._warned_shapes:
                    self._warned_shapes.add(key)
                    warnings.warn(f"batch shapes {key[1:]} differ from the captured {self._graph_key[1:]}; "
                                  "running such steps eagerly", RuntimeWarning, stacklevel=2)
                loss = self._eager(tensors, encoded, set_to_none=False)  # grads stay the graph's
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    # ------------------------------------------------------------------ CUDA graph
    def _capture(self, tensors, encoded: bool, key) -> None:
        """Warm up on a side stream, capture one whole step, then restore the pre-warm-up state.

        The warm-up steps (needed for cuDNN autotuning, compile, lazily created optimiser state)
        really update the weights; parameters, buffers and momentum are copied back in place
        afterwards, so the first replay is the run's first step (momentum buffers start at zero,
        which with dampening 0 equals SGD's first-step ``buf = grad``).
        """
        saved = copy.deepcopy(self.model.state_dict())
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        momentum = [_momentum(self.optimizer, p) for p in params]
        momentum = [None if m is None else m.clone() for m in momentum]
        self._static = tuple(t.clone() for t in tensors)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self._eager(self._static, encoded)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates grads in the graph's pool
        with torch.cuda.graph(graph):
            loss = self._forward(*self._static, encoded)
            loss.backward()
            self.optimizer.step()
        self._static_loss = loss.detach()
        self._restore(saved, params, momentum)
        self._graph, self._graph_key = graph, key

    def _restore(self, saved: dict, params: list, momentum: list) -> None:
        """Copy the pre-warm-up weights, buffers and momentum back into the same tensors."""
        with torch.no_grad():
            for name, t in self.model.state_dict().items():
                t.copy_(saved[name])
            for p, before in zip(params, momentum):
                buf = _momentum(self.optimizer, p)
                if buf is not None:
                    buf.copy_(before) if before is not None else buf.zero_()


def _momentum(optimizer, param) -> torch.Tensor | None:
    """The SGD momentum buffer of ``param`` (None before the first step)."""
    return optimizer.state[param].get("momentum_buffer") if param in optimizer.state else None
