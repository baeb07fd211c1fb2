"""Thin command-line entry points (``effvit-sam segment``, ``export-onnx``, ``bench``,
``fastpath-accuracy``). The library never imports this package."""
