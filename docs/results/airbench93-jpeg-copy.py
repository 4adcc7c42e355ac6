"""airbench93 (Jordan), verbatim hyperparameters and training loop, on CPU, on edgepack's decoded JPEG copy.

Diagnostic only, not part of the toolkit (it needs PyTorch, which edgepack does not install): is the
gap to airbench's published 93% in edgepack's Keras port or in the data? Reads the image cache that
`python -m train --dataset cifar10` writes (set CACHE below to yours). Run on 2026-12-01 as
`python airbench93-jpeg-copy.py 11 0` (epochs, seed) with torch 2.13.0+cpu on the 2-core CPU;
its output is airbench93-jpeg-copy.log beside it.
"""

import sys
import time
from math import ceil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
torch.set_num_threads(2)
EPOCHS = float(sys.argv[1]) if len(sys.argv) > 1 else 11.0
GELU = nn.GELU
CACHE = "/root/.cache/edgepack/cifar10-jpeg-fbfcf92d16976332.npz"
d = np.load(CACHE)
MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


def prep(x):
    return (torch.tensor(x).float().div(255).permute(0, 3, 1, 2) - MEAN) / STD


xtr, ytr = prep(d["x_train"]), torch.tensor(d["y_train"])
xte, yte = prep(d["x_test"]), torch.tensor(d["y_test"])


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, n, momentum=0.6, eps=1e-12):
        super().__init__(n, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    def __init__(self, i, o, k=3, padding="same", bias=False):
        super().__init__(i, o, kernel_size=k, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.conv1 = Conv(i, o)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(o)
        self.conv2 = Conv(o, o)
        self.norm2 = BatchNorm(o)
        self.activ = GELU()

    def forward(self, x):
        return self.activ(self.norm2(self.conv2(self.activ(self.norm1(self.pool(self.conv1(x)))))))


class Mul(nn.Module):
    def forward(self, x):
        return x / 9


w = [int(v) for v in (sys.argv[3] if len(sys.argv) > 3 else "64,128,128").split(",")]
net = nn.Sequential(
    Conv(3, 24, 2, padding=0, bias=True),
    GELU(),
    ConvGroup(24, w[0]),
    ConvGroup(w[0], w[1]),
    ConvGroup(w[1], w[2]),
    nn.MaxPool2d(3),
    nn.Flatten(),
    nn.Linear(w[2], 10, bias=False),
    Mul(),
)
net[0].weight.requires_grad = False
# whitening
x = xtr[:5000]
patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).float()
pf = patches.view(len(patches), -1)
cov = pf.T @ pf / len(pf)
ev, evec = torch.linalg.eigh(cov, UPLO="U")
ev = ev.flip(0).view(-1, 1, 1, 1)
evec = evec.T.reshape(12, 3, 2, 2).flip(0)
s = evec / torch.sqrt(ev + 5e-4)
net[0].weight.data[:] = torch.cat((s, -s))

bs, lr0, mom, wd0, bias_scaler, ls = 1024, 11.5, 0.85, 0.0153, 64.0, 0.2
steps_per_epoch = len(xtr) // bs
total = ceil(steps_per_epoch * EPOCHS)
kss = 1024 * (1 + 1 / (1 - mom))
lr = lr0 / kss
wd = wd0 * bs / kss
lrb = lr * bias_scaler
nb = [p for k, p in net.named_parameters() if "norm" in k and p.requires_grad]
op = [p for k, p in net.named_parameters() if "norm" not in k and p.requires_grad]
opt = torch.optim.SGD(
    [dict(params=nb, lr=lrb, weight_decay=wd / lrb), dict(params=op, lr=lr, weight_decay=wd / lr)],
    momentum=mom,
    nesterov=True,
)


def get_lr(step):
    wu = int(total * 0.23)
    if step < wu:
        f = step / wu
        return 0.2 * (1 - f) + f
    f = (step - wu) / (total - wu)
    return (1 - f) + 0.07 * f


sched = torch.optim.lr_scheduler.LambdaLR(opt, get_lr)
alpha = 0.95**5 * (torch.arange(total + 1) / total) ** 3
ema = {k: v.clone() for k, v in net.state_dict().items()}


def la(decay):
    for e, p in zip(ema.values(), net.state_dict().values()):
        if p.dtype in (torch.half, torch.float):
            e.lerp_(p, 1 - decay)
            p.copy_(e)


lossf = nn.CrossEntropyLoss(label_smoothing=ls, reduction="none")
flipped = torch.where((torch.rand(len(xtr)) < 0.5).view(-1, 1, 1, 1), xtr.flip(-1), xtr)
padded = F.pad(flipped, (2,) * 4, "reflect")


def crop(images, r=2):
    sh = torch.randint(-r, r + 1, size=(len(images), 2))
    out = torch.empty(len(images), 3, 32, 32)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            m = (sh[:, 0] == sy) & (sh[:, 1] == sx)
            out[m] = images[m, :, r + sy : r + sy + 32, r + sx : r + sx + 32]
    return out


def infer(tta):
    net.eval()
    outs = []
    with torch.no_grad():
        for xb in xte.split(1000):

            def mir(z):
                return 0.5 * net(z) + 0.5 * net(z.flip(-1))

            if tta == 0:
                o = net(xb)
            elif tta == 1:
                o = mir(xb)
            else:
                p = F.pad(xb, (1,) * 4, "reflect")
                o = 0.5 * mir(xb) + 0.5 * torch.stack([mir(p[:, :, 0:32, 0:32]), mir(p[:, :, 2:34, 2:34])]).mean(0)
            outs.append(o)
    net.train()
    return (torch.cat(outs).argmax(1) == yte).float().mean().item()


step = 0
t0 = time.time()
for epoch in range(ceil(EPOCHS)):
    net[0].bias.requires_grad = epoch < 3
    imgs = crop(padded)
    if epoch % 2 == 1:
        imgs = imgs.flip(-1)
    idx = torch.randperm(len(imgs))
    for i in range(steps_per_epoch):
        b = idx[i * bs : (i + 1) * bs]
        out = net(imgs[b])
        loss = lossf(out, ytr[b]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 5 == 0:
            la(alpha[step].item())
        if step >= total:
            la(1.0)
            break
    print(
        f"epoch {epoch + 1} {time.time() - t0:.0f}s train_acc {(out.argmax(1) == ytr[b]).float().mean():.4f} "
        f"test {infer(0):.4f}",
        flush=True,
    )
print(f"final: tta0 {infer(0):.4f} tta1 {infer(1):.4f} tta2 {infer(2):.4f} time {time.time() - t0:.0f}s", flush=True)
