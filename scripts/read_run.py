#!/usr/bin/env python3
"""Read a vigil run directory with public Python packages, to show the outputs interoperate.

    python scripts/read_run.py runs/<run>

Reads metrics.jsonl (plain JSON lines) and the best checkpoint's model.safetensors with the
`safetensors` package, and prints a summary. Needs `safetensors` and either `torch` or `numpy`:
the venv scripts/bootstrap.sh makes (~/.cache/vigil/torch-2.13.0) has all of them.
"""

import json
import sys
from collections import Counter
from pathlib import Path


def read_metrics(run_dir: Path):
    records = []
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                sys.exit(f"{run_dir / 'metrics.jsonl'}:{number}: not JSON: {err}")
    return records


def load_tensors(path: Path):
    """Name -> (shape, dtype) of every tensor in a safetensors file."""
    from safetensors import safe_open

    try:
        import torch  # noqa: F401

        framework = "pt"
    except ImportError:
        framework = "numpy"
    tensors = {}
    with safe_open(str(path), framework=framework) as handle:
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            tensors[name] = (tuple(tensor.shape), str(tensor.dtype), float(abs(tensor).sum()))
    return tensors


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run_dir = Path(sys.argv[1])
    records = read_metrics(run_dir)
    kinds = Counter(record["kind"] for record in records)
    print(f"{run_dir}: {len(records)} records ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    epochs = [r for r in records if r["kind"] == "epoch"]
    if epochs:
        last = epochs[-1]
        print(f"last epoch {last['epoch']}: train_loss {last['train_loss']:.4f}, "
              f"val_loss {last['val_loss']:.4f}, val_acc {last['val_acc']:.4f}")
    validations = [r for r in records if r["kind"] == "validation" and r["val_loss"] is not None]
    if validations:
        best = min(validations, key=lambda r: r["val_loss"])
        print(f"best val_loss {best['val_loss']:.4f} at step {best['global_step']}")

    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())
    chosen = (index["best"] or [index["last"]])[0]
    checkpoint = run_dir / "checkpoints" / chosen["dir"]
    tensors = load_tensors(checkpoint / "model.safetensors")
    parameters = sum(1 for _ in tensors)
    state = json.loads((checkpoint / "state.json").read_text())
    print(f"checkpoint {chosen['dir']} (step {state['global_step']}, val_loss {chosen['val_loss']}): "
          f"{parameters} tensors")
    for name, (shape, dtype, magnitude) in sorted(tensors.items()):
        print(f"  {name:40s} {str(list(shape)):20s} {dtype:16s} sum|x| {magnitude:.4g}")


if __name__ == "__main__":
    main()
