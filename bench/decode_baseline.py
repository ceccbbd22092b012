"""torchvision's image-folder pipeline, timed as `vigil bench --image-folder` times vigil's.

ImageFolder(DIR) with Resize(SIZE) + CenterCrop(SIZE) + PILToTensor (uint8, as vigil decodes),
read through DataLoader(batch_size=BATCH, num_workers=WORKERS, persistent_workers=True). One
untimed pass warms the workers and the page cache; then each timed pass reads every image
once. Prints {"images_per_s": [...], "images": N, "torchvision": VERSION}.
"""
import argparse
import json
import time

import torch
import torchvision
from torchvision import datasets, transforms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline = transforms.Compose(
        [transforms.Resize(args.size), transforms.CenterCrop(args.size), transforms.PILToTensor()]
    )
    dataset = datasets.ImageFolder(args.dir, transform=pipeline)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        shuffle=False,
    )
    rates = []
    for repeat in range(args.repeats + 1):
        started = time.perf_counter()
        seen = 0
        for images, _ in loader:
            seen += images.shape[0]
        elapsed = time.perf_counter() - started
        if repeat > 0:
            rates.append(seen / elapsed)
    print(json.dumps({"images_per_s": rates, "images": len(dataset), "torchvision": torchvision.__version__}))


if __name__ == "__main__":
    main()
