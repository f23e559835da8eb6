"""Where a big stack's step goes on the GPU: the kernel table of 10 eager steps, then the captured
step replayed 200 times with the batch indices already on the GPU (ms per update of the stack).

    python benchmarks/gpu_replay.py [M]        (default M = 1024; needs a CUDA device)
"""
import sys, tempfile, time, torch
from pathlib import Path
sys.path.insert(0, "benchmarks")
import throughput as tp
from vaebench.training.trainer import Trainer
from vaebench.training.fused import FusedStack
from vaebench.training.graphs import Stepper
dev = torch.device("cuda"); M = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
tmp = Path(tempfile.mkdtemp())
cfgs = [tp.config(300, 1, "fast", s, stack=M) for s in range(M)]
ts = [Trainer(c, tmp / str(i), dev) for i, c in enumerate(cfgs)]
st = FusedStack(ts, dev); out = torch.empty((M, 3), device=dev)
perm = torch.stack([t.perm for t in ts])
idx = perm[:, :100].to(dev)
for s in range(3): st.step(idx, s + 1, out)
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    for s in range(3, 13): st.step(idx, s + 1, out)
    torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25))
step = Stepper(st)
for s in range(13, 20): step(idx, s + 1, out)
torch.cuda.synchronize(); t0 = time.perf_counter()
for s in range(20, 220): step(idx, s + 1, out)
torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / 200
print(f"M={M}: captured={step.captured} {dt*1e3:.3f} ms/step, {M/dt:,.0f} aggregate upd/s")
