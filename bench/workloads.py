"""The bench workloads' data and models in plain PyTorch, shared by the baselines.

W1: the small CNN (conv32 -> pool -> conv64 -> pool -> fc128 -> classifier, 3x3 convs, ReLU)
on Fashion-MNIST (synthetic 1x28x28 images when the dataset is absent).
W2: the CIFAR ResNet-18 (3x3 stem, no max-pool, BasicBlocks [2, 2, 2, 2]) at width 0.5 on
CIFAR-10's binary batches (synthetic 3x32x32 images when they are absent).

Both are built exactly as vigil builds them (layer shapes, PyTorch's and torchvision's
initialisation) and fed the same way: pixels scaled to [0, 1], normalised per channel with the
training split's mean and standard deviation, no augmentation.
"""

import gzip
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

WORKLOADS = ("w1", "w2")
DEFAULT_DATA_DIR = {"w1": "/usr/share/datasets/fashion-mnist", "w2": "data/cifar-10-batches-bin"}


def read_idx(path):
    """An IDX file (optionally gzipped) as a uint8 tensor shaped by its header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    offset = 4 + 4 * dims
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(shape)


def _idx_split(data_dir, prefix):
    paths = []
    for name in (prefix + "-images-idx3-ubyte", prefix + "-labels-idx1-ubyte"):
        for candidate in (name + ".gz", name):
            path = os.path.join(data_dir, candidate) if data_dir else ""
            if path and os.path.exists(path):
                paths.append(path)
                break
    if len(paths) != 2:
        return None
    return read_idx(paths[0]).unsqueeze(1), read_idx(paths[1]).long()


def _cifar_split(data_dir, names):
    record = 1 + 3 * 32 * 32
    chunks = []
    for name in names:
        path = os.path.join(data_dir, name) if data_dir else ""
        if not path or not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            chunks.append(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).reshape(-1, record))
    rows = torch.cat(chunks)
    return rows[:, 1:].reshape(-1, 3, 32, 32), rows[:, 0].long()


def _synthetic(count, channels, side, seed, salt):
    generator = torch.Generator().manual_seed(seed * 1000 + salt)
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = (torch.rand(count, channels, side, side, generator=generator) * 255).to(torch.uint8)
    return images, labels


def load_data(workload, data_dir, seed=0):
    """(train images, train labels, validation images, validation labels, source name):
    float N x C x H x W normalised per channel with the training split's statistics."""
    if workload == "w1":
        train, test = _idx_split(data_dir, "train"), _idx_split(data_dir, "t10k")
        source = "fashion-mnist"
        if train is None or test is None:
            train, test = _synthetic(60000, 1, 28, seed, 1), _synthetic(10000, 1, 28, seed, 2)
            source = "synthetic"
    elif workload == "w2":
        train = _cifar_split(data_dir, [f"data_batch_{i}.bin" for i in range(1, 6)])
        test = _cifar_split(data_dir, ["test_batch.bin"])
        source = "cifar10"
        if train is None or test is None:
            train, test = _synthetic(50000, 3, 32, seed, 1), _synthetic(10000, 3, 32, seed, 2)
            source = "synthetic"
    else:
        raise ValueError(f"unknown workload {workload!r}: expected one of {WORKLOADS}")
    images = train[0].float().div_(255.0)
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True)
    val_images = (test[0].float().div_(255.0) - mean) / std
    return (images - mean) / std, train[1], val_images, test[1], source


class SmallCnn(nn.Module):
    """W1's network; nn.Conv2d and nn.Linear initialise it as vigil does."""

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


def sequential_cnn(model):
    """W1's network as modules in a Sequential, with `model`'s weights: what BackPACK (under
    Cockpit) can extend."""
    relu, pool = nn.ReLU, nn.MaxPool2d
    return nn.Sequential(
        model.conv1, relu(), pool(2), model.conv2, relu(), pool(2), nn.Flatten(),
        model.fc1, relu(), model.classifier,
    )


def scaled_channels(channels, width_mult):
    return max(8, round(channels * width_mult / 8) * 8)


class ConvNorm(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = ConvNorm(c_in, c_out, 3, stride)
        self.conv2 = ConvNorm(c_out, c_out, 3, 1)
        self.shortcut = ConvNorm(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet18(nn.Module):
    """W2's network: vigil's `resnet18`, initialised as torchvision initialises its ResNets."""

    def __init__(self, width_mult=0.5, classes=10):
        super().__init__()
        widths = [scaled_channels(c, width_mult) for c in (64, 128, 256, 512)]
        self.stem = ConvNorm(3, widths[0], 3, 1)
        blocks, c_in = [], widths[0]
        for stage, c_out in enumerate(widths):
            for index in range(2):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and index == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c_in, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_names(workload, source):
    """The class names vigil gives the dataset."""
    if source == "synthetic":
        return [f"class {c}" for c in range(10)]
    return FASHION_MNIST_CLASSES if workload == "w1" else CIFAR10_CLASSES


def make_model(workload):
    """The workload's network, its convolutions' weights channels-last (N x H x W x C in
    memory) as vigil keeps them on the CPU: libtorch's convolutions and max pooling then run
    channels-last throughout, the same kernels in both loops."""
    model = SmallCnn() if workload == "w1" else ResNet18(0.5)
    return model.to(memory_format=torch.channels_last)


def make_optimizer(workload, model, lr):
    """W1: SGD with momentum 0.9; W2: SGD with Nesterov momentum 0.9 and weight decay 5e-4."""
    if workload == "w1":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


DEFAULT_LR = {"w1": 0.05, "w2": 0.1}
