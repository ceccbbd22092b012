"""The plain PyTorch loop that `vigil bench` compares the host with: workloads W1 and W2.

W1 is the small CNN on Fashion-MNIST, W2 the CIFAR ResNet-18 at width 0.5 on CIFAR-10 (each on
synthetic images of the same shape when its dataset is absent; `bench/workloads.py` builds
both as vigil does), batch 128, SGD, 2 intra-op threads. Each training step does what a host
step does: gather the shuffled batch, forward, cross-entropy, read the loss, backward, read
the batch accuracy, set the learning rate of a cosine schedule, take the optimizer step.
Validation is not timed (the host's training step time in `vigil bench` excludes it too).

It runs `--repeats` timed segments of `--steps` steps after one warm-up segment and prints
one JSON object: milliseconds per step (median, min, max over the segments) and steps/s.

    python bench/python_baseline.py --workload w1 --data-dir /usr/share/datasets/fashion-mnist

`vigil bench` runs it itself, interleaved with its own segments, when it finds the Python
that `scripts/bootstrap.sh` installed (or the one given with `--python`).

With `--cockpit N` (W1, in the bench venv: `scripts/bench-venv.sh` installs Cockpit and
BackPACK) every step runs inside Cockpit's economy configuration, its quantities computed every
N steps: the peer that `vigil bench --instruments` times beside vigil's instrument plugins.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import (  # noqa: E402
    DEFAULT_DATA_DIR,
    DEFAULT_LR,
    WORKLOADS,
    load_data,
    make_model,
    make_optimizer,
    sequential_cnn,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=WORKLOADS, default="w1")
    parser.add_argument("--data-dir", help="the dataset's directory (default: per workload)")
    parser.add_argument("--steps", type=int, default=100, help="steps per segment")
    parser.add_argument("--repeats", type=int, default=5, help="timed segments")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, help="peak learning rate (default: per workload)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cockpit",
        type=int,
        metavar="N",
        help="run Cockpit's economy configuration, its quantities every N steps (W1)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="read a line per segment from stdin and answer with its ms/step (for vigil bench)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_dir = args.data_dir or DEFAULT_DATA_DIR[args.workload]
    lr = args.lr or DEFAULT_LR[args.workload]
    images, labels, _, _, source = load_data(args.workload, data_dir, args.seed)
    samples = labels.shape[0]
    batches = samples // args.batch_size + (samples % args.batch_size > 0)
    total_steps = batches * 10
    warmup = batches // 10

    model = make_model(args.workload)
    cockpit = None
    if args.cockpit:
        import warnings

        warnings.filterwarnings("ignore")
        from backpack import extend
        from cockpit import Cockpit
        from cockpit.utils import schedules
        from cockpit.utils.configuration import configuration

        if args.workload != "w1":
            sys.exit("--cockpit runs W1 only")
        model = extend(sequential_cnn(model).to(memory_format=torch.channels_last))
        loss_function = extend(torch.nn.CrossEntropyLoss())
        cockpit = Cockpit(
            model.parameters(),
            quantities=configuration("economy", track_schedule=schedules.linear(args.cockpit)),
        )
    optimizer = make_optimizer(args.workload, model, lr)
    generator = torch.Generator().manual_seed(args.seed)
    state = {"step": 0, "order": None}

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

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
        optimizer.zero_grad()
        if cockpit is None:
            loss = F.cross_entropy(logits, y)
            loss_value = loss.item()
            loss.backward()
        else:
            loss = loss_function(logits, y)
            loss_value = loss.item()
            step = state["step"]
            info = {
                "batch_size": y.shape[0],
                "individual_losses": F.cross_entropy(logits, y, reduction="none"),
                "loss": loss,
                "optimizer": optimizer,
            }
            with cockpit(step, info=info):
                loss.backward(create_graph=cockpit.create_graph(step))
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

    def floor(steps):
        # The floor under any host's step: the time inside ATen ops, as PyTorch's profiler
        # counts it (the sum of every op's self CPU time on this thread, which waits for the
        # intra-op threads inside the op), per step of the same loop.
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                train_step()
            wall = (time.perf_counter() - started) * 1e3 / steps
        aten_us = sum(
            event.self_cpu_time_total for event in prof.key_averages() if event.key.startswith("aten::")
        )
        return {"aten_ms_per_step": aten_us / 1e3 / steps, "profiled_ms_per_step": wall}

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
            words = line.split()
            if words and words[0] == "floor":
                # "floor <steps>": a profiled segment, for the floor (not timed as a segment).
                print(json.dumps(floor(int(words[1]) if len(words) > 1 else args.steps)), flush=True)
                continue
            steps = int(words[0]) if words else args.steps
            print(json.dumps({"ms_per_step": segment(steps)}), flush=True)
        return

    segment(args.steps)  # warm-up
    times = [segment(args.steps) for _ in range(args.repeats)]
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "workload": args.workload.upper(),
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
