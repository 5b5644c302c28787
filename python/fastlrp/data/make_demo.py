"""Rebuild the built-in demo's files (run once by the developers, not by users).

Writes, next to this script:

- ``digits.npz``: scikit-learn's bundled copy of the UCI "Optical Recognition of
  Handwritten Digits" test set (1797 images, 8x8, integer pixels 0..16, labels 0..9),
  stored as ``images`` (uint8, (1797, 8, 8)), ``labels`` (uint8) and ``test``
  (bool mask of the samples held out from training).
- ``digits_cnn.npz``: a small CNN trained here with PyTorch on the other samples
  and imported with :func:`fastlrp.from_torch` into a fastlrp graph file, so that
  the demo needs neither torch nor a network connection.

Needs torch and scikit-learn::

    PYTHONPATH=python python python/fastlrp/data/make_demo.py

Training is deterministic for a given torch version (fixed seeds, one thread).
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0


def build_model(torch):
    nn = torch.nn
    return nn.Sequential(
        # no bias in the first layer: with inputs >= 0 its ZPlus / ZBox rules then conserve relevance
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def main() -> int:
    import torch
    from sklearn.datasets import load_digits

    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    import fastlrp

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(SEED)
    test = np.zeros(len(images), dtype=bool)
    test[rng.permutation(len(images))[:297]] = True

    x = torch.tensor(images[:, None] / 16.0, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    xtr, ytr = x[~torch.from_numpy(test)], y[~torch.from_numpy(test)]

    model = build_model(torch)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(30):
        model.train()
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    acc_test = float((pred[test] == labels[test]).mean())
    acc_train = float((pred[~test] == labels[~test]).mean())
    print(f"train accuracy {acc_train:.4f}, test accuracy {acc_test:.4f}")

    graph = fastlrp.from_torch(model, x[:1], name="digits_cnn")
    graph.meta.update({
        "description": "demo CNN for scikit-learn's 8x8 handwritten digits (input: pixels / 16)",
        "input_scale": 1.0 / 16.0,
        "test_accuracy": acc_test,
        "classes": [str(i) for i in range(10)],
    })
    graph.save(os.path.join(HERE, "digits_cnn.npz"))
    # check the saved graph reproduces torch's logits
    g2 = fastlrp.Graph.load(os.path.join(HERE, "digits_cnn.npz"))
    ex = fastlrp.Explainer(g2, "epsilon_plus_flat", backend="reference")
    with torch.no_grad():
        ref = model(x[:64]).numpy()
    err = float(np.abs(ex.forward(x[:64].numpy()) - ref).max())
    print(f"max |logit difference| fastlrp vs torch: {err:.2e}")
    np.savez_compressed(os.path.join(HERE, "digits.npz"), images=images, labels=labels, test=test)
    for f in ("digits.npz", "digits_cnn.npz"):
        print(f, os.path.getsize(os.path.join(HERE, f)), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
