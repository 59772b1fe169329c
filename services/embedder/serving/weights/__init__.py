"""Pretrained FaceNet weights: reading the frozen graph, converting it to torch, exporting ONNX."""
