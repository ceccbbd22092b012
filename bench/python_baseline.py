"""The plain PyTorch loop that `vigil bench` compares the host with: workload W1.

W1 is the small CNN (conv32 -> pool -> conv64 -> pool -> fc128 -> classifier, 3x3 convs,
ReLU) on Fashion-MNIST (or synthetic 28x28 images when the dataset is absent), batch 128,
SGD with momentum 0.9, 2 intra-op threads. Each training step does what a host step does:
gather the shuffled batch, forward, cross-entropy, read the loss, backward, read the batch
accuracy, set the learning rate of a cosine schedule, take the optimizer step. Validation is
not timed (the host's step time in `vigil bench` excludes it too).

It runs `--repeats` timed segments of `--steps` steps after one warm-up segment and prints
one JSON object: milliseconds per step (median, min, max over the segments) and steps/s.

    python bench/python_baseline.py --data-dir /usr/share/datasets/fashion-mnist

`vigil bench` runs it itself, interleaved with its own segments, when it finds the Python
that `scripts/bootstrap.sh` installed (or the one given with `--python`).
"""

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    """An IDX file (optionally gzipped) as a uint8 tensor shaped by its header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    offset = 4 + 4 * dims
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(shape)


def load_images(data_dir, synthetic_samples, seed):
    """(images as float N x 1 x 28 x 28 normalised, labels int64, source name)."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    paths = []
    for name in names:
        for candidate in (name + ".gz", name):
            path = os.path.join(data_dir, candidate) if data_dir else ""
            if path and os.path.exists(path):
                paths.append(path)
                break
    if len(paths) == 2:
        images = read_idx(paths[0]).float().div_(255.0).unsqueeze(1)
        labels = read_idx(paths[1]).long()
        source = "fashion-mnist"
    else:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 10, (synthetic_samples,), generator=generator)
        images = torch.rand(synthetic_samples, 1, 28, 28, generator=generator)
        source = "synthetic"
    mean, std = images.mean(), images.std()
    return (images - mean) / std, labels, source


class SmallCnn(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.classifier = nn.Linear(128, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1)
        return self.classifier(F.relu(self.fc1(x)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--steps", type=int, default=100, help="steps per segment")
    parser.add_argument("--repeats", type=int, default=5, help="timed segments")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--serve",
        action="store_true",
        help="read a line per segment from stdin and answer with its ms/step (for vigil bench)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels, source = load_images(args.data_dir, 60000, args.seed)
    samples = labels.shape[0]
    batches = samples // args.batch_size + (samples % args.batch_size > 0)
    total_steps = batches * 10
    warmup = batches // 10

    model = SmallCnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    generator = torch.Generator().manual_seed(args.seed)
    state = {"step": 0, "order": None}

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def train_step():
        batch = state["step"] % batches
        if batch == 0:
            state["order"] = torch.randperm(samples, generator=generator)
        indices = state["order"][batch * args.batch_size : (batch + 1) * args.batch_size]
        x = images.index_select(0, indices)
        y = labels.index_select(0, indices)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"])
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss_value = loss.item()
        optimizer.zero_grad()
        loss.backward()
        accuracy = (logits.argmax(1) == y).sum().item() / y.shape[0]
        optimizer.step()
        state["step"] += 1
        return loss_value, accuracy

    def segment(steps):
        started = time.perf_counter()
        for _ in range(steps):
            loss_value, _ = train_step()
        if not math.isfinite(loss_value):
            sys.exit(f"the training loss is {loss_value}")
        return (time.perf_counter() - started) * 1e3 / steps

    if args.serve:
        # One segment per request line ("<steps>"), so that a caller can interleave them
        # with its own; EOF ends.
        print(
            json.dumps(
                {
                    "ready": True,
                    "source": source,
                    "torch": torch.__version__,
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                }
            ),
            flush=True,
        )
        for line in sys.stdin:
            steps = int(line.strip() or args.steps)
            print(json.dumps({"ms_per_step": segment(steps)}), flush=True)
        return

    segment(args.steps)  # warm-up
    times = [segment(args.steps) for _ in range(args.repeats)]
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "workload": "W1",
                "source": source,
                "torch": torch.__version__,
                "threads": args.threads,
                "batch_size": args.batch_size,
                "steps_per_segment": args.steps,
                "ms_per_step": {"median": median, "min": min(times), "max": max(times)},
                "steps_per_second": 1e3 / median,
            }
        )
    )


if __name__ == "__main__":
    main()
