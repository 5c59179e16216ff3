"""Where a TIES / DARE-TIES merge spends its time: one 5632x2048 bf16 tensor (an MLP matrix of the
1B benchmark model), two fine-tunes, one thread. `.venv/bin/python benchmarks/profile_task_vectors.py`"""
import time, torch
from vlmmerge.methods import task_vectors
from vlmmerge.methods.sparsify import dare_sparsify
torch.set_num_threads(1)
shape=(5632,2048)  # one MLP matrix of the 1B model, 11.5M elements
g=torch.Generator().manual_seed(0)
base=(torch.randn(shape)*0.02).bfloat16()
fts=[(base.float()+torch.randn(shape)*0.002).bfloat16() for _ in range(2)]
def t(label, fn, n=3):
    fn(); s=time.perf_counter()
    for _ in range(n): fn()
    print(f"{label:40s} {(time.perf_counter()-s)/n*1000:8.1f} ms")
import os
for mode in ("off", "on"):  # VLMMERGE_FUSED: eager passes vs the fused kernels (vlmmerge/methods/fused.py)
    os.environ["VLMMERGE_FUSED"] = mode
    t(f"[fused {mode}] dare_ties full (2 models)", lambda: task_vectors.dare_ties(base, fts, [1.0,1.0], [0.5,0.5], generator=torch.Generator().manual_seed(1)))
    t(f"[fused {mode}] ties full (2 models)", lambda: task_vectors.ties(base, fts, [1.0,1.0], [0.5,0.5]))
    t(f"[fused {mode}] task_arithmetic (2 models)", lambda: task_vectors.task_arithmetic(base, fts, [1.0,1.0]))
t("torch.rand float32 x1", lambda: torch.rand(shape, generator=g))
t("bf16->f32 delta x1", lambda: fts[0].float()-base.float())
d=fts[0].float()-base.float()
t("dare_sparsify x1 (rand+mask+rescale)", lambda: dare_sparsify(d.clone(), 0.5, generator=torch.Generator().manual_seed(1)))
t("sum+sign election (2 deltas)", lambda: torch.stack([d,d]).sum(0).sign())
