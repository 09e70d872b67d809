"""One DCGAN training step (one D update, one G update): deepgen's GanTask.train_step against the
pytorch/examples dcgan step as written and against a tidy fp32 step, in the same process, on the same
device and the same random batch.

    python benchmarks/gan_step.py                                  # 64 x 64 RGB, nz 100, ngf = ndf = 64, batch 128
    python benchmarks/gan_step.py --compile                        # torch.compile deepgen's networks
    python benchmarks/gan_step.py --size 32 --batch 8 --steps 2 --warmup 1 --device cpu    # smoke test

reference: pytorch/examples dcgan/main.py's networks and step written plainly: fp32, NCHW, Sigmoid at the
end of D and nn.BCELoss, two D backwards (real, then fake), plain Adam, the fake batch reused for the G
update. Its `.item()` calls, there for printing, are left out, so it is not charged for logging syncs.
tidy: the same networks and loss with what a careful hand-written step does: fused Adam (on CUDA), one D
backward of errD_real + errD_fake, gradients set to None; fp32 (on an H200 bf16 + channels-last made this
step slower: 19,050 against 21,333 images/s).
deepgen: GanTask.train_step as the training loop calls it, prepared by the loop's own deepgen.train.accel
(channels-last and fused Adam on CUDA, torch.compile with --compile), BCE-with-logits, the divergence
guard's deferred host read; once in fp32 and once under bf16 autocast (`train.precision`; auto = bf16 on
a GPU), unless --precision picks one.

All run the same architecture (the example's stacks, generalised to --size as DCGANGenerator does) with
Adam(2e-4, betas (0.5, 0.999)). Data loading is not measured: the batch is on the device already. Prints
images/s, ms/step, MFU against a measured matmul ceiling (bf16 on a GPU, fp32 on a CPU; FLOPs of one step counted by
torch.utils.flop_counter on the reference), and the ratios against the reference and the tidy step.
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

from bert_pretrain import ceiling_dtype, matmul_ceiling  # noqa: E402

from deepgen.config import TrainSpec  # noqa: E402
from deepgen.data.manifest import Manifest, Scaler  # noqa: E402
from deepgen.tasks.gan import DCGANSpec, GanTask  # noqa: E402
from deepgen.train import accel  # noqa: E402

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


def reference_networks(args, device, fused: bool = False):
    netG = reference_generator(args.nz, args.ngf, args.channels, args.size).to(device)
    netD = reference_discriminator(args.ndf, args.channels, args.size).to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused or None)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused or None)
    real = torch.rand(args.batch, args.channels, args.size, args.size, device=device) * 2 - 1
    return netG, netD, optimizerG, optimizerD, real


def reference_step(args, device):
    netG, netD, optimizerG, optimizerD, real_cpu = reference_networks(args, device)
    criterion = nn.BCELoss()
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


def tidy_step(args, device):
    """The reference's networks and loss; fused Adam on CUDA, one D backward, gradients set to None."""
    netG, netD, optimizerG, optimizerD, real = reference_networks(args, device, fused=device.type == "cuda")
    criterion = nn.BCELoss()
    ones = torch.ones(args.batch, device=device)
    zeros = torch.zeros(args.batch, device=device)

    def step():
        # (1) D: minimise BCE(D(x), 1) + BCE(D(G(z)), 0), one backward
        fake = netG(torch.randn(args.batch, args.nz, 1, 1, device=device))
        errD = criterion(netD(real).view(-1), ones) + criterion(netD(fake.detach()).view(-1), zeros)
        optimizerD.zero_grad(set_to_none=True)
        errD.backward()
        optimizerD.step()
        # (2) G: minimise BCE(D(G(z)), 1) through the updated D
        errG = criterion(netD(fake).view(-1), ones)
        optimizerG.zero_grad(set_to_none=True)
        errG.backward()
        optimizerG.step()

    return step


def step_flops(step) -> int:
    """FLOPs of one call of `step` (convolutions and matmuls, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# --- deepgen ---------------------------------------------------------------------------------------


def deepgen_step(args, device, precision: str):
    shape = [args.channels, args.size, args.size]
    manifest = Manifest(fingerprint="bench", source_fingerprint="bench", shape=shape, rows={"train": args.batch},
                        label_type=None, feature_names=None, scaler=Scaler(divisor=255.0), arrow_schema={})
    spec = SimpleNamespace(name="gan-step", model=DCGANSpec(nz=args.nz, ngf=args.ngf, ndf=args.ndf))
    task = GanTask(spec, manifest)
    train = TrainSpec(compile="default" if args.compile else "off")
    # what train_loop does with a task's models and optimizers (deepgen.train.accel)
    models = {k: accel.compile_model(accel.memory_format(m, device).to(device), train)
              for k, m in task.build_models().items()}
    optimizers = task.build_optimizers(models)
    accel.fuse_optimizers(optimizers, device)
    batch = {"features": torch.rand(args.batch, args.channels * args.size**2, device=device)}
    bf16 = precision == "bf16"

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
    p.add_argument("--precision", choices=("both", "bf16", "fp32"), default="both", help="deepgen's autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile deepgen's networks")
    p.add_argument("--matmul-size", type=int, default=None, help="side of the ceiling's matmuls (8192 GPU, 512 CPU)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    n = args.matmul_size or (8192 if device.type == "cuda" else 512)
    peak = matmul_ceiling(device, n)
    flops = step_flops(reference_step(args, device))

    runs = {"reference (pytorch/examples, fp32, NCHW)": reference_step(args, device),
            "tidy (fp32, fused Adam, one D backward)": tidy_step(args, device)}
    layout = "channels-last, fused Adam" if device.type == "cuda" else "NCHW, Adam (CPU)"
    for precision in (("fp32", "bf16") if args.precision == "both" else (args.precision,)):
        runs[f"deepgen ({precision}, {layout}{', compiled' if args.compile else ''})"] = \
            deepgen_step(args, device, precision)
    seconds = {}
    for label, step in runs.items():
        seconds[label] = time_steps(step, args.steps, args.warmup, device)
        if hasattr(step, "task"):
            step.task.guard.flush()  # the last step's losses, too, were finite

    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)")
    print(f"DCGAN step, {args.channels}x{args.size}x{args.size}, nz {args.nz}, ngf {args.ngf}, ndf {args.ndf}, "
          f"batch {args.batch}, {args.steps} steps after {args.warmup} warm-up, on {name}, "
          f"torch {torch.__version__}")
    print(f"{str(ceiling_dtype(device)).removeprefix('torch.')} matmul ceiling ({n}^3): {peak / 1e12:.3g} TFLOP/s; "
          f"one step: {flops / 1e9:.3g} GFLOP "
          "(FlopCounterMode, forward + backward)")
    ref, tidy = (seconds[k] for k in list(runs)[:2])
    print(f"  {'step':<58}{'images/s':>10}{'ms/step':>9}{'MFU':>7}{'x ref':>7}{'x tidy':>7}")
    for label, s in seconds.items():
        print(f"  {label:<58}{args.batch / s:10.1f}{1e3 * s:9.2f}{flops / s / peak:7.1%}{ref / s:7.2f}{tidy / s:7.2f}")
    best = min((s, label) for label, s in seconds.items() if label.startswith("deepgen"))
    print(f"  deepgen's best ({best[1]}): {ref / best[0]:.2f}x the reference (target 1.5x), "
          f"{tidy / best[0]:.2f}x the tidy step (target 1.0x)")


if __name__ == "__main__":
    main()
