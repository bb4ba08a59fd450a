"""The device a GPU check ran on, and its two measured ceilings: a bf16 (and TF32) matrix product on random data and a
device-to-device copy (bytes read plus written). Writes one JSON file: `python tools/gpu_ceilings.py OUT.json`."""
import json, platform, sys, time
import torch

def timed(fn, n: int = 10, warmup: int = 3) -> float:
    "Median seconds of `fn()` over `n` calls after `warmup`, timed with CUDA events."
    for _ in range(warmup): fn()
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]

def main(path: str):
    dev = torch.device("cuda")
    p = torch.cuda.get_device_properties(dev)
    rec = {"device": torch.cuda.get_device_name(dev), "capability": list(torch.cuda.get_device_capability(dev)),
           "multiprocessors": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "bf16_supported": torch.cuda.is_bf16_supported(), "date": time.strftime("%Y-%m-%d")}
    n = 8192
    for dtype, key in ((torch.bfloat16, "matmul_bf16_tflops"), (torch.float32, "matmul_tf32_tflops")):
        torch.backends.cuda.matmul.allow_tf32 = True
        x, y = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
        rec[key] = round(2 * n**3 / timed(lambda: x @ y) / 1e12, 1)
        del x, y
    src = torch.randn(2**30, device=dev, dtype=torch.float32)    # 4 GiB, far beyond the L2
    dst = torch.empty_like(src)
    rec["copy_tb_per_s"] = round(2 * src.numel() * 4 / timed(lambda: dst.copy_(src)) / 1e12, 2)
    print(json.dumps(rec, indent=1))
    with open(path, "w") as f: json.dump(rec, f, indent=1)

if __name__ == "__main__": main(sys.argv[1] if len(sys.argv) > 1 else "device.json")
