"""ZeroMQ: a model sent as one multipart message (header + each tensor's own memory, no join), and
as a stream of bounded frames, between two sockets on loopback.

    python examples/zmq_roundtrip.py
"""

import numpy as np
import zmq

from tensorcodec.transports import zmq as tcz

rng = np.random.default_rng(2)
model = {"w": rng.standard_normal((512, 512)).astype(np.float32), "b": np.zeros(512, np.float32), "round": 4}

context = zmq.Context()
server, client = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
port = server.bind_to_random_port("tcp://127.0.0.1")
client.connect(f"tcp://127.0.0.1:{port}")

tcz.send(client, model)  # zero-copy frames of encode_frames
received = tcz.recv(server)
print("multipart, lossless:", received["w"].tobytes() == model["w"].tobytes(), "round", received["round"])

tcz.send_stream(client, model, precision="nf4")  # bounded frames, quantized on the way out
quantized = tcz.recv_stream(server)
print(f"stream in nf4, max abs error {float(np.abs(quantized['w'] - model['w']).max()):.3f}")

client.close()
server.close()
context.term()
