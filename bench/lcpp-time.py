#!/usr/bin/env python3
"""lcpp-time.py: llama.cpp's prefill and decode speed through llama-cpp-python,
for architectures the llama-bench at hand does not know (bench/gemma.sh).

  python3 lcpp-time.py MODEL THREADS N [N...]

For each N: the KV cache cleared, N random token ids (fixed seed) decoded in
one batch (n_batch N, n_ubatch 512, F16 cache, no flash attention, as
llama-bench's defaults), then 32 one-token steps at depth N. One JSON line per
test: {"test":"pp512","tps":...} and {"test":"tg32@d512","tps":...}. A
64-token warm-up runs first.
"""
import json
import random
import sys
import time

import llama_cpp


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    model, threads, sizes = sys.argv[1], int(sys.argv[2]), [int(a) for a in sys.argv[3:]]
    top = max(sizes)
    llm = llama_cpp.Llama(model_path=model, n_ctx=top + 64, n_batch=top, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, logits_all=False,
                          flash_attn=False, verbose=False)
    rng = random.Random(42)
    n_vocab = llm.n_vocab()
    toks = [rng.randrange(n_vocab) for _ in range(top + 32)]
    llm.reset()
    llm.eval(toks[:64])
    for n in sizes:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks[:n])
        pp = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for t in toks[n:n + 32]:
            llm.eval([t])
        tg = 32 / (time.perf_counter() - t0)
        print(json.dumps({"test": "pp%d" % n, "tps": round(pp, 2)}))
        print(json.dumps({"test": "tg32@d%d" % n, "tps": round(tg, 2)}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
