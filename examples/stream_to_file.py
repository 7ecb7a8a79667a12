"""Streaming a model to a file and back in bounded frames: neither side holds the whole message.

python examples/stream_to_file.py
"""

import os
import tempfile

import numpy as np

import tensorcodec as tc

rng = np.random.default_rng(1)
model = {f"layer.{i}.weight": rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(8)}

with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "model.tcs")
    with open(path, "wb") as f:
        tc.dump(model, f, precision="bf16", max_frame_bytes=1 << 20)  # frames of at most 1 MiB
    print(f"wrote {os.path.getsize(path):,} bytes for {sum(a.nbytes for a in model.values()):,} bytes of fp32")

    with open(path, "rb") as f:
        back = tc.load(f)
    worst = max(float(np.abs(back[k] - v).max()) for k, v in model.items())
    print(f"read {len(back)} tensors back, max abs error of bf16 {worst:.4f}")

    # Frame by frame, as a network receiver sees them: tensors come out as they complete.
    decoder = tc.StreamDecoder()
    frames = list(tc.encode_stream(model, max_frame_bytes=1 << 20))
    for frame in frames:
        decoder.feed(frame)
    tree = decoder.result()
    same = all(tree[k].tobytes() == v.tobytes() for k, v in model.items())
    print(f"{len(frames)} frames of at most 1 MiB, lossless: {same}")
