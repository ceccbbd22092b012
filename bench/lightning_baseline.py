"""The Lightning loop that `vigil bench` compares the host with: W1 with every monitor.

The same network, data, batch size, optimizer and threads as W1 in vigil
(`bench/workloads.py`), trained by Lightning with validation every 1/4 epoch, the weighted
sampler, per-step logging to TensorBoard and CSV, and vigil's ten monitors at their default
cadences written as Lightning callbacks the way Lightning users write them (Lightning's
`grad_norm`, torchmetrics, matplotlib):

- gradient: per-parameter and total gradient norms every 50 steps, the weight norm 4 times an
  epoch;
- curvature: every 1000 steps on a fixed probe of 32 training images, the top Hessian
  eigenvalue by power iteration (at most 12 Hessian-vector products, tolerance 1e-3) and a
  Hutchinson trace (28 Rademacher vectors): 40 products, as vigil's defaults take;
- noise: every step a loss history (log-binned, 64 bins a decade) and a 512-loss window, and
  exponential moving averages of the gradient and its square; every 50 steps the gradient
  variance; every 2 epochs a power-law fit with its residual spectrum;
- loss-slope: every epoch, the slope of log loss on log epoch over epochs 5-15 and from burn-in;
- confusion-matrix: at every validation end, a heatmap PNG and a CSV;
- sampler-distribution: at every epoch start, the last epoch's draws per class, logged, printed
  and appended to a CSV;
- sample-visualization: at every validation end, a 4x4 grid of validation images with their
  predictions;
- training-history: every epoch, loss and accuracy plots;
- model-info and dataset-statistics: at fit start, parameter counts, a per-layer table, the
  label mapping and the class distribution, as JSON and CSV.

Checkpointing and the progress bar are off (they are off in `vigil bench` too).

    bash scripts/bench-venv.sh    # once: Lightning, torchmetrics, matplotlib beside torch
    ~/.cache/vigil/bench-lightning/bin/python bench/lightning_baseline.py --steps 200

`vigil bench` runs it itself, serving segments interleaved with its own (`--serve`), when it
finds the bench venv (or the Python given with `--lightning`).
"""

import argparse
import collections
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler  # noqa: E402

import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from lightning.pytorch.utilities import grad_norm  # noqa: E402
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import DEFAULT_DATA_DIR, DEFAULT_LR, class_names, load_data, make_model, make_optimizer  # noqa: E402

CLASSES = 10


class Classifier(L.LightningModule):
    def __init__(self, workload, lr, total_steps, warmup_steps):
        super().__init__()
        self.model = make_model(workload)
        self.workload, self.lr = workload, lr
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.val_accuracy = MulticlassAccuracy(CLASSES, average="micro")
        self.val_confusion = MulticlassConfusionMatrix(CLASSES)
        self.first_val_batch = None

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(1) == y).float().mean()
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("train_acc", accuracy, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True)
        self.val_accuracy(logits, y)
        self.log("val_acc", self.val_accuracy, on_epoch=True)
        self.val_confusion.update(logits, y)
        if batch_idx == 0:
            self.first_val_batch = (x[:16].detach(), y[:16], logits[:16].argmax(1))

    def on_train_epoch_end(self):
        for name, parameter in self.named_parameters():
            self.logger.experiment.add_histogram(name, parameter, self.global_step)

    def configure_optimizers(self):
        optimizer = make_optimizer(self.workload, self.model, self.lr)

        def factor(step):
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class RecordingSampler(WeightedRandomSampler):
    """A weighted sampler that keeps its last epoch's draws for the sampler callback."""

    def __iter__(self):
        self.drawn = list(super().__iter__())
        return iter(self.drawn)


def artifact_dir(trainer, *parts):
    path = os.path.join(trainer.log_dir or ".", "artifacts", *parts)
    os.makedirs(path, exist_ok=True)
    return path


class GradientNorms(L.Callback):
    def __init__(self, log_every_n_steps=50, weight_norm_per_epoch=4):
        self.every, self.per_epoch = log_every_n_steps, weight_norm_per_epoch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step % self.every == 0:
            pl_module.log_dict(grad_norm(pl_module, norm_type=2))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        batches = trainer.num_training_batches
        marks = {math.ceil(k * batches / self.per_epoch) - 1 for k in range(1, self.per_epoch + 1)}
        if batch_idx in marks:
            norms = torch.stack([p.detach().norm() for p in pl_module.parameters()])
            pl_module.log("weight_norm", norms.norm())


class Curvature(L.Callback):
    def __init__(self, probe, every=1000, max_iter=12, tol=1e-3, trace_samples=28):
        self.probe, self.every = probe, every
        self.max_iter, self.tol, self.trace_samples = max_iter, tol, trace_samples
        self.vector = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every != 0:
            return
        x, y = self.probe
        params = [p for p in pl_module.parameters() if p.requires_grad]
        with torch.enable_grad():
            loss = F.cross_entropy(pl_module(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)

            def hvp(vectors):
                return torch.autograd.grad(grads, params, grad_outputs=vectors, retain_graph=True)

            def dot(a, b):
                return sum((u * w).sum() for u, w in zip(a, b))

            v = self.vector or [torch.randn_like(p) for p in params]
            scale = dot(v, v).sqrt()
            v = [u / scale for u in v]
            eigenvalue, products = 0.0, 0
            for _ in range(self.max_iter):
                hv = hvp(v)
                products += 1
                eigenvalue = dot(v, hv).item()
                residual = dot(*[[h - eigenvalue * u for h, u in zip(hv, v)]] * 2).sqrt().item()
                norm = dot(hv, hv).sqrt()
                v = [h / norm for h in hv]
                if residual <= self.tol * abs(eigenvalue):
                    break
            self.vector = [u.detach() for u in v]
            estimates = []
            for _ in range(self.trace_samples):
                z = [torch.randint_like(p, 2) * 2 - 1 for p in params]
                estimates.append(dot(z, hvp(z)).item())
                products += 1
        pl_module.log_dict(
            {
                "curvature/lambda_max": eigenvalue,
                "curvature/hutch_trace": float(np.mean(estimates)),
                "curvature/hutch_trace_stderr": float(np.std(estimates, ddof=1) / math.sqrt(len(estimates))),
                "curvature/probe_loss": loss.item(),
                "curvature/hvps": float(products),
            }
        )


class Noise(L.Callback):
    def __init__(self, buffer_size=512, bins_per_decade=64, compute_every_epochs=2, log_every_n_steps=50, beta=0.99):
        self.window = collections.deque(maxlen=buffer_size)
        self.bins = {}
        self.bins_per_decade, self.every_epochs = bins_per_decade, compute_every_epochs
        self.log_every, self.beta = log_every_n_steps, beta
        self.mean = self.square = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.detach().flatten() for p in pl_module.parameters() if p.grad is not None]
        g = torch.cat(grads)
        if self.mean is None:
            self.mean, self.square = torch.zeros_like(g), torch.zeros_like(g)
        self.mean.mul_(self.beta).add_(g, alpha=1 - self.beta)
        self.square.mul_(self.beta).addcmul_(g, g, value=1 - self.beta)
        if trainer.global_step % self.log_every == 0:
            pl_module.log("noise/grad_var", (self.square - self.mean.square()).mean())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"].item()
        step = trainer.global_step
        self.window.append((step, loss))
        key = int(math.floor(math.log10(step + 1) * self.bins_per_decade))
        total, count, steps = self.bins.get(key, (0.0, 0, 0.0))
        self.bins[key] = (total + math.log(loss), count + 1, steps + math.log(step + 1))

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.every_epochs != 0 or len(self.bins) < 4:
            return
        points = np.array([(s / c, t / c) for t, c, s in self.bins.values()])
        slope, intercept = np.polyfit(points[:, 0], points[:, 1], 1)
        fitted = slope * points[:, 0] + intercept
        r2 = 1 - np.sum((points[:, 1] - fitted) ** 2) / np.sum((points[:, 1] - points[:, 1].mean()) ** 2)
        window = np.array(self.window)
        residuals = np.log(window[:, 1]) - (slope * np.log(window[:, 0] + 1) + intercept)
        spectrum = np.abs(np.fft.rfft(residuals - residuals.mean())) ** 2 / len(residuals)
        pl_module.log_dict(
            {
                "noise/power_law_slope": float(slope),
                "noise/power_law_r2": float(r2),
                "noise/psd_tail": float(spectrum[-16:].mean()),
                "noise/resid_power": float(spectrum[8:32].sum()),
            }
        )


class LossSlope(L.Callback):
    def __init__(self, window=(5, 15), burn_in_loss=1.0):
        self.window, self.burn_in_loss, self.losses = window, burn_in_loss, []

    @staticmethod
    def slope(points):
        points = [(e, l) for e, l in points if math.isfinite(l) and l > 0]
        if len(points) < 2:
            return None
        x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
        return float(np.polyfit(x, y, 1)[0])

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append((trainer.current_epoch + 1, trainer.callback_metrics["train_loss_epoch"].item()))
        lo, hi = self.window
        early = self.slope([p for p in self.losses if lo <= p[0] <= hi])
        burn_in = next((e for e, l in self.losses if l <= self.burn_in_loss), None)
        full = self.slope([p for p in self.losses if burn_in is not None and p[0] >= burn_in])
        values = {f"loss_slope_{lo}_{hi}": early, "loss_slope_full": full}
        pl_module.log_dict({k: v for k, v in values.items() if v is not None})


class ConfusionMatrixPlot(L.Callback):
    def on_validation_epoch_end(self, trainer, pl_module):
        matrix = pl_module.val_confusion.compute().cpu().numpy()
        pl_module.val_confusion.reset()
        directory = artifact_dir(trainer, f"epoch_{trainer.current_epoch + 1:03}")
        np.savetxt(os.path.join(directory, "confusion_matrix.csv"), matrix, fmt="%d", delimiter=",")
        figure, axes = plt.subplots(figsize=(8, 7))
        image = axes.imshow(matrix, cmap="Blues")
        figure.colorbar(image)
        names = pl_module.class_names
        axes.set_xticks(range(CLASSES), names, rotation=45, ha="right")
        axes.set_yticks(range(CLASSES), names)
        for i in range(CLASSES):
            for j in range(CLASSES):
                axes.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7)
        accuracy = np.trace(matrix) / max(1, matrix.sum())
        axes.set_title(f"epoch {trainer.current_epoch + 1}, accuracy {accuracy:.3f}")
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        figure.tight_layout()
        figure.savefig(os.path.join(directory, "confusion_matrix.png"))
        pl_module.logger.experiment.add_figure("confusion_matrix", figure, trainer.global_step)
        plt.close(figure)


class SamplerDistribution(L.Callback):
    def __init__(self, sampler, labels, weights):
        self.sampler, self.labels = sampler, labels
        self.expected = weights / weights.sum()

    def on_train_epoch_start(self, trainer, pl_module):
        drawn = getattr(self.sampler, "drawn", None)
        if not drawn:
            return
        counts = torch.bincount(self.labels[torch.tensor(drawn)], minlength=CLASSES).double()
        ratios = counts / (self.expected * len(drawn))
        metrics = {f"sampler/count/{c}": counts[c].item() for c in range(CLASSES)}
        metrics.update({f"sampler/ratio/{c}": ratios[c].item() for c in range(CLASSES)})
        pl_module.log_dict(metrics)
        print("\n".join(f"{c:>5} {int(counts[c]):>8} {ratios[c]:.3f}" for c in range(CLASSES)), file=sys.stderr)
        path = os.path.join(artifact_dir(trainer), "sampler_distribution.csv")
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            for c in range(CLASSES):
                writer.writerow([trainer.current_epoch, c, int(counts[c]), f"{ratios[c]:.6f}"])


class SampleGrid(L.Callback):
    def on_validation_epoch_end(self, trainer, pl_module):
        if pl_module.first_val_batch is None:
            return
        images, truth, predicted = (t.cpu() for t in pl_module.first_val_batch)
        names = pl_module.class_names
        figure, axes = plt.subplots(4, 4, figsize=(8, 8))
        for index, ax in enumerate(axes.flat):
            ax.axis("off")
            if index >= len(images):
                continue
            image = images[index]
            image = (image - image.min()) / (image.max() - image.min() + 1e-8)
            ax.imshow(image.permute(1, 2, 0).squeeze(), cmap="gray" if image.shape[0] == 1 else None)
            right = truth[index] == predicted[index]
            ax.set_title(f"true: {names[truth[index]]}\npred: {names[predicted[index]]}", fontsize=7,
                         color="green" if right else "red")
        figure.tight_layout()
        directory = artifact_dir(trainer, f"epoch_{trainer.current_epoch + 1:03}")
        figure.savefig(os.path.join(directory, "sample_predictions.png"))
        pl_module.logger.experiment.add_figure("sample_predictions", figure, trainer.global_step)
        plt.close(figure)


class TrainingHistory(L.Callback):
    def __init__(self):
        self.history = collections.defaultdict(list)

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        for key in ("train_loss_epoch", "val_loss", "train_acc_epoch", "val_acc"):
            if key in metrics:
                self.history[key].append(metrics[key].item())
        directory = artifact_dir(trainer, "training_history")
        for name, keys in (("loss", ("train_loss_epoch", "val_loss")), ("accuracy", ("train_acc_epoch", "val_acc"))):
            figure, axes = plt.subplots(figsize=(7, 4))
            for key in keys:
                values = self.history[key]
                axes.plot(range(1, len(values) + 1), values, marker="o", label=key)
            axes.set_xlabel("epoch")
            axes.legend()
            figure.savefig(os.path.join(directory, f"{name}.png"))
            plt.close(figure)


class ModelInfo(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        rows = [(n, tuple(p.shape), p.numel()) for n, p in pl_module.named_parameters()]
        total = sum(r[2] for r in rows)
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        print("\n".join(f"{n:<40} {str(s):<20} {c:>10}" for n, s, c in rows), file=sys.stderr)
        directory = artifact_dir(trainer)
        with open(os.path.join(directory, "model_info.json"), "w") as f:
            json.dump({"total": total, "trainable": trainable, "size_mb": total * 4 / 2**20,
                       "layers": [{"name": n, "shape": s, "count": c} for n, s, c in rows]}, f)
        with open(os.path.join(directory, "labels_mapping.json"), "w") as f:
            json.dump(dict(enumerate(pl_module.class_names)), f)


class DatasetStatistics(L.Callback):
    def __init__(self, splits):
        self.splits = splits

    def on_fit_start(self, trainer, pl_module):
        path = os.path.join(artifact_dir(trainer), "dataset_statistics.csv")
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "class", "index", "count", "percent"])
            for split, labels in self.splits.items():
                counts = torch.bincount(labels, minlength=CLASSES)
                for c in range(CLASSES):
                    row = [split, pl_module.class_names[c], c, int(counts[c]), 100 * counts[c].item() / len(labels)]
                    writer.writerow(row)
                    print(*row, file=sys.stderr)


class SegmentServer(L.Callback):
    """Times segments of training steps, validation and callbacks included: asks `requests`
    for each segment's length and hands each segment's ms/step to `answer`; stops training when
    the requests end."""

    def __init__(self, requests, answer):
        self.requests, self.answer = requests, answer
        self.left = None

    def next_segment(self, trainer):
        steps = next(self.requests, None)
        if steps is None:
            trainer.should_stop = True
            self.left = -1
            return
        self.steps = self.left = steps
        self.started = time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self.next_segment(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.left is None or self.left < 0:
            return
        self.left -= 1
        if self.left == 0:
            if not math.isfinite(outputs["loss"].item()):
                sys.exit(f"the training loss is {outputs['loss'].item()}")
            self.answer((time.perf_counter() - self.started) * 1e3 / self.steps)
            self.next_segment(trainer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR["w1"])
    parser.add_argument("--steps", type=int, default=100, help="steps per segment")
    parser.add_argument("--repeats", type=int, default=5, help="timed segments")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curvature-every", type=int, default=1000, help="steps between curvature estimates")
    parser.add_argument("--no-monitors", action="store_true", help="train without the monitor callbacks")
    parser.add_argument("--out", help="where Lightning writes (default: a temporary directory, removed)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="read a line per segment from stdin and answer with its ms/step (for vigil bench)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, verbose=False)

    workload = "w1"
    images, labels, val_images, val_labels, source = load_data(workload, args.data_dir, args.seed)
    class_counts = torch.bincount(labels, minlength=CLASSES).double()
    class_weights = 1.0 / class_counts.clamp(min=1)
    sampler = RecordingSampler(class_weights[labels], num_samples=len(labels), replacement=True)
    train_loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, sampler=sampler)
    val_loader = DataLoader(TensorDataset(val_images, val_labels), batch_size=max(args.batch_size, 256))
    batches = len(train_loader)
    module = Classifier(workload, DEFAULT_LR[workload], batches * 10, batches // 10)
    module.class_names = class_names(workload, source)
    probe_indices = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))[:32]

    callbacks = [LearningRateMonitor(logging_interval="step")]
    if not args.no_monitors:
        callbacks += [
            GradientNorms(),
            Curvature((images[probe_indices], labels[probe_indices]), every=args.curvature_every),
            Noise(),
            LossSlope(),
            ConfusionMatrixPlot(),
            SamplerDistribution(sampler, labels, class_weights * class_counts),
            SampleGrid(),
            TrainingHistory(),
            ModelInfo(),
            DatasetStatistics({"train": labels, "validation": val_labels}),
        ]
    if args.serve:
        print(json.dumps({"ready": True, "source": source, "torch": torch.__version__,
                          "lightning": L.__version__}), flush=True)
        requests = (int(line.strip() or args.steps) for line in sys.stdin)

        def answer(ms):
            print(json.dumps({"ms_per_step": ms}), flush=True)
    else:
        requests = iter([args.steps] * (args.repeats + 1))
        times = []
        answer = times.append
    callbacks.insert(0, SegmentServer(requests, answer))

    with tempfile.TemporaryDirectory(prefix="vigil-bench-lightning-") as scratch:
        out = args.out or scratch
        trainer = L.Trainer(
            max_epochs=10_000,
            accelerator="cpu",
            devices=1,
            logger=[TensorBoardLogger(out, name="lightning"), CSVLogger(out, name="lightning")],
            callbacks=callbacks,
            val_check_interval=0.25,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(module, train_loader, val_loader)
    if not args.serve:
        timed = times[1:]  # the first segment is the warm-up
        median = statistics.median(timed)
        print(json.dumps({"workload": "W1", "framework": "lightning", "lightning": L.__version__,
                          "monitors": not args.no_monitors, "source": source, "steps_per_segment": args.steps,
                          "ms_per_step": {"median": median, "min": min(timed), "max": max(timed)},
                          "steps_per_second": 1e3 / median}))


if __name__ == "__main__":
    main()
