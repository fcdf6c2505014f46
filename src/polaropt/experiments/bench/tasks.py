"""The benchmark's tasks: a model, its data, batches and an evaluation, at a CPU or a GPU size.

A ``Task`` gives every recipe the same model (built from the seed), the same batches in the same order
(drawn from a generator seeded by the data seed, not the model seed) and the same evaluation, so
recipes differ only in their optimizer.

- ``fmnist-mlp``: Fashion-MNIST, a 784-256-256-10 ReLU MLP (the GPU size is 784-1024-1024-10).
- ``fmnist-cnn``: Fashion-MNIST, two 3×3 conv layers with max-pooling, then a hidden Linear and the head.
- ``charlm``: the King James Bible, a GPT-style character model: token and position embeddings, pre-norm
  blocks with fused qkv attention and a 4× GELU MLP, and the head tied to the token embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import data

TASKS = ("fmnist-mlp", "fmnist-cnn", "charlm")
PRESETS = ("cpu", "gpu")
# each task's presets: model width, batch, steps, and the validation set (images, or batches of windows for
# charlm); a config field set to 0 takes the preset's value
SIZES = {
    "fmnist-mlp": {"cpu": {"width": 256, "batch": 128, "steps": 1000, "val": 2000},
                   "gpu": {"width": 1024, "batch": 256, "steps": 1000, "val": 5000}},
    "fmnist-cnn": {"cpu": {"width": 16, "batch": 32, "steps": 1000, "val": 1000},
                   "gpu": {"width": 32, "batch": 128, "steps": 1000, "val": 5000}},
    "charlm": {"cpu": {"width": 128, "batch": 8, "steps": 1000, "depth": 4, "context": 32, "val": 16},
               "gpu": {"width": 256, "batch": 32, "steps": 1000, "depth": 4, "context": 128, "val": 32}},
}
VAL_IMAGES = 5000  # Fashion-MNIST validation: from the last 5000 training images (the test set is not touched)


class MLP(nn.Sequential):
    def __init__(self, width: int):
        super().__init__(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


class CNN(nn.Sequential):
    def __init__(self, width: int):
        c1, c2 = width, 2 * width
        super().__init__(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(c2 * 49, 4 * width), nn.ReLU(), nn.Linear(4 * width, 10))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """A GPT-style character model whose head is tied to the token embedding (one Parameter)."""

    def __init__(self, vocab: int, d: int, depth: int, context: int, heads: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():  # GPT-2's initialization, residual projections scaled by depth
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


@dataclass
class Task:
    """One task at one size: ``model(seed)``, ``batches(seed, steps)`` and ``evaluate(model)``."""

    name: str
    model: Callable[[int], nn.Module]
    batches: Callable[[int, int], list]  # (data seed, steps) -> the list of (x, y) batches, in order
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module], dict]  # -> {"val_loss": ..., "val_acc": ...}
    info: dict


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(d: dict, device, conv: bool):
    x = d["train_images"].float().div_(255.0).sub_(0.2860).div_(0.3530)  # Fashion-MNIST's mean and std
    x = x.unsqueeze(1) if conv else x.reshape(len(x), -1)
    y = d["train_labels"]
    return x[:-VAL_IMAGES].to(device), y[:-VAL_IMAGES].to(device), x[-VAL_IMAGES:].to(device), y[-VAL_IMAGES:].to(device)


def _classification_eval(vx, vy, chunk=500):
    @torch.no_grad()
    def evaluate(model):
        was = model.training
        model.eval()
        loss = correct = 0.0
        for i in range(0, len(vx), chunk):
            out = model(vx[i:i + chunk])
            loss += F.cross_entropy(out, vy[i:i + chunk], reduction="sum").item()
            correct += (out.argmax(1) == vy[i:i + chunk]).sum().item()
        model.train(was)
        return {"val_loss": loss / len(vx), "val_acc": correct / len(vx)}
    return evaluate


def build(name: str, *, width: int, batch: int, depth: int = 0, context: int = 0, device: str = "cpu",
          val: int = 2000, data_dir: str = data.FASHION_MNIST_DIR) -> Task:
    """The task ``name`` at the given size; its data is read (offline) here."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks are {', '.join(TASKS)}")
    if name.startswith("fmnist"):
        conv = name == "fmnist-cnn"
        tx, ty, vx, vy = _images(data.fashion_mnist(data_dir), device, conv)

        def batches(seed, steps):
            g = _seeded(seed)
            epochs = math.ceil(steps * batch / len(tx))
            order = torch.cat([torch.randperm(len(tx), generator=g) for _ in range(epochs)])[:steps * batch].to(device)
            return [(tx[i], ty[i]) for i in order.view(steps, batch)]

        def model(seed):
            torch.manual_seed(seed)
            return (CNN(width) if conv else MLP(width)).to(device)

        vx, vy = vx[:val], vy[:val]
        return Task(name, model, batches, F.cross_entropy, _classification_eval(vx, vy),
                    {"data": "Fashion-MNIST", "train_images": len(tx), "val_images": len(vx)})
    text = data.bible_text()
    train, val_text = text.train.to(device), text.val.to(device)
    vocab = len(text.vocab)

    def windows(source, starts):
        idx = starts.unsqueeze(1) + torch.arange(context + 1, device=device)
        w = source[idx]
        return w[:, :-1], w[:, 1:]

    def batches(seed, steps):
        g = _seeded(seed)
        starts = torch.randint(0, len(train) - context - 1, (steps, batch), generator=g).to(device)
        return [windows(train, s) for s in starts]

    # a fixed validation set: `val` batches of windows spread evenly over the validation text
    vstarts = torch.linspace(0, len(val_text) - context - 2, val * batch).long().to(device)
    vx, vy = windows(val_text, vstarts)

    def lm_loss(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(model):
        was = model.training
        model.eval()
        total = sum(lm_loss(model(vx[i:i + batch]), vy[i:i + batch]).item() * len(vx[i:i + batch])
                    for i in range(0, len(vx), batch))
        model.train(was)
        return {"val_loss": total / len(vx)}

    def model(seed):
        torch.manual_seed(seed)
        return CharGPT(vocab, width, depth, context).to(device)

    return Task(name, model, batches, lm_loss, evaluate,
                {"data": text.source, "train_chars": len(train), "val_chars": len(val_text), "val_windows": len(vx),
                 "vocab": vocab})
