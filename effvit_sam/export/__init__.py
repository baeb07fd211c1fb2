"""Export to ONNX (:mod:`.onnx`, needs torch) and the onnxruntime predictor
(:mod:`.onnx_predictor`, numpy + onnxruntime only: importing it does not import torch)."""
