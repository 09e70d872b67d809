"""One DCGAN training step (one D update, one G update): deepgen's GanTask.train_step against the
pytorch/examples dcgan step, in the same process, on the same device and the same random batch.

    python benchmarks/gan_step.py                                  # 64 x 64 RGB, nz 100, ngf = ndf = 64, batch 128
    python benchmarks/gan_step.py --compile                        # torch.compile the generator and discriminator
    python benchmarks/gan_step.py --size 32 --batch 8 --steps 2 --warmup 1 --device cpu    # smoke test

deepgen: GanTask.train_step as the training loop calls it: channels-last models and images, bf16 autocast
(--precision fp32 turns it off), BCE-with-logits, the divergence guard's one deferred host read per step,
optionally torch.compile'd networks (--compile).
reference: pytorch/examples dcgan/main.py's networks and step written plainly: fp32, NCHW, Sigmoid at the
end of D and nn.BCELoss, the fake batch reused for the G update. Its `.item()` calls, there for printing,
are left out, so the reference is not charged for logging syncs.

Both run the same architecture (the example's stacks, generalised to --size as DCGANGenerator does) with
Adam(2e-4, betas (0.5, 0.999)). Data loading is not measured: the batch is on the device already.
Prints images/s of both and deepgen / reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepgen.data.prepare import Manifest, Scaler  # noqa: E402
from deepgen.tasks.gan import DCGANSpec, GanTask  # noqa: E402

# --- the reference: pytorch/examples dcgan/main.py ------------------------------------------------


def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        m.weight.data.normal_(0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


def reference_generator(nz: int, ngf: int, nc: int, size: int) -> nn.Sequential:
    """For size 64: ConvT(nz, ngf*8) 4x4, ngf*4 8x8, ngf*2 16x16, ngf 32x32, nc 64x64 + Tanh, as the example."""
    stages = size.bit_length() - 3  # doublings from 4 x 4
    ch = [ngf * 2**i for i in reversed(range(stages))]
    layers = [nn.ConvTranspose2d(nz, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
    for a, b in zip(ch, ch[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(ch[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def reference_discriminator(ndf: int, nc: int, size: int) -> nn.Sequential:
    """For size 64: Conv(nc, ndf) 32x32, ndf*2 16x16, ndf*4 8x8, ndf*8 4x4, 1x1 + Sigmoid, as the example."""
    stages = size.bit_length() - 3
    ch = [ndf * 2**i for i in range(stages)]
    layers = [nn.Conv2d(nc, ch[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for a, b in zip(ch, ch[1:]):
        layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.Conv2d(ch[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]
    return nn.Sequential(*layers)


def reference_step(args, device):
    netG = reference_generator(args.nz, args.ngf, args.channels, args.size).to(device)
    netD = reference_discriminator(args.ndf, args.channels, args.size).to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real_cpu = torch.rand(args.batch, args.channels, args.size, args.size, device=device) * 2 - 1
    real_label, fake_label = 1.0, 0.0

    def step():
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
        output = netD(real_cpu).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        noise = torch.randn(batch_size, args.nz, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(fake_label)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        optimizerD.step()
        # (2) Update G network: maximize log(D(G(z)))
        netG.zero_grad()
        label.fill_(real_label)  # fake labels are real for generator cost
        output = netD(fake).view(-1)
        errG = criterion(output, label)
        errG.backward()
        optimizerG.step()

    return step


# --- deepgen ---------------------------------------------------------------------------------------


def deepgen_step(args, device):
    shape = [args.channels, args.size, args.size]
    manifest = Manifest(fingerprint="bench", source_fingerprint="bench", shape=shape, rows={"train": args.batch},
                        label_type=None, feature_names=None, scaler=Scaler(divisor=255.0), arrow_schema={})
    spec = SimpleNamespace(name="gan-step", model=DCGANSpec(nz=args.nz, ngf=args.ngf, ndf=args.ndf))
    task = GanTask(spec, manifest)
    models = {k: m.to(device) for k, m in task.build_models().items()}
    if args.compile:
        models = {k: torch.compile(m) for k, m in models.items()}
    optimizers = task.build_optimizers(models)
    batch = {"features": torch.rand(args.batch, args.channels * args.size**2, device=device)}
    bf16 = args.precision == "bf16"

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            task.train_step(models, optimizers, batch)

    step.task = task
    return step


def time_steps(step, steps: int, warmup: int, device) -> float:
    """Seconds per step, after `warmup` steps (compilation, cuDNN autotuning)."""
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=64, help="image side, a power of two >= 8")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--nz", type=int, default=100)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="deepgen's autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile deepgen's networks")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    ref = time_steps(reference_step(args, device), args.steps, args.warmup, device)
    ours = deepgen_step(args, device)
    dg = time_steps(ours, args.steps, args.warmup, device)
    ours.task.guard.flush()  # the last step's losses, too, were finite

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)")
    print(f"DCGAN step, {args.channels}x{args.size}x{args.size}, nz {args.nz}, ngf {args.ngf}, ndf {args.ndf}, "
          f"batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, on {name}, "
          f"torch {torch.__version__}")
    ours_label = f"deepgen ({args.precision}, channels-last{', compiled' if args.compile else ''})"
    for label, seconds in (("reference (pytorch/examples, fp32, NCHW)", ref), (ours_label, dg)):
        print(f"  {label:<47}{args.batch / seconds:10.1f} images/s  {1e3 * seconds:8.2f} ms/step")
    print(f"  deepgen / reference: {ref / dg:.2f}x")


if __name__ == "__main__":
    main()
