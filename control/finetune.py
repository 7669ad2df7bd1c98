"""Fine-tuning a served model from labelled feedback: train, export, check, judge (`triton-repo finetune`).

1. Start from the champion's weights: the model's adapter (`lifecycle.finetune.adapter`, the only
   model-specific code) rebuilds its trainable network from the ONNX file the champion serves.
2. Train `steps` seeded steps; each batch mixes labelled feedback (`control.feedback`, the share not held
   back) with a replay of the original training data (`replay_share`), so the old task is not forgotten.
   BatchNorm statistics stay frozen: they are what the weights were trained with, and a few hundred
   small, skewed batches would only move them toward the feedback.
3. Export ONNX with the champion's interface and opset, and check it against PyTorch on the evaluation
   inputs (max |diff| of the outputs, top-1 agreement).
4. Judge it (`control.gate.judge_finetune`): better than the champion on the held-back feedback, no more
   than `max_holdout_drop` worse on the held-out set. Staging through the lifecycle (lint, the standard
   gate, load, served check, canary) is the caller's (control/cli.py), with this verdict recorded.

Only models with one FP32 input and a class-score output are supported: that is what the prediction log
keeps (the model-ready input as uint8 bytes) and what the gate compares.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from build_tools.errors import FinetuneError
from build_tools.onnx_io import GraphInterface, read_interface
from build_tools.spec import DeploySpec, FinetuneSpec, GateSpec
from control.feedback import Feedback
from control.gate import FinetuneGateResult, judge_finetune, load_gate_data, predict

logger = logging.getLogger(__name__)

ADAPTER_FUNCTIONS = ("load_network", "export_module", "replay_data")
PROGRESS_EVERY = 50  # steps between progress lines
LABEL_SMOOTHING = 0.05  # as the showcase's champion was trained (its training script)
WEIGHT_DECAY = 1e-4


def load_adapter(path: Path) -> ModuleType:
    """The model's adapter file, loaded by path; it must define ADAPTER_FUNCTIONS (augment is optional)."""
    if not path.is_file():
        raise FinetuneError(f"lifecycle.finetune.adapter: {path} not found")
    name = "finetune_adapter_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FinetuneError(f"lifecycle.finetune.adapter: {path} is not a loadable Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [f for f in ADAPTER_FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise FinetuneError(f"lifecycle.finetune.adapter: {path} lacks {missing}; an adapter defines "
                            f"{list(ADAPTER_FUNCTIONS)} and optionally augment")
    return module


@dataclass(frozen=True)
class EvalRow:
    """Accuracy of the champion and the candidate on one labelled set."""

    name: str
    samples: int
    champion_accuracy: float
    candidate_accuracy: float

    @property
    def change(self) -> float:
        return self.candidate_accuracy - self.champion_accuracy


@dataclass(frozen=True)
class FinetuneResult:
    candidate: Path
    gate: FinetuneGateResult
    rows: tuple[EvalRow, ...]
    training: dict[str, Any]
    export_check: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": str(self.candidate), "gate": self.gate.as_dict(),
            "rows": [{**asdict(r), "change": r.change} for r in self.rows],
            "training": self.training, "export_check": self.export_check,
        }


@contextlib.contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count while training, restored afterwards."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])


def _single_input(interface: GraphInterface) -> tuple[str, tuple[int, ...]]:
    if len(interface.inputs) != 1 or interface.inputs[0].data_type != "FP32":
        raise FinetuneError(
            f"{interface.path}: fine-tuning supports models with one FP32 input (what the prediction log keeps); "
            f"this one has {[(t.name, t.data_type) for t in interface.inputs]}"
        )
    tensor = interface.inputs[0]
    dims = tensor.dims[1:]
    if any(d < 1 for d in dims):
        raise FinetuneError(f"{interface.path}: input {tensor.name!r} has variable dims {list(tensor.dims)}; "
                            f"fine-tuning needs a fixed input shape after the batch axis")
    return tensor.name, dims


def input_dims(champion_onnx: Path) -> tuple[int, ...]:
    """The champion's input shape without the batch axis (what a feedback input must reshape to)."""
    return _single_input(read_interface(champion_onnx))[1]


class Finetuner:
    """Fine-tunes one model of the spec from its champion's ONNX file."""

    def __init__(self, spec: DeploySpec, model: str, rules: FinetuneSpec | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        if model not in spec.models:
            raise FinetuneError(f"{model!r} is not a model of the spec; models: {sorted(spec.models)}")
        lifecycle = spec.models[model].lifecycle
        if lifecycle is None or lifecycle.finetune is None or lifecycle.gate is None:
            with_it = sorted(n for n, m in spec.models.items() if m.lifecycle and m.lifecycle.finetune)
            raise FinetuneError(f"models.{model}.lifecycle.finetune is not set; models that can be fine-tuned: "
                                f"{with_it}")
        self.spec = spec
        self.model = model
        self.rules: FinetuneSpec = rules or lifecycle.finetune
        self.gate_spec: GateSpec = lifecycle.gate
        self.adapter = load_adapter(spec.resolve(self.rules.adapter))
        # Training takes a while: a line every PROGRESS_EVERY steps (the CLI prints them on stderr).
        self.progress = progress

    # -- training ----------------------------------------------------------------------------------
    def _train(self, network: Any, feedback: Feedback, replay: tuple[np.ndarray, np.ndarray],
               dims: tuple[int, ...]) -> dict[str, Any]:
        import torch
        from torch import nn

        rules = self.rules
        gen = torch.Generator().manual_seed(rules.seed)
        torch.manual_seed(rules.seed)
        fb_x = torch.from_numpy(feedback.inputs.reshape(-1, *dims).astype(np.float32))
        fb_y = torch.from_numpy(feedback.labels)
        rp_x = torch.from_numpy(replay[0].reshape(-1, *dims).astype(np.float32))
        rp_y = torch.from_numpy(replay[1].astype(np.int64))
        n_replay = round(rules.batch_size * rules.replay_share) if len(rp_y) else 0
        n_feedback = rules.batch_size - n_replay
        optimizer = torch.optim.AdamW(network.parameters(), lr=rules.lr, weight_decay=WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=rules.steps)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
        augment = getattr(self.adapter, "augment", None) if rules.augment else None
        started, cpu_started = time.perf_counter(), time.process_time()
        running = 0.0
        for step in range(1, rules.steps + 1):
            network.train()
            for m in network.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()  # frozen statistics (module docstring)
            fi = torch.randint(len(fb_y), (n_feedback,), generator=gen)
            ri = torch.randint(len(rp_y), (n_replay,), generator=gen) if n_replay else fi[:0]
            x, y = torch.cat([fb_x[fi], rp_x[ri]]), torch.cat([fb_y[fi], rp_y[ri]])
            if augment is not None:
                x = augment(x, gen)
            loss = loss_fn(network(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.item())
            if step % PROGRESS_EVERY == 0 or step == rules.steps:
                line = (f"fine-tune {self.model}: step {step}/{rules.steps}, loss "
                        f"{running / (PROGRESS_EVERY if step % PROGRESS_EVERY == 0 else step % PROGRESS_EVERY):.4f}, "
                        f"{time.perf_counter() - started:.1f} s")
                logger.info("%s", line)
                if self.progress is not None:
                    self.progress(line)
                running = 0.0
        network.eval()
        return {
            "steps": rules.steps, "batch_size": rules.batch_size, "lr": rules.lr, "seed": rules.seed,
            "feedback_per_batch": n_feedback, "replay_per_batch": n_replay, "feedback_samples": len(feedback),
            "replay_samples": len(rp_y), "augment": augment is not None,
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu_started, 2),
        }

    # -- export --------------------------------------------------------------------------------------
    def _export(self, module: Any, interface: GraphInterface, path: Path) -> None:
        import onnx
        import torch

        name, dims = _single_input(interface)
        outputs = [t.name for t in interface.outputs]
        dynamic = {n: {0: "batch"} for n in [name, *outputs]}
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # The TorchScript-based exporter (no onnxscript needed) warns that it is the legacy one.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(module.eval(), (torch.zeros(2, *dims),), str(path), dynamo=False,
                              opset_version=interface.opset, input_names=[name], output_names=outputs,
                              dynamic_axes=dynamic, do_constant_folding=True)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)

    def _check_export(self, module: Any, path: Path, name: str, output: str, inputs: np.ndarray) -> dict[str, Any]:
        import torch

        with torch.no_grad():
            want = torch.cat([module(torch.from_numpy(inputs[i:i + 256])) for i in range(0, len(inputs), 256)])
        got = predict(path, {name: inputs}, output)
        diff = float(np.abs(got - want.numpy()).max())
        disagree = int((got.argmax(-1) != want.numpy().argmax(-1)).sum())
        check = {"samples": len(inputs), "max_abs_diff": diff, "top1_disagreements": disagree,
                 "atol": self.rules.export_atol}
        logger.info("export check: ONNX Runtime vs PyTorch on %d inputs: max |diff| %.3g, %d top-1 disagreements",
                    len(inputs), diff, disagree)
        if diff > self.rules.export_atol or disagree:
            raise FinetuneError(f"{path}: the ONNX export disagrees with PyTorch (max |diff| {diff:.3g}, atol "
                                f"{self.rules.export_atol:g}; {disagree} top-1 disagreements of {len(inputs)})")
        return check

    # -- the whole job -------------------------------------------------------------------------------
    def run(
        self, champion_onnx: Path, feedback: Feedback, held_back: Feedback, out: Path,
        extra_eval: dict[str, Feedback] | None = None,
    ) -> FinetuneResult:
        """Train on `feedback` (+ replay), export to `out`, check, and judge against the champion."""
        interface = read_interface(champion_onnx)
        name, dims = _single_input(interface)
        output = self.gate_spec.output or interface.outputs[0].name
        if len(feedback) < 1 or len(held_back) < 1:
            raise FinetuneError(f"fine-tuning needs labelled feedback to train on and to hold back; got "
                                f"{len(feedback)} and {len(held_back)}")
        replay = self.adapter.replay_data() if self.rules.replay_share > 0 else (np.zeros((0, *dims), np.uint8),
                                                                                  np.zeros(0, np.int64))
        with _torch_settings(threads=1):
            network = self.adapter.load_network(champion_onnx)
            training = self._train(network, feedback, replay, dims)
            module = self.adapter.export_module(network).eval()
            self._export(module, interface, out)
            holdout_inputs, holdout_labels = load_gate_data(self.gate_spec, self.spec.base_dir)
            if name not in holdout_inputs:
                raise FinetuneError(f"lifecycle.gate.data has no array for input {name!r}; it has "
                                    f"{sorted(holdout_inputs)}")
            sets: dict[str, tuple[np.ndarray, np.ndarray]] = {
                "held-back feedback": (held_back.inputs.reshape(-1, *dims).astype(np.float32), held_back.labels),
                "held-out set": (holdout_inputs[name].reshape(-1, *dims).astype(np.float32), holdout_labels),
            }
            for label, data in (extra_eval or {}).items():
                if label in sets:
                    raise FinetuneError(f"evaluation set name {label!r} is taken by the gate's own sets; pick another")
                sets[label] = (data.inputs.reshape(-1, *dims).astype(np.float32), data.labels)
            export_check = self._check_export(module, out, name, output,
                                              np.concatenate([x for x, _ in sets.values()]))
        correct: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        rows = []
        for label, (x, y) in sets.items():
            cand = predict(out, {name: x}, output).argmax(-1) == y
            champ = predict(champion_onnx, {name: x}, output).argmax(-1) == y
            correct[label] = (cand, champ)
            rows.append(EvalRow(label, len(y), float(champ.mean()), float(cand.mean())))
        gate = judge_finetune(correct["held-back feedback"][0], correct["held-back feedback"][1],
                              correct["held-out set"][0], correct["held-out set"][1], self.rules)
        return FinetuneResult(out, gate, tuple(rows), training, export_check)


# -- the report ----------------------------------------------------------------------------------------
def report_table(result: FinetuneResult) -> list[str]:
    rows = [("set", "samples", "champion", "fine-tuned", "change")]
    rows += [(r.name, str(r.samples), f"{r.champion_accuracy:.4f}", f"{r.candidate_accuracy:.4f}",
              f"{r.change:+.4f}") for r in result.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def write_report(result: FinetuneResult, folder: Path, model: str, extra: dict[str, Any] | None = None) -> list[Path]:
    """finetune.json, finetune.md (the table) and finetune.png (accuracy per set, before and after)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"model": model, **result.as_dict(), **(extra or {})}
    paths = [folder / "finetune.json", folder / "finetune.md", folder / "finetune.png"]
    paths[0].write_text(json.dumps(data, indent=2) + "\n")
    md = ["| set | samples | champion | fine-tuned | change |", "|---|---|---|---|---|"]
    md += [f"| {r.name} | {r.samples} | {r.champion_accuracy:.1%} | {r.candidate_accuracy:.1%} | "
           f"{100 * r.change:+.1f} pt |" for r in result.rows]
    verdict = "passed" if result.gate.passed else "rejected: " + "; ".join(result.gate.reasons)
    md += ["", f"Fine-tune gate: {verdict}.", "", result.gate.summary() + ".", ""]
    paths[1].write_text("\n".join(md))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(result.rows))
    for offset, label, values in ((-0.2, "champion", [r.champion_accuracy for r in result.rows]),
                                  (0.2, "fine-tuned", [r.candidate_accuracy for r in result.rows])):
        bars = ax.bar(x + offset, values, 0.4, label=label)
        ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], fontsize=8)
    ax.set_xticks(x, [f"{r.name}\n({r.samples})" for r in result.rows])
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{model}: before and after fine-tuning ({'passed' if result.gate.passed else 'rejected'})")
    ax.legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths
