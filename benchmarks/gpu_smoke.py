"""A GPU smoke check (run by hand on a CUDA machine; CI has no GPU; ``tests/test_benchmarks.py`` runs
it on CPU).

- Every mode trains, in float32 and bfloat16; renormalized tensors stay on the sphere; absorb keeps W.
- ``check="step"`` refuses a NaN gradient before the optimizer writes anything.
- ``check="lazy"`` finds it at the next read and restores the last clean state.
- The batched renormalization (stacked groups) equals the per-tensor reference loop (bitwise on
  CPU; on CUDA the difference is printed: a stacked reduction may split its sums differently).
- ``torch.compile`` of a whole training step with ``attach`` matches eager, and with
  ``mode="reduce-overhead"`` (CUDA graphs) the renormalization runs inside the captured step.
- ``recipe("hyperball-adamw", compile=True)`` (``po.HyperballAdamW``, compiled for the device) matches the
  hooks over 20 steps and keeps every matrix's norm.

    python benchmarks/gpu_smoke.py                  # on a CUDA machine
    python benchmarks/gpu_smoke.py --device cpu     # the same checks on CPU
"""

import argparse

import torch
from torch import nn

import polaropt as po
from polaropt.renorm import _renormalize_grouped, _renormalize_reference, _targets


def modes(dev: str) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for mode in po.MODES:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev, dtype)
            po.polarize_model(model, scale="row", mode=mode)
            opt = torch.optim.Adam(po.param_groups(model, scale={"lr": 1e-3}), lr=1e-2)
            handle = po.attach(opt, model, state="rescale", check="step")
            for _ in range(20):
                x = torch.randn(32, 64, device=dev, dtype=dtype)
                opt.zero_grad()
                model(x).float().square().mean().backward()
                opt.step()
            v = po.direction_of(model[0])
            n = v.float().norm(dim=1)
            if mode in ("project", "absorb"):
                assert (n - 1).abs().max() < (1e-2 if dtype == torch.bfloat16 else 1e-5), (mode, n)
            w = model[0].weight.detach().clone()
            po.renormalize_(model)
            if mode == "absorb":
                torch.testing.assert_close(model[0].weight, w, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)
            opt.zero_grad()
            model(torch.randn(32, 64, device=dev, dtype=dtype)).float().square().mean().backward()
            po.direction_of(model[0]).grad[0, 0] = float("nan")
            before = [t.detach().clone() for t in model.parameters()]
            try:
                opt.step()
                raise AssertionError(f"NaN gradient not refused ({mode})")
            except FloatingPointError:
                assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before)), "a refused step wrote"
            handle.remove()
            po.attach(opt, model, state="rescale", restore=True)  # lazy: the NaN is written, then found and undone
            po.check_finite(opt)
            before = [t.detach().clone() for t in model.parameters()]
            opt.step()  # the NaN gradient is still there
            try:
                po.check_finite(opt)
                raise AssertionError(f"the lazy read missed a NaN ({mode})")
            except FloatingPointError:
                assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before)), "not restored"
            print(f"ok {dtype} {mode}")


def batched(dev: str) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        models = []
        for _ in range(2):
            torch.manual_seed(0)
            m = nn.Sequential(*[nn.Linear(256, 256) for _ in range(16)]).to(dev, dtype)
            po.polarize_model(m, scale="row", mode="absorb")
            with torch.no_grad():
                for t in po.polar_tensors(m):
                    t.direction.mul_(1.5)
            models.append(m)
        _renormalize_grouped(_targets(models[0]), stack_max=1 << 30)
        _renormalize_reference(_targets(models[1]))
        diff = max((a - b).abs().max().item() for a, b in zip(models[0].parameters(), models[1].parameters()))
        if dev == "cpu":
            assert diff == 0, diff
        print(f"ok batched = reference ({dtype}): largest difference {diff:.3g}")


def compiled(dev: str) -> None:
    def run(mode, compile_mode):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).to(dev)
        po.polarize_model(model, scale="row", mode=mode)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, capturable=dev != "cpu")
        po.attach(opt, model)
        x = torch.randn(32, 64, device=dev)

        def step():
            opt.zero_grad(set_to_none=False)
            loss = (model(x) - x).square().mean()
            loss.backward()
            opt.step()
            return loss.detach()

        losses = [step()]
        if compile_mode is not None:
            torch._dynamo.reset()
            step = torch.compile(step, mode=compile_mode)
        losses += [step().clone() for _ in range(8)]
        return torch.stack(losses), po.direction_of(model[0]).norm(dim=1)

    for mode in ("absorb", "project"):
        eager, _ = run(mode, None)
        for compile_mode in ("default",) + (("reduce-overhead",) if dev != "cpu" else ()):
            got, norms = run(mode, compile_mode)
            torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)
            print(f"ok compiled {mode} ({compile_mode}) = eager")


def hyperball_fused(dev: str) -> None:
    models, opts = [], []
    for compile_fused in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev)
        models.append(model)
        opts.append(po.recipe("hyperball-adamw", model, lr=1e-2, compile=compile_fused))
    norms = [w.detach().norm() for w in (models[1][0].weight, models[1][2].weight)]
    for t in range(20):
        x = torch.randn(32, 64, device=dev, generator=torch.Generator(dev).manual_seed(t))
        for model, opt in zip(models, opts):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for w, n in zip((models[1][0].weight, models[1][2].weight), norms):
        torch.testing.assert_close(w.detach().norm(), n, rtol=1e-5, atol=0)
    print(f"ok hyperball-adamw compile=True = the hooks on {dev}, norms kept")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile checks")
    args = p.parse_args(argv)
    dev = args.device
    assert dev != "cuda" or torch.cuda.is_available(), "needs a CUDA device (or pass --device cpu)"
    modes(dev)
    batched(dev)
    if not args.no_compile:
        compiled(dev)
        hyperball_fused(dev)


if __name__ == "__main__":
    main()
