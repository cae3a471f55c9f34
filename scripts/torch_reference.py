"""The conv VAE of a vae_jax config in PyTorch eager, timed per training step: the reference that
``scripts/benchmark.py --torch PYTHON`` runs in a separate interpreter (PyTorch is not a project
dependency; e.g. ``python3 -m venv torchvenv && torchvenv/bin/pip install torch numpy``).

Reads one JSON object on stdin (written by ``benchmark.torch_spec``) and prints one JSON line::

    {"ms_per_step": [...], "threads": 2, "torch": "2.x"}

The network mirrors ``vae_jax.networks.ConvEncoder`` / ``ConvDecoder`` layer for layer: 4×4
kernels with padding 1 for stride 2, 3×3 with padding 1 for stride 1, ReLU, the dense layers, a
Linear to (μ, log σ²), the mirrored transposed convs and a 3×3 conv head (or a transposed-conv
head). The loss is a Gaussian with fixed σ or a Bernoulli on logits plus the closed-form KL,
Adam; other likelihoods are timed as the Gaussian (one output channel per image channel for
the Gaussian, two for two-parameter likelihoods, so the layer shapes match).
"""

import json
import sys
import time

import torch
import torch.nn as nn


def build(s):
    c_in = s["image_shape"][2]
    h, w = s["image_shape"][:2]
    act = nn.ReLU
    enc, ch = [], c_in
    for out, st in zip(s["channels"], s["strides"]):
        k = 4 if st == 2 else 3
        enc += [nn.Conv2d(ch, out, k, st, 1), act()]
        ch = out
    down = 2 ** sum(1 for st in s["strides"] if st == 2)
    hh, ww = h // down, w // down
    flat = ch * hh * ww
    enc.append(nn.Flatten())
    for d in s["dense"]:
        enc += [nn.Linear(flat, d), act()]
        flat = d
    enc.append(nn.Linear(flat, 2 * s["latent"]))
    dec, width = [], s["latent"]
    for d in reversed(s["dense"]):
        dec += [nn.Linear(width, d), act()]
        width = d
    rev = list(reversed(s["channels"]))
    dec += [nn.Linear(width, rev[0] * hh * ww), act(), nn.Unflatten(1, (rev[0], hh, ww))]
    last = s["out_channels"] if s["head"] == "transpose" else rev[-1]
    ch = rev[0]
    outs = rev[1:] + [last]
    for i, (out, st) in enumerate(zip(outs, reversed(s["strides"]))):
        k = 4 if st == 2 else 3
        dec.append(nn.ConvTranspose2d(ch, out, k, st, 1))
        ch = out
        if not (s["head"] == "transpose" and i == len(outs) - 1):
            dec.append(act())
    if s["head"] != "transpose":
        dec.append(nn.Conv2d(ch, s["out_channels"], 3, 1, 1))
    return nn.Sequential(*enc), nn.Sequential(*dec)


def main():
    s = json.load(sys.stdin)
    torch.manual_seed(0)
    torch.set_num_threads(s.get("threads") or torch.get_num_threads())
    enc, dec = build(s)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, s.get("learning_rate", 1e-3))
    b, (h, w, c) = s["batch_size"], s["image_shape"]
    x = torch.rand(b, c, h, w)
    bern = s["likelihood"] == "bernoulli"
    if bern:
        x = (x > 0.5).float()
    sigma = s.get("sigma", 0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        mu, logvar = enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        out = dec(z)[:, :c]
        if bern:
            rec = nn.functional.binary_cross_entropy_with_logits(out, x, reduction="none").sum((1, 2, 3))
        else:
            rec = (0.5 * ((x - out) / sigma) ** 2).sum((1, 2, 3))
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
        (rec + kl).mean().backward()
        opt.step()

    for _ in range(s.get("warmup", 3)):
        step()
    times = []
    for _ in range(s.get("repeats", 3)):
        t = time.perf_counter()
        for _ in range(s["steps"]):
            step()
        times.append(1000 * (time.perf_counter() - t) / s["steps"])
    print(json.dumps({"ms_per_step": times, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
