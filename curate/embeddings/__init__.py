"""Text embedders (MiniLM on torch or ONNX, static, hashing) and the vector store."""
