def load_onnx(path):
    raise NotImplementedError
