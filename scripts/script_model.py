#!/usr/bin/env python3
"""Script a small PyTorch CNN (with batch norm) to a TorchScript file that vigil trains.

    ~/.cache/vigil/torch-2.13.0/bin/python scripts/script_model.py --out net.pt
    vigil train configs/torchscript.toml

Any nn.Module works the same way: it takes a float batch N x C x H x W (the images, normalised
per channel by vigil) and returns N x classes logits. Script it (or trace it) and save it:

    torch.jit.script(model).save("net.pt")

vigil trains the module's parameters with its own optimizer, keeps its buffers (batch-norm
statistics) in checkpoints, and switches it between train and eval mode.
"""
import argparse

import torch
from torch import nn


class TinyCnn(nn.Module):
    """conv(16) -> batch norm -> ReLU -> pool -> conv(32) -> batch norm -> ReLU -> pool -> linear."""

    def __init__(self, channels: int, classes: int, size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.classifier = nn.Linear(32 * (size // 4) * (size // 4), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.classifier(x.flatten(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="net.pt", help="where to save the module (default net.pt)")
    parser.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--size", type=int, default=28, help="image height and width (default 28)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = TinyCnn(args.channels, args.classes, args.size)
    torch.jit.script(model).save(args.out)
    print(f"saved {args.out}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
