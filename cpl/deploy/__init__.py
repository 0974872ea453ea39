"""Using a trained run outside this library: ``cpl export`` (the retrieval feature extractor as ONNX,
:mod:`cpl.deploy.onnx`) and ``cpl embed`` (features of an image folder through ONNX Runtime, torch-free,
:mod:`cpl.deploy.embed`). Needs the optional extra ``[onnx]``; docs/deploy.md."""
