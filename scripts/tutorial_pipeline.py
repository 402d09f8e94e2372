"""A faithful copy of the tutorial's training pipeline, kept only as a speed baseline.

What the tutorial does, per image: a torchvision-style dataset hands out PIL images, PIL
transforms (RandomHorizontalFlip, RandomCrop with padding 4, ToTensor, Normalize) run one image
at a time, a DataLoader collates batches of 100, and the loop calls `.item()` twice per step.

Two changes, both needed for it to run at all on 28x28 digits, neither changing its cost:
RandomCrop(28) instead of RandomCrop(32), and the linear layer sized 32*14*14 instead of the
tutorial's wrong 32*6*6. The flip, wrong for digits, is kept because it is part of the cost.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class TextCNN(nn.Module):  # the tutorial's name for it
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc = nn.Linear(32 * 14 * 14, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = x.view(-1, 32 * 14 * 14)
        x = self.fc(x)
        return x


class ArrayMNIST(Dataset):
    """torchvision.datasets.MNIST's __getitem__, over arrays already in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        # tuning's arrays are (N, H, W, C); the tutorial's digits are (N, H, W), grayscale.
        self.data = torch.from_numpy(np.ascontiguousarray(images[..., 0]) if images.ndim == 4
                                     else images)
        self.targets = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        image = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def train_transform():
    return transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(28, padding=4),
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])


def train(model, optimizer, train_loader, device, epoch):
    model.train()
    train_loss = 0.0
    train_acc = 0.0
    for data, target in train_loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()
        train_loss += loss.item()
        _, predicted = output.max(1)
        train_acc += predicted.eq(target).sum().item()
    train_loss /= len(train_loader)
    train_acc /= len(train_loader.dataset)
    return train_loss, train_acc


def epoch_seconds(images: np.ndarray, labels: np.ndarray, device: torch.device,
                  epochs: int) -> list[float]:
    """Seconds per training epoch of the tutorial's pipeline (batch 100, Adam lr 1e-3)."""
    loader = DataLoader(ArrayMNIST(images, labels, train_transform()), batch_size=100,
                        shuffle=True)
    model = TextCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001, betas=(0.9, 0.999), eps=1e-08,
                                 weight_decay=0)
    times = []
    for epoch in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train(model, optimizer, loader, device, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times
