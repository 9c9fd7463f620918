"""What a lent GPU should check, in one script that writes a markdown table.

1. CUDA vs CPU parity of a random-weight EDM SongUNet (``EDMPrecond``) and of a diffusers UNet
   through :func:`smcdiff.models.diffusers_adapter.from_diffusers` (TF32 off for the comparison).
2. Zero host synchronisations per step: ``torch.cuda.set_sync_debug_mode("error")`` from the end of
   step 0 to the end of step T − 2 of ``smcdiff.sample`` (EDM Heun with churn, a potential, ESS
   resampling, per-group CUDA generators, the failure check deferred with ``check_every=T``).
3. Engine overhead: ``smcdiff.sample`` vs a bare loop of the same kernel at a batch of 512 images of
   32×32, with a cheap analytic denoiser (the engine's own cost shows) and with a SongUNet.
4. Resampling 2^20 particles (systematic; one group and 64 groups) vs one ``torch.cumsum``.
5. diffusers-adapter throughput: images/s of the adapter vs the bare UNet call (float16).

    python benchmarks/gpu_check.py --out docs/gpu_check.md
    python benchmarks/gpu_check.py --dry-run-cpu          # the same code on CPU, tiny sizes

Without CUDA (and without ``--dry-run-cpu``) it prints a message and exits 0. Every check is
independent: a failure is reported in its row (with the innermost smcdiff frame) and the others run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import smcdiff
from smcdiff.kernels import EDMHeun, karras_sigmas
from smcdiff.models.precond import EDMPrecond
from smcdiff.resampling_schemes import SCHEMES

ROWS: list[tuple[str, str, str]] = []


def where(exc: BaseException) -> str:
    """The innermost frame of the traceback inside smcdiff (else the innermost one)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "smcdiff" in f.filename and "gpu_check" not in f.filename]
    f = (ours or frames or [None])[-1]
    return f"{Path(f.filename).name}:{f.lineno} ({f.line})" if f else "?"


@contextlib.contextmanager
def check(name: str):
    try:
        yield
    except Exception as exc:  # report and go on with the next check
        ROWS.append((name, "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]} at {where(exc)}"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def song_unet(resolution: int, channels: int = 3, width: int = 32):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return EDMPrecond(resolution, channels, model_type="SongUNet", model_channels=width,
                          channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(resolution // 2,)).eval()


def diffusers_unet(resolution: int, widths=(32, 64)):
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return diffusers.UNet2DModel(sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=1,
                                     block_out_channels=widths, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                     up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                     attention_head_dim=8).eval()


@contextlib.contextmanager
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def parity(device, res: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, res, res, dtype=torch.float64, generator=g)
    sigma = torch.logspace(-2, 1.5, 16, dtype=torch.float64)
    with check("parity: SongUNet (EDMPrecond) CUDA vs CPU"), torch.no_grad(), no_tf32():
        net = song_unet(res)
        cpu = net(x, sigma).double()
        dev = copy.deepcopy(net).to(device)(x.to(device), sigma.to(device)).double().cpu()
        d = float((cpu - dev).abs().max())
        ROWS.append(("parity: SongUNet (EDMPrecond) CUDA vs CPU", f"max abs diff {d:.2e}",
                     f"float32, TF32 off, 16 images {res}x{res}, σ in [0.01, 31.6], max |D| {float(cpu.abs().max()):.2f}"))
    with check("parity: diffusers UNet2DModel via from_diffusers"), torch.no_grad(), no_tf32():
        import diffusers

        from smcdiff.models.diffusers_adapter import from_diffusers

        sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        net = diffusers_unet(res)
        cpu = from_diffusers(net, sched)(x, sigma.clamp(0.03, 14))
        dev = from_diffusers(copy.deepcopy(net).to(device), sched)(x.to(device), sigma.clamp(0.03, 14).to(device)).cpu()
        d = float((cpu - dev).abs().max())
        ROWS.append(("parity: diffusers UNet2DModel via from_diffusers", f"max abs diff {d:.2e}",
                     f"ε-prediction, float32 net, float64 in/out, max |D| {float(cpu.abs().max()):.2f}"))


def sync_free_steps(device, res: int, steps: int):
    name = "zero host syncs per step (smcdiff.sample)"
    if device.type != "cuda":
        ROWS.append((name, "skipped", "needs CUDA"))
        return
    with check(name):
        net = song_unet(res).to(device)
        G, K = 4, 16
        gens = [torch.Generator(device=device).manual_seed(s) for s in range(G)]
        potential = lambda x, sigma, x0_hat, **cond: -(x0_hat**2).flatten(1).mean(1)

        def callback(info):
            if info.t == 0:
                torch.cuda.set_sync_debug_mode("error")
            if info.t == steps - 2:
                torch.cuda.set_sync_debug_mode("default")

        try:
            smcdiff.sample(net, karras_sigmas(steps), EDMHeun(S_churn=10), potential=potential,
                           resampler=smcdiff.Resampler("systematic", 0.5), num_groups=G, num_particles=K,
                           shape=(3, res, res), generator=gens, callback=callback, check_every=steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        ROWS.append((name, "PASS", f"steps 1..{steps - 2} of {steps}: EDMHeun(S_churn=10), potential, "
                                   f"systematic resampling at ESS < 0.5, {G} CUDA generators, check_every={steps}"))


def engine_overhead(device, batch: int, res: int, steps: int, repeats: int):
    sigmas = karras_sigmas(steps)
    kernel = EDMHeun(S_churn=10)
    cheap = lambda x, sigma, **cond: x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)
    for label, denoiser in (("analytic denoiser", cheap), ("SongUNet", None)):
        name = f"engine overhead, {batch} images {res}x{res}, {label}"
        with check(name), torch.no_grad():
            D = denoiser or song_unet(res).to(device)
            z = torch.randn(1, batch, 3, res, res, dtype=torch.float64, device=device)

            def bare():
                g = torch.Generator(device=device).manual_seed(0)
                x = sigmas[0].item() * z[0]
                for i in range(steps):
                    x = kernel(D, x, sigmas, i, g).x
                return x

            def engine():
                return smcdiff.sample(D, sigmas, kernel, num_groups=1, num_particles=batch, shape=(3, res, res),
                                      generator=torch.Generator(device=device).manual_seed(0), x_init=z,
                                      check_every=steps)

            tb, te = timed(bare, device, repeats), timed(engine, device, repeats)
            ROWS.append((name, f"ratio {te / tb:.3f}", f"bare {tb * 1e3:.1f} ms, sample {te * 1e3:.1f} ms "
                                                      f"(median of {repeats}, EDMHeun, {steps} steps)"))


def resampling(device, log2: int, repeats: int):
    n = 2**log2
    for G in (1, 64):
        name = f"systematic resampling of 2^{log2} particles, {G} group(s)"
        with check(name):
            gens = torch.Generator(device=device).manual_seed(0)
            lw = torch.randn(G, n // G, dtype=torch.float64, device=device, generator=gens)
            w = lw.exp()
            ts = timed(lambda: SCHEMES["systematic"](lw, gens), device, repeats)
            tc = timed(lambda: torch.cumsum(w, -1), device, repeats)
            ROWS.append((name, f"{ts / tc:.2f} cumsums", f"systematic {ts * 1e3:.3f} ms, cumsum {tc * 1e3:.3f} ms"))


def adapter_throughput(device, batch: int, res: int, repeats: int):
    name = f"diffusers adapter throughput, batch {batch}, {res}x{res}"
    with check(name), torch.no_grad():
        import diffusers

        from smcdiff.models.diffusers_adapter import from_diffusers

        dtype = torch.float16 if device.type == "cuda" else torch.float32
        net = diffusers_unet(res, (64, 128)).to(device=device, dtype=dtype)
        sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        D = from_diffusers(net, sched)
        x = torch.randn(batch, 3, res, res, dtype=torch.float64, device=device)
        sigma = torch.full((batch,), 1.0, dtype=torch.float64, device=device)
        xin, t = (x / 2**0.5).to(dtype), D.sigma_to_t(sigma).float()
        ta = timed(lambda: D(x, sigma), device, repeats)
        tn = timed(lambda: net(xin, t).sample, device, repeats)
        ROWS.append((name, f"{batch / ta:.0f} images/s", f"bare UNet {batch / tn:.0f} images/s "
                                                        f"(adapter / bare time {ta / tn:.3f}), {dtype}"))


def table() -> str:
    lines = ["| check | result | detail |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c.replace('|', '/')} |" for a, b, c in ROWS]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--steps", type=int, default=18, help="sampler steps")
    p.add_argument("--dry-run-cpu", action="store_true", help="run every check on the CPU at tiny sizes")
    args = p.parse_args(argv)
    if args.dry_run_cpu:
        device, batch, res, log2 = torch.device("cpu"), 8, 16, 14
    elif torch.cuda.is_available():
        device, batch, res, log2 = torch.device("cuda"), 512, 32, 20
    else:
        print("gpu_check: no CUDA device here; nothing to check (run it where a GPU is lent).")
        return 0
    parity(device, res)
    sync_free_steps(device, res, args.steps)
    engine_overhead(device, batch, res, args.steps, args.repeats)
    resampling(device, log2, args.repeats)
    adapter_throughput(device, batch // 2, res, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    text = (f"gpu_check on {name}, torch {torch.__version__}, smcdiff {smcdiff.__version__}"
            f"{' (dry run on CPU)' if args.dry_run_cpu else ''}\n\n{table()}\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if any(r[1] == "FAIL" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
